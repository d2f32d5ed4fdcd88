//! Dify's refresh tokens in Redis, written exactly as Dify's `AccountService._store_refresh_token`
//! writes them (reference §2): `SETEX refresh_token:<token> <seconds> <account id>` and
//! `SETEX account_refresh_token:<account id> <seconds> <token>`, with seconds =
//! `REFRESH_TOKEN_EXPIRE_DAYS * 86400`, in the database of the URL (Dify's `REDIS_DB`). Dify's own
//! `POST /console/api/refresh-token` then reads and rotates them unchanged. With Dify's
//! `REDIS_KEY_PREFIX` (`dify.redis_key_prefix`) both names carry it, as Dify's own do.

use super::redis_conn::LazyRedis;
use std::time::Duration;

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

pub struct RefreshTokens {
    redis: LazyRedis,
    /// `dify.redis_key_prefix`, applied by [`crate::dify::prefixed_redis_key`].
    key_prefix: String,
}

impl RefreshTokens {
    pub fn new(client: redis::Client, key_prefix: &str) -> RefreshTokens {
        RefreshTokens {
            redis: LazyRedis::new(client),
            key_prefix: key_prefix.to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        crate::dify::prefixed_redis_key(&self.key_prefix, name)
    }

    /// Stores a refresh token for `account_id` as Dify does (both keys, same TTL).
    pub async fn store(&self, token: &str, account_id: &str, ttl: Duration) -> Result<(), String> {
        let mut conn = self.redis.conn().await?;
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

    /// Ends an account's Dify session: deletes its refresh token (both keys), so Dify's
    /// `/console/api/refresh-token` refuses it. The access token lives out its short expiry.
    /// Returns whether there was one.
    pub async fn revoke(&self, account_id: &str) -> Result<bool, String> {
        let mut conn = self.redis.conn().await?;
        let account_key = self.key(&account_refresh_token_key(account_id));
        let token: Option<String> = redis::cmd("GET")
            .arg(&account_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis refused GET ({e})"))?;
        let mut pipe = redis::pipe();
        pipe.atomic().del(&account_key).ignore();
        if let Some(t) = &token {
            pipe.del(self.key(&refresh_token_key(t))).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("Redis refused DEL ({e})"))?;
        Ok(token.is_some())
    }

    /// `PING`, for the startup check.
    pub async fn ping(&self) -> Result<(), String> {
        self.redis.ping().await
    }
}
