//! The binary on its embedded default (no `-c`) with Dify's own nginx settings
//! (tests/fixtures/dify-nginx.env, from Dify's `docker/.env.example`): what an operator who swaps
//! Dify's nginx for the gateway with the same `.env` gets. And the two zeros nginx reads
//! specially, `client_max_body_size 0` (no limit) and `keepalive_timeout 0` (keep-alive off), in
//! the variables and in the gateway's own YAML.

mod support;

use futures_util::StreamExt;
use std::process::{Command, Stdio};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `KEY=VALUE` lines of the fixture (comments and blanks skipped).
fn dify_env() -> Vec<(String, String)> {
    let text = include_str!("fixtures/dify-nginx.env");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The fixture's variables on an embedded-default gateway, except where the test has to differ:
/// the port (a free one), the websocket upstream (`ws`, in place of `api_websocket:5001`), and
/// `changes`. DIFY_WEBSOCKET_UPSTREAM is emptied so that Dify's variable is the one in force.
fn with_dify_env(mut b: GatewayBuilder, ws: &str, changes: &[(&str, &str)]) -> GatewayBuilder {
    for (k, v) in dify_env() {
        let v = match k.as_str() {
            "NGINX_PORT" => continue,
            "NGINX_SOCKET_IO_UPSTREAM" => ws.to_string(),
            _ => changes
                .iter()
                .find(|(name, _)| *name == k)
                .map_or(v, |(_, v)| v.to_string()),
        };
        b = b.env(&k, &v);
    }
    b.env("DIFY_WEBSOCKET_UPSTREAM", "")
}

fn messages(gw: &Gateway, level: &str) -> Vec<String> {
    gw.log_lines()
        .iter()
        .filter(|l| l["level"] == level)
        .filter_map(|l| l["message"].as_str().map(String::from))
        .collect()
}

const UNIMPLEMENTED: &str = "not implemented by dify-gateway";

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Raw `GET` on `s`; the answer's head (lower-cased) and whether the connection then closed.
async fn get_on(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: dify.example\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            return String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("a readable connection");
        assert!(n > 0, "closed before an answer");
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Reads until the gateway closes the connection (body bytes are discarded).
async fn closes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn dify_stock_env_runs_the_embedded_default_as_dify_nginx_does() {
    let echoes = StockEchoes::start().await;
    let ws_up = WsUpstream::start().await;
    let b = Gateway::builder()
        .embedded_default()
        .upstream("api", &[echoes.api.addr])
        .upstream("web", &[echoes.web.addr])
        .upstream("plugin_daemon", &[echoes.plugin_daemon.addr]);
    let gw = with_dify_env(b, &ws_up.addr.to_string(), &[]).start().await;

    // The port answers, with Dify's routes.
    let r = Req::get("/console/api/setup").send(gw.listen).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().upstream, "api");

    // NGINX_CLIENT_MAX_BODY_SIZE=100M: one byte over is refused before Dify sees it.
    let over = format!(
        "POST /console/api/files/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        (100u64 << 20) + 1
    );
    let r = raw_http(gw.listen, over.as_bytes()).await.unwrap();
    assert_eq!(r.status, 413);
    let body = vec![b'x'; 1 << 20];
    let r = Req::post("/console/api/files/upload", body)
        .send(gw.listen)
        .await;
    assert_eq!(r.status, 200, "a 1 MiB upload is under 100M");

    // NGINX_KEEPALIVE_TIMEOUT=65: the connection is kept for the next request.
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    let head = get_on(&mut s, "/v1/a").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let head = get_on(&mut s, "/v1/b").await;
    assert!(
        head.starts_with("http/1.1 200"),
        "second request on the connection: {head}"
    );
    drop(s);

    // NGINX_SOCKET_IO_UPSTREAM: /socket.io/ goes to the websocket service, not to the api.
    let stream = TcpStream::connect(gw.listen).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gw.listen);
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("websocket handshake in time")
        .expect("websocket handshake through the gateway");
    assert_eq!(resp.status().as_u16(), 101);
    let first = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap().to_text().unwrap(), "welcome");
    assert_eq!(ws_up.handshakes().len(), 1);
    assert!(echoes.api.received_under("/socket.io").is_empty());

    // NGINX_WORKER_PROCESSES=auto: one thread per core; NGINX_SERVER_NAME=_ is said to be
    // accepted; HTTPS and the certbot challenge are off, so nothing is left unimplemented.
    let info = messages(&gw, "INFO");
    let start = info
        .iter()
        .find(|m| m.starts_with("starting with"))
        .unwrap();
    assert!(
        start.contains(&format!(", {} threads,", cores())),
        "{start}"
    );
    assert!(
        info.iter()
            .any(|m| m.starts_with("NGINX_SERVER_NAME=_: accepted; every Host is answered")),
        "{info:?}"
    );
    let warned: Vec<String> = messages(&gw, "WARN")
        .into_iter()
        .filter(|m| m.contains(UNIMPLEMENTED))
        .collect();
    assert!(warned.is_empty(), "{warned:?}");
}

