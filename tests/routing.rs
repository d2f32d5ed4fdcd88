//! Routing parity with Dify's stock nginx, the headers an upstream receives, and load balancing.

mod support;

use support::*;

/// Each stock location reaches its upstream with method, path and query as sent (nginx prefix
/// semantics, longest prefix wins).
#[tokio::test]
async fn each_stock_route_reaches_its_upstream() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let cases = [
        ("/console/api/apps?page=1&limit=30", "api"),
        ("/console/api", "api"),
        ("/api/passport", "api"),
        ("/apiary", "api"), // nginx: `location /api` also matches /apiary
        ("/v1/chat-messages", "api"),
        ("/v1xyz", "api"),
        ("/openapi/v1/apps", "api"),
        ("/files/abc/file-preview?timestamp=1&nonce=2&sign=x", "api"),
        ("/mcp/server/abc/mcp", "api"),
        ("/triggers/webhook/abc", "api"),
        ("/socket.io/?EIO=4&transport=polling", "websocket"),
        ("/e/abc123/hook?x=1", "plugin_daemon"),
        ("/explore/apps", "web"),
        ("/explore", "web"),
        ("/", "web"),
        ("/apps", "web"),
        ("/console", "web"), // `/console/api` does not match /console
        ("/signin?redirect_url=%2Fapps", "web"),
        ("/_next/static/chunks/main.js", "web"),
        ("/eabc", "web"),       // `/e/` needs the slash
        ("/socket.iox", "web"), // `/socket.io/` needs the slash
        ("/healthz", "web"),    // health lives on the admin port only
        ("/readyz", "web"),
    ];
    for (uri, upstream) in cases {
        let resp = Req::get(uri).send(gw.listen).await;
        let echo = resp.echo();
        assert_eq!(
            echo.upstream, upstream,
            "GET {uri} went to the wrong upstream"
        );
        assert_eq!(
            echo.uri, uri,
            "GET {uri}: the upstream must see path and query as sent"
        );
        assert_eq!(echo.method, "GET");
        assert_eq!(
            resp.header("x-upstream"),
            Some(upstream),
            "GET {uri}: upstream response headers pass through"
        );
        let id = resp.request_id();
        assert_eq!(
            echo.header("x-request-id"),
            Some(id.as_str()),
            "GET {uri}: trace id sent upstream"
        );
    }
    for m in mocks.all() {
        assert!(
            !m.received().is_empty(),
            "{} never received a request",
            m.name
        );
    }
}

/// Other methods and request bodies pass through unchanged.
#[tokio::test]
async fn methods_and_bodies_pass_through() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let body = br#"{"inputs":{},"query":"hello","response_mode":"blocking","user":"u1"}"#;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let mut req =
            Req::new(method, "/v1/chat-messages?x=1").header("content-type", "application/json");
        req.body = bytes::Bytes::from_static(body);
        let echo = req.send(gw.listen).await.echo();
        assert_eq!(echo.method, method);
        assert_eq!(echo.upstream, "api");
        assert_eq!(echo.body_len, body.len() as u64, "{method}: body length");
        assert_eq!(echo.body_sha256, sha256_hex(body), "{method}: body content");
        assert_eq!(echo.header("content-type"), Some("application/json"));
    }
}

/// From a client that is not a trusted proxy: Host kept, X-Forwarded-* and X-Request-Id set by the
/// gateway, spoofed values replaced.
#[tokio::test]
async fn forwarded_headers_from_untrusted_client_are_replaced() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let spoofed_id = uuid::Uuid::new_v4().to_string();
    let resp = Req::get("/console/api/apps")
        .header("host", "dify.example.com:8443")
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "9999")
        .header("x-real-ip", "6.6.6.6")
        .header("x-request-id", &spoofed_id)
        .send(gw.listen)
        .await;
    let echo = resp.echo();
    assert_eq!(
        echo.header_all("host"),
        ["dify.example.com:8443"],
        "Host must be preserved as sent"
    );
    assert_eq!(
        echo.header_all("x-forwarded-for"),
        ["127.0.0.1"],
        "spoofed X-Forwarded-For must be replaced"
    );
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    let port = gw.listen.port().to_string();
    assert_eq!(echo.header_all("x-forwarded-port"), [port.as_str()]);
    assert_eq!(echo.header_all("x-real-ip"), ["127.0.0.1"]);
    let id = resp.request_id();
    assert_ne!(
        id, spoofed_id,
        "X-Request-Id from an untrusted client must not be kept"
    );
    assert_eq!(echo.header_all("x-request-id"), [id.as_str()]);
}

