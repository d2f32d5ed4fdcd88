//! The Pingora side: one `ProxyHttp` whose hooks each do one thing and hand the real work to
//! [`crate::routing`], [`crate::sso`], [`crate::pages`] and [`crate::ops`].
//!
//! Order of a request: `request_filter` (trace id, client, path, SSO, route, size limit) ->
//! (with `limits.request_buffering`, the body read whole) -> `upstream_peer` (pick a backend) -> `upstream_request_filter` (forwarding headers) ->
//! `response_filter` (trace id, logout mark) -> `logging` (access log). Failures end in
//! `fail_to_proxy`, which writes our error page.

pub mod acme_challenge;
pub mod buffering;
pub mod connection;
pub mod context;
pub mod forwarding;
pub mod framing;
pub mod respond;
pub mod slow_client;
mod sso_glue;

use crate::ops::access_log::AccessLog;
use crate::ops::metrics::{METRICS, status_class};
use crate::routing::RouteMatch;
use crate::routing::path::normalize;
use crate::state::SharedSnapshot;
use async_trait::async_trait;
use bytes::Bytes;
use context::RequestCtx;
use forwarding::ClientInfo;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use std::sync::Arc;
use std::time::Instant;

pub struct DifyGateway {
    pub state: SharedSnapshot,
    pub access_log: Arc<AccessLog>,
}

