//! Configuration reload without dropping a request: on `SIGHUP` (and, with `server.watch_config`,
//! when the file changes on disk, e.g. a Kubernetes ConfigMap update) the file is read and
//! validated completely, then swapped in as a new snapshot. Requests in flight keep the snapshot
//! they started with. An invalid file changes nothing: the old configuration keeps serving.

use crate::config::{Config, ConfigSource};
use crate::ops::metrics::METRICS;
use crate::ops::tls::CertStore;
use crate::state::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// File events come in bursts (a ConfigMap swap is several renames): wait for quiet first.
const SETTLE: Duration = Duration::from_millis(200);

pub struct Reloader {
    pub state: SharedSnapshot,
    pub source: ConfigSource,
    /// The TLS listener's certificate, read again on every reload (a renewed file).
    pub certs: Option<Arc<CertStore>>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload is off: {e}");
                return;
            }
        };
        let (tx, mut file_changed) = mpsc::channel::<()>(1);
        let _watcher = self.watch_file(tx);
        let (certs_tx, mut certs_changed) = mpsc::channel::<()>(1);
        let mut cert_watcher = self.watch_certs(certs_tx.clone());
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = certs_changed.recv() => {
                    // Certbot writes the chain and the key one after the other: both, then load.
                    tokio::time::sleep(SETTLE).await;
                    while certs_changed.try_recv().is_ok() {}
                    self.reload_certs("the TLS certificate files changed");
                }
                Some(()) = hangup.recv() => {
                    log::info!("SIGHUP: reloading the configuration");
                    self.reload().await;
                    self.after_reload(&mut cert_watcher, &certs_tx, "SIGHUP");
                }
                Some(()) = file_changed.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while file_changed.try_recv().is_ok() {}
                    log::info!("configuration file changed: reloading");
                    self.reload().await;
                    self.after_reload(&mut cert_watcher, &certs_tx, "configuration reload");
                }
            }
        }
    }
}

/// A watcher that signals `tx` on every change that is not a mere read (a full channel already
/// holds a pending signal, so a dropped send loses nothing).
fn change_watcher(tx: mpsc::Sender<()>, what: &str) -> Option<notify::RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| log::error!("cannot watch {what}: {e}"))
    .ok()
}

