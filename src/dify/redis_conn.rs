//! One multiplexed, self-reconnecting connection to Dify's Redis, opened on first use (in the
//! runtime that uses it); a failed open is retried by the next call. Shared by everything the
//! gateway keeps there: Dify's refresh tokens and the gateway's used sign-in states.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::OnceCell;

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

/// The client for Dify's Redis as configured (`dify.redis_url`, `dify.redis_password`).
pub fn dify_client(dify: &super::DifyConfig) -> Result<redis::Client, String> {
    client(dify.redis_url.expose(), Some(dify.redis_password.expose()))
        .map_err(|e| format!("dify.redis_url: {e}"))
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
}

pub struct LazyRedis {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
}

impl LazyRedis {
    pub fn new(client: redis::Client) -> LazyRedis {
        LazyRedis {
            client,
            conn: OnceCell::new(),
        }
    }

    pub async fn conn(&self) -> Result<ConnectionManager, String> {
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
