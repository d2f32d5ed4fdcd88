//! The configuration in force, as one immutable snapshot behind an `ArcSwap`: each request loads
//! it once and keeps it to the end, so a reload never changes the rules under a request in flight.

use crate::config::Config;
use crate::routing::RouteTable;
use crate::routing::upstream::Upstream;
use crate::sso::SsoFlow;
use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Everything a request needs, built once per configuration.
pub struct Snapshot {
    pub config: Config,
    pub routes: RouteTable,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub trusted_proxies: Vec<IpNet>,
    pub sso: Option<Arc<SsoFlow>>,
    /// Counts loaded configurations, 1 for the first.
    pub generation: u64,
}

impl Snapshot {
    pub fn build(config: Config, generation: u64) -> Result<Snapshot, String> {
        let routes = RouteTable::new(&config.effective_routes());
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, backends)| (name.clone(), Arc::new(Upstream::new(name, &backends.0))))
            .collect();
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c))
            .collect();
        let sso = match &config.sso {
            Some(s) if s.is_enabled() => Some(Arc::new(SsoFlow::new(s, &config.dify)?)),
            _ => None,
        };
        Ok(Snapshot {
            config,
            routes,
            upstreams,
            trusted_proxies,
            sso,
            generation,
        })
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Upstreams that routes send traffic to (not merely declared).
    pub fn routed_upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.routes
            .upstream_names()
            .into_iter()
            .filter_map(|n| self.upstreams.get(n))
    }
}

/// The shared handle every service holds.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;
