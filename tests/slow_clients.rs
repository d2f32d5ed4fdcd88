//! Slow clients (issue 8): `limits.client_header_timeout` cuts a header dribbled one byte a second
//! (slowloris), on a new and on a kept-alive connection; `limits.client_body_timeout` cuts a stalled
//! body; a thousand such connections do not stop normal traffic.

mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or resets); the bytes read and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut out = Vec::new();
    let res = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    res.ok().map(|_| (out, Instant::now()))
}

/// Dribbles `bytes` one a second in a background task, until the write fails.
fn dribble(mut w: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test]
async fn slowloris_header_is_cut_after_client_header_timeout() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("client_header_timeout", "2s")
        .start()
        .await;
    let started = Instant::now();
    let s = TcpStream::connect(gw.listen).await.unwrap();
    let (mut r, w) = s.into_split();
    let header =
        b"GET /v1/slow HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
            .to_vec();
    dribble(w, header, Duration::from_secs(1));
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), r.read_to_end(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(
        closed.is_ok(),
        "a header dribbled at 1 byte/s was not cut within 8 s"
    );
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(5),
        "cut after {elapsed:?}, want ~2 s"
    );
    assert!(!String::from_utf8_lossy(&buf).contains(" 200 "), "{buf:?}");
    assert!(api.received().is_empty());
}

#[tokio::test]
async fn slowloris_on_a_kept_alive_connection_is_cut_too() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("client_header_timeout", "2s")
        .limit("keepalive_timeout", "30s")
        .start()
        .await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(b"GET /v1/first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read the first response (Content-Length framed).
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&got).contains("\"body_sha256\"") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // Idle for longer than client_header_timeout: the keep-alive wait is not the header phase.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut r, w) = s.into_split();
    let started = Instant::now();
    dribble(
        w,
        b"GET /v1/second HTTP/1.1\r\nHost: x\r\nX-Pad: bbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n"
            .to_vec(),
        Duration::from_secs(1),
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), r.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "not cut");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(5),
        "cut after {elapsed:?}"
    );
    assert_eq!(api.received().len(), 1, "only the first request");
}

#[tokio::test]
async fn stalled_body_is_cut_after_client_body_timeout() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("client_body_timeout", "1s")
        .start()
        .await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    let started = Instant::now();
    s.write_all(
        b"POST /v1/upload HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let (out, at) = read_until_closed(&mut s, Duration::from_secs(8))
        .await
        .expect("a stalled body was not cut within 8 s");
    let elapsed = at - started;
    let text = String::from_utf8_lossy(&out);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "cut after {elapsed:?}: {text:?}"
    );
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "want 408 or a close: {text:?}"
    );
    assert!(
        api.received().iter().all(|r| r.body_len != 100),
        "the upstream must not see a complete body"
    );
    // A body that keeps coming within the timeout is fine.
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(
        b"POST /v1/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in b"abc" {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let (out, _) = read_until_closed(&mut s, WAIT).await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

/// 1,000 slowloris connections (bounded, 127.0.0.1) while normal requests keep being served.
#[tokio::test]
async fn a_thousand_slow_clients_do_not_stop_normal_traffic() {
    const SLOW: usize = 1000;
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("client_header_timeout", "4s")
        .start()
        .await;
    let mut tasks = Vec::new();
    for i in 0..SLOW {
        let addr = gw.listen;
        tasks.push(tokio::spawn(async move {
            let Ok(s) = TcpStream::connect(addr).await else {
                return None;
            };
            let (mut r, mut w) = s.into_split();
            let start = Instant::now();
            let header = format!(
                "GET /v1/slow{i} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n",
                "z".repeat(64)
            );
            let writer = tokio::spawn(async move {
                for b in header.bytes() {
                    if w.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut sink = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(15), r.read_to_end(&mut sink)).await;
            writer.abort();
            Some((closed.is_ok(), start.elapsed()))
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Normal traffic meanwhile.
    for _ in 0..5 {
        let t = Instant::now();
        let r = Req::get("/v1/normal").send(gw.listen).await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a normal request took {:?} with {SLOW} slow clients",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut cut = 0;
    let mut connected = 0;
    for t in tasks {
        if let Some((closed, elapsed)) = t.await.unwrap() {
            connected += 1;
            if closed && elapsed < Duration::from_secs(10) {
                cut += 1;
            }
        }
    }
    assert!(connected >= SLOW * 95 / 100, "only {connected} connected");
    assert_eq!(cut, connected, "every slow client is cut after ~4 s");
    assert_eq!(
        api.received()
            .iter()
            .filter(|r| r.uri.starts_with("/v1/slow"))
            .count(),
        0
    );
    // And after them, still serving.
    assert_eq!(Req::get("/v1/after").send(gw.listen).await.status, 200);
}

/// The header clock stops once the header is in: a slow body (each read within
/// client_body_timeout), a slow upstream and a long-lived keep-alive connection all outlast a short
/// client_header_timeout.
#[tokio::test]
async fn header_clock_stops_once_the_header_is_in() {
    let api = MockUpstream::start("api", |r| async move {
        if r.uri.starts_with("/v1/slow") {
            tokio::time::sleep(Duration::from_millis(2000)).await;
        }
        echo_response(&r)
    })
    .await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("client_header_timeout", "1s")
        .limit("client_body_timeout", "1s")
        .start()
        .await;
    // A body that takes 2.5 s in total, 0.5 s between writes.
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(
        b"POST /v1/body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for b in b"hello" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let (out, _) = read_until_closed(&mut s, WAIT).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.contains("\"body_len\":5"), "{text:?}");

    // An upstream slower than client_header_timeout.
    let r = Req::get("/v1/slow").send(gw.listen).await;
    assert_eq!(r.status, 200);

    // Six requests over 3 s on one kept-alive connection.
    let stream = TcpStream::connect(gw.listen).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..6 {
        let req = hyper::Request::get(format!("/v1/keep{i}"))
            .header("host", "x")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tx
            .send_request(req)
            .await
            .expect("same connection still open");
        assert_eq!(resp.status(), 200);
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
