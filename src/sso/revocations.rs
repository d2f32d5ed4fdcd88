//! Ending gateway sessions before they run out. The session is a cookie the gateway cannot take
//! back, so what is kept is the other half: "sessions of this person that began before this
//! moment are over". Kept in this process, and in Dify's Redis when the gateway has it
//! (`dify.redis_url`), so every replica refuses the session; without Redis, another replica
//! refuses it only once the session's own lifetime ends.

use crate::dify::redis_conn::LazyRedis;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The gateway's namespace in Dify's Redis for revocations (after Dify's key prefix).
pub const REVOKED_KEY: &str = "dify_gateway:revoked:";

/// People a directory deactivated (after Dify's key prefix): refused at sign-in until reactivated.
pub const DEACTIVATED_KEY: &str = "dify_gateway:deactivated:";

/// Revocations made in this process, across configuration reloads.
static LOCAL: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
/// Deactivations made in this process.
static DEACTIVATED: Mutex<Option<std::collections::HashSet<String>>> = Mutex::new(None);

pub struct Revocations {
    /// Dify's Redis, and Dify's key prefix.
    redis: Option<(LazyRedis, String)>,
    /// How long a revocation must be remembered: the longest a session lives.
    keep: Duration,
}

/// The key for a person: a hash of the lower-cased email, so Redis holds no addresses.
fn person_key(email: &str) -> String {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl Revocations {
    /// `redis`: Dify's Redis and Dify's key prefix (`REDIS_KEY_PREFIX`).
    pub fn new(redis: Option<(redis::Client, String)>, keep: Duration) -> Revocations {
        Revocations {
            redis: redis.map(|(c, prefix)| (LazyRedis::new(c), prefix)),
            keep,
        }
    }

    /// Ends every session of the person with this email that began up to now.
    pub async fn revoke(&self, email: &str) -> Result<(), String> {
        let key = person_key(email);
        let now = super::signer::now_secs();
        LOCAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(key.clone(), now);
        if let Some((redis, prefix)) = &self.redis {
            let mut conn = redis.conn().await?;
            redis::cmd("SET")
                .arg(format!("{prefix}{REVOKED_KEY}{key}"))
                .arg(now)
                .arg("EX")
                .arg(self.keep.as_secs().max(1))
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| format!("Redis refused the revocation ({e})"))?;
        }
        Ok(())
    }

    /// Whether a session of the person with this email that began at `signed_in` was ended. When
    /// Redis cannot be asked, this process's own revocations still hold and the failure is logged.
    pub async fn is_revoked(&self, email: &str, signed_in: u64) -> bool {
        let key = person_key(email);
        let local = LOCAL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|m| m.get(&key).copied());
        if local.is_some_and(|at| signed_in <= at) {
            return true;
        }
        let Some((redis, prefix)) = &self.redis else {
            return false;
        };
        let asked = async {
            let mut conn = redis.conn().await?;
            redis::cmd("GET")
                .arg(format!("{prefix}{REVOKED_KEY}{key}"))
                .query_async::<Option<u64>>(&mut conn)
                .await
                .map_err(|e| format!("Redis refused GET ({e})"))
        };
        match asked.await {
            Ok(at) => at.is_some_and(|at| signed_in <= at),
            Err(e) => {
                log::warn!(
                    "session revocations cannot be read from Redis, only this process's apply: {e}"
                );
                false
            }
        }
    }
}

impl Revocations {
    /// Marks the person deactivated (refused at sign-in) or lifts it.
    pub async fn set_deactivated(&self, email: &str, deactivated: bool) -> Result<(), String> {
        let key = person_key(email);
        {
            let mut set = DEACTIVATED.lock().unwrap_or_else(|e| e.into_inner());
            let set = set.get_or_insert_with(Default::default);
            if deactivated {
                set.insert(key.clone());
            } else {
                set.remove(&key);
            }
        }
        if let Some((redis, prefix)) = &self.redis {
            let mut conn = redis.conn().await?;
            let name = format!("{prefix}{DEACTIVATED_KEY}{key}");
            let cmd = if deactivated {
                redis::cmd("SET")
                    .arg(&name)
                    .arg(super::signer::now_secs())
                    .clone()
            } else {
                redis::cmd("DEL").arg(&name).clone()
            };
            cmd.query_async::<()>(&mut conn)
                .await
                .map_err(|e| format!("Redis refused the deactivation ({e})"))?;
        }
        Ok(())
    }

    /// Whether a directory deactivated the person. Fails closed: a sign-in is refused when Redis
    /// cannot say (it is retried by the person, and a deprovisioned account must stay out).
    pub async fn is_deactivated(&self, email: &str) -> Result<bool, String> {
        let key = person_key(email);
        if DEACTIVATED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.contains(&key))
        {
            return Ok(true);
        }
        let Some((redis, prefix)) = &self.redis else {
            return Ok(false);
        };
        let mut conn = redis.conn().await?;
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{prefix}{DEACTIVATED_KEY}{key}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis refused EXISTS ({e})"))?;
        Ok(exists)
    }
}
