//! What nginx refuses about a request's authority and framing, and the hop-by-hop fields it keeps
//! off a response. Pingora already refuses a second `Host`, an absolute-form target whose authority
//! differs from `Host`, and a final transfer coding other than chunked; these are the rest.

use http::header::{CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, Version};
use pingora::http::authority::raw_target_authority;
use pingora::http::{RequestHeader, ResponseHeader};

/// Status, error code and message for a request nginx would not forward, or `None`.
pub fn request_problem(req: &RequestHeader) -> Option<(u16, &'static str, &'static str)> {
    // An absolute-form target names the host itself (nginx takes it over `Host`); Pingora has
    // checked that a `Host` beside it is the same.
    if let Some(authority) = target_authority(req) {
        if !valid_host(authority) {
            return Some((
                400,
                "bad_request",
                "The request target's host is not valid.",
            ));
        }
    } else {
        let mut hosts = req.headers.get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            // RFC 9112 §3.2: HTTP/1.1 requires it; HTTP/1.0 may go without (nginx agrees).
            (None, _) if req.version != Version::HTTP_10 => {
                return Some((400, "bad_request", "The request has no Host header."));
            }
            (Some(_), Some(_)) => {
                return Some((
                    400,
                    "bad_request",
                    "The request has more than one Host header.",
                ));
            }
            (Some(host), None) if !valid_host(host.as_bytes()) => {
                return Some((
                    400,
                    "bad_request",
                    "The request's Host header is not valid.",
                ));
            }
            _ => {}
        }
    }
    // nginx answers 501 to any coding but a lone `chunked`: a proxy that forwarded
    // `gzip, chunked` as plain chunked would hand the upstream a body it never decodes.
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let chunked = first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
        if !chunked || codings.next().is_some() {
            return Some((
                501,
                "not_implemented",
                "Transfer-Encoding other than chunked is not supported.",
            ));
        }
    }
    None
}

/// The authority of an absolute-form target (`GET http://host/path`), which Pingora keeps out of
/// `uri`; `None` for the usual origin form, at the cost of one byte compared.
pub fn target_authority(req: &RequestHeader) -> Option<&[u8]> {
    raw_target_authority(req.raw_path()).authority()
}

/// A `Host` value as RFC 9110 §7.2 has it: `uri-host [ ":" port ]`, with what nginx also refuses
/// (an empty name, `..`).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        {
            return false;
        }
        match &v[end + 1..] {
            [] => (&v[..=end], None),
            [b':', port @ ..] => (&v[..=end], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    if host.is_empty() || host.windows(2).any(|w| w == b"..") {
        return false;
    }
    let reg_name_ok = host[0] == b'['
        || host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    reg_name_ok && port_ok
}

/// Fields that describe one connection, never the message (RFC 9110 §7.6.1): they end at the
/// gateway. `Transfer-Encoding` is left to Pingora, which frames the client's side itself.
const HOP_BY_HOP: [&str; 4] = ["keep-alive", "proxy-connection", "te", "upgrade"];

/// Takes the upstream's hop-by-hop fields off its response, and every field its `Connection` names
/// (nginx passes none of them on); Pingora writes its own `Connection` for the client. `Upgrade`
/// and `Connection` stay on a 101, which the client's side of the upgrade needs.
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let switching = resp.status.as_u16() == 101;
    if resp.headers.contains_key(CONNECTION) {
        // Almost always just `keep-alive` or `close`: only other names are worth collecting.
        let names_fields = resp
            .headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|t| !is_connection_option(t));
        if names_fields {
            let names: Vec<HeaderName> = resp
                .headers
                .get_all(CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|t| !is_connection_option(t))
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .filter(|n| !(switching && (n == UPGRADE || n == CONNECTION)))
                .collect();
            for name in names {
                resp.remove_header(&name);
            }
        }
        if !switching {
            resp.remove_header(&CONNECTION);
        }
    }
    for name in HOP_BY_HOP {
        if !(switching && name == "upgrade") && resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
}

/// An HTTP/1.0 client cannot read chunks (RFC 9112 §6.1): where the upstream chunked its answer,
/// the client gets the body delimited by the connection's close instead, as nginx does. `true`
/// when the caller must close the connection after this response.
pub fn unchunk_for_http10(version: Version, resp: &mut ResponseHeader) -> bool {
    if version != Version::HTTP_10 || !resp.headers.contains_key(TRANSFER_ENCODING) {
        return false;
    }
    resp.remove_header(&TRANSFER_ENCODING);
    true
}

/// `Connection` tokens that are options, not names of fields to remove.
fn is_connection_option(token: &[u8]) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"close")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_nginx_takes_and_refuses() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "my_host",
            "example.com:",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "local host",
            ":80",
            "a/b",
            "a\\b",
            "a..b",
            "example.com:80:80",
            "example.com:http",
            "[::1",
            "[::1]x",
            "[]",
            "[zz]",
            "example.com:123456",
            "ex\u{7f}ample",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    fn req(lines: &[(&str, &str)], version: Version) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        r.set_version(version);
        for (k, v) in lines {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn requests_refused_as_nginx_does() {
        let v11 = Version::HTTP_11;
        assert_eq!(request_problem(&req(&[], v11)).map(|p| p.0), Some(400));
        assert_eq!(request_problem(&req(&[], Version::HTTP_10)), None);
        assert_eq!(request_problem(&req(&[("Host", "a")], v11)), None);
        let two = req(&[("Host", "a"), ("Host", "b")], v11);
        assert_eq!(request_problem(&two).map(|p| p.0), Some(400));
        let bad = req(&[("Host", "local host")], v11);
        assert_eq!(request_problem(&bad).map(|p| p.0), Some(400));
        for (te, status) in [
            ("chunked", None),
            ("Chunked ", None),
            ("gzip, chunked", Some(501)),
            ("gzip", Some(501)),
            ("chunked, chunked", Some(501)),
        ] {
            let r = req(&[("Host", "a"), ("Transfer-Encoding", te)], v11);
            assert_eq!(request_problem(&r).map(|p| p.0), status, "{te}");
        }
    }

    #[test]
    fn hop_by_hop_fields_end_here() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("Keep-Alive", "timeout=5"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("Content-Type", "text/plain"),
        ] {
            r.append_header(k, v).unwrap();
        }
        strip_hop_by_hop(&mut r);
        let left: Vec<_> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);

        let mut up = ResponseHeader::build(101, None).unwrap();
        up.append_header("Connection", "Upgrade").unwrap();
        up.append_header("Upgrade", "websocket").unwrap();
        up.append_header("Keep-Alive", "timeout=5").unwrap();
        strip_hop_by_hop(&mut up);
        assert_eq!(up.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(up.headers.get("connection").unwrap(), "Upgrade");
        assert!(!up.headers.contains_key("keep-alive"));
    }
}
