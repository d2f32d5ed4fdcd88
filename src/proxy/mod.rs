//! The Pingora side: one `ProxyHttp` whose hooks each do one thing and hand the real work to
//! [`crate::routing`], [`crate::sso`], [`crate::pages`] and [`crate::ops`].
//!
//! Order of a request: `request_filter` (trace id, client, path, SSO, route, size limit) ->
//! `upstream_peer` (pick a backend) -> `upstream_request_filter` (forwarding headers) ->
//! `response_filter` (trace id, logout mark) -> `logging` (access log). Failures end in
//! `fail_to_proxy`, which writes our error page.

pub mod context;
pub mod forwarding;
pub mod respond;
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let peer_ip = session
            .client_addr()
            .and_then(PingoraAddr::as_inet)
            .map(|a| a.ip());
        let local_port = session
            .server_addr()
            .and_then(PingoraAddr::as_inet)
            .map(|a| a.port());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let client =
            ClientInfo::identify(&ctx.snap, session.req_header(), peer_ip, local_port, tls);
        ctx.trace_id = forwarding::trace_id(session.req_header(), client.trusted);
        ctx.client = Some(client);
        let snap = ctx.snap.clone();
        let limits = &snap.config.limits;
        session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));

        let raw_path = session.req_header().uri.path().to_string();
        match normalize(&raw_path) {
            Ok(p) => ctx.path = p.into_owned(),
            Err(e) => {
                ctx.path = raw_path;
                respond::error(session, ctx, 400, "bad_request", e.reason()).await?;
                return Ok(true);
            }
        }

        if sso_glue::intercept(session, ctx).await? {
            ctx.route = "sso";
            return Ok(true);
        }

        match snap.routes.find(&ctx.path) {
            RouteMatch::Proxy(route) => {
                ctx.upstream = snap.upstreams.get(&route.upstream).cloned();
                ctx.route_prefix = Some(route.prefix.clone());
                ctx.dify_hook_url = route.dify_hook_url;
            }
            RouteMatch::AddSlash(prefix) => {
                let location = match session.req_header().uri.query() {
                    Some(q) => format!("{prefix}?{q}"),
                    None => prefix.to_string(),
                };
                let loc = (
                    http::header::LOCATION,
                    http::HeaderValue::try_from(location).map_err(|_| {
                        Error::explain(
                            ErrorType::InternalError,
                            "redirect target is not a header value",
                        )
                    })?,
                );
                respond::send(session, ctx, 301, vec![loc], Bytes::new()).await?;
                return Ok(true);
            }
            RouteMatch::NoRoute => {
                respond::error(
                    session,
                    ctx,
                    404,
                    "no_route",
                    "No route is configured for this path.",
                )
                .await?;
                return Ok(true);
            }
        }

        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().parse::<u64>());
        match declared {
            Some(Ok(len)) if len > limits.client_max_body_size => {
                let msg = format!(
                    "The request body is larger than the {} bytes this server accepts.",
                    limits.client_max_body_size
                );
                respond::error(session, ctx, 413, "payload_too_large", &msg).await?;
                return Ok(true);
            }
            Some(Err(_)) => {
                respond::error(
                    session,
                    ctx,
                    400,
                    "bad_request",
                    "Content-Length is not a number.",
                )
                .await?;
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    /// Bodies without a declared length (chunked uploads) are counted as they stream.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > ctx.snap.config.limits.client_max_body_size {
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
        if let Some(client) = &ctx.client {
            client.apply(upstream_request, &ctx.trace_id)?;
            if ctx.dify_hook_url {
                let host = forwarding::host_without_port(session.req_header());
                let uri = session
                    .req_header()
                    .uri
                    .path_and_query()
                    .map_or("/", |pq| pq.as_str());
                let hook = format!("{}://{host}{uri}", client.scheme);
                upstream_request.insert_header("Dify-Hook-Url", hook)?;
            }
        }
        Ok(())
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
        upstream_response.insert_header("X-Request-Id", ctx.trace_id.as_str())?;
        sso_glue::after_upstream(session, upstream_response, ctx)
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
