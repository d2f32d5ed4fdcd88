//! SsoFlow's refusals: every failure of issue 3 item 5, the loop-free error answers, `sso.enforce`,
//! `bypass_cidrs`, requests that are not the flow's, and open-redirect attempts.

use super::mock_exchange::{MockExchange, Reply, unreachable_url};
use super::test_browser::{Browser, KEY, USER, dify, form, location, sso, tokens_reply};
use crate::dify::SessionDelivery;
use crate::dify::tokens::mint_access_token;
use crate::sso::*;
use http::Method;
use std::time::Duration;

/// Runs one callback against `reply` and checks the error answer: status, no redirect, the
/// reason, the flow's trace id, a retry link and the support contact.
async fn expect_failure(
    reply: Option<Reply>,
    timeout: Duration,
    body: &str,
    status: u16,
    reason: &str,
) {
    let mock = match reply {
        Some(r) => Some(MockExchange::start(r).await),
        None => None,
    };
    let url = match &mock {
        Some(m) => m.url.clone(),
        None => unreachable_url().await,
    };
    let mut cfg = sso(&url);
    cfg.exchange.timeout = timeout;
    let flow = SsoFlow::new(&cfg, &dify(SessionDelivery::Cookie, KEY)).unwrap();
    let mut b = Browser::new();
    let r = b.post_callback(&flow, body).await;
    let page = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, status, "{reason}: {page}");
    assert!(
        r.header(&http::header::LOCATION).is_none(),
        "never a redirect"
    );
    assert!(page.contains(reason), "expected {reason:?} in {page}");
    assert!(page.contains("href=\"/signin\"") && page.contains("it-help@example.com"));
    assert!(!b.jar.contains_key("access_token"));
    if let Some(m) = &mock
        && !m.seen.lock().unwrap().is_empty()
    {
        let trace = &m.params(0)[0].1;
        assert!(
            page.contains(trace.as_str()),
            "the page shows the flow's trace id"
        );
    }
    // The same failure as JSON for clients that ask for it.
    if status == 400 {
        b.accept = "application/json";
        let r = b.post_callback(&flow, body).await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["retry_url"].as_str()),
            (Some(400), Some("/signin"))
        );
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn missing_or_empty_token_is_400() {
    expect_failure(None, T, "", 400, "no sign-in token").await;
    expect_failure(None, T, "token=", 400, "no sign-in token").await;
    expect_failure(None, T, "other=1", 400, "no sign-in token").await;
}

#[tokio::test]
async fn exchange_unreachable_is_502() {
    expect_failure(None, T, &form("t"), 502, "could not be reached").await;
}

#[tokio::test]
async fn exchange_slower_than_timeout_is_504() {
    let slow = Some(Reply::Slow(Duration::from_secs(30)));
    expect_failure(
        slow,
        Duration::from_millis(300),
        &form("t"),
        504,
        "did not answer in time",
    )
    .await;
}

#[tokio::test]
async fn exchange_4xx_is_401() {
    let refused = Reply::json(403, serde_json::json!({"error": "token used"}));
    expect_failure(Some(refused), T, &form("t"), 401, "refused the sign-in").await;
}

#[tokio::test]
async fn exchange_5xx_non_json_missing_fields_are_502() {
    let cases = [
        (Reply::json(500, serde_json::json!({})), "status 500"),
        (
            Reply::Answer(200, "text/html", "<html>login</html>".into()),
            "not JSON",
        ),
        (
            Reply::json(200, serde_json::json!({"access_token": "x"})),
            "no refresh_token",
        ),
        (
            Reply::Answer(
                200,
                "application/json",
                format!("\"{}\"", "x".repeat(70_000)),
            ),
            "larger than 64 KiB",
        ),
    ];
    for (reply, reason) in cases {
        expect_failure(Some(reply), T, &form("t"), 502, reason).await;
    }
}

#[tokio::test]
async fn access_token_signed_with_another_key_is_502() {
    let foreign = mint_access_token("not-the-dify-key-at-all", USER, Duration::from_secs(60));
    let reply = tokens_reply(&foreign, "ff");
    expect_failure(
        Some(reply),
        T,
        &form("t"),
        502,
        "not signed with dify.secret_key",
    )
    .await;
}

#[tokio::test]
async fn oversized_callback_body_is_413() {
    let big = format!("token=t&pad={}", "x".repeat(70_000));
    expect_failure(None, T, &big, 413, "too large").await;
}

