//! `dify.version: auto` after start-up: asks Dify for its version every
//! `dify.version_check_interval`, so a Dify upgraded (or first reachable) under a running gateway
//! is followed without a reload ([`crate::dify::version`]).

use crate::state::SharedSnapshot;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

pub struct VersionWatch {
    pub state: SharedSnapshot,
}

#[async_trait]
impl BackgroundService for VersionWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Whether the last question went unanswered, so a Dify that stays down is one log line
        // per outage, not one per interval.
        let mut failing = crate::dify::version::DETECTED.get().is_none();
        loop {
            let interval = self.state.load().config.dify.version_check_interval;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let snap = self.state.load_full();
            match crate::dify::version::detect(&snap.config).await {
                Ok(Some(_)) if failing => {
                    failing = false;
                    log::info!("Dify answers again with its version");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    log::warn!(
                        "could not tell which Dify version is behind the gateway ({e}); keeping what was known"
                    );
                }
                Err(_) => {}
            }
        }
    }
}
