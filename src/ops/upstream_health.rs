//! A background task that keeps every upstream of the snapshot in force resolved and checked,
//! so selection skips dead backends and `/readyz` tells the truth.

use crate::state::{SharedSnapshot, Snapshot};
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
            probe_all(&self.state.load_full()).await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(INTERVAL) => {}
            }
        }
    }
}

/// Resolves and health-checks every upstream of `snap`, all at once (a black-holed backend costs
/// one connect timeout, not one per upstream).
pub async fn probe_all(snap: &Snapshot) {
    let mut probes = tokio::task::JoinSet::new();
    for upstream in snap.upstreams.values().cloned() {
        probes.spawn(async move {
            if let Err(e) = upstream.refresh().await {
                log::warn!(upstream = upstream.name.as_str(); "cannot resolve upstream: {e}");
            }
            upstream.check_health().await;
        });
    }
    while probes.join_next().await.is_some() {}
}