#[tokio::test]
async fn enforce_closes_other_ways_in_except_for_bypass_clients() {
    let mut cfg = sso("http://127.0.0.1:9/x");
    cfg.enforce = true;
    cfg.bypass_cidrs = vec!["10.0.0.0/8".into()];
    let flow = SsoFlow::new(&cfg, &dify(SessionDelivery::Cookie, KEY)).unwrap();
    let mut b = Browser::new();
    for path in [
        "/console/api/login",
        "/console/api/email-code-login",
        "/console/api/oauth/login/github",
        "/console/api/forgot-password/resets",
    ] {
        let r = b
            .send(&flow, Method::POST, path, None, true)
            .await
            .expect("refused");
        assert_eq!(r.status, 403);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "sso_enforced");
    }
    assert!(
        b.send(&flow, Method::POST, "/console/api/logout", None, true)
            .await
            .is_none()
    );
    assert!(
        b.send(&flow, Method::GET, "/console/api/apps", None, true)
            .await
            .is_none()
    );
    b.ip = "10.1.2.3".parse().unwrap();
    assert!(
        b.send(&flow, Method::POST, "/console/api/login", None, true)
            .await
            .is_none(),
        "bypass reaches Dify"
    );
    assert!(
        b.send(&flow, Method::GET, "/signin", None, true)
            .await
            .is_none(),
        "bypass sees Dify's sign-in page"
    );

    cfg.enforce = false;
    let open = SsoFlow::new(&cfg, &dify(SessionDelivery::Cookie, KEY)).unwrap();
    b.ip = "192.0.2.1".parse().unwrap();
    assert!(
        b.send(&open, Method::POST, "/console/api/login", None, true)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn other_requests_are_not_the_flows() {
    let flow = SsoFlow::new(
        &sso("http://127.0.0.1:9/x"),
        &dify(SessionDelivery::Cookie, KEY),
    )
    .unwrap();
    let mut b = Browser::new();
    for (method, path) in [
        (Method::GET, "/apps"),
        (Method::POST, "/signin"),
        (Method::GET, "/signin/check-code"),
        (Method::GET, "/v1/chat"),
    ] {
        assert!(
            b.send(&flow, method, path, None, true).await.is_none(),
            "{path}"
        );
    }
    assert_eq!(
        b.send(&flow, Method::PUT, "/qsso_backcall", None, true)
            .await
            .unwrap()
            .status,
        405
    );
    let mut off = sso("http://127.0.0.1:9/x");
    off.enabled = false;
    let off = SsoFlow::new(&off, &dify(SessionDelivery::Cookie, KEY)).unwrap();
    assert!(
        b.send(&off, Method::GET, "/signin", None, true)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn open_redirect_attempts_land_on_home() {
    let flow = SsoFlow::new(
        &sso("http://127.0.0.1:9/x"),
        &dify(SessionDelivery::Cookie, KEY),
    )
    .unwrap();
    let attacks = [
        "//evil.com",
        "/\\evil.com",
        "https://evil.com",
        "/%2F%2Fevil.com",
        "javascript:alert(1)",
        "/\r\nLocation: https://evil.com",
        "/\tevil.com",
        "/@evil.com",
        "https://localhost:8080@evil.com",
        "\\\\evil.com",
        "/%5C%5Cevil.com",
        "http:evil.com",
        "%2F%2Fevil.com",
        "/.%2e//evil.com",
        "/signin",
        "/qsso_backcall",
        "／／evil.com",
        "http://localhost:8080.evil.com/",
        "http://localhost:8080//evil.com",
        "https://localhost:8080/apps",
    ];
    for attack in attacks {
        let mut b = Browser::new();
        let encoded = form_urlencoded::Serializer::new(String::new())
            .append_pair("redirect_url", attack)
            .finish();
        let r = b.get(&flow, &format!("/signin?{encoded}")).await;
        assert_eq!(r.status, 302);
        let r = b.get(&flow, "/sso/continue").await;
        assert_eq!(location(&r), "/apps", "{attack:?}");
        // Raw, unencoded too (a hand-written link).
        let mut b = Browser::new();
        b.get(&flow, &format!("/signin?redirect_url={attack}"))
            .await;
        assert_eq!(
            location(&b.get(&flow, "/sso/continue").await),
            "/apps",
            "raw {attack:?}"
        );
    }
}
