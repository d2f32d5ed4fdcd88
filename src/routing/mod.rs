//! Which upstream a request goes to: Dify's nginx locations (longest prefix wins) over the path
//! Dify's server will see, and the pools of backends behind each upstream name.

pub mod path;
pub mod upstream;

use crate::config::RouteConfig;
use std::sync::Arc;

/// One location of the table, ready for matching.
#[derive(Debug, Clone)]
pub struct Route {
    /// Shared, because every request names its route in the access log and metrics.
    pub prefix: Arc<str>,
    pub upstream: String,
    pub dify_hook_url: bool,
}

/// What the table says about a path.
#[derive(Debug, PartialEq)]
pub enum RouteMatch<'a> {
    Proxy(&'a Route),
    /// nginx answers `/e` with 301 to `/e/` when only the `/e/` location exists.
    AddSlash(&'a str),
    NoRoute,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Longest prefix first, so the first match wins.
    routes: Vec<Route>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.upstream == other.upstream
    }
}

impl RouteTable {
    pub fn new(config: &[RouteConfig]) -> RouteTable {
        let mut routes: Vec<Route> = config
            .iter()
            .map(|r| Route {
                prefix: r.prefix.as_str().into(),
                upstream: r.upstream.clone(),
                dify_hook_url: r.dify_hook_url,
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    /// nginx prefix semantics: `/v1` matches `/v1xyz` too; the longest matching prefix wins.
    pub fn find(&self, path: &str) -> RouteMatch<'_> {
        if let Some(route) = self.routes.iter().find(|r| path.starts_with(&*r.prefix)) {
            // A shorter prefix (such as `/`) matched, but a longer `prefix/` location exists for
            // exactly this path without its slash: nginx redirects rather than falling through.
            if let Some(slashed) = self.routes.iter().find(|r| {
                r.prefix.len() > route.prefix.len()
                    && r.prefix.ends_with('/')
                    && r.prefix[..r.prefix.len() - 1] == *path
            }) {
                return RouteMatch::AddSlash(&slashed.prefix);
            }
            return RouteMatch::Proxy(route);
        }
        RouteMatch::NoRoute
    }

    /// The upstream names the table sends traffic to (readiness depends on exactly these).
    pub fn upstream_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.routes.iter().map(|r| r.upstream.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::stock_routes;

    fn upstream_of(table: &RouteTable, path: &str) -> String {
        match table.find(path) {
            RouteMatch::Proxy(r) => r.upstream.clone(),
            RouteMatch::AddSlash(p) => format!("301 {p}"),
            RouteMatch::NoRoute => "none".into(),
        }
    }

    #[test]
    fn stock_table_matches_dify_nginx() {
        let t = RouteTable::new(&stock_routes());
        for (path, want) in [
            ("/console/api/apps", "api"),
            ("/api/chat-messages", "api"),
            ("/v1/chat-messages", "api"),
            ("/v1xyz", "api"),
            ("/openapi/x", "api"),
            ("/files/abc/file-preview", "api"),
            ("/mcp/server/x", "api"),
            ("/triggers/webhook/x", "api"),
            ("/socket.io/?EIO=4", "websocket"),
            ("/e/abc", "plugin_daemon"),
            ("/explore/apps", "web"),
            ("/apps", "web"),
            ("/", "web"),
            ("/console", "web"),
            ("/e", "301 /e/"),
            ("/socket.io", "301 /socket.io/"),
            ("/ex", "web"),
        ] {
            assert_eq!(upstream_of(&t, path), want, "{path}");
        }
        assert_eq!(
            t.upstream_names(),
            vec!["api", "plugin_daemon", "web", "websocket"]
        );
    }

    #[test]
    fn custom_table_without_root_has_no_route() {
        let t = RouteTable::new(&[RouteConfig {
            prefix: "/probe".into(),
            upstream: "api".into(),
            dify_hook_url: false,
        }]);
        assert_eq!(upstream_of(&t, "/probe/x"), "api");
        assert_eq!(upstream_of(&t, "/other"), "none");
    }
}
