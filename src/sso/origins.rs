//! Which origins are the gateway's, and which the SSO's. The callback URL the SSO is told to send
//! the browser back to is built from configuration, never from a client's `Host` alone; a
//! callback without this browser's flow state is taken only from the SSO's own origin.

use super::request::SsoRequest;

/// `scheme://host[:port]` as browsers send it in `Origin` (lower case, default port dropped), or
/// None when `url` is not an absolute http(s) URL.
pub fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    Some(u.origin().ascii_serialization())
}

/// The gateway's public origins: `dify.console_web_url`, then an absolute `dify.home`, then
/// `sso.public_origins`. Empty when none is configured: the request's `Host` is used then (and a
/// warning at start says to configure one).
#[derive(Debug, Clone, Default)]
pub struct PublicOrigins {
    list: Vec<String>,
}

pub enum RequestOrigin {
    /// The request's own origin is one of ours (or none is configured).
    Ours(String),
    /// It is not: the first configured origin is used instead.
    Elsewhere { canonical: String, asked: String },
}

impl PublicOrigins {
    pub fn new(candidates: impl IntoIterator<Item = String>) -> PublicOrigins {
        let mut list: Vec<String> = Vec::new();
        for o in candidates.into_iter().filter_map(|c| origin_of(&c)) {
            if !list.contains(&o) {
                list.push(o);
            }
        }
        PublicOrigins { list }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The origin to build this request's callback and signed-out URLs from.
    pub fn for_request(&self, req: &SsoRequest<'_>) -> RequestOrigin {
        let asked = req.origin();
        let Some(canonical) = self.list.first() else {
            return RequestOrigin::Ours(asked);
        };
        match origin_of(&asked) {
            Some(o) if self.list.contains(&o) => RequestOrigin::Ours(o),
            // Same host, other scheme: a TLS-terminating proxy that is not in
            // `trusted_proxies`. The configured origin is what the browser uses.
            Some(o) if same_host(&o, canonical) => RequestOrigin::Ours(canonical.clone()),
            _ => RequestOrigin::Elsewhere {
                canonical: canonical.clone(),
                asked,
            },
        }
    }
}

fn same_host(a: &str, b: &str) -> bool {
    let host = |o: &str| {
        url::Url::parse(o)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
    };
    host(a).is_some() && host(a) == host(b)
}

/// Where a callback request says it comes from, by `Origin`, else `Referer`.
#[derive(Debug, PartialEq, Eq)]
pub enum Initiator {
    /// One of the SSO's origins.
    Sso,
    /// Another site (or this gateway itself): not the SSO.
    Foreign,
    /// The browser said nothing usable (`Origin: null`, no header, a policy without referrers).
    Unknown,
}

pub fn initiator(req: &SsoRequest<'_>, sso_origins: &[String]) -> Initiator {
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    let claimed = match (header("origin"), header("referer")) {
        (Some("null"), _) => return Initiator::Unknown,
        (Some(o), _) => o,
        (None, Some(r)) => r,
        // Fetch metadata names no origin, so it cannot vouch for the SSO.
        (None, None) => return Initiator::Unknown,
    };
    match origin_of(claimed) {
        Some(o) if sso_origins.contains(&o) => Initiator::Sso,
        _ => Initiator::Foreign,
    }
}

/// True when the browser says another site sent this request (fetch metadata, or else an
/// `Origin` that is not the request's own). Requests from no site at all (typed, bookmarked)
/// are not cross-site.
pub fn is_cross_site(req: &SsoRequest<'_>) -> bool {
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    match header("sec-fetch-site") {
        Some(site) => site != "same-origin" && site != "none",
        None => header("origin").is_some_and(|o| o != req.origin()),
    }
}
