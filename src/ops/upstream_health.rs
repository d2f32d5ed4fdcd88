//! A background task that keeps every upstream of the snapshot in force resolved and checked,
//! so selection skips dead backends and `/readyz` tells the truth.

use crate::state::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

/// How often names are resolved again and backends probed.
const INTERVAL: Duration = Duration::from_secs(2);

pub struct UpstreamHealth {
    pub state: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for UpstreamHealth {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snap = self.state.load_full();
            for upstream in snap.upstreams.values() {
                if let Err(e) = upstream.refresh().await {
                    log::warn!(upstream = upstream.name.as_str(); "cannot resolve upstream: {e}");
                }
                upstream.check_health().await;
            }
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }
}