/// From a trusted proxy: X-Forwarded-For appended, X-Forwarded-Proto/Port and X-Request-Id kept.
#[tokio::test]
async fn forwarded_headers_from_trusted_proxy_are_kept() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .trusted_proxies(&["127.0.0.0/8"])
        .start()
        .await;
    let client_id = uuid::Uuid::new_v4().to_string();
    let resp = Req::get("/console/api/apps")
        .header("host", "dify.example.com")
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .header("x-request-id", &client_id)
        .send(gw.listen)
        .await;
    let echo = resp.echo();
    assert_eq!(echo.header_all("host"), ["dify.example.com"]);
    assert_eq!(echo.header_all("x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(echo.header_all("x-forwarded-port"), ["443"]);
    assert_eq!(echo.header_all("x-request-id"), [client_id.as_str()]);
    assert_eq!(
        resp.request_id(),
        client_id,
        "the response carries the trace id kept from the proxy"
    );

    // Without client-supplied values the gateway sets them as usual.
    let resp = Req::get("/v1/x").send(gw.listen).await;
    let echo = resp.echo();
    assert_eq!(echo.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    let port = gw.listen.port().to_string();
    assert_eq!(echo.header_all("x-forwarded-port"), [port.as_str()]);
    assert_eq!(
        echo.header_all("x-request-id"),
        [resp.request_id().as_str()]
    );
}

/// Every response carries a fresh trace id.
#[tokio::test]
async fn each_request_gets_its_own_trace_id() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let resp = Req::get("/apps").send(gw.listen).await;
        assert_eq!(resp.status, 200);
        assert!(
            ids.insert(resp.request_id()),
            "trace ids must differ between requests"
        );
    }
}

/// `/e/` gets `Dify-Hook-Url: <scheme>://<host without port><request_uri>`, replacing a client's.
#[tokio::test]
async fn plugin_hook_gets_dify_hook_url() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let uri = "/e/0a1b2c3d/webhook/run?token=abc&x=%2F1";
    let echo = Req::get(uri)
        .header("host", "dify.example.com:8443")
        .header("dify-hook-url", "http://evil.example/")
        .send(gw.listen)
        .await
        .echo();
    assert_eq!(echo.upstream, "plugin_daemon");
    assert_eq!(echo.uri, uri);
    assert_eq!(
        echo.header_all("dify-hook-url"),
        [format!("http://dify.example.com{uri}").as_str()]
    );
    assert_eq!(echo.header("host"), Some("dify.example.com:8443"));

    // Without a port in Host.
    let echo = Req::post("/e/hook", "payload")
        .header("host", "hooks.local")
        .send(gw.listen)
        .await
        .echo();
    assert_eq!(
        echo.header_all("dify-hook-url"),
        ["http://hooks.local/e/hook"]
    );
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.body_len, 7);

    // Other locations do not get one.
    let echo = Req::get("/v1/x").send(gw.listen).await.echo();
    assert_eq!(echo.header("dify-hook-url"), None);
}

