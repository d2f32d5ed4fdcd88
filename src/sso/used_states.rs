//! Single use of a sign-in's `state`: a callback that presents a state already redeemed is
//! refused, even when it carries the browser's own cookie (copied, or replayed from history).
//!
//! `sso.store` says where used states are kept. In memory they are single-use per process: with
//! several replicas behind a load balancer a state could be redeemed once per replica. In Dify's
//! Redis (`SET NX` with the state's expiry) they are single-use across every replica.

use crate::dify::redis_conn::LazyRedis;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

#[async_trait::async_trait]
pub trait UsedStates: Send + Sync {
    /// Marks `state` used for `ttl`; Ok(false) when it was used before. Err: the store cannot
    /// say (the sign-in must then fail: replay protection is not skipped).
    async fn consume(&self, state: &str, ttl: Duration) -> Result<bool, String>;
    /// Where states are kept, for the configuration summary.
    fn kind(&self) -> &'static str;
}

/// At most this many states are remembered in memory. They all live `STATE_TTL` (10 minutes), so
/// the oldest is also the first to expire; past the cap it is forgotten early. Forgetting a state
/// early only re-opens a replay that still needs the browser's own signed flow cookie.
pub const MEMORY_CAP: usize = 100_000;

#[derive(Default)]
pub struct MemoryStates {
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    used: HashSet<String>,
    /// (expiry in unix seconds, state), oldest first.
    order: VecDeque<(u64, String)>,
}

impl MemoryStates {
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .used
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The check itself, with the clock passed in.
    pub fn consume_at(&self, state: &str, ttl: Duration, now: u64) -> bool {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((exp, _)) = r.order.front()
            && (*exp <= now || r.order.len() >= MEMORY_CAP)
        {
            if let Some((_, old)) = r.order.pop_front() {
                r.used.remove(&old);
            }
        }
        if !r.used.insert(state.to_string()) {
            return false;
        }
        r.order.push_back((now + ttl.as_secs(), state.to_string()));
        true
    }
}

#[async_trait::async_trait]
impl UsedStates for MemoryStates {
    async fn consume(&self, state: &str, ttl: Duration) -> Result<bool, String> {
        Ok(self.consume_at(state, ttl, super::signer::now_secs()))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// Used states in Dify's Redis, under `<dify.redis_key_prefix>dify_gateway:sso_state:<state>`.
pub struct RedisStates {
    redis: LazyRedis,
    key_prefix: String,
}

impl RedisStates {
    /// `key_prefix`: Dify's key prefix (with its separator) followed by the gateway's namespace.
    pub fn new(client: redis::Client, key_prefix: String) -> RedisStates {
        RedisStates {
            redis: LazyRedis::new(client),
            key_prefix,
        }
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.redis.ping().await
    }
}

#[async_trait::async_trait]
impl UsedStates for RedisStates {
    async fn consume(&self, state: &str, ttl: Duration) -> Result<bool, String> {
        let mut conn = self.redis.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}{state}", self.key_prefix))
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis refused the used sign-in state ({e})"))?;
        Ok(set.is_some())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// The start-up check of `sso.store` in Redis: Dify's Redis answers. Ok(None) when used states
/// are kept in memory. Runs on a small runtime of its own (before Pingora starts its threads).
pub fn preflight_blocking(
    sso: Option<&super::SsoConfig>,
    dify: &crate::dify::DifyConfig,
) -> Result<Option<String>, String> {
    let Some(_) = sso.filter(|s| s.is_enabled() && s.store_in_redis(dify)) else {
        return Ok(None);
    };
    let redis = LazyRedis::new(crate::dify::redis_conn::dify_client(dify)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the startup check: {e}"))?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), redis.ping())
            .await
            .map_err(|_| "dify.redis_url: Redis did not answer within 10s".to_string())?
            .map_err(|e| format!("dify.redis_url: {e}"))
    })?;
    Ok(Some("Redis answers".into()))
}
