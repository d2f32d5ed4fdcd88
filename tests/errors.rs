//! Errors of the gateway's own: 413 before the upstream sees anything, 502 for a dead upstream,
//! 504 for a slow one; JSON for API paths and JSON clients, an HTML page otherwise, always with the
//! trace id.

mod support;

use std::time::Duration;
use support::*;

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// The paths Dify's programs call, answered in JSON whatever the Accept header says.
const API_PATHS: [&str; 8] = [
    "/console/api/apps",
    "/api/passport",
    "/v1/chat-messages",
    "/files/abc/file-preview",
    "/mcp/server/abc/mcp",
    "/triggers/webhook/abc",
    "/openapi/v1/apps",
    "/e/abc/hook",
];

/// Declares `len` bytes of body and sends none of them; returns the gateway's answer.
async fn declare_body(gw: &Gateway, path: &str, len: u64, accept: &str) -> Resp {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n\r\n",
        gw.listen
    );
    let resp = tokio::time::timeout(WAIT, raw_http(gw.listen, req.as_bytes()))
        .await
        .unwrap_or_else(|_| panic!("POST {path} declaring {len} bytes: no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("POST {path} declaring {len} bytes: {e}"));
    resp.into_resp()
}

/// A 101 MiB declared upload is refused with 413 (default limit 100M) before the upstream sees it.
#[tokio::test]
async fn declared_body_over_limit_is_413_and_upstream_untouched() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let len = 101 * 1024 * 1024;

    declare_body(&gw, "/console/api/files/upload", len, BROWSER_ACCEPT)
        .await
        .assert_json_error(413);
    declare_body(&gw, "/v1/files/upload", len, "*/*")
        .await
        .assert_json_error(413);
    declare_body(&gw, "/upload", len, BROWSER_ACCEPT)
        .await
        .assert_html_error(413);

    for m in mocks.all() {
        let seen: Vec<_> = m
            .received()
            .into_iter()
            .filter(|r| r.path().ends_with("upload"))
            .collect();
        assert!(
            seen.is_empty(),
            "{} saw a request whose body was over the limit: {seen:?}",
            m.name
        );
    }
}

/// `limits.client_max_body_size` is honoured exactly: at the limit passes, one byte over is 413.
#[tokio::test]
async fn body_limit_is_configurable() {
    let api = MockUpstream::echo("api").await;
    let gw = Gateway::builder()
        .all_upstreams(api.addr)
        .limit("client_max_body_size", "1M")
        .start()
        .await;

    let body = vec![b'x'; 1 << 20];
    let echo = Req::post("/console/api/files/upload", body)
        .send(gw.listen)
        .await
        .echo();
    assert_eq!(
        echo.body_len,
        1 << 20,
        "a body of exactly the limit must pass"
    );

    declare_body(&gw, "/console/api/files/upload2", (1 << 20) + 1, "*/*")
        .await
        .assert_json_error(413);
    assert!(api.received_under("/console/api/files/upload2").is_empty());
}

/// A dead upstream gives 502: JSON on API paths (even for a browser's Accept).
#[tokio::test]
async fn dead_upstream_is_502_json_on_api_paths() {
    let gw = Gateway::builder().start().await; // every upstream is a dead address
    for path in API_PATHS {
        let resp = Req::get(path)
            .header("accept", BROWSER_ACCEPT)
            .send(gw.listen)
            .await;
        let v = resp.assert_json_error(502);
        assert!(!v["message"].as_str().unwrap().is_empty(), "{path}");
    }
}

/// A dead upstream gives 502: an HTML page with the trace id for browsers, JSON when asked for.
#[tokio::test]
async fn dead_upstream_is_502_html_for_browsers_json_for_json_clients() {
    let gw = Gateway::builder().start().await;
    for path in ["/", "/apps", "/explore/apps", "/signin?redirect=/apps"] {
        Req::get(path)
            .header("accept", BROWSER_ACCEPT)
            .send(gw.listen)
            .await
            .assert_html_error(502);
        Req::get(path).send(gw.listen).await.assert_html_error(502);
        Req::get(path)
            .header("accept", "application/json")
            .send(gw.listen)
            .await
            .assert_json_error(502);
    }
}

/// An upstream slower than `read_timeout` gives 504 (JSON on an API path, HTML on a page) about
/// when the timeout expires, not when the upstream finally answers.
#[tokio::test]
async fn slow_upstream_is_504_after_read_timeout() {
    let slow = MockUpstream::slow("slow", Duration::from_secs(4)).await;
    let gw = Gateway::builder()
        .all_upstreams(slow.addr)
        .limit("read_timeout", "1s")
        .start()
        .await;

    let (api, page) = tokio::join!(
        Req::get("/v1/workflows/run").send(gw.listen),
        Req::get("/apps")
            .header("accept", BROWSER_ACCEPT)
            .send(gw.listen),
    );
    api.assert_json_error(504);
    page.assert_html_error(504);
    for r in [&api, &page] {
        assert!(
            r.elapsed >= Duration::from_millis(900) && r.elapsed < Duration::from_millis(3500),
            "504 should come after ~1 s (read_timeout), came after {:?}",
            r.elapsed
        );
    }
}

/// A path the gateway refuses (climbing above the root, undecodable, control characters) is a 400
/// of its own, JSON or HTML like the others, and never reaches an upstream.
#[tokio::test]
async fn bad_path_is_400_and_never_proxied() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;

    let api = Req::get("/v1/../../etc/passwd").send(gw.listen).await;
    api.assert_json_error(400);
    let undecodable = Req::get("/console/api/%ff").send(gw.listen).await;
    undecodable.assert_json_error(400);
    let page = Req::get("/apps/%00x")
        .header("accept", BROWSER_ACCEPT)
        .send(gw.listen)
        .await;
    page.assert_html_error(400);

    for m in mocks.all() {
        assert!(
            m.received().is_empty(),
            "{} received a refused request: {:?}",
            m.name,
            m.received()
        );
    }
}

/// A request whose header cannot be parsed is refused with 400 and reaches no upstream.
///
/// Known limit: Pingora 0.9 answers such a request itself (`process_new_http`, before any
/// `ProxyHttp` hook runs), so this 400 has no body and no trace id. Our own 400s (bad paths,
/// see `bad_path_is_400_and_never_proxied`) do.
#[tokio::test]
async fn unparsable_request_is_400_and_reaches_no_upstream() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let req = format!(
        "GET /v1/x HTTP/1.1\r\nHost: {}\r\nContent-Length: abc\r\n\r\n",
        gw.listen
    );
    let resp = tokio::time::timeout(WAIT, raw_http(gw.listen, req.as_bytes()))
        .await
        .expect("no answer in time")
        .expect("an answer");
    assert_eq!(resp.status, 400);
    for m in mocks.all() {
        assert!(
            m.received().is_empty(),
            "{} received a refused request",
            m.name
        );
    }
}
