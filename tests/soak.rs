//! Soak (issue 8): mixed traffic against the real binary for a bounded time — proxied GETs and
//! POSTs on kept-alive connections, SSE streams, sign-ins against a mock exchange, a reload
//! (SIGHUP) every 30 s — with zero failed requests, and the gateway's RSS and open file
//! descriptors sampled from /proc and flat within 10% after warm-up.
//!
//! Ignored in the normal suite; run by `scripts/soak` (10 minutes, `--quick` 2 minutes):
//! `SOAK_SECS=120 cargo test --test soak -- --ignored --nocapture`.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio::net::TcpStream;

const SECRET_KEY: &str = "soak-dify-secret-key-0123456789abcdef";

#[derive(Default)]
struct Counts {
    proxied: AtomicU64,
    sse_streams: AtomicU64,
    sse_events: AtomicU64,
    signins: AtomicU64,
    reloads: AtomicU64,
    failed: AtomicU64,
}

fn access_token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims =
        json!({"user_id": user, "exp": exp, "iss": "SELF_HOSTED", "sub": "Console API Passport"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET_KEY.as_bytes()),
    )
    .unwrap()
}

fn sample(pid: i32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kb, fds)
}

fn fail(counts: &Counts, what: &str) {
    counts.failed.fetch_add(1, Ordering::Relaxed);
    eprintln!("soak: FAILED {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by scripts/soak"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let warmup = Duration::from_secs((secs / 5).max(20));
    let total = Duration::from_secs(secs);

    let api = MockUpstream::start("api", |r| async move {
        if r.uri.starts_with("/api/chat-messages") {
            let events = futures_util::stream::unfold(0usize, |i| async move {
                if i == 5 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
                let e = format!("data: {{\"event\":\"message\",\"i\":{i}}}\n\n");
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(e))), i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap()
        } else {
            echo_response(&r)
        }
    })
    .await;
    let web = MockUpstream::echo("web").await;
    let exchange = MockUpstream::start("exchange", |_r| async move {
        let body = json!({"access_token": access_token("6f1c0d2a-0000-4000-8000-00000000a11c"),
                          "refresh_token": "ab".repeat(64)});
        Response::builder()
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap()
    })
    .await;
    let yaml = format!(
        "sso:\n  login_url: \"http://sso.invalid/login?ret={{callback_url}}\"\n  state_secret: \"soak-state-secret-0123456789abcdef\"\n  \
         exchange:\n    url: {}\n    timeout: \"5s\"\ndify:\n  secret_key: {}\n",
        yq(&format!("http://{}/get_dify_token", exchange.addr)),
        yq(SECRET_KEY)
    );
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .upstream("web", &[web.addr])
        .access_log_to_file()
        .rust_log("warn")
        .extra_yaml(&yaml)
        .start()
        .await;
    let pid = gw.pid();
    let addr = gw.listen;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();

    // Proxied requests on kept-alive connections (a new one when the gateway closes one).
    for w in 0..8 {
        let (counts, stop) = (counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() {
                    let s = TcpStream::connect(addr).await.unwrap();
                    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    sender = Some(tx);
                }
                let tx = sender.as_mut().unwrap();
                if tx.ready().await.is_err() {
                    sender = None;
                    continue;
                }
                n += 1;
                let (method, path, body) = match n % 4 {
                    0 => ("POST", "/console/api/apps", Bytes::from(vec![b'x'; 4096])),
                    1 => ("GET", "/apps", Bytes::new()),
                    2 => ("GET", "/v1/parameters", Bytes::new()),
                    _ => ("GET", "/console/api/workspaces/current", Bytes::new()),
                };
                let req = Request::builder()
                    .method(method)
                    .uri(format!("{path}?w={w}&n={n}"))
                    .header("host", "soak.local")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let res = tokio::time::timeout(Duration::from_secs(10), async {
                    let resp = tx.send_request(req).await?;
                    let status = resp.status();
                    let b = resp.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, b))
                })
                .await;
                match res {
                    Ok(Ok((s, b))) if s == 200 => {
                        let echo: serde_json::Value =
                            serde_json::from_slice(&b).unwrap_or_default();
                        if echo["body_len"].as_u64() != Some(body.len() as u64) {
                            fail(&counts, &format!("{method} {path}: body {echo}"));
                        } else {
                            counts.proxied.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A kept-alive connection closed by the gateway between requests (reload,
                    // keep-alive timeout) is not a failed request: the request was never taken.
                    Ok(Err(e)) if e.is_canceled() || e.is_incomplete_message() => sender = None,
                    other => {
                        fail(&counts, &format!("{method} {path}: {other:?}"));
                        sender = None;
                    }
                }
            }
        }));
    }
    // SSE streams.
    for _ in 0..2 {
        let (counts, stop) = (counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    Req::post("/api/chat-messages", "{}")
                        .header("accept", "text/event-stream")
                        .send(addr),
                )
                .await;
                match r {
                    Ok(r) if r.status == 200 && r.text().matches("data: ").count() == 5 => {
                        counts.sse_streams.fetch_add(1, Ordering::Relaxed);
                        counts.sse_events.fetch_add(5, Ordering::Relaxed);
                    }
                    other => fail(
                        &counts,
                        &format!("SSE: {:?}", other.map(|r| (r.status, r.text()))),
                    ),
                }
            }
        }));
    }
    // Sign-ins: callback (exchange) then continue.
    {
        let (counts, stop) = (counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let start = Req::get("/signin?redirect_url=%2Fapps%2Fsoak")
                    .send(addr)
                    .await;
                let state = start
                    .headers
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(|v| v.strip_prefix("dg_sso_state="))
                    .and_then(|v| v.split(';').next())
                    .map(str::to_string);
                let cb = Req::post("/qsso_backcall", "token=soak-token")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .send(addr)
                    .await;
                let session = cb
                    .headers
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| {
                        v.starts_with("access_token=") || v.starts_with("__Host-access_token=")
                    });
                let land = Req::get("/sso/continue")
                    .header(
                        "cookie",
                        &format!("dg_sso_state={}", state.clone().unwrap_or_default()),
                    )
                    .send(addr)
                    .await;
                if start.status == 302
                    && state.is_some()
                    && cb.status == 303
                    && session
                    && land.header("location") == Some("/apps/soak")
                {
                    counts.signins.fetch_add(1, Ordering::Relaxed);
                } else {
                    fail(
                        &counts,
                        &format!(
                            "sign-in: {} {} {:?} {:?}",
                            start.status,
                            cb.status,
                            cb.text(),
                            land.header("location")
                        ),
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Reloads every 30 s, and /proc samples every 5 s.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let mut next_reload = Duration::from_secs(30);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let at = started.elapsed();
        if at >= next_reload {
            let n = counts.reloads.fetch_add(1, Ordering::Relaxed) + 1;
            std::fs::write(&gw.config_path, format!("{config}# reload {n}\n")).unwrap();
            gw.signal(libc::SIGHUP);
            next_reload += Duration::from_secs(30);
        }
        let (rss, fds) = sample(pid);
        eprintln!(
            "soak: t={:>4}s rss={rss} kB fds={fds} proxied={} sse={} signins={} reloads={} failed={}",
            at.as_secs(),
            counts.proxied.load(Ordering::Relaxed),
            counts.sse_streams.load(Ordering::Relaxed),
            counts.signins.load(Ordering::Relaxed),
            counts.reloads.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed)
        );
        samples.push((at, rss, fds));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(15), t).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fail(&counts, &format!("a traffic task died: {e}")),
            Err(_) => fail(&counts, "a traffic task did not stop"),
        }
    }
    let after: Vec<&(Duration, u64, usize)> = samples.iter().filter(|s| s.0 >= warmup).collect();
    let rss_min = after.iter().map(|s| s.1).min().unwrap_or(0);
    let rss_max = after.iter().map(|s| s.1).max().unwrap_or(0);
    let fd_min = after.iter().map(|s| s.2).min().unwrap_or(0);
    let fd_max = after.iter().map(|s| s.2).max().unwrap_or(0);
    let summary = json!({
        "seconds": secs,
        "warmup_seconds": warmup.as_secs(),
        "proxied": counts.proxied.load(Ordering::Relaxed),
        "sse_streams": counts.sse_streams.load(Ordering::Relaxed),
        "sse_events": counts.sse_events.load(Ordering::Relaxed),
        "signins": counts.signins.load(Ordering::Relaxed),
        "reloads": counts.reloads.load(Ordering::Relaxed),
        "failed": counts.failed.load(Ordering::Relaxed),
        "rss_kb_after_warmup": [rss_min, rss_max],
        "fds_after_warmup": [fd_min, fd_max],
        "rss_growth_pct": (rss_max as f64 / rss_min.max(1) as f64 - 1.0) * 100.0,
        "fd_growth_pct": (fd_max as f64 / fd_min.max(1) as f64 - 1.0) * 100.0,
    });
    println!("SOAK SUMMARY {summary}");
    assert_eq!(counts.failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        counts.proxied.load(Ordering::Relaxed) > 0 && counts.signins.load(Ordering::Relaxed) > 0
    );
    assert!(after.len() >= 2, "too short to judge after warm-up");
    assert!(
        rss_max as f64 <= rss_min as f64 * 1.10,
        "RSS not flat after warm-up: {rss_min}..{rss_max} kB"
    );
    // A few connections come and go (SSE, sign-ins, new keep-alive connections): 10% or 4 fds.
    assert!(
        fd_max - fd_min <= (fd_min / 10).max(4),
        "fds not flat after warm-up: {fd_min}..{fd_max}"
    );
}
