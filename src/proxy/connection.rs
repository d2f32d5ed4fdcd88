//! One client connection's life, from accept to close: Pingora's HTTP/1 keep-alive loop, with the
//! waits between requests taken out of the proxy.
//!
//! Pingora's own loop (`impl ServerApp for HttpServerApp`) starts `process_new_http` at once, and
//! that future waits for the request header inside the proxy's whole state machine: about 14 KB
//! (heaptrack), plus a 4 KiB header buffer, held by every idle keep-alive connection. Here the
//! connection waits in [`ClientStream::poll_next_request`], which holds nothing, and the proxy's
//! future is created when the first bytes of a request arrive and freed when it is answered.
//! bench/ scenario 4 (10,000 idle keep-alive connections): 352 MB before, 137 MB after. Every
//! connection is also wrapped in a [`ClientStream`] for its header deadline, and counted while
//! open.
//!
//! HTTP/2 and custom protocols keep Pingora's own path: their streams multiplex, and there is no
//! "between requests" for one connection.

use crate::proxy::slow_client::ClientStream;
use crate::state::SharedSnapshot;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::prelude::fast_timeout::fast_timeout;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

/// Serves the proxy's client connections (see the module documentation).
pub struct ClientConnections<A> {
    pub proxy: Arc<A>,
    pub state: SharedSnapshot,
    /// `server.tls.protocols` without TLSv1.2: fixed at start, like the listener.
    pub tls13_only: bool,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ClientConnections<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _open = OpenConnection::count();
        // The certificate resolver refuses clients that cannot speak TLS 1.3 at all; one that
        // offers 1.3's cipher suites but negotiated 1.2 anyway (rustls cannot be told otherwise
        // by Pingora 0.9) is closed here, before any request is read.
        if self.tls13_only
            && let Some(digest) = stream.get_ssl_digest()
            && !digest.version.contains("1_3")
            && !digest.version.contains("1.3")
        {
            log::info!(
                "TLS connection closed: {} negotiated, server.tls.protocols allows TLSv1.3 only",
                digest.version
            );
            return None;
        }
        let options = self.proxy.server_options();
        let h2c_or_custom = options.is_some_and(|o| o.h2c || o.force_custom);
        let alpn = stream.selected_alpn_proto();
        if h2c_or_custom || matches!(alpn, Some(ALPN::H2 | ALPN::Custom(_))) {
            // HTTP/2 multiplexes requests on one connection: its header phases are not ours to time.
            return self.proxy.process_new(stream, shutdown).await;
        }
        let header_timeout = self.state.load().config.limits.client_header_timeout;
        let mut client = Box::new(ClientStream::new(stream, header_timeout));
        // The first request is timed by the header deadline alone, as it is in Pingora.
        let mut idle_limit = None;
        let mut persistent: Option<HttpPersistentSettings> = None;
        loop {
            if !next_request(&mut client, idle_limit, shutdown).await {
                return None;
            }
            let mut session = ServerSession::new_http1(client);
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(60));
                    let limit = options.and_then(|o| o.keepalive_request_limit);
                    session.set_keepalive_reuses_remaining(limit);
                }
            }
            // Once the server is shutting down, Pingora's process_new_http turns keep-alive off.
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (stream, settings) = reused.consume();
            persistent = settings;
            // What went into the session comes back out of it.
            client = stream.into_any().downcast::<ClientStream>().ok()?;
            if client.replay_pending() {
                return None;
            }
            idle_limit = keepalive_limit(&self.state);
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await
    }
}

/// Waits for the next request's first bytes: `false` when the client closed, the idle limit
/// passed (nginx `keepalive_timeout`), the header deadline passed, or the server is shutting down.
async fn next_request(
    client: &mut ClientStream,
    idle_limit: Option<Duration>,
    shutdown: &ShutdownWatch,
) -> bool {
    let arrival = poll_fn(|cx| client.poll_next_request(cx));
    let arrival = async {
        match idle_limit {
            // Pingora's coarse timer wheel: one shared entry per 10 ms deadline, where tokio's
            // timer would register and cancel an entry for every request.
            Some(limit) => fast_timeout(limit, arrival).await.ok(),
            None => Some(arrival.await),
        }
    };
    let mut shutdown = shutdown.clone();
    tokio::select! {
        // A request that already arrived is served, even as the server begins to shut down.
        biased;
        got = arrival => matches!(got, Some(Ok(true))),
        _ = shutdown.wait_for(|stopping| *stopping) => false,
    }
}

/// How long a kept-alive connection may wait for its next request: `limits.keepalive_timeout`
/// of the running configuration. (Its 0 turns keep-alive off before a connection gets here; one
/// that was kept alive when a reload set 0 gets no wait at all.)
fn keepalive_limit(state: &SharedSnapshot) -> Option<Duration> {
    Some(state.load().config.limits.keepalive_timeout)
}

/// Counts a client connection for as long as it lives (also when its task is cancelled).
struct OpenConnection;

impl OpenConnection {
    fn count() -> OpenConnection {
        crate::ops::metrics::METRICS.open_connections.inc();
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::ops::metrics::METRICS.open_connections.dec();
    }
}