#[async_trait]
impl ProxyHttp for DifyGateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        METRICS.in_flight.inc();
        RequestCtx::new(self.state.load_full())
    }

    /// Decides what happens to the request; `Ok(true)` when the gateway answered it itself.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        slow_client::header_done(session);
        identify_client(session, ctx);
        if refuse_oversize_header(session, ctx).await? {
            return Ok(true);
        }
        let raw_path = session.req_header().uri.path();
        match normalize(raw_path) {
            Ok(p) => ctx.path = p.into_owned(),
            Err(e) => {
                ctx.path = raw_path.to_string();
                respond::error(session, ctx, 400, "bad_request", e.reason()).await?;
                return Ok(true);
            }
        }
        if let Some((status, code, message)) = framing::request_problem(session.req_header()) {
            // Whatever body follows cannot be framed as the client meant it: close after answering.
            session.set_keepalive(None);
            respond::error(session, ctx, status, code, message).await?;
            return Ok(true);
        }
        // Before SSO and the routes: certbot's requests must never reach Dify's web.
        if acme_challenge::intercept(session, ctx).await? {
            return Ok(true);
        }
        if sso_glue::intercept(session, ctx).await? {
            ctx.route = "sso";
            return Ok(true);
        }
        if sso_glue::check_app(session, ctx).await? {
            return Ok(true);
        }
        if answer_by_route(session, ctx).await? {
            return Ok(true);
        }
        if refuse_oversize_body(session, ctx).await? {
            return Ok(true);
        }
        buffering::buffer_request_body(session, ctx).await
    }

    /// Bodies without a declared length (chunked uploads) are counted as they stream.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body
            && !ctx.body_buffered
        {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.snap.config.limits.body_limit() {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over client_max_body_size",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let upstream = ctx.upstream.clone().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "request reached upstream_peer without a route",
            )
        })?;
        let addr = upstream.select(&ctx.tried).await.map_err(|reason| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("upstream {}: {reason}", upstream.name),
            )
        })?;
        ctx.backend = Some(addr);
        ctx.upstream_started.get_or_insert_with(Instant::now);
        let limits = &ctx.snap.config.limits;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(limits.connect_timeout);
        peer.options.read_timeout = Some(limits.read_timeout);
        peer.options.write_timeout = Some(limits.send_timeout);
        peer.options.idle_timeout = Some(limits.upstream_idle_timeout);
        Ok(Box::new(peer))
    }

    /// A backend that refuses the connection is skipped once for the next one, when there is one.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = ctx.backend.take() {
            ctx.tried.push(addr);
        }
        if let Some(u) = &ctx.upstream {
            METRICS
                .upstream_errors
                .with_label_values(&[u.name.as_str(), "connect"])
                .inc();
        }
        let several = ctx.upstream.as_ref().is_some_and(|u| u.backend_count() > 1);
        if several && ctx.retries == 0 {
            ctx.retries += 1;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.body_buffered {
            // The client has had its 100 Continue, and the body is here already.
            upstream_request.remove_header(&http::header::EXPECT);
        }
        if let Some(client) = &ctx.client {
            client.apply(upstream_request, &ctx.trace_id)?;
            if ctx.dify_hook_url {
                let req = session.req_header();
                let uri = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
                let host = forwarding::host_without_port(req);
                let hook = if host.is_empty() {
                    // HTTP/1.0 without Host: the address the client reached us on.
                    let local = session.server_addr().and_then(PingoraAddr::as_inet);
                    match local.map(|a| a.ip()) {
                        Some(std::net::IpAddr::V6(ip)) => {
                            format!("{}://[{ip}]{uri}", client.scheme)
                        }
                        Some(ip) => format!("{}://{ip}{uri}", client.scheme),
                        None => format!("{}://localhost{uri}", client.scheme),
                    }
                } else {
                    format!("{}://{host}{uri}", client.scheme)
                };
                upstream_request.insert_header("Dify-Hook-Url", hook)?;
            }
        }
        sso_glue::before_upstream(upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(started) = ctx.upstream_started {
            ctx.upstream_time.get_or_insert_with(|| started.elapsed());
        }
        framing::strip_hop_by_hop(upstream_response);
        upstream_response.insert_header("X-Request-Id", ctx.trace_id.as_str())?;
        keep_alive_unless_draining(session, ctx);
        if framing::unchunk_for_http10(session.req_header().version, upstream_response) {
            session.set_keepalive(None);
        }
        sso_glue::after_upstream(session, upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if ctx.app.is_some() {
            sso_glue::passport_body(body, end_of_stream, ctx);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (status, code, message) = classify(e);
        if let (Some(u), ErrorSource::Upstream) = (&ctx.upstream, e.esource()) {
            METRICS
                .upstream_errors
                .with_label_values(&[u.name.as_str(), code])
                .inc();
        }
        if ctx.trace_id.is_empty() {
            ctx.trace_id = uuid::Uuid::new_v4().to_string();
        }
        log::warn!(trace_id = ctx.trace_id.as_str(), status = status; "request failed: {}", e);
        // Nothing can be written on a dead connection or after the upstream's own headers went out.
        if status == 0 || session.response_written().is_some() {
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if let Err(write_err) = respond::error(session, ctx, status, code, message).await {
            log::debug!(trace_id = ctx.trace_id.as_str(); "could not send the error page: {write_err}");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        slow_client::await_next_request(session);
        self.access_log.write(session, e, ctx);
        record_metrics(session, ctx);
    }

    /// Pingora's own error lines: ours in `fail_to_proxy` carry the trace id instead.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    /// Pingora's default summary prints the query string, which may hold tokens (`?access_token=`
    /// of old Dify, SSO callbacks): name the path only.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        format!(
            "{} {} trace_id={}",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.trace_id
        )
    }
}

/// Who is asking (trusted proxies, scheme, port) and the request's trace id.
fn identify_client(session: &mut Session, ctx: &mut RequestCtx) {
    let peer_ip = session
        .client_addr()
        .and_then(PingoraAddr::as_inet)
        .map(|a| a.ip());
    let local_port = session
        .server_addr()
        .and_then(PingoraAddr::as_inet)
        .map(|a| a.port());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let client = ClientInfo::identify(&ctx.snap, session.req_header(), peer_ip, local_port, tls);
    ctx.trace_id = forwarding::trace_id(session.req_header(), client.trusted);
    ctx.client = Some(client);
    let limits = &ctx.snap.config.limits;
    keep_alive_unless_draining(session, ctx);
    // Body reads (and, after an upgrade, the client's side of the tunnel) are timed per read.
    let upgrade = session
        .req_header()
        .headers
        .contains_key(http::header::UPGRADE);
    session.set_read_timeout(Some(if upgrade {
        limits.read_timeout
    } else {
        limits.client_body_timeout
    }));
}

/// 414 / 431 for a request line or header larger than Dify's nginx accepts; the connection closes.
async fn refuse_oversize_header(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let Some((status, code, message)) = header_size_problem(session.req_header()) else {
        return Ok(false);
    };
    ctx.path = session.req_header().uri.path().chars().take(256).collect();
    session.set_keepalive(None);
    respond::error(session, ctx, status, code, message).await?;
    Ok(true)
}

/// Offers keep-alive (nginx's `keepalive_timeout`; 0 turns it off, so every answer says
/// `Connection: close`), except once the process is draining, and never
/// where Pingora already ruled it out: `Connection: close`, HTTP/1.0 without keep-alive, and
/// `Content-Length` + `Transfer-Encoding` (RFC 9112 §6.1: close after answering, or whatever the
/// client sends next could be a request smuggled past a proxy in front that read the length).
fn keep_alive_unless_draining(session: &mut Session, ctx: &RequestCtx) {
    if session.get_keepalive().is_none() {
        return;
    }
    let keepalive = ctx.snap.config.limits.keepalive_timeout;
    let off = keepalive.is_zero() || crate::ops::drain::is_draining();
    // The idle wait itself is timed by the connection loop (connection.rs), to the millisecond.
    session.set_keepalive((!off).then_some(keepalive.as_secs()));
}

/// Picks the route; answers the nginx-style 301 (`/e` -> `/e/`) and "no route" itself.
async fn answer_by_route(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let snap = ctx.snap.clone();
    match snap.routes.find(&ctx.path) {
        RouteMatch::Proxy(route) => {
            ctx.upstream = snap.upstreams.get(&route.upstream).cloned();
            ctx.route_prefix = Some(route.prefix.clone());
            ctx.dify_hook_url = route.dify_hook_url;
            Ok(false)
        }
        RouteMatch::AddSlash(prefix) => {
            let location = match session.req_header().uri.query() {
                Some(q) => format!("{prefix}?{q}"),
                None => prefix.to_string(),
            };
            let location = http::HeaderValue::try_from(location).map_err(|_| {
                Error::explain(
                    ErrorType::InternalError,
                    "redirect target is not a header value",
                )
            })?;
            let headers = vec![(http::header::LOCATION, location)];
            respond::send(session, ctx, 301, headers, Bytes::new()).await?;
            Ok(true)
        }
        RouteMatch::NoRoute => {
            let msg = "No route is configured for this path.";
            respond::error(session, ctx, 404, "no_route", msg).await?;
            Ok(true)
        }
    }
}

/// 413 before the upstream sees a byte, when the declared length is over the limit.
async fn refuse_oversize_body(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let limit = ctx.snap.config.limits.body_limit();
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    match declared {
        Some(Some(len)) if len > limit => {
            let msg =
                format!("The request body is larger than the {limit} bytes this server accepts.");
            respond::error(session, ctx, 413, "payload_too_large", &msg).await?;
            Ok(true)
        }
        Some(None) => {
            let msg = "Content-Length is not a number.";
            respond::error(session, ctx, 400, "bad_request", msg).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Longest request target (nginx answers 414 past one 8 KiB `large_client_header_buffers` buffer).
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Longest single header line (nginx: one 8 KiB buffer).
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// Largest whole header block (nginx: four 8 KiB buffers).
pub const MAX_HEADER_BLOCK: usize = 32 * 1024;

/// 414 for an over-long request target, 431 for an oversize header line or block. Pingora itself
/// accepts up to 1 MiB of header (256 fields); past that it answers 400 and closes.
fn header_size_problem(req: &RequestHeader) -> Option<(u16, &'static str, &'static str)> {
    let uri_len = req.raw_path().len();
    if uri_len > MAX_URI_LEN {
        return Some((414, "uri_too_long", "The request URI is too long."));
    }
    let mut total = uri_len + req.method.as_str().len() + 12;
    for (name, value) in &req.headers {
        let line = name.as_str().len() + value.len() + 4;
        if line > MAX_HEADER_LINE {
            return Some((
                431,
                "header_too_large",
                "A request header field is too large.",
            ));
        }
        total += line;
    }
    (total > MAX_HEADER_BLOCK).then_some((
        431,
        "header_too_large",
        "The request header is too large.",
    ))
}

/// Counts the finished request (called once per request, from `logging`).
fn record_metrics(session: &Session, ctx: &RequestCtx) {
    let m = &*METRICS;
    m.in_flight.dec();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let route = ctx.route_prefix.as_deref().unwrap_or(ctx.route);
    let upstream = ctx.upstream.as_ref().map_or("none", |u| u.name.as_str());
    m.requests
        .with_label_values(&[route, upstream, status_class(status)])
        .inc();
    m.request_duration
        .with_label_values(&[route])
        .observe(ctx.started.elapsed().as_secs_f64());
    if let Some(t) = ctx.upstream_time {
        m.upstream_duration
            .with_label_values(&[upstream])
            .observe(t.as_secs_f64());
    }
    m.received_bytes.inc_by(session.body_bytes_read() as u64);
    m.sent_bytes.inc_by(session.body_bytes_sent() as u64);
}

/// Our status, error code and plain-language message for a failure.
fn classify(e: &Error) -> (u16, &'static str, &'static str) {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(413), _) => (
            413,
            "payload_too_large",
            "The request body is larger than this server accepts.",
        ),
        (HTTPStatus(code), _) if (400..600).contains(code) => {
            (*code, "http_error", "The request could not be completed.")
        }
        (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream)
        | (ConnectTimedout, _) => (
            504,
            "upstream_timeout",
            "The service behind this gateway did not answer in time.",
        ),
        (ConnectNoRoute, _) => (
            502,
            "upstream_unresolvable",
            "The service behind this gateway cannot be found.",
        ),
        (_, ErrorSource::Upstream) | (ConnectRefused | ConnectError | ConnectProxyFailure, _) => (
            502,
            "upstream_unreachable",
            "The service behind this gateway is not reachable.",
        ),
        (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => {
            (0, "client_gone", "")
        }
        (ReadTimedout, ErrorSource::Downstream) => {
            (408, "client_timeout", "The request was not sent in time.")
        }
        (_, ErrorSource::Downstream) => {
            (400, "bad_request", "The request could not be understood.")
        }
        _ => (500, "internal_error", "The gateway hit an internal error."),
    }
}