/// nginx answers `/e` and `/socket.io` with a 301 to the slashed location, query kept.
#[tokio::test]
async fn bare_e_and_socket_io_redirect_with_a_slash() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    for (uri, target) in [
        ("/e", "/e/"),
        ("/e?x=1&y=2", "/e/?x=1&y=2"),
        ("/socket.io", "/socket.io/"),
        ("/socket.io?EIO=4", "/socket.io/?EIO=4"),
    ] {
        let resp = Req::get(uri)
            .header("host", "dify.example.com")
            .send(gw.listen)
            .await;
        assert_eq!(resp.status, 301, "GET {uri}: body {:?}", resp.text());
        let location = resp
            .header("location")
            .unwrap_or_else(|| panic!("GET {uri}: 301 without Location"));
        assert!(
            location == target || location == format!("http://dify.example.com{target}"),
            "GET {uri}: Location {location:?}, expected {target:?}"
        );
        resp.request_id();
    }
    for m in mocks.all() {
        let hit: Vec<_> = m
            .received()
            .into_iter()
            .filter(|r| r.path() == "/e" || r.path() == "/socket.io")
            .collect();
        assert!(
            hit.is_empty(),
            "{} must not see the redirected requests: {hit:?}",
            m.name
        );
    }
}

/// A `routes` list replaces the stock table.
#[tokio::test]
async fn configured_routes_replace_the_stock_table() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .route("/probe", "api")
        .route("/", "web")
        .start()
        .await;
    assert_eq!(
        Req::get("/probe/x?y=1")
            .send(gw.listen)
            .await
            .echo()
            .upstream,
        "api"
    );
    assert_eq!(
        Req::get("/probex").send(gw.listen).await.echo().upstream,
        "api"
    );
    // /v1 and /e/ are no longer special.
    assert_eq!(
        Req::get("/v1/chat-messages")
            .send(gw.listen)
            .await
            .echo()
            .upstream,
        "web"
    );
    let echo = Req::get("/e/hook").send(gw.listen).await.echo();
    assert_eq!(echo.upstream, "web");
    assert_eq!(echo.header("dify-hook-url"), None);
}

/// Two backends, one refusing connections: every request still succeeds.
#[tokio::test]
async fn two_backends_one_dead_all_requests_succeed() {
    let live = MockUpstream::echo("api-live").await;
    let gw = Gateway::builder()
        .all_upstreams(live.addr)
        .upstream("api", &[dead_addr(), live.addr])
        .start()
        .await;
    for i in 0..20 {
        let resp = Req::get(&format!("/v1/x?i={i}")).send(gw.listen).await;
        assert_eq!(resp.status, 200, "request {i}: {:?}", resp.text());
        assert_eq!(resp.echo().upstream, "api-live");
    }
    assert_eq!(live.received_under("/v1/x").len(), 20);
}

/// Two live backends share the requests (round robin).
#[tokio::test]
async fn two_live_backends_share_requests() {
    let a = MockUpstream::echo("api-a").await;
    let b = MockUpstream::echo("api-b").await;
    let gw = Gateway::builder()
        .all_upstreams(a.addr)
        .upstream("api", &[a.addr, b.addr])
        .start()
        .await;
    for i in 0..10 {
        let echo = Req::get(&format!("/v1/x?i={i}"))
            .send(gw.listen)
            .await
            .echo();
        assert!(echo.upstream == "api-a" || echo.upstream == "api-b");
    }
    let (na, nb) = (
        a.received_under("/v1/x").len(),
        b.received_under("/v1/x").len(),
    );
    assert_eq!(na + nb, 10);
    assert!(
        na >= 2 && nb >= 2,
        "round robin should spread 10 requests over both backends, got {na} and {nb}"
    );
}

/// With no `-c`, the embedded default is Dify's stock routing, configured by the environment.
#[tokio::test]
async fn embedded_default_runs_from_the_environment() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .embedded_default()
        .start()
        .await;
    for (uri, upstream) in [
        ("/console/api/setup", "api"),
        ("/v1/chat-messages", "api"),
        ("/e/hook", "plugin_daemon"),
        ("/socket.io/?EIO=4&transport=polling", "websocket"),
        ("/apps", "web"),
    ] {
        let echo = Req::get(uri).send(gw.listen).await.echo();
        assert_eq!(echo.upstream, upstream, "GET {uri}");
    }
    assert_eq!(gw.admin_status("/healthz").await, Some(200));
}