/// A variable the gateway does not know is named in one warning line (at start-up and in `-t`);
/// the certbot challenge turned on, implemented, is not, nor the certbot container's own
/// `CERTBOT_EMAIL` (HTTPS: tests/dify_https.rs).
#[tokio::test]
async fn what_the_gateway_does_not_implement_is_named_in_one_warning_line() {
    let changes = [
        ("NGINX_ENABLE_CERTBOT_CHALLENGE", "true"),
        ("NGINX_WORKER_PROCESSES", "3"),
    ];
    let named = "so without effect: NGINX_X_UNKNOWN (";
    let api = MockUpstream::echo("api").await;
    let b = Gateway::builder()
        .embedded_default()
        .upstream("api", &[api.addr])
        .env("NGINX_X_UNKNOWN", "1");
    let gw = with_dify_env(b, &api.addr.to_string(), &changes)
        .start()
        .await;
    assert_eq!(Req::get("/v1/x").send(gw.listen).await.status, 200);
    let warned: Vec<String> = messages(&gw, "WARN")
        .into_iter()
        .filter(|m| m.contains(UNIMPLEMENTED))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(named), "{}", warned[0]);
    let start = messages(&gw, "INFO")
        .into_iter()
        .find(|m| m.starts_with("starting with"))
        .unwrap();
    assert!(start.contains(", 3 threads,"), "{start}");

    let mut cmd = Command::new(BIN);
    cmd.arg("-t").stdin(Stdio::null()).env_remove("RUST_LOG");
    for (k, v) in dify_env() {
        let v = changes
            .iter()
            .find(|(name, _)| *name == k)
            .map_or(v, |(_, v)| v.to_string());
        cmd.env(k, v);
    }
    let out = cmd.env("NGINX_X_UNKNOWN", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(UNIMPLEMENTED))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("dify-gateway: warning: "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(named), "{}", lines[0]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(", 3 threads,"), "{stdout}");
}

/// Posts `len` bytes to `path` with `Content-Length`, and chunked; both statuses.
async fn post_both_ways(gw: &Gateway, path: &str, len: usize) -> (u16, u16) {
    let r = Req::post(path, vec![b'x'; len]).send(gw.listen).await;
    let mut chunked =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    chunked.extend_from_slice(format!("{len:x}\r\n").as_bytes());
    chunked.extend(std::iter::repeat_n(b'x', len));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let c = raw_http(gw.listen, &chunked).await.unwrap();
    (r.status, c.status)
}

/// `NGINX_CLIENT_MAX_BODY_SIZE=0` is no limit, as in nginx: bodies reach the buffered api route
/// and the streamed web route whole, declared or chunked.
#[tokio::test]
async fn zero_body_size_from_dify_env_is_no_limit() {
    let echoes = StockEchoes::start().await;
    let gw = echoes
        .configure(Gateway::builder().embedded_default())
        .env("NGINX_CLIENT_MAX_BODY_SIZE", "0")
        .start()
        .await;
    let len = 300 << 10;
    assert_eq!(
        post_both_ways(&gw, "/console/api/files/upload", len).await,
        (200, 200)
    );
    assert_eq!(post_both_ways(&gw, "/explore/x", len).await, (200, 200));
    let sizes: Vec<usize> = echoes
        .api
        .received()
        .iter()
        .chain(echoes.web.received().iter())
        .map(|r| r.body_len as usize)
        .collect();
    assert_eq!(sizes, [len, len, len, len]);
}

/// `limits.client_max_body_size: 0` in the gateway's own YAML means the same; a size still limits.
#[tokio::test]
async fn zero_body_size_in_yaml_is_no_limit_and_a_size_still_limits() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .all_upstreams(api.addr)
        .limit("client_max_body_size", "0")
        .start()
        .await;
    assert_eq!(post_both_ways(&gw, "/v1/x", 200 << 10).await, (200, 200));
    let gw = Gateway::builder()
        .all_upstreams(api.addr)
        .limit("client_max_body_size", "1k")
        .start()
        .await;
    assert_eq!(post_both_ways(&gw, "/v1/x", 1025).await, (413, 413));
    assert_eq!(post_both_ways(&gw, "/explore/x", 1025).await, (413, 413));
    assert_eq!(post_both_ways(&gw, "/v1/x", 1024).await, (200, 200));
}

/// `NGINX_KEEPALIVE_TIMEOUT=0` and `limits.keepalive_timeout: 0` turn keep-alive off, as in nginx:
/// every answer says `Connection: close`, and the connection is closed after it.
#[tokio::test]
async fn zero_keepalive_turns_keep_alive_off() {
    let echoes = StockEchoes::start().await;
    let from_env = echoes
        .configure(Gateway::builder().embedded_default())
        .env("NGINX_KEEPALIVE_TIMEOUT", "0")
        .start()
        .await;
    let from_yaml = echoes
        .configure(Gateway::builder())
        .limit("keepalive_timeout", "0")
        .start()
        .await;
    for gw in [&from_env, &from_yaml] {
        // Answers from the api and the web upstream, and a 301 the gateway makes itself.
        for path in ["/v1/a", "/", "/e"] {
            let mut s = TcpStream::connect(gw.listen).await.unwrap();
            let head = get_on(&mut s, path).await;
            assert!(head.contains("\r\nconnection: close"), "{path}: {head}");
            assert!(closes(&mut s).await, "{path}: the connection stays open");
        }
    }
}
