//! Clients that send exactly what a test says (hyper's low-level HTTP/1 client adds no headers of
//! its own, not even `Host`), plus a raw-bytes client and checks for the gateway's error answers.

use super::{Received, WAIT, is_uuid_v4};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Incoming};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `req` on a new connection to `addr` and returns the response as soon as its head arrives
/// (the body is still streaming). Bounded by [`WAIT`].
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let fut = async move {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no response from {addr} within {WAIT:?}"))
}

/// A request to build; `Host` defaults to the address it is sent to.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Req {
    pub fn new(method: &str, uri: &str) -> Req {
        Req {
            method: method.into(),
            uri: uri.into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(uri: &str) -> Req {
        Req::new("GET", uri)
    }

    pub fn post(uri: &str, body: impl Into<Bytes>) -> Req {
        let mut r = Req::new("POST", uri);
        r.body = body.into();
        r
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends it and reads the whole answer.
    pub async fn send(self, addr: SocketAddr) -> Resp {
        let started = Instant::now();
        let mut b = Request::builder()
            .method(self.method.as_str())
            .uri(self.uri.as_str());
        if !self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            b = b.header("host", addr.to_string());
        }
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Full::new(self.body)).expect("valid request");
        let resp = send(addr, req).await;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .unwrap_or_else(|_| panic!("response body not complete within {WAIT:?}"))
            .expect("response body")
            .to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            elapsed: started.elapsed(),
        }
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body of an echo upstream's answer; fails if the gateway answered instead.
    pub fn echo(&self) -> Received {
        assert_eq!(
            self.status,
            200,
            "expected an upstream's answer, got {} {:?}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo answer ({e}): {:?}", self.text()))
    }

    /// The `X-Request-Id` response header, checked to be a UUID v4.
    pub fn request_id(&self) -> String {
        let id = self.header("x-request-id").unwrap_or_else(|| {
            panic!(
                "no X-Request-Id on a {} response; headers {:?}",
                self.status, self.headers
            )
        });
        assert!(is_uuid_v4(id), "X-Request-Id {id:?} is not a UUID v4");
        id.to_string()
    }

    fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Checks a JSON error of the gateway's own: status, content type, `code`/`message` strings,
    /// `trace_id` equal to `X-Request-Id`. Returns the parsed body.
    pub fn assert_json_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "status; body {:?}", self.text());
        assert!(
            self.content_type().starts_with("application/json"),
            "a {status} here must be JSON, got content-type {:?} body {:?}",
            self.content_type(),
            self.text()
        );
        let v = self.json();
        assert!(
            v["code"].as_str().is_some_and(|c| !c.is_empty()),
            "`code` must be a non-empty string: {v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "`message` must be a non-empty string: {v}"
        );
        let id = self.request_id();
        assert_eq!(
            v["trace_id"].as_str(),
            Some(id.as_str()),
            "trace_id must equal X-Request-Id: {v}"
        );
        v
    }

    /// Checks an HTML error page of the gateway's own: status, content type, the trace id shown.
    pub fn assert_html_error(&self, status: u16) {
        assert_eq!(self.status, status, "status; body {:?}", self.text());
        assert!(
            self.content_type().starts_with("text/html"),
            "a {status} here must be an HTML page, got content-type {:?} body {:?}",
            self.content_type(),
            self.text()
        );
        let id = self.request_id();
        assert!(
            self.text().contains(&id),
            "the page must show the trace id {id}: {:?}",
            self.text()
        );
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// As a [`Resp`], to use its checks.
    pub fn into_resp(self) -> Resp {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                hyper::header::HeaderName::try_from(k.as_str()),
                hyper::header::HeaderValue::try_from(v.as_str()),
            ) {
                headers.append(k, v);
            }
        }
        Resp {
            status: self.status,
            headers,
            body: Bytes::from(self.body),
            elapsed: Duration::ZERO,
        }
    }
}

/// Writes `request` as-is on a new connection, then reads one response (by Content-Length,
/// chunked, or to the end of the connection). Does not close its write side, so a declared body
/// that was never sent stays pending.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResp> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Read until the terminating chunk, then decode.
        while find(&rest, b"\r\n0\r\n\r\n").is_none() && !rest.starts_with(b"0\r\n\r\n") {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        dechunk(&rest)
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        stream.read_to_end(&mut rest).await?;
        rest
    };
    Ok(RawResp {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 2 + size + 2).min(data.len())..];
    }
    out
}

/// Reads one `Content-Length` framed response from a kept-alive connection: its status line and
/// body. Bytes read past it stay in `pending` for the next call.
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    pending: &mut Vec<u8>,
) -> (String, Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a Content-Length framed answer");
            if pending.len() >= end + 4 + len {
                let body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                let status = head.lines().next().unwrap_or_default().to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("a readable connection");
        assert!(n > 0, "closed before a whole answer: {pending:?}");
        pending.extend_from_slice(&buf[..n]);
    }
}
