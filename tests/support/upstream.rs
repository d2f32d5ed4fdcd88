//! Mock upstreams running inside the test process, each on its own 127.0.0.1 port.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type Body = BoxBody<Bytes, Infallible>;

/// The gateway's own `GET /health` for `dify.version: auto` (`dify::version::PROBE_USER_AGENT`).
pub fn is_version_check(r: &Received) -> bool {
    r.uri == "/health"
        && r.headers
            .iter()
            .any(|(k, v)| k == "user-agent" && v.ends_with("(dify.version: auto)"))
}

/// A request as a mock upstream received it (the body is summarised, not kept).
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    /// Which mock answered (its name).
    pub upstream: String,
    pub method: String,
    /// Path and query exactly as received.
    pub uri: String,
    /// Every header in order, names lower-case; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

type HandlerFn =
    dyn Fn(Received) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync;

/// An HTTP/1.1 upstream. Records every request it receives; stops accepting when dropped.
pub struct MockUpstream {
    pub name: String,
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// An upstream whose answer is computed by `handler` from the (fully read) request.
    pub async fn start<F, Fut>(name: &str, handler: F) -> MockUpstream
    where
        F: Fn(Received) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let handler: Arc<HandlerFn> = Arc::new(move |r| Box::pin(handler(r)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (rec, conns, tag) = (received.clone(), connections.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (rec, handler, tag) = (rec.clone(), handler.clone(), tag.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (rec, handler, tag) = (rec.clone(), handler.clone(), tag.clone());
                        async move {
                            let r = receive(&tag, req).await;
                            // The gateway asking Dify's version is not a client's request.
                            if !is_version_check(&r) {
                                rec.lock().unwrap().push(r.clone());
                            }
                            Ok::<_, Infallible>(handler(r).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockUpstream {
            name: name.into(),
            addr,
            received,
            connections,
            task,
        }
    }

    /// Answers 200 with a JSON [`Received`] describing the request, and header `X-Upstream: <name>`.
    pub async fn echo(name: &str) -> MockUpstream {
        MockUpstream::start(name, |r| async move { echo_response(&r) }).await
    }

    /// Answers like [`MockUpstream::echo`] but only after `delay`.
    pub async fn slow(name: &str, delay: Duration) -> MockUpstream {
        MockUpstream::start(name, move |r| async move {
            tokio::time::sleep(delay).await;
            echo_response(&r)
        })
        .await
    }

    /// Answers `text/event-stream`: `count` events, one every `interval` (the first after one
    /// interval), each `id: <i>\ndata: event <i>\n\n`, then ends the stream.
    pub async fn sse(name: &str, count: usize, interval: Duration) -> MockUpstream {
        MockUpstream::start(name, move |_r| async move {
            let events = futures_util::stream::unfold(0usize, move |i| async move {
                if i == count {
                    return None;
                }
                tokio::time::sleep(interval).await;
                let event = format!("id: {i}\ndata: event {i}\n\n");
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap()
        })
        .await
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests received whose path starts with `prefix`.
    pub fn received_under(&self, prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.uri.starts_with(prefix))
            .collect()
    }

    /// TCP connections accepted so far (health checks included).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn receive(tag: &str, req: Request<Incoming>) -> Received {
    let (parts, mut body) = req.into_parts();
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            len += data.len() as u64;
            hasher.update(data);
        }
    }
    Received {
        upstream: tag.to_string(),
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| parts.uri.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: len,
        body_sha256: super::hex(&hasher.finalize()),
    }
}

/// The echo answer for `r`.
pub fn echo_response(r: &Received) -> Response<Body> {
    let body = json!({
        "upstream": r.upstream,
        "method": r.method,
        "uri": r.uri,
        "headers": r.headers,
        "body_len": r.body_len,
        "body_sha256": r.body_sha256,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", &r.upstream)
        .body(full(body.to_string()))
        .unwrap()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(b.into()))
}

/// An address where nothing listens: connections are refused. The port stays bound (without
/// `listen`) for the life of the test process, so the kernel never hands it to a mock started
/// later; otherwise a gateway's health checks of its dead upstreams would land on another test's mock.
pub fn dead_addr() -> SocketAddr {
    static HELD: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind 127.0.0.1:0");
    let addr = socket
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("an IP address");
    HELD.lock().unwrap().push(socket);
    addr
}

/// The websocket handshake a [`WsUpstream`] accepted.
#[derive(Debug, Clone)]
pub struct WsHandshake {
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// A websocket upstream: sends `welcome` first, then echoes every text and binary message back.
pub struct WsUpstream {
    pub addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<WsHandshake>>>,
    task: JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::handshake::server::{
            Request as WsReq, Response as WsResp,
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let hs = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hs = hs.clone();
                tokio::spawn(async move {
                    // The signature is tungstenite's callback's.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &WsReq, resp: WsResp| {
                        hs.lock().unwrap().push(WsHandshake {
                            uri: req.uri().to_string(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect(),
                        });
                        Ok(resp)
                    };
                    // Health checks and plain requests fail the handshake: ignore them.
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    if ws.send(Message::text("welcome")).await.is_err() {
                        return;
                    }
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            return;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsUpstream {
            addr,
            handshakes,
            task,
        }
    }

    pub fn handshakes(&self) -> Vec<WsHandshake> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// One echo upstream per stock upstream name, each tagged with that name.
pub struct StockEchoes {
    pub api: MockUpstream,
    pub web: MockUpstream,
    pub plugin_daemon: MockUpstream,
    pub websocket: MockUpstream,
}

impl StockEchoes {
    pub async fn start() -> StockEchoes {
        StockEchoes {
            api: MockUpstream::echo("api").await,
            web: MockUpstream::echo("web").await,
            plugin_daemon: MockUpstream::echo("plugin_daemon").await,
            websocket: MockUpstream::echo("websocket").await,
        }
    }

    /// Points the builder's four stock upstreams at these mocks.
    pub fn configure(&self, b: super::GatewayBuilder) -> super::GatewayBuilder {
        b.upstream("api", &[self.api.addr])
            .upstream("web", &[self.web.addr])
            .upstream("plugin_daemon", &[self.plugin_daemon.addr])
            .upstream("websocket", &[self.websocket.addr])
    }

    pub fn all(&self) -> [&MockUpstream; 4] {
        [&self.api, &self.web, &self.plugin_daemon, &self.websocket]
    }
}
