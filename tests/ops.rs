//! What an operator sees: the access log, secrets kept out of logs, `/healthz` and `/readyz`.

mod support;

use support::*;

/// One JSON line per request in `server.access_log`, with trace id, client, method, path without
/// query, status, upstream and duration.
#[tokio::test]
async fn access_log_to_file_has_one_json_line_per_request() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .access_log_to_file()
        .start()
        .await;

    let ok = Req::post("/v1/chat-messages?user=alice", "{}")
        .send(gw.listen)
        .await;
    assert_eq!(ok.status, 200);
    let id = ok.request_id();
    let e = gw.access_entry(&id).await;
    assert_eq!(e["method"], "POST", "{e}");
    assert_eq!(
        e["path"], "/v1/chat-messages",
        "path without the query string: {e}"
    );
    assert_eq!(e["status"].as_u64(), Some(200), "{e}");
    assert_eq!(e["upstream"], "api", "{e}");
    assert!(
        e["client"]
            .as_str()
            .is_some_and(|c| c.contains("127.0.0.1")),
        "client: {e}"
    );
    assert!(e["duration_ms"].is_number(), "duration_ms: {e}");

    let page = Req::get("/apps").send(gw.listen).await;
    let e = gw.access_entry(&page.request_id()).await;
    assert_eq!(e["upstream"], "web", "{e}");
    assert_eq!(e["method"], "GET", "{e}");

    let redirect = Req::get("/e?x=1").send(gw.listen).await;
    assert_eq!(redirect.status, 301);
    let e = gw.access_entry(&redirect.request_id()).await;
    assert_eq!(e["status"].as_u64(), Some(301), "{e}");
    assert_eq!(e["path"], "/e", "{e}");

    // Exactly one line per request.
    let entries = gw.access_log();
    for id in [id, page.request_id(), redirect.request_id()] {
        let n = entries
            .iter()
            .filter(|v| v["trace_id"] == id.as_str())
            .count();
        assert_eq!(
            n,
            1,
            "trace {id} has {n} access log lines:\n{}",
            gw.access_log_text()
        );
    }
}

/// Without `server.access_log`, access lines go to stderr as JSON; errors are logged with their
/// status too.
#[tokio::test]
async fn access_log_defaults_to_stderr_and_records_errors() {
    let gw = Gateway::builder().start().await; // every upstream dead
    let resp = Req::get("/v1/x?k=v").send(gw.listen).await;
    assert_eq!(resp.status, 502);
    let e = gw.access_entry(&resp.request_id()).await;
    assert_eq!(e["status"].as_u64(), Some(502), "{e}");
    assert_eq!(e["path"], "/v1/x", "{e}");
    assert_eq!(e["upstream"], "api", "{e}");
}

/// Cookies and Authorization values never reach any log, even at trace level; query strings never
/// reach the access log. The upstream still receives them.
#[tokio::test]
async fn logs_never_carry_secrets() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .upstream("plugin_daemon", &[dead_addr()])
        .access_log_to_file()
        .rust_log("trace")
        .start()
        .await;
    let secrets = |r: Req| {
        r.header(
            "cookie",
            "access_token=SECRETCOOKIEVALUE; csrf_token=SECRETCOOKIEVALUE2",
        )
        .header("authorization", "Bearer SECRETBEARER")
    };

    let ok = secrets(Req::get("/console/api/apps?code=SECRETQUERYCODE"))
        .send(gw.listen)
        .await;
    let echo = ok.echo();
    assert!(
        echo.header("cookie")
            .is_some_and(|c| c.contains("SECRETCOOKIEVALUE")),
        "Dify needs the cookie"
    );
    assert_eq!(
        echo.header("authorization"),
        Some("Bearer SECRETBEARER"),
        "Dify needs the Authorization header"
    );
    let failed = secrets(Req::post("/e/hook?token=SECRETQUERYCODE", "x"))
        .send(gw.listen)
        .await;
    assert_eq!(failed.status, 502);
    let page = secrets(Req::get("/apps")).send(gw.listen).await;
    assert_eq!(page.status, 200);

    for resp in [&ok, &failed, &page] {
        gw.access_entry(&resp.request_id()).await;
    }
    let (stderr, access) = (gw.stderr(), gw.access_log_text());
    for secret in ["SECRETCOOKIEVALUE", "SECRETBEARER"] {
        assert!(
            !stderr.contains(secret),
            "{secret} found in the gateway's stderr"
        );
        assert!(!access.contains(secret), "{secret} found in the access log");
    }
    assert!(
        !access.contains("SECRETQUERYCODE"),
        "a query string found in the access log:\n{access}"
    );
}

