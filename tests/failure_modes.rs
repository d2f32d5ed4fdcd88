//! Failures around the gateway (issue 8). The exchange (management service) refuses, resets
//! mid-body, hangs past its timeout, answers 10 MB, HTML or a 3xx; an upstream refuses, resets
//! mid-response or is slower than `read_timeout`. Each: the right page or status, a log line with
//! the request's trace id, and the next request works.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    ResetMidBody,
    Hang,
    TenMegabytes,
    Html,
    Redirect,
    SlowHeaders,
}

/// A raw TCP server that reads a request header and misbehaves; counts the bytes it wrote.
struct BadServer {
    addr: SocketAddr,
    written: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BadServer {
    async fn start(how: Misbehaviour) -> BadServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let w = written.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let w = w.clone();
                tokio::spawn(async move { misbehave(s, how, w).await });
            }
        });
        BadServer {
            addr,
            written,
            task,
        }
    }
}

async fn misbehave(mut s: TcpStream, how: Misbehaviour, written: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    async fn send(s: &mut TcpStream, b: Vec<u8>) -> std::io::Result<()> {
        s.write_all(&b).await
    }
    let w = written.clone();
    let count = move |b: Vec<u8>| {
        w.fetch_add(b.len(), Ordering::SeqCst);
        b
    };
    match how {
        Misbehaviour::ResetMidBody => {
            let _ = send(&mut s, count(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"access_tok"
                    .to_vec(),
            ))
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            #[allow(deprecated)] // linger 0 on drop: a reset, nothing blocks
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
        Misbehaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Misbehaviour::SlowHeaders => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = send(
                &mut s,
                count(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
            )
            .await;
        }
        Misbehaviour::TenMegabytes => {
            let total = 10 << 20;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n{{\"access_token\":\""
            );
            if send(&mut s, count(head.into_bytes())).await.is_err() {
                return;
            }
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..(total / chunk.len()) {
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    send(&mut s, count(chunk.clone())),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    return;
                }
            }
        }
        Misbehaviour::Html => {
            let body = "<html><body><h1>Welcome to nginx</h1></body></html>";
            let r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = send(&mut s, count(r.into_bytes())).await;
        }
        Misbehaviour::Redirect => {
            let _ = send(&mut s, count(b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/steal\r\nContent-Length: 0\r\n\r\n"
                    .to_vec(),
            ))
            .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
}

async fn sso_gateway(exchange: SocketAddr, api: &MockUpstream) -> Gateway {
    let yaml = format!(
        "sso:\n  login_url: \"http://sso.invalid/login?ret={{callback_url}}\"\n  \
         state_secret: \"failure-modes-state-secret-0123456789\"\n  exchange:\n    url: {}\n    timeout: \"1s\"\n\
         dify:\n  secret_key: \"failure-modes-dify-secret-key-0123456789\"\n",
        yq(&format!("http://{exchange}/get_dify_token")),
    );
    Gateway::builder()
        .upstream("api", &[api.addr])
        .upstream("web", &[api.addr])
        .extra_yaml(&yaml)
        .start()
        .await
}

async fn callback(gw: &Gateway) -> (RawResp, Duration) {
    let body = "token=one-time-sso-token";
    let req = format!(
        "POST /qsso_backcall HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        gw.listen,
        body.len()
    );
    let t = Instant::now();
    let r = tokio::time::timeout(WAIT, raw_http(gw.listen, req.as_bytes()))
        .await
        .expect("callback answered in time")
        .expect("an answer");
    (r, t.elapsed())
}

/// A log line of the gateway carries `trace_id` (bounded wait).
async fn assert_logged(gw: &Gateway, trace_id: &str, what: &str) {
    let found = poll_until(WAIT, || async {
        gw.log_lines().into_iter().find(|l| {
            l["trace_id"].as_str() == Some(trace_id)
                && l["level"]
                    .as_str()
                    .is_some_and(|lv| lv == "WARN" || lv == "ERROR")
        })
    })
    .await;
    assert!(
        found.is_some(),
        "{what}: no WARN/ERROR log line with trace_id {trace_id}\n{}",
        gw.stderr()
    );
}

async fn assert_next_request_works(gw: &Gateway, what: &str) {
    let r = Req::get("/console/api/apps").send(gw.listen).await;
    assert_eq!(r.status, 200, "{what}: next proxied request");
    let req = format!(
        "GET /signin HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.listen
    );
    let s = raw_http(gw.listen, req.as_bytes()).await.unwrap();
    assert_eq!(s.status, 302, "{what}: next sign-in");
}

#[tokio::test]
async fn exchange_failures_give_an_error_page_a_log_line_and_recover() {
    let api = MockUpstream::echo("api").await;
    let cases: Vec<(&str, Option<Misbehaviour>, Duration)> = vec![
        ("refused", None, Duration::from_secs(3)),
        (
            "reset mid-body",
            Some(Misbehaviour::ResetMidBody),
            Duration::from_secs(3),
        ),
        (
            "hangs past the timeout",
            Some(Misbehaviour::Hang),
            Duration::from_secs(4),
        ),
        (
            "10 MB answer",
            Some(Misbehaviour::TenMegabytes),
            Duration::from_secs(4),
        ),
        (
            "HTML answer",
            Some(Misbehaviour::Html),
            Duration::from_secs(3),
        ),
        (
            "3xx answer",
            Some(Misbehaviour::Redirect),
            Duration::from_secs(3),
        ),
    ];
    for (what, how, max) in cases {
        let bad = match how {
            Some(h) => Some(BadServer::start(h).await),
            None => None,
        };
        let exchange = bad.as_ref().map_or_else(dead_addr, |b| b.addr);
        let gw = sso_gateway(exchange, &api).await;
        let (r, took) = callback(&gw).await;
        assert!(
            (400..600).contains(&r.status),
            "{what}: status {} {:?}",
            r.status,
            r.text()
        );
        assert!(took < max, "{what}: took {took:?}");
        assert!(r.header("location").is_none(), "{what}: must not redirect");
        let page = r.text();
        assert!(
            page.contains("Sign-in failed") && !page.contains("evil.example"),
            "{what}: {page}"
        );
        for (k, v) in &r.headers {
            assert!(
                !(k == "set-cookie" && v.contains("access_token=")),
                "{what}: session set"
            );
        }
        let trace = r.header("x-request-id").expect("trace id").to_string();
        assert_logged(&gw, &trace, what).await;
        if let (Some(b), Some(Misbehaviour::TenMegabytes)) = (&bad, how) {
            // The gateway stops reading after 64 KiB: the server cannot push all 10 MB into it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                b.written.load(Ordering::SeqCst) < 10 << 20,
                "{what}: the whole 10 MB was read"
            );
        }
        assert_next_request_works(&gw, what).await;
    }
}

#[tokio::test]
async fn upstream_failures_give_the_right_status_a_log_line_and_recover() {
    let good = MockUpstream::echo("web").await;
    // Refused: 502.
    let gw = Gateway::builder()
        .upstream("api", &[dead_addr()])
        .upstream("web", &[good.addr])
        .start()
        .await;
    let r = Req::get("/console/api/apps").send(gw.listen).await;
    r.assert_json_error(502);
    assert_logged(&gw, &r.request_id(), "refused").await;
    assert_eq!(Req::get("/apps").send(gw.listen).await.status, 200);
    drop(gw);

    // Slow headers past read_timeout: 504.
    let slow = BadServer::start(Misbehaviour::SlowHeaders).await;
    let gw = Gateway::builder()
        .upstream("api", &[slow.addr])
        .upstream("web", &[good.addr])
        .limit("read_timeout", "1s")
        .start()
        .await;
    let r = Req::get("/console/api/apps").send(gw.listen).await;
    r.assert_json_error(504);
    assert_logged(&gw, &r.request_id(), "slow").await;
    assert_eq!(Req::get("/apps").send(gw.listen).await.status, 200);
    drop(gw);

    // Reset mid-response: the client sees the headers and part of the body, then the connection
    // closes (no hang, no second response glued on).
    let reset = BadServer::start(Misbehaviour::ResetMidBody).await;
    let gw = Gateway::builder()
        .upstream("api", &[reset.addr])
        .upstream("web", &[good.addr])
        .start()
        .await;
    let t = Instant::now();
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(
        format!(
            "GET /console/api/apps HTTP/1.1\r\nHost: {}\r\n\r\n",
            gw.listen
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the client hangs after an upstream reset");
    assert!(t.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        body.len() < 1000,
        "the truncated body must not be padded: {text:?}"
    );
    let trace = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-request-id: ")
                .or_else(|| l.strip_prefix("X-Request-Id: "))
        })
        .expect("x-request-id")
        .trim()
        .to_string();
    assert_logged(&gw, &trace, "reset").await;
    assert_eq!(Req::get("/apps").send(gw.listen).await.status, 200);
}
