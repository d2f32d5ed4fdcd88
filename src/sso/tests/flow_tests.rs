//! SsoFlow end to end, without Pingora, against the mock management service: cookie and query
//! delivery, return targets, trace ids, the loop breaker and logout.

use super::mock_exchange::{MockExchange, captured_logs};
use super::test_browser::*;
use crate::dify::SessionDelivery;
use crate::dify::tokens::{mint_access_token, verify_csrf_token};
use crate::sso::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn cookie_mode_full_flow_preserves_redirect_url() {
    let access = mint_access_token(KEY, USER, Duration::from_secs(3600));
    let refresh = "ab".repeat(64);
    let mock = MockExchange::start(tokens_reply(&access, &refresh)).await;
    let flow = SsoFlow::new(&sso(&mock.url), &dify(SessionDelivery::Cookie, KEY)).unwrap();
    let mut b = Browser::new();

    let r = b
        .get(&flow, "/signin?redirect_url=%2Fapps%2Fx%3Ftab%3D1")
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        location(&r),
        "https://sso.example.com/login.php?ret=http%3A%2F%2Flocalhost%3A8080%2Fqsso_backcall"
    );
    assert!(b.jar.contains_key("dg_sso_state") && b.jar.contains_key("dg_sso_loop"));

    let r = b.post_callback(&flow, &form(ODD)).await;
    assert_eq!(r.status, 303, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(location(&r), "/sso/continue");
    assert_eq!(b.jar.get("access_token"), Some(&access));
    assert_eq!(b.jar.get("refresh_token"), Some(&refresh));
    assert_eq!(
        verify_csrf_token(KEY, &b.jar["csrf_token"]).as_deref(),
        Some(USER)
    );
    let csrf_cookie = r
        .set_cookies()
        .find(|c| c.starts_with("csrf_token="))
        .unwrap();
    assert!(!csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Lax"));

    // What the management service saw: the token intact, a trace id, the same id as X-Request-Id,
    // and the configured extra header.
    let params = mock.params(0);
    assert_eq!(params[1], ("token".to_string(), ODD.to_string()));
    let trace = &params[0].1;
    assert!(uuid::Uuid::parse_str(trace).is_ok(), "{params:?}");
    let head = mock.head(0).to_ascii_lowercase();
    assert!(head.contains(&format!("x-request-id: {trace}")), "{head}");
    assert!(head.contains("x-api-key: mgmt-api-key-5555"), "{head}");

    let r = b.get(&flow, "/sso/continue").await;
    assert_eq!((r.status, location(&r)), (302, "/apps/x?tab=1"));
    for gone in ["dg_sso_state", "dg_sso_loop", "dg_sso_carry"] {
        assert!(
            !b.jar.contains_key(gone),
            "{gone} still set: {:?}",
            b.jar.keys()
        );
    }
    assert!(b.jar.contains_key("access_token"));

    let logs = captured_logs();
    for secret in [
        access.as_str(),
        refresh.as_str(),
        ODD,
        KEY,
        "mgmt-api-key-5555",
        &b.jar["csrf_token"],
    ] {
        assert!(!logs.contains(secret), "secret in logs: {secret}");
    }
    assert!(logs.contains(trace.as_str()), "flow trace id is logged");
}

#[tokio::test]
async fn query_mode_carries_odd_tokens_to_the_landing_url() {
    let mock = MockExchange::start(tokens_reply(ODD, "r&=%+ ü")).await;
    let flow = SsoFlow::new(&sso(&mock.url), &dify(SessionDelivery::Query, "")).unwrap();
    let mut b = Browser::new();
    b.get(&flow, "/signin?redirect_url=/apps/y").await;
    let r = b.post_callback(&flow, &form("sso-token")).await;
    assert_eq!((r.status, location(&r)), (303, "/sso/continue"));
    assert!(
        !b.jar.contains_key("access_token"),
        "no Dify cookies in query mode"
    );
    let r = b.get(&flow, "/sso/continue").await;
    let loc = location(&r);
    let (path, query) = loc.split_once('?').unwrap();
    assert_eq!(path, "/apps/y");
    let pairs: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(pairs["access_token"], ODD);
    assert_eq!(pairs["refresh_token"], "r&=%+ ü");
    assert!(!b.jar.contains_key("dg_sso_carry"));
    assert!(!captured_logs().contains("r&=%+ ü"));
}

#[tokio::test]
async fn query_mode_with_key_checks_signature_and_keeps_home_query() {
    let access = mint_access_token(KEY, USER, Duration::from_secs(60));
    let mock = MockExchange::start(tokens_reply(&access, "rr")).await;
    let mut d = dify(SessionDelivery::Query, KEY);
    d.home = Some("https://dify.example.com/apps?from=sso".into());
    let flow = SsoFlow::new(&sso(&mock.url), &d).unwrap();
    let mut b = Browser::new();
    // A callback without state (sign-in started at the SSO portal) lands on dify.home.
    b.post_callback(&flow, &form("t")).await;
    let r = b.get(&flow, "/sso/continue").await;
    assert_eq!(
        location(&r),
        format!("https://dify.example.com/apps?from=sso&access_token={access}&refresh_token=rr")
    );
}

#[tokio::test]
async fn get_callback_with_state_uses_the_flow_trace_id() {
    let access = mint_access_token(KEY, USER, Duration::from_secs(60));
    let mock = MockExchange::start(tokens_reply(&access, "ff")).await;
    let flow = SsoFlow::new(&sso(&mock.url), &dify(SessionDelivery::Cookie, KEY)).unwrap();
    let mut b = Browser::new();
    b.get(&flow, "/signin?redirect_url=/datasets").await;
    let r = b.get(&flow, "/qsso_backcall/?token=abc%2B1").await;
    assert_eq!(r.status, 303);
    assert_eq!(mock.params(0)[1].1, "abc+1");
    let r = b.get(&flow, "/sso/continue").await;
    assert_eq!(location(&r), "/datasets");
    // The same origin written out in full is accepted as its path.
    b.get(
        &flow,
        "/signin?redirect_url=http%3A%2F%2Flocalhost%3A8080%2Fapps%2Fz",
    )
    .await;
    assert_eq!(location(&b.get(&flow, "/sso/continue").await), "/apps/z");
    let trace = mock.params(0)[0].1.clone();
    let logs = captured_logs();
    assert!(
        logs.lines().filter(|l| l.contains(&trace)).count() >= 3,
        "flow id on /signin, callback and exchange"
    );
}

#[tokio::test]
async fn loop_breaker_stops_the_fourth_signin_and_resets_on_login() {
    let access = mint_access_token(KEY, USER, Duration::from_secs(60));
    let mock = MockExchange::start(tokens_reply(&access, "ff")).await;
    let flow = SsoFlow::new(&sso(&mock.url), &dify(SessionDelivery::Cookie, KEY)).unwrap();
    let mut b = Browser::new();
    for _ in 0..3 {
        assert_eq!(b.get(&flow, "/signin").await.status, 302);
    }
    let r = b.get(&flow, "/signin").await;
    assert_eq!(r.status, 429);
    assert!(String::from_utf8_lossy(&r.body).contains("href=\"/signin\""));
    assert!(r.header(&header::LOCATION).is_none());
    b.post_callback(&flow, &form("t")).await;
    b.get(&flow, "/sso/continue").await;
    assert_eq!(
        b.get(&flow, "/signin").await.status,
        302,
        "a completed login resets the count"
    );
}

#[tokio::test]
async fn logout_sticks_until_sign_in_again() {
    let flow = SsoFlow::new(
        &sso("http://127.0.0.1:9/x"),
        &dify(SessionDelivery::Cookie, KEY),
    )
    .unwrap();
    assert!(
        flow.on_upstream_response(&Method::POST, "/console/api/logout", 401, false)
            .is_empty()
    );
    assert!(
        flow.on_upstream_response(&Method::GET, "/console/api/logout", 200, false)
            .is_empty()
    );
    let mark = flow.on_upstream_response(&Method::POST, "/console/api/logout", 200, false);
    // The signed-out mark, and the gateway session cleared.
    assert_eq!(mark.len(), 2);
    assert!(
        mark[1].1.to_str().unwrap().starts_with("dg_session=; "),
        "{mark:?}"
    );
    let mut b = Browser::new();
    let r = SsoResponse {
        status: 200,
        headers: mark,
        body: Bytes::new(),
    };
    b.take_cookies(&r);

    let r = b.get(&flow, "/signin?redirect_url=/apps").await;
    assert_eq!((r.status, location(&r)), (302, "/sso/signed-out"));
    let page = b.get(&flow, "/sso/signed-out").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("Sign in again"));

    let mut cross = HeaderMap::new();
    cross.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://evil.example"),
    );
    let req = SsoRequest {
        method: &Method::POST,
        path: "/sso/signed-out",
        query: None,
        headers: &cross,
        client_ip: None,
        scheme: "http",
        host: "localhost:8080",
        trace_id: "t",
    };
    assert_eq!(
        flow.handle(&req, &mut BufferedBody(Bytes::new()))
            .await
            .unwrap()
            .status,
        403
    );

    let r = b
        .send(&flow, Method::POST, "/sso/signed-out", None, true)
        .await
        .unwrap();
    assert_eq!((r.status, location(&r)), (303, "/signin"));
    assert!(!b.jar.contains_key("dg_sso_signed_out"));
    assert!(location(&b.get(&flow, "/signin").await).starts_with("https://sso.example.com/"));

    let mut with_logout = sso("http://127.0.0.1:9/x");
    with_logout.logout_url = "https://sso.example.com/logout?ret=x".into();
    let flow = SsoFlow::new(&with_logout, &dify(SessionDelivery::Cookie, KEY)).unwrap();
    b.jar.insert("dg_sso_signed_out".into(), "1".into());
    assert_eq!(
        location(&b.get(&flow, "/signin").await),
        "https://sso.example.com/logout?ret=x"
    );
}
