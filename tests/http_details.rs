//! HTTP details where Dify's nginx is right, each checked with raw bytes through the real binary:
//! `Host` rules, absolute-form targets, transfer codings, hop-by-hop response fields, HTTP/1.0
//! framing, client-address headers.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn raw(addr: SocketAddr, bytes: &[u8]) -> RawResp {
    tokio::time::timeout(WAIT, raw_http(addr, bytes))
        .await
        .expect("no answer in time")
        .expect("an answer")
}

/// Writes `bytes` and reads until the gateway closes: the whole answer, byte for byte.
async fn raw_until_close(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    out
}

/// An upstream that answers every request with `response`, exactly these bytes, then closes;
/// it keeps each request's header block as it arrived.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(response: &'static [u8]) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = s.write_all(response).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawUpstream { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn header_names(r: &RawResp) -> Vec<&str> {
    r.headers.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn host_missing_repeated_or_invalid_is_400_and_never_forwarded() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    for (what, head) in [
        ("no Host", "GET /e/abc/hook HTTP/1.1\r\n"),
        (
            "two Hosts",
            "GET /e/abc/hook HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n",
        ),
        (
            "a space",
            "GET /e/abc/hook HTTP/1.1\r\nHost: local host\r\n",
        ),
        (
            "a slash",
            "GET /e/abc/hook HTTP/1.1\r\nHost: a.example/x\r\n",
        ),
        ("an empty one", "GET /e/abc/hook HTTP/1.1\r\nHost: \r\n"),
        (
            "a bad port",
            "GET /console/api/apps HTTP/1.1\r\nHost: a.example:http\r\n",
        ),
    ] {
        let r = raw(
            gw.listen,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{what}: {:?}", r.text());
    }
    // Our own answer (a JSON error with a code), where Pingora did not refuse first.
    let r = raw(
        gw.listen,
        b"GET /e/abc/hook HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n\r\n",
    )
    .await;
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["code"], "bad_request", "{body}");
    for m in mocks.all() {
        assert!(m.received().is_empty(), "{} saw {:?}", m.name, m.received());
    }

    // HTTP/1.0 needs no Host (nginx serves it): the hook URL names the address the client used.
    let r = raw(gw.listen, b"GET /e/abc/hook?x=1 HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{:?}", r.text());
    let seen = &mocks.plugin_daemon.received()[0];
    assert_eq!(
        seen.header("dify-hook-url"),
        Some(format!("http://{}/e/abc/hook?x=1", gw.listen.ip()).as_str())
    );
}

