//! What the gateway knows about one request as it moves through Pingora's hooks.

use crate::proxy::forwarding::ClientInfo;
use crate::routing::upstream::Upstream;
use crate::state::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RequestCtx {
    /// The configuration this request started with, kept to its end.
    pub snap: Arc<Snapshot>,
    pub started: Instant,
    pub trace_id: String,
    pub client: Option<ClientInfo>,
    /// The normalised path decisions were made on.
    pub path: String,
    /// The matched route's prefix (a bounded metrics label), or what answered instead.
    pub route: &'static str,
    pub route_prefix: Option<Arc<str>>,
    pub upstream: Option<Arc<Upstream>>,
    pub dify_hook_url: bool,
    /// Backends that refused a connection, so a retry picks another.
    pub tried: Vec<SocketAddr>,
    pub retries: u8,
    pub backend: Option<SocketAddr>,
    pub upstream_started: Option<Instant>,
    pub upstream_time: Option<Duration>,
    /// Request body bytes seen so far (for bodies without a declared length).
    pub body_bytes: u64,
    /// The body was read whole before the upstream request (`limits.request_buffering`), and
    /// counted then.
    pub body_buffered: bool,
    /// Our own error code, when the gateway answered instead of the upstream.
    pub error_code: Option<&'static str>,
    /// A published app's request the app rules admitted: what forwarding it involves.
    pub app: Option<Box<AppForwarding>>,
}

/// A published app's request on its way through the proxy.
#[derive(Debug, Default)]
pub struct AppForwarding {
    pub forward: crate::sso::AppForward,
    /// `GET /api/passport`: Dify's answer, collected to bind its passport to the person.
    pub passport_answer: Option<bytes::BytesMut>,
}

impl RequestCtx {
    pub fn new(snap: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            snap,
            started: Instant::now(),
            trace_id: String::new(),
            client: None,
            path: String::new(),
            route: "none",
            route_prefix: None,
            upstream: None,
            dify_hook_url: false,
            tried: Vec::new(),
            retries: 0,
            backend: None,
            upstream_started: None,
            upstream_time: None,
            body_bytes: 0,
            body_buffered: false,
            error_code: None,
            app: None,
        }
    }
}
