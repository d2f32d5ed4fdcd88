//! Assembles the Pingora server from a validated configuration: the proxy on the public
//! listeners, the admin endpoints on their own listener, the upstream health task.

use crate::cli::Cli;
use crate::config::{Config, ConfigSource};
use crate::ops::access_log::AccessLog;
use crate::ops::admin::AdminApp;
use crate::ops::drain::DrainWatch;
use crate::ops::idp_watch::IdpWatch;
use crate::ops::listeners::{self, ListenerProbe};
use crate::ops::metrics::METRICS;
use crate::ops::reload::Reloader;
use crate::ops::tls::{CertStore, Protocols};
use crate::ops::upstream_health::UpstreamHealth;
use crate::ops::version_watch::VersionWatch;
use crate::proxy::DifyGateway;
use crate::proxy::connection::ClientConnections;
use crate::state::{SharedSnapshot, Snapshot};
use arc_swap::ArcSwap;
use pingora::listeners::ListenerConfig;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::Server;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Builds every service; the caller runs the server.
pub fn build(cli: &Cli, config: Config, source: ConfigSource) -> Result<Server, String> {
    let s = &config.server;
    let conf = ServerConf {
        threads: s.threads,
        daemon: cli.daemon,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        // One runtime per thread, each serving the connections it accepted: measured 10-20% less
        // CPU per proxied request than tokio's work stealing (bench/, scenario 1).
        work_stealing: false,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Opt::default()
    };
    // Inherited sockets come from the old process on an upgrade; otherwise each address must be
    // ours before anything starts, or the process would report healthy and serve nothing.
    if !cli.upgrade {
        let public = s.listen.iter().enumerate().map(|(i, a)| (i, a.as_str()));
        let keys: Vec<(String, &str)> = public
            .map(|(i, a)| (format!("server.listen[{i}]"), a))
            .chain(
                s.tls
                    .iter()
                    .map(|t| ("server.tls.listen".to_string(), t.listen.as_str())),
            )
            .chain(
                (!s.admin_listen.is_empty())
                    .then(|| ("server.admin_listen".to_string(), s.admin_listen.as_str())),
            )
            .collect();
        listeners::check_bindable(keys.iter().map(|(k, a)| (k.as_str(), *a)))?;
    }
    listeners::exit_on_listener_panic();
    if cli.daemon {
        crate::ops::drain::remember_pid_file(&s.pid_file);
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let access_log = AccessLog::open(s.access_log.as_deref())
        .map_err(|e| format!("server.access_log: cannot open {:?}: {e}", s.access_log))?;
    let listen = s.listen.clone();
    let tls = s.tls.clone();
    let admin_listen = s.admin_listen.clone();
    let snapshot = Snapshot::build(config, 1)?;
    METRICS.set_config(snapshot.generation, &snapshot.config.hash);
    let state: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));

    let gateway = DifyGateway {
        state: state.clone(),
        access_log: Arc::new(access_log),
    };
    // Client connections get a header deadline, and wait between requests without the proxy.
    let connections = ClientConnections {
        proxy: Arc::new(http_proxy(&server.configuration, gateway)),
        state: state.clone(),
        tls13_only: tls
            .as_ref()
            .and_then(|t| Protocols::parse(&t.protocols).ok())
            .is_some_and(|p| !p.tls12),
    };
    let mut proxy = Service::new("Pingora HTTP Proxy Service".to_string(), connections);
    for addr in &listen {
        // No extra 64 KiB read buffer per client connection: Pingora parses headers into its own
        // buffer and reads bodies in 64 KiB chunks anyway, so an idle keep-alive connection costs
        // that much less (bench/, scenario 4).
        let unbuffered_reads = L4BufferSettings::default().read(0);
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(unbuffered_reads));
    }
    let certs = match &tls {
        Some(tls) => {
            let protocols = Protocols::parse(&tls.protocols)
                .map_err(|e| format!("server.tls.protocols: {e}"))?;
            let store = Arc::new(
                CertStore::load(&tls.cert, &tls.key, protocols)
                    .map_err(|e| format!("server.tls: {e}"))?,
            );
            // Paths are ignored when a resolver is set; the resolver is what a reload updates.
            let mut settings =
                TlsSettings::intermediate("", "").map_err(|e| format!("server.tls: {e}"))?;
            settings.set_cert_resolver(store.clone());
            proxy.add_tls_with_settings(&tls.listen, None, settings);
            Some(store)
        }
        None => None,
    };
    server.add_service(proxy);

    if !admin_listen.is_empty() {
        let mut admin = Service::new(
            "admin".to_string(),
            AdminApp {
                state: state.clone(),
            },
        );
        admin.add_tcp(&admin_listen);
        server.add_service(admin);
    }
    let health = UpstreamHealth {
        state: state.clone(),
    };
    server.add_service(background_service("upstream health", health));
    server.add_service(background_service("drain watch", DrainWatch));
    let probed = listen
        .iter()
        .cloned()
        .chain(tls.iter().map(|t| t.listen.clone()));
    server.add_service(background_service(
        "listener probe",
        ListenerProbe {
            addrs: probed.collect(),
        },
    ));
    server.add_service(background_service(
        "identity provider watch",
        IdpWatch {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "dify version watch",
        VersionWatch {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "config reload",
        Reloader {
            state,
            source,
            certs,
        },
    ));
    Ok(server)
}

/// Loads the TLS listener's certificate and key as start-up does (for `-t`).
pub fn check_tls_files(cert: &str, key: &str) -> Result<(), String> {
    crate::ops::tls::load_certified_key(cert, key).map(drop)
}
