//! Client connections between requests (`proxy/connection.rs`): a kept-alive connection waits for
//! its next request outside the proxy, and still behaves as nginx's does: it serves every request
//! sent on it, closes after `limits.keepalive_timeout` of silence, answers requests that arrive
//! together, and is closed at shutdown.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_after_idling_then_closes_at_keepalive_timeout() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("keepalive_timeout", "2s")
        .start()
        .await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    let mut pending = Vec::new();
    for (i, idle) in [0u64, 600, 1200].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(idle)).await;
        s.write_all(&get(&format!("/v1/ka/{i}"))).await.unwrap();
        let (status, _) = read_response(&mut s, &mut pending).await;
        assert!(status.starts_with("HTTP/1.1 200"), "request {i}: {status}");
    }
    let idle_from = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
        .await
        .expect("the idle connection was not closed within 6 s");
    let idled = idle_from.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
    assert!(
        idled >= Duration::from_millis(1800) && idled < Duration::from_secs(4),
        "closed after {idled:?} of silence; keepalive_timeout is 2 s"
    );
    let paths: Vec<String> = api.received().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(paths, ["/v1/ka/0", "/v1/ka/1", "/v1/ka/2"]);
}

#[tokio::test]
async fn requests_sent_together_are_each_answered_or_the_connection_closes_cleanly() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .start()
        .await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    // Two requests in one write: they arrive in one read.
    let mut both = get("/v1/first");
    both.extend_from_slice(&get("/v1/second"));
    s.write_all(&both).await.unwrap();
    let mut pending = Vec::new();
    let (status, _) = read_response(&mut s, &mut pending).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The second is either answered, or the connection is closed so the client knows to resend
    // (RFC 9112 §9.3.2); it is never left hanging.
    let mut rest = pending;
    let outcome = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 8192];
        loop {
            if String::from_utf8_lossy(&rest).contains("\r\n\r\n") {
                return "answered";
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return "closed",
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the second request was left hanging");
    if outcome == "answered" {
        assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
    }
    assert!(api.received().iter().any(|r| r.uri == "/v1/first"));
}

#[tokio::test]
async fn many_idle_connections_each_serve_their_next_request() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("keepalive_timeout", "30s")
        .start()
        .await;
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(gw.listen).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(&get(&format!("/v1/a/{i}"))).await.unwrap();
        let (status, _) = read_response(&mut s, &mut pending).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        conns.push(s);
    }
    let open = poll_until(WAIT, || async {
        let open = gw.metric("dify_gateway_open_connections", &[]).await;
        (open >= 200.0).then_some(open)
    })
    .await;
    assert!(
        open.is_some(),
        "the 200 idle connections are counted as open"
    );
    // Every idle connection answers its second request.
    for (i, s) in conns.iter_mut().enumerate() {
        let mut pending = Vec::new();
        s.write_all(&get(&format!("/v1/b/{i}"))).await.unwrap();
        let (status, _) = read_response(s, &mut pending).await;
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "connection {i}: {status}"
        );
    }
    assert_eq!(api.received().len(), 400);
}

#[tokio::test]
async fn idle_connections_are_closed_at_shutdown() {
    let api = MockUpstream::echo("api").await;
    let mut gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("keepalive_timeout", "60s")
        .start()
        .await;
    let mut idle = TcpStream::connect(gw.listen).await.unwrap();
    let mut pending = Vec::new();
    idle.write_all(&get("/v1/before")).await.unwrap();
    let (status, _) = read_response(&mut idle, &mut pending).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    gw.signal(libc::SIGTERM);
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("an idle connection outlived the shutdown by 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
    assert!(gw.wait_exit(Duration::from_secs(30)).await.is_some());
}
