//! Knowing that this process is on its way out (SIGQUIT for a graceful upgrade, SIGTERM for a
//! stop), so it can stop offering keep-alive. Pingora drops idle keep-alive connections when its
//! shutdown begins; a client that sends its next request on one at that moment sees a reset. With
//! `Connection: close` on every answer from the first signal on, clients open fresh connections
//! (to the new process after an upgrade) instead of reusing ones about to be dropped.
//!
//! And leaving as soon as there is nothing left to wait for: once Pingora has stopped accepting,
//! it sleeps the whole `server.grace_period` whether or not a request is in flight (an idle
//! gateway took 20 s to stop). Here the process exits once no client connection is open and no
//! request is in flight; Pingora's own end of the grace period still bounds a busy one.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
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
        // Pingora's shutdown: its listeners stop accepting. (SIGINT never gets here: Pingora
        // stops at once.)
        if shutdown.wait_for(|stopping| *stopping).await.is_err() {
            return;
        }
        let started = Instant::now();
        // A connection accepted just before the listeners stopped is counted once its task runs:
        // idle for several polls in a row, not once, is idle.
        let mut idle_polls = 0;
        while idle_polls < IDLE_POLLS {
            tokio::time::sleep(POLL).await;
            idle_polls = if nothing_in_flight() {
                idle_polls + 1
            } else {
                0
            };
        }
        log::info!(
            "graceful shutdown: nothing in flight after {} ms, exiting before the grace period ends",
            started.elapsed().as_millis()
        );
        exit(0);
    }
}

/// How often an ending process looks whether anything is still in flight.
const POLL: Duration = Duration::from_millis(20);
const IDLE_POLLS: u32 = 3;

/// No client connection is open (a kept-alive one closes when the shutdown begins; a
/// websocket or an event stream stays open while it lasts) and no request is being answered.
fn nothing_in_flight() -> bool {
    let m = &crate::ops::metrics::METRICS;
    m.open_connections.get() <= 0 && m.in_flight.get() <= 0
}

/// `server.pid_file` when this process wrote it (`-d`), removed on exit.
static PID_FILE: OnceLock<String> = OnceLock::new();

/// Remembers the pid file a daemon writes, so that exiting removes it.
pub fn remember_pid_file(path: &str) {
    let _ = PID_FILE.set(path.to_string());
}

/// Removes the pid file if it is still this process's: after a graceful upgrade the new process
/// has written its own pid there, and that file stays.
pub fn remove_pid_file() {
    let Some(path) = PID_FILE.get() else { return };
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours && let Err(e) = std::fs::remove_file(path) {
        log::warn!("cannot remove the pid file {path}: {e}");
    }
}

/// Ends the process from inside a running server: the pid file removed, what was written out.
pub fn exit(code: i32) -> ! {
    remove_pid_file();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}
