//! Dify's refresh tokens in Redis, written exactly as Dify's `AccountService._store_refresh_token`
//! writes them (reference §2): `SETEX refresh_token:<token> <seconds> <account id>` and
//! `SETEX account_refresh_token:<account id> <seconds> <token>`, with seconds =
//! `REFRESH_TOKEN_EXPIRE_DAYS * 86400`, in the database of the URL (Dify's `REDIS_DB`). Dify's own
//! `POST /console/api/refresh-token` then reads and rotates them unchanged. With Dify's
//! `REDIS_KEY_PREFIX` (`dify.redis_key_prefix`) both names carry it, as Dify's own do.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::OnceCell;

pub const REFRESH_TOKEN_PREFIX: &str = "refresh_token:";
pub const ACCOUNT_REFRESH_TOKEN_PREFIX: &str = "account_refresh_token:";

/// The name of the token's key, before Dify's `REDIS_KEY_PREFIX`.
pub fn refresh_token_key(token: &str) -> String {
    format!("{REFRESH_TOKEN_PREFIX}{token}")
}

/// The name of the account's key, before Dify's `REDIS_KEY_PREFIX`.
pub fn account_refresh_token_key(account_id: &str) -> String {
    format!("{ACCOUNT_REFRESH_TOKEN_PREFIX}{account_id}")
}

/// `dify.redis_url` with `dify.redis_password` put in when given: a `redis://` (or `rediss://`
/// for TLS) URL as the `redis` crate reads it, `redis://[:password@]host:port/db`.
pub fn client(url: &str, password: Option<&str>) -> Result<redis::Client, String> {
    let mut parsed = url::Url::parse(url).map_err(|e| {
        format!("expected a Redis URL such as redis://:password@redis:6379/0 ({e})")
    })?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(format!(
            "expected a redis:// or rediss:// URL, got scheme {:?}",
            parsed.scheme()
        ));
    }
    if let Some(pw) = password.filter(|p| !p.is_empty()) {
        parsed
            .set_password(Some(pw))
            .map_err(|()| "cannot put dify.redis_password into dify.redis_url".to_string())?;
    }
    redis::Client::open(parsed.as_str()).map_err(|e| format!("not a usable Redis URL ({e})"))
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
}

/// One multiplexed, self-reconnecting connection, opened on first use (in the runtime that uses
/// it); a failed open is retried by the next call.
pub struct RefreshTokens {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    /// `dify.redis_key_prefix`, applied by [`crate::dify::prefixed_redis_key`].
    key_prefix: String,
}

impl RefreshTokens {
    pub fn new(client: redis::Client, key_prefix: &str) -> RefreshTokens {
        RefreshTokens {
            client,
            conn: OnceCell::new(),
            key_prefix: key_prefix.to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        crate::dify::prefixed_redis_key(&self.key_prefix, name)
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        self.conn
            .get_or_try_init(|| async {
                self.client
                    .get_connection_manager_with_config(manager_config())
                    .await
                    .map_err(|e| format!("cannot connect to Redis ({e})"))
            })
            .await
            .cloned()
    }

    /// Stores a refresh token for `account_id` as Dify does (both keys, same TTL).
    pub async fn store(&self, token: &str, account_id: &str, ttl: Duration) -> Result<(), String> {
        let mut conn = self.conn().await?;
        let secs = ttl.as_secs().max(1);
        redis::pipe()
            .atomic()
            .set_ex(self.key(&refresh_token_key(token)), account_id, secs)
            .ignore()
            .set_ex(
                self.key(&account_refresh_token_key(account_id)),
                token,
                secs,
            )
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("Redis refused the refresh token ({e})"))
    }

    /// `PING`, for the startup check.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis did not answer PING ({e})"))?;
        Ok(())
    }
}
