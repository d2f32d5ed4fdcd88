//! Knowing that this process is on its way out (SIGQUIT for a graceful upgrade, SIGTERM for a
//! stop), so it can stop offering keep-alive. Pingora drops idle keep-alive connections when its
//! shutdown begins; a client that sends its next request on one at that moment sees a reset. With
//! `Connection: close` on every answer from the first signal on, clients open fresh connections
//! (to the new process after an upgrade) instead of reusing ones about to be dropped.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{SignalKind, signal};

static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether answers should close their connection.
pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Listens for the signals Pingora acts on, beside Pingora (tokio delivers a signal to every
/// listener), and flips [`is_draining`].
pub struct DrainWatch;

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (Ok(mut quit), Ok(mut term)) =
            (signal(SignalKind::quit()), signal(SignalKind::terminate()))
        else {
            log::warn!("cannot watch SIGQUIT/SIGTERM: keep-alive stays on while draining");
            return;
        };
        tokio::select! {
            _ = quit.recv() => log::info!("SIGQUIT: handing over; answers now close their connections"),
            _ = term.recv() => log::info!("SIGTERM: stopping; answers now close their connections"),
            _ = shutdown.changed() => {}
        }
        DRAINING.store(true, Ordering::Relaxed);
    }
}
