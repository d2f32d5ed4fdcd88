//! One multiplexed, self-reconnecting connection to Dify's Redis, opened on first use (in the
//! runtime that uses it); a failed open is retried by the next call. Shared by everything the
//! gateway keeps there: Dify's refresh tokens and the gateway's used sign-in states.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::OnceCell;

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
