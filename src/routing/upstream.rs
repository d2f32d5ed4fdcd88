//! The backends behind one upstream name: round robin over the healthy ones (Pingora's load
//! balancer), with host names resolved off the request path. Pingora's `HttpPeer::new` resolves
//! names with a blocking call and panics when the lookup fails, so peers are only ever built from
//! addresses this module resolved with tokio's asynchronous resolver.

use crate::config::split_host_port;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthObserve, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a name lookup may take before the upstream counts as unresolvable.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Upstream {
    pub name: String,
    lb: LoadBalancer<RoundRobin>,
    /// Several backends: their health decides selection. A single one is always tried.
    checked: bool,
    discovered: AtomicBool,
    /// Serialises discovery runs, which Pingora requires not to overlap.
    discovery_lock: Mutex<()>,
}

impl Upstream {
    /// `targets` were validated by the config loader as `host:port`.
    pub fn new(name: &str, targets: &[String]) -> Upstream {
        let targets: Vec<(String, u16)> = targets
            .iter()
            .filter_map(|t| split_host_port(t).ok())
            .collect();
        let checked = targets.len() > 1;
        let mut lb = LoadBalancer::from_backends(Backends::new(Box::new(DnsDiscovery { targets })));
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(Duration::from_secs(1));
        check.health_changed_callback = Some(Box::new(HealthLog {
            upstream: name.to_string(),
        }));
        lb.set_health_check(check);
        Upstream {
            name: name.to_string(),
            lb,
            checked,
            discovered: AtomicBool::new(false),
            discovery_lock: Mutex::new(()),
        }
    }

    /// Resolves names (again) and refreshes the backend set. A failed lookup keeps the last
    /// good set, so a DNS hiccup does not take a running upstream away.
    pub async fn refresh(&self) -> Result<(), String> {
        let _guard = self.discovery_lock.lock().await;
        match self.lb.update().await {
            Ok(()) => {
                self.discovered.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs one TCP health check over every backend.
    pub async fn check_health(&self) {
        self.lb.backends().run_health_check(true).await;
    }

    /// Picks a backend not in `tried`, healthy ones first. Resolves on first use.
    pub async fn select(&self, tried: &[SocketAddr]) -> Result<SocketAddr, String> {
        if !self.discovered.load(Ordering::Acquire) {
            self.refresh().await?;
        }
        let fresh = |b: &Backend| as_inet(b).is_some_and(|a| !tried.contains(&a));
        let backend = self
            .lb
            .select_with(b"", 64, |b, healthy| (healthy || !self.checked) && fresh(b))
            // Every backend looks down: try one anyway rather than failing without a try
            // (a health check may lag a backend that just came back).
            .or_else(|| self.lb.select_with(b"", 64, |b, _| fresh(b)));
        backend.and_then(|b| as_inet(&b)).ok_or_else(|| {
            if tried.is_empty() {
                "no backend address could be resolved".to_string()
            } else {
                "every backend failed".to_string()
            }
        })
    }

    /// Whether at least one backend is resolved and passed its last health check.
    pub fn is_ready(&self) -> bool {
        let backends = self.lb.backends();
        backends.get_backend().iter().any(|b| backends.ready(b))
            && self.discovered.load(Ordering::Acquire)
    }

    pub fn backend_count(&self) -> usize {
        self.lb.backends().get_backend().len()
    }
}

/// One short line when a backend changes health (Pingora's own line dumps the whole peer).
struct HealthLog {
    upstream: String,
}

#[async_trait]
impl HealthObserve for HealthLog {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let backend = target.addr.to_string();
        if healthy {
            log::info!(upstream = self.upstream.as_str(), backend = backend.as_str(); "backend is healthy again");
        } else {
            log::warn!(upstream = self.upstream.as_str(), backend = backend.as_str(); "backend failed its health check");
        }
    }
}

fn as_inet(b: &Backend) -> Option<SocketAddr> {
    match b.addr {
        PingoraAddr::Inet(a) => Some(a),
        _ => None,
    }
}

/// Resolves each `host:port` with tokio's resolver (a thread pool, never the proxy's threads).
struct DnsDiscovery {
    targets: Vec<(String, u16)>,
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut found = BTreeSet::new();
        let mut failures = Vec::new();
        for (host, port) in &self.targets {
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => {
                    for addr in addrs {
                        let mut b = Backend::new_with_weight("0.0.0.0:1", 1)?;
                        b.addr = PingoraAddr::Inet(addr);
                        found.insert(b);
                    }
                }
                Ok(Err(e)) => failures.push(format!("{host}:{port}: {e}")),
                Err(_) => failures.push(format!("{host}:{port}: lookup timed out")),
            }
        }
        if found.is_empty() {
            return pingora::Error::e_explain(
                pingora::ErrorType::ConnectNoRoute,
                format!("cannot resolve any backend ({})", failures.join("; ")),
            );
        }
        if !failures.is_empty() {
            log::warn!("some backends did not resolve: {}", failures.join("; "));
        }
        Ok((found, HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_robin_skips_tried_backends() {
        let up = Upstream::new("api", &["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        let first = up.select(&[]).await.unwrap();
        let second = up.select(&[first]).await.unwrap();
        assert_ne!(first, second);
        assert!(up.select(&[first, second]).await.is_err());
    }

    #[tokio::test]
    async fn unresolvable_name_is_an_error_not_a_panic() {
        let up = Upstream::new("api", &["no-such-host.invalid:5001".into()]);
        let err = up.select(&[]).await.unwrap_err();
        assert!(err.contains("cannot resolve"), "{err}");
        assert!(!up.is_ready());
    }

    #[tokio::test]
    async fn names_resolve_without_blocking() {
        let up = Upstream::new("api", &["localhost:5001".into()]);
        let addr = up.select(&[]).await.unwrap();
        assert_eq!(addr.port(), 5001);
        assert!(addr.ip().is_loopback());
    }
}