impl Reloader {
    /// Watches the file's directory (ConfigMaps replace a symlink beside the file, not the file).
    fn watch_file(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let ConfigSource::File(path) = &self.source else {
            return None;
        };
        if !self.state.load().config.server.watch_config {
            return None;
        }
        let dir = path
            .parent()
            .map(PathBuf::from)
            .filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or_else(|| PathBuf::from("."));
        let mut watcher = change_watcher(tx, "the configuration file")?;
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                log::info!("watching {} for configuration changes", dir.display());
                Some(watcher)
            }
            Err(e) => {
                log::error!("cannot watch {}: {e}", dir.display());
                None
            }
        }
    }

    /// Watches the directories of the TLS certificate and key in force: certbot's
    /// renewal swaps the symlinks in `live/<domain>/`, an operator replaces the files in
    /// `/etc/ssl`; either way new handshakes get the new certificate with no SIGHUP (which Dify's
    /// `nginx -s reload` step stood for). Built again after each reload, which is what picks up
    /// a certificate that moved directory (certbot's appearing beside `/etc/ssl`'s).
    fn watch_certs(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        self.certs.as_ref()?;
        let snapshot = self.state.load();
        let tls = snapshot.config.server.tls.as_ref()?;
        let mut dirs: Vec<PathBuf> = [&tls.cert, &tls.key]
            .iter()
            .filter_map(|p| std::path::Path::new(p).parent().map(PathBuf::from))
            .collect();
        dirs.dedup();
        let mut watcher = change_watcher(tx, "the TLS certificate files")?;
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                log::warn!(
                    "cannot watch {} for a renewed certificate ({e}); SIGHUP reloads it",
                    dir.display()
                );
            }
        }
        Some(watcher)
    }

    /// The certificate of the configuration now in force (the reloaded one, or the old one if it
    /// was refused): the unchanged configuration too, since a SIGHUP after certbot renewed is how
    /// nginx is told. The watch is set up first, for that configuration's directories (certbot's
    /// may have appeared), so that no change falls between the two.
    fn after_reload(
        &self,
        watcher: &mut Option<notify::RecommendedWatcher>,
        tx: &mpsc::Sender<()>,
        why: &str,
    ) {
        *watcher = self.watch_certs(tx.clone());
        self.reload_certs(why);
    }

    /// Reads the TLS certificate and key of the configuration in force again.
    fn reload_certs(&self, why: &str) {
        let snapshot = self.state.load();
        if let (Some(store), Some(tls)) = (&self.certs, &snapshot.config.server.tls) {
            match store.reload(&tls.cert, &tls.key) {
                Ok(()) => log::info!("{why}: TLS certificate loaded from {}", tls.cert),
                Err(e) => {
                    log::error!(error = e.as_str(); "{why}, but the TLS certificate was not reloaded; the one in use stays")
                }
            }
        }
    }

    /// Loads, validates and swaps in the configuration; never exits the process.
    pub async fn reload(&self) -> bool {
        let old = self.state.load_full();
        let config = match Config::load(&self.source) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    log::error!(error = e.to_string().as_str(); "reload refused, the running configuration stays");
                }
                METRICS.config_reloads.with_label_values(&["error"]).inc();
                return false;
            }
        };
        // Asked on every reload, the unchanged file included: a SIGHUP is how an operator says
        // "Dify was upgraded, look again".
        if let Err(e) = crate::dify::version::detect(&config).await {
            log::warn!(
                "reload: could not tell which Dify version is behind the gateway ({e}); keeping what was known"
            );
        }
        if config.hash == old.config.hash {
            log::info!("configuration unchanged (hash {})", config.hash);
            METRICS
                .config_reloads
                .with_label_values(&["unchanged"])
                .inc();
            return true;
        }
        for field in needs_upgrade(&old.config, &config) {
            log::warn!(field = field; "this setting changed but needs a graceful upgrade (dify-gateway -u) to apply; the rest of the new configuration applies now");
        }
        let snapshot = match Snapshot::build(config, old.generation + 1) {
            Ok(s) => s,
            Err(e) => {
                log::error!(error = e.as_str(); "reload refused, the running configuration stays");
                METRICS.config_reloads.with_label_values(&["error"]).inc();
                return false;
            }
        };
        // sso.minter: builtin: the same check as at start (Dify's tables, workspace, Redis).
        if let Some(sso) = crate::sso::builtin_minter::in_use(snapshot.config.sso.as_ref())
            && let Err(e) = crate::sso::builtin_minter::preflight(sso, &snapshot.config.dify).await
        {
            log::error!(error = e.as_str(); "reload refused (sso.minter: builtin), the running configuration stays");
            METRICS.config_reloads.with_label_values(&["error"]).inc();
            return false;
        }
        // Resolve and probe the new upstreams before any request uses them.
        crate::ops::upstream_health::probe_all(&snapshot).await;
        METRICS.set_config(snapshot.generation, &snapshot.config.hash);
        log::info!(generation = snapshot.generation; "configuration reloaded: {}", snapshot.config.summary());
        self.state.store(Arc::new(snapshot));
        METRICS.config_reloads.with_label_values(&["success"]).inc();
        true
    }
}

/// Settings fixed when the process started (sockets, threads, files it holds open).
fn needs_upgrade(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let mut changed = Vec::new();
    let checks: [(&'static str, bool); 8] = [
        ("server.listen", o.listen != n.listen),
        ("server.threads", o.threads != n.threads),
        // The certificate files are read on every reload; the socket and versions are fixed.
        (
            "server.tls",
            o.tls.as_ref().map(|t| (&t.listen, &t.protocols))
                != n.tls.as_ref().map(|t| (&t.listen, &t.protocols)),
        ),
        ("server.admin_listen", o.admin_listen != n.admin_listen),
        ("server.access_log", o.access_log != n.access_log),
        ("server.pid_file", o.pid_file != n.pid_file),
        ("server.upgrade_sock", o.upgrade_sock != n.upgrade_sock),
        (
            "server.grace_period / graceful_shutdown_timeout",
            o.grace_period != n.grace_period
                || o.graceful_shutdown_timeout != n.graceful_shutdown_timeout,
        ),
    ];
    for (field, differs) in checks {
        if differs {
            changed.push(field);
        }
    }
    changed
}