/// `/healthz` and `/readyz` answer on the admin listener; on the public port they are ordinary paths.
#[tokio::test]
async fn health_endpoints_live_on_the_admin_port_only() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    assert_eq!(gw.admin_status("/healthz").await, Some(200));
    let ready = poll_until(WAIT, || async {
        (gw.admin_status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "/readyz never answered 200 with every upstream up (last: {:?})",
        gw.admin_status("/readyz").await
    );

    for path in ["/healthz", "/readyz"] {
        let echo = Req::get(path).send(gw.listen).await.echo();
        assert_eq!(
            echo.upstream, "web",
            "{path} on the public port is proxied like any path"
        );
        assert_eq!(echo.uri, path);
    }
}

/// `/readyz` is 503 while a routed upstream has no reachable backend; `/healthz` stays 200.
#[tokio::test]
async fn readyz_is_503_when_an_upstream_is_down() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .upstream("plugin_daemon", &[dead_addr()])
        .start()
        .await;
    let not_ready = poll_until(WAIT, || async {
        (gw.admin_status("/readyz").await == Some(503)).then_some(())
    })
    .await;
    assert!(
        not_ready.is_some(),
        "/readyz must be 503 while plugin_daemon is unreachable (last: {:?})",
        gw.admin_status("/readyz").await
    );
    assert_eq!(gw.admin_status("/healthz").await, Some(200));
}

/// One backend of two dead still counts as ready.
#[tokio::test]
async fn readyz_is_200_when_each_upstream_has_one_live_backend() {
    let mocks = StockEchoes::start().await;
    let gw = mocks
        .configure(Gateway::builder())
        .upstream("api", &[dead_addr(), mocks.api.addr])
        .start()
        .await;
    let ready = poll_until(WAIT, || async {
        (gw.admin_status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "/readyz never answered 200 (last: {:?})",
        gw.admin_status("/readyz").await
    );
}

/// A listener that cannot bind ends the start-up with a non-zero exit naming the address and the
/// OS error, before the admin port ever says healthy: not a process that looks up and serves
/// nothing.
#[tokio::test]
async fn a_listener_that_cannot_bind_is_a_loud_exit_not_a_healthy_process() {
    for taken in ["server.listen[0]", "server.admin_listen"] {
        let api = MockUpstream::echo("api").await;
        let builder = Gateway::builder().upstream("api", &[api.addr]);
        let addr = if taken == "server.admin_listen" {
            builder.admin
        } else {
            builder.listen
        };
        let _holder = std::net::TcpListener::bind(addr).unwrap();
        let mut gw = builder.launch();
        let status = gw.wait_exit(WAIT).await;
        let status = status.unwrap_or_else(|| panic!("{taken} taken: still running"));
        assert!(!status.success(), "{taken}: {status}");
        let stderr = gw.stderr();
        assert!(
            stderr.contains(&format!("{taken}: cannot listen on {addr}: "))
                && stderr.contains("in use"),
            "{taken}: {stderr}"
        );
        if taken != "server.admin_listen" {
            assert_eq!(gw.admin_status("/healthz").await, None);
        }
    }
}

/// `/readyz` is only 200 once every public listener accepts (checked by connecting to it).
#[tokio::test]
async fn readyz_waits_for_the_listeners() {
    let mocks = StockEchoes::start().await;
    let gw = mocks.configure(Gateway::builder()).start().await;
    let ready = poll_until(WAIT, || async {
        (gw.admin_status("/readyz").await == Some(200)).then_some(())
    })
    .await;
    assert!(ready.is_some(), "{}", gw.stderr());
    assert!(
        gw.log_lines()
            .iter()
            .any(|l| l["message"] == "every listener accepts connections"),
        "{}",
        gw.stderr()
    );
}