#[tokio::test]
async fn absolute_form_target_is_served_with_its_own_host() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    // Without Host, and with the Host it repeats: as nginx, the target's authority is the host.
    for (req, host) in [
        (
            "GET http://hooks.example/e/abc/hook?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n",
            "hooks.example",
        ),
        (
            "GET http://hooks.example:8080/e/abc/hook?x=1 HTTP/1.1\r\nHost: hooks.example:8080\r\n\
             Connection: close\r\n\r\n",
            "hooks.example:8080",
        ),
    ] {
        let r = raw(gw.listen, req.as_bytes()).await;
        assert_eq!(r.status, 200, "{req:?}: {:?}", r.text());
        let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(echo["uri"], "/e/abc/hook?x=1", "{echo}");
        let headers: Vec<(String, String)> =
            serde_json::from_value(echo["headers"].clone()).unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("host"), Some(host), "{req:?}");
        assert_eq!(
            get("dify-hook-url"),
            Some("http://hooks.example/e/abc/hook?x=1"),
            "{req:?}"
        );
    }
    // A Host that contradicts the target is refused by Pingora before any hook runs (it cannot be
    // told which one the client meant); nginx would take the target's. Nothing is forwarded.
    let before = mocks.plugin_daemon.received().len();
    let r = raw(
        gw.listen,
        b"GET http://hooks.example/e/abc/hook HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(mocks.plugin_daemon.received().len(), before);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_get_501() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .start()
        .await;
    for te in [
        "gzip, chunked",
        "gzip",
        "deflate",
        "chunked, chunked",
        "x-custom, chunked",
    ] {
        let req = format!(
            "POST /console/api/apps HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: {te}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
            gw.listen
        );
        let out =
            String::from_utf8_lossy(&raw_until_close(gw.listen, req.as_bytes()).await).into_owned();
        let status: u16 = out.split(' ').nth(1).unwrap().parse().unwrap();
        // Pingora itself answers 400 where chunked is not the final coding (RFC 9112 §6.3); either
        // way the body is never forwarded, and the connection closes after one answer.
        let expected = if te.trim_end().ends_with("chunked") {
            501
        } else {
            400
        };
        assert_eq!(status, expected, "{te}: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{te}: {out}");
        if status == 501 {
            assert!(out.contains("\"not_implemented\""), "{te}: {out}");
        }
    }
    assert!(api.received().is_empty(), "{:?}", api.received());
    // Plain chunked, in any case, still goes through.
    let req = format!(
        "POST /console/api/apps HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: Chunked\r\n\
         Connection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        gw.listen
    );
    let r = raw(gw.listen, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{:?}", r.text());
    assert_eq!(api.received()[0].body_len, 2);
}

#[tokio::test]
async fn upstream_hop_by_hop_response_fields_stop_at_the_gateway() {
    // What Next.js (web) sends, plus the rest of RFC 9110 §7.6.1 and a field `Connection` names.
    let web = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\
          Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nProxy-Connection: keep-alive\r\n\
          Upgrade: h2c\r\nTE: trailers\r\nX-Kept: yes\r\n\r\nok",
    )
    .await;
    let gw = Gateway::builder()
        .upstream("web", &[web.addr])
        .start()
        .await;
    let req = format!("GET /apps HTTP/1.1\r\nHost: {}\r\n\r\n", gw.listen);
    let r = raw(gw.listen, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    let names = header_names(&r);
    for gone in [
        "keep-alive",
        "x-hop-secret",
        "proxy-connection",
        "upgrade",
        "te",
    ] {
        assert!(
            !names.contains(&gone),
            "{gone} reached the client: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
    // The client's connection is described by the gateway's own `Connection` alone.
    assert_eq!(
        r.header("connection"),
        Some("keep-alive"),
        "{:?}",
        r.headers
    );
    assert_eq!(names.iter().filter(|n| **n == "connection").count(), 1);
}

#[tokio::test]
async fn http10_clients_get_a_close_delimited_body_not_chunks() {
    let web = RawUpstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let gw = Gateway::builder()
        .upstream("web", &[web.addr])
        .start()
        .await;
    let out = raw_until_close(gw.listen, b"GET /apps HTTP/1.0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "an HTTP/1.0 client cannot read chunks: {head}"
    );
    assert_eq!(body, "hello world", "{text}");
    assert_eq!(web.heads().len(), 1);
}

#[tokio::test]
async fn client_address_headers_from_untrusted_clients_never_reach_dify() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .upstream("api", &[api.addr])
        .trusted_proxies(&["10.9.9.9/32"])
        .start()
        .await;
    const CLAIMS: [&str; 16] = [
        "CF-Connecting-IP",
        "CF-Connecting-IPv6",
        "True-Client-IP",
        "X-Real-IP",
        "X-Client-IP",
        "X-Cluster-Client-IP",
        "Forwarded",
        "Forwarded-For",
        "Fastly-Client-IP",
        "X-Forwarded",
        "X-Forwarded-Host",
        "Client-IP",
        "X-Originating-IP",
        "X-Remote-IP",
        "X-Remote-Addr",
        "CF_Connecting_IP",
    ];
    let mut req = format!("GET /console/api/apps HTTP/1.1\r\nHost: {}\r\n", gw.listen);
    for name in CLAIMS {
        req.push_str(&format!("{name}: 203.0.113.7\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let r = raw(gw.listen, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let seen = &api.received()[0];
    for (name, value) in &seen.headers {
        assert!(
            !value.contains("203.0.113.7"),
            "{name}: {value} reached Dify from an untrusted client"
        );
    }
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}
