//! A tiny HTTP/1 server for the SSO mocks (`sso_mock.rs`, `dify_mock.rs`): one handler function,
//! requests read whole, answers built whole. Self-contained (hyper, tokio, bytes, form_urlencoded
//! only), so an example can include it with `#[path = "../tests/support/mock_http.rs"] mod mock_http;`.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request as a mock received it, body included.
#[derive(Debug, Clone)]
pub struct MockRequest {
    pub method: String,
    /// Path as sent, without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl MockRequest {
    /// Form-decoded query pairs, as a PHP or Python server decodes them.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of cookie `name` (first wins), from every `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// `Authorization: Bearer <token>`, if sent.
    pub fn bearer(&self) -> Option<String> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    }

    /// Headers as (lower-case name, value) pairs, in order.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }
}

/// An answer to send.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl MockResponse {
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> MockResponse {
        MockResponse {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn html(status: u16, body: impl Into<Bytes>) -> MockResponse {
        MockResponse::new(status, "text/html; charset=utf-8", body)
    }

    pub fn json(status: u16, value: &serde_json::Value) -> MockResponse {
        MockResponse::new(status, "application/json", value.to_string())
    }

    pub fn text(status: u16, body: impl Into<Bytes>) -> MockResponse {
        MockResponse::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn header(mut self, name: &str, value: &str) -> MockResponse {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(MockRequest) -> std::pin::Pin<Box<dyn Future<Output = MockResponse> + Send>>
    + Send
    + Sync;

/// A running mock server; stops when dropped.
pub struct MockServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Listens on `bind` (e.g. `127.0.0.1:0`) and answers every request with `handler`.
    pub async fn start<F, Fut>(bind: &str, handler: F) -> std::io::Result<MockServer>
    where
        F: Fn(MockRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MockResponse> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let handler: Arc<Handler> = Arc::new(move |r| Box::pin(handler(r)));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mreq = MockRequest {
                                method: parts.method.as_str().to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().map(str::to_string),
                                headers: parts.headers,
                                body,
                            };
                            let answer = handler(mreq).await;
                            let mut resp = Response::builder().status(answer.status);
                            for (k, v) in &answer.headers {
                                resp = resp.header(k.as_str(), v.as_str());
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(answer.body))
                                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(MockServer { addr, task })
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Escapes text for HTML content and attribute values (the gateway's own escaper).
pub use dify_gateway::pages::escape as html_escape;

/// A simple page around `inner`.
pub fn page(title: &str, inner: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:46em}}\
         .btn{{display:inline-block;padding:.5em 1em;margin:.2em 0;font-size:1em}}\
         .note{{color:#555}}</style></head><body>{inner}</body></html>",
        t = html_escape(title)
    )
}
