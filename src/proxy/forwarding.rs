//! Who the client is and what the upstream is told about it. Forwarding headers are believed only
//! from `server.trusted_proxies`; from anyone else they are replaced, so a spoofed
//! `X-Forwarded-For` can neither reach Dify nor steer a decision of ours (bypass lists, logs).

use crate::state::Snapshot;
use http::HeaderValue;
use pingora::ErrorType::InvalidHTTPHeader;
use pingora::OrErr;
use pingora::http::RequestHeader;
use std::net::IpAddr;

/// The client as the gateway sees it, decided once per request.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The TCP peer.
    pub peer_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (its forwarding headers count).
    pub trusted: bool,
    /// The original client: the right-most untrusted hop of a trusted chain, else the peer.
    pub client_ip: Option<IpAddr>,
    /// `http` or `https` as the browser used it.
    pub scheme: &'static str,
    /// The port the browser connected to.
    pub port: String,
}

impl ClientInfo {
    pub fn identify(
        snap: &Snapshot,
        req: &RequestHeader,
        peer_ip: Option<IpAddr>,
        local_port: Option<u16>,
        tls: bool,
    ) -> ClientInfo {
        let trusted = peer_ip.is_some_and(|ip| snap.is_trusted(ip));
        let mut client_ip = peer_ip;
        let mut scheme = if tls { "https" } else { "http" };
        let mut port = local_port.map(|p| p.to_string()).unwrap_or_default();
        if trusted {
            if let Some(xff) = header_str(req, "x-forwarded-for") {
                // Walk from the nearest hop back; the first one we do not trust is the client.
                for hop in xff.rsplit(',').map(str::trim) {
                    match hop.parse::<IpAddr>() {
                        Ok(ip) => {
                            client_ip = Some(ip);
                            if !snap.is_trusted(ip) {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            match header_str(req, "x-forwarded-proto").map(str::trim) {
                Some(p) if p.eq_ignore_ascii_case("https") => scheme = "https",
                Some(p) if p.eq_ignore_ascii_case("http") => scheme = "http",
                _ => {}
            }
            if let Some(p) =
                header_str(req, "x-forwarded-port").filter(|p| p.trim().parse::<u16>().is_ok())
            {
                port = p.trim().to_string();
            }
        }
        ClientInfo {
            peer_ip,
            trusted,
            client_ip,
            scheme,
            port,
        }
    }

    /// Rewrites the forwarding headers of the upstream request, as Dify's `proxy.conf` does.
    pub fn apply(&self, req: &mut RequestHeader, trace_id: &str) -> pingora::Result<()> {
        let peer = ip_value(self.peer_ip)?;
        let xff = match (self.trusted, header_str(req, "x-forwarded-for")) {
            (true, Some(prev)) if !prev.trim().is_empty() => {
                let chain = format!("{}, {}", prev.trim(), peer.to_str().unwrap_or_default());
                HeaderValue::try_from(chain).or_err(InvalidHTTPHeader, "X-Forwarded-For")?
            }
            _ => peer.clone(),
        };
        {
            // Whatever an untrusted client claims about the path to us is dropped. Underscore
            // spellings (`X_Forwarded_For`) are dropped from everyone: a WSGI server maps them to
            // the same `HTTP_X_FORWARDED_FOR` as the real header (nginx drops them by default).
            let names: Vec<_> = req
                .headers
                .keys()
                .filter(|n| {
                    let n = n.as_str();
                    (!self.trusted && is_forwarding_header(n))
                        || (n.contains('_') && is_forwarding_header(&n.replace('_', "-")))
                })
                .cloned()
                .collect();
            for name in names {
                req.remove_header(&name);
            }
        }
        // The client is usually the peer itself: one header value serves both.
        let real = if self.client_ip == self.peer_ip {
            peer
        } else {
            ip_value(self.client_ip)?
        };
        req.insert_header("X-Forwarded-For", xff)?;
        req.insert_header("X-Forwarded-Proto", HeaderValue::from_static(self.scheme))?;
        req.insert_header("X-Forwarded-Port", self.port.as_str())?;
        req.insert_header("X-Real-IP", real)?;
        req.insert_header("X-Request-Id", trace_id)?;
        Ok(())
    }
}

/// An address as a header value; empty when unknown (a Unix socket peer).
fn ip_value(ip: Option<IpAddr>) -> pingora::Result<HeaderValue> {
    let text = ip.map(|ip| ip.to_string()).unwrap_or_default();
    HeaderValue::try_from(text).or_err(InvalidHTTPHeader, "client address")
}

/// Headers that describe the path to the gateway, name the request, or claim to be the client's
/// address (lower-case names). Dify's `extract_remote_ip` (`libs/helper.py`, used for
/// `last_login_ip` and its per-IP mail and login limits) believes `CF-Connecting-IP` before
/// `X-Forwarded-For`; the rest are what CDNs set and common frameworks read (werkzeug, Django,
/// Express's `request-ip`, Rails).
fn is_forwarding_header(name: &str) -> bool {
    name.starts_with("x-forwarded")
        || matches!(
            name,
            "forwarded"
                | "forwarded-for"
                | "x-real-ip"
                | "x-request-id"
                | "cf-connecting-ip"
                | "cf-connecting-ipv6"
                | "cf-pseudo-ipv4"
                | "true-client-ip"
                | "x-client-ip"
                | "x-cluster-client-ip"
                | "fastly-client-ip"
                | "client-ip"
                | "x-originating-ip"
                | "x-remote-ip"
                | "x-remote-addr"
                | "x-appengine-user-ip"
                | "x-original-forwarded-for"
        )
}

/// The trace id: the trusted proxy's `X-Request-Id` when it is sane, else a new UUID v4.
pub fn trace_id(req: &RequestHeader, trusted: bool) -> String {
    if trusted
        && let Some(id) = header_str(req, "x-request-id")
        && (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return id.to_string();
    }
    uuid::Uuid::new_v4().to_string()
}

/// `Host` without its port, as nginx's `$host`: an absolute-form target's host comes first
/// (RFC 9112 §3.2.2); empty for an HTTP/1.0 request without either.
pub fn host_without_port(req: &RequestHeader) -> &str {
    let target =
        crate::proxy::framing::target_authority(req).and_then(|a| std::str::from_utf8(a).ok());
    let host = target.or_else(|| header_str(req, "host")).unwrap_or("");
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

pub fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}
