//! `limits.request_buffering` (nginx `proxy_request_buffering on`): a slow client's upload reaches
//! the api upstream in one burst once it is whole; larger bodies wait in a temporary file; other
//! upstreams get the body as it comes.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as a timing upstream saw it.
#[derive(Debug, Clone)]
struct Arrival {
    head: String,
    first_byte: Instant,
    body_done: Instant,
    body: Vec<u8>,
}

/// An upstream that reads each request's header and `Content-Length` body, noting when the first
/// byte and the end of the body arrived, and answers `200 ok`.
struct TimingUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Arrival>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TimingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TimingUpstream {
    async fn start() -> TimingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, log.clone()));
            }
        });
        TimingUpstream { addr, seen, task }
    }

    /// Requests whose request line starts with `prefix`.
    fn arrivals(&self, prefix: &str) -> Vec<Arrival> {
        let all = self.seen.lock().unwrap().clone();
        all.into_iter()
            .filter(|a| a.head.starts_with(prefix))
            .collect()
    }
}

async fn serve(mut s: TcpStream, log: Arc<Mutex<Vec<Arrival>>>) {
    loop {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let mut first_byte = None;
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    first_byte.get_or_insert_with(Instant::now);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        log.lock().unwrap().push(Arrival {
            head,
            first_byte: first_byte.unwrap(),
            body_done: Instant::now(),
            body,
        });
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Sends a `Content-Length` upload in `pieces` parts with `pause` between them; the instant the
/// last byte was written and the gateway's status line.
async fn slow_upload(
    gw: SocketAddr,
    path: &str,
    pieces: usize,
    pause: Duration,
) -> (Instant, String) {
    let piece = vec![b'x'; 1000];
    let mut s = TcpStream::connect(gw).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {gw}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        piece.len() * pieces
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..pieces {
        // A slow client: this pacing is the point of the test, not a wait for readiness.
        tokio::time::sleep(pause).await;
        s.write_all(&piece).await.unwrap();
    }
    let sent = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("no answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    (sent, text.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_slow_upload_reaches_the_api_in_one_burst_once_whole() {
    let api = TimingUpstream::start().await;
    let web = TimingUpstream::start().await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .upstream("web", &[web.addr])
        .start()
        .await;
    let pause = Duration::from_millis(150);
    let (sent, status) = slow_upload(gw.listen, "/console/api/files/upload", 4, pause).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let got = api.arrivals("POST /console/api/files/upload");
    assert_eq!(got.len(), 1, "{got:?}");
    let a = &got[0];
    assert_eq!(a.body, vec![b'x'; 4000]);
    assert!(
        a.first_byte >= sent,
        "the api was asked before the client had sent its whole body"
    );
    assert!(
        a.body_done - a.first_byte < pause,
        "the body dribbled in: {:?}",
        a.body_done - a.first_byte
    );

    // The web upstream is not listed by default: its body streams as the client sends it.
    let (sent, status) = slow_upload(gw.listen, "/apps/upload", 4, pause).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let got = web.arrivals("POST /apps/upload");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].first_byte < sent,
        "web's request waited for the body"
    );
}

#[tokio::test]
async fn a_body_larger_than_memory_waits_in_a_temporary_file_and_arrives_intact() {
    let api = MockUpstream::echo("api").await;
    let builder = Gateway::builder().upstream("api", &[api.addr]);
    let dir = builder.temp_path("bodies");
    std::fs::create_dir(&dir).unwrap();
    let gw = builder
        .limit_yaml(
            "request_buffering",
            &format!(
                "{{ upstreams: [api], memory: 1K, temp_dir: {} }}",
                yq(path_str(&dir))
            ),
        )
        .start()
        .await;
    // Chunked, in uneven pieces: re-framed as one chunk for the upstream.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /console/api/files/upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        gw.listen
    )
    .into_bytes();
    for piece in body.chunks(7_777) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = tokio::time::timeout(WAIT, raw_http(gw.listen, &req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &api.received()[0];
    assert_eq!(seen.body_len, body.len() as u64);
    assert_eq!(seen.body_sha256, sha256_hex(&body));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "a body file was left behind"
    );
}

#[tokio::test]
async fn buffered_bodies_keep_the_size_limit_and_100_continue() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit("client_max_body_size", "10K")
        .start()
        .await;
    // Chunked (no declared length) and over the limit: 413 from the gateway, nothing upstream.
    let mut req = format!(
        "POST /console/api/files/upload HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        gw.listen
    )
    .into_bytes();
    for _ in 0..3 {
        req.extend_from_slice(b"1000\r\n");
        req.extend_from_slice(&[b'y'; 4096]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = tokio::time::timeout(WAIT, raw_http(gw.listen, &req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("payload_too_large"), "{}", r.text());
    assert!(api.received().is_empty(), "{:?}", api.received());

    // `Expect: 100-continue`: the gateway says continue (once), then the upstream gets the body.
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    let head = format!(
        "POST /console/api/files/upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        gw.listen
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 25];
    tokio::time::timeout(WAIT, s.read_exact(&mut first))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(!rest.contains("100 Continue"), "a second 100: {rest}");
    let seen = &api.received()[0];
    assert_eq!(seen.body_len, 5);
    assert_eq!(seen.header("expect"), None);
}

/// After a buffered request the connection stays usable for the next one.
#[tokio::test]
async fn a_buffered_request_leaves_the_connection_kept_alive() {
    let api = TimingUpstream::start().await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .start()
        .await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    for i in 0..3 {
        let req = format!(
            "POST /console/api/n/{i} HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\n\r\nbody",
            gw.listen
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("no answer in time")
                .unwrap();
            assert!(
                n > 0,
                "closed after request {i}: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let seen = api.arrivals("POST /console/api/n/");
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|a| a.body == b"body"));
}

/// A temporary directory that cannot be written is a clear 500, logged with the directory.
#[tokio::test]
async fn a_temp_dir_that_cannot_be_used_is_a_clear_error() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .limit_yaml(
            "request_buffering",
            "{ upstreams: [api], memory: 1K, temp_dir: /nonexistent/dify-gateway-bodies }",
        )
        .start()
        .await;
    let req = format!(
        "POST /console/api/files/upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 4096\r\n\
         Connection: close\r\n\r\n{}",
        gw.listen,
        "z".repeat(4096)
    );
    let r = tokio::time::timeout(WAIT, raw_http(gw.listen, req.as_bytes()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("internal_error"), "{}", r.text());
    assert!(api.received().is_empty());
    let logged = poll_until(WAIT, || async {
        gw.stderr()
            .contains("/nonexistent/dify-gateway-bodies")
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", gw.stderr());
}

/// A client that pipelines its next request behind a buffered one is answered as Pingora answers
/// any pipelining client: the first request, then the connection closes (never a hang).
#[tokio::test]
async fn a_request_pipelined_behind_a_buffered_one_is_not_left_hanging() {
    let api = TimingUpstream::start().await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .start()
        .await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    let one = "POST /console/api/p/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
    let two = "POST /console/api/p/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
    s.write_all(format!("{one}{two}").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the connection was left open with a request unanswered")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(api.arrivals("POST /console/api/p/1").len(), 1);
}
