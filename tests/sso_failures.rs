//! Everything that can go wrong in a sign-in, the loop breaker, logout that
//! sticks, `sso.enforce`, and secrets kept out of the logs. A failure is always a page with a
//! reason and a trace id, never a redirect back into the flow.

mod support;

use std::time::Duration;
use support::browser_sim::{Browser, Page};
use support::sso_env::*;
use support::sso_mock::{ExchangeBehavior, TokenStyle};

/// (content type, body)
type FormBody = (&'static str, Vec<u8>);

/// From `/signin` to the callback's answer, choosing `user` on the SSO page.
async fn callback_answer(env: &SsoEnv, b: &mut Browser, user: &str) -> Page {
    let sso_page = env.to_sso_page(b, &env.url("/signin")).await;
    b.submit(&sso_page, &format!("signin-{user}")).await
}

/// The error page's trace id is the one the management service got, in `trace_id` and
/// `X-Request-Id`.
fn assert_trace_reached_exchange(env: &SsoEnv, trace: &str) {
    let call = env.sso.calls().last().cloned().expect("an exchange call");
    assert_eq!(call.trace_id.as_deref(), Some(trace));
    assert_eq!(call.x_request_id.as_deref(), Some(trace));
}

/// The gateway's warning about the failed call with `trace`: names the exchange's URL without its
/// query (the SSO token is there) and the cause of kind `kind`.
async fn assert_call_failure_logged(env: &SsoEnv, trace: &str, kind: &str, cause: &str) {
    let line = support::poll_until(support::WAIT, || async {
        env.gw
            .log_lines()
            .into_iter()
            .find(|l| l["trace_id"] == trace && l.get("cause").is_some())
    })
    .await
    .unwrap_or_else(|| panic!("no failure logged for {trace}:\n{}", env.gw.stderr()));
    assert_eq!(line["kind"], kind, "{line}");
    let url = line["url"].as_str().unwrap_or_default();
    assert!(url.ends_with("/get_dify_token"), "{line}");
    let text = line.to_string();
    assert!(
        !text.contains("token="),
        "the query reached the log: {line}"
    );
    assert!(
        line["cause"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains(cause),
        "{line}"
    );
    assert!(
        line["message"].as_str().unwrap_or_default().contains(url),
        "{line}"
    );
}

/// After a failure the browser is not signed in.
async fn assert_not_signed_in(env: &SsoEnv, b: &mut Browser) {
    let p = b.get(&env.url("/apps")).await;
    assert!(p.body.contains("Not signed in"), "{}", p.body);
}

#[tokio::test]
async fn every_exchange_failure_is_an_error_page_with_the_trace_id() {
    let env = SsoEnv::start(SsoSetup {
        exchange_timeout: "1s".into(),
        ..Default::default()
    })
    .await;
    let cases: Vec<(ExchangeBehavior, &str, u16, &str)> = vec![
        (
            ExchangeBehavior::Status(401),
            "alice",
            401,
            "refused the sign-in (status 401)",
        ),
        (
            ExchangeBehavior::Status(403),
            "alice",
            401,
            "refused the sign-in (status 403)",
        ),
        (
            ExchangeBehavior::Ok,
            "mallory",
            401,
            "refused the sign-in (status 403)",
        ),
        (ExchangeBehavior::Status(500), "alice", 502, "status 500"),
        (ExchangeBehavior::Status(503), "alice", 502, "status 503"),
        (ExchangeBehavior::NotJson, "alice", 502, "not JSON"),
        (
            ExchangeBehavior::MissingField("access_token"),
            "alice",
            502,
            "no access_token",
        ),
        (
            ExchangeBehavior::MissingField("refresh_token"),
            "alice",
            502,
            "no refresh_token",
        ),
        (
            ExchangeBehavior::WrongKey,
            "alice",
            502,
            "not signed with dify.secret_key",
        ),
        (ExchangeBehavior::Expired, "alice", 502, "expired"),
        (
            ExchangeBehavior::Slow(Duration::from_secs(3)),
            "alice",
            504,
            "did not answer in time",
        ),
    ];
    for (behavior, user, status, reason) in cases {
        env.sso.set_behavior(behavior.clone());
        let mut b = env.browser();
        let p = callback_answer(&env, &mut b, user).await;
        let trace = assert_error_page(&p, status, reason);
        assert_trace_reached_exchange(&env, &trace);
        if let ExchangeBehavior::Slow(_) = behavior {
            assert!(
                p.elapsed < Duration::from_millis(2500),
                "the gateway must give up after sso.exchange.timeout (1s), took {:?}",
                p.elapsed
            );
            assert_call_failure_logged(&env, &trace, "timeout", "timed out").await;
        }
        assert_not_signed_in(&env, &mut b).await;
    }
}

#[tokio::test]
async fn a_replayed_sso_token_is_refused() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();
    let sso_page = env.to_sso_page(&mut b, &env.url("/signin")).await;
    let ok = b.submit(&sso_page, "signin-alice").await;
    assert_eq!(ok.status, 303);
    let mut replay = Browser::new();
    let p = replay.submit(&sso_page, "signin-alice").await;
    assert_error_page(&p, 401, "may have expired or been used already");
}

#[tokio::test]
async fn json_clients_get_the_failure_as_json() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    env.sso.set_behavior(ExchangeBehavior::Status(403));
    let mut b = env.browser();
    let sso_page = env.to_sso_page(&mut b, &env.url("/signin")).await;
    let form = sso_page.form("signin-alice").unwrap();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.fields.iter())
        .finish();
    let p = b
        .request(
            "POST",
            &form.action,
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
            Some(&sso_page.url),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(p.status, 401);
    let v: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(v["code"], "sso_token_refused");
    assert_eq!(v["retry_url"], "/signin");
    let trace = v["trace_id"].as_str().unwrap().to_string();
    assert_trace_reached_exchange(&env, &trace);
}

#[tokio::test]
async fn missing_or_empty_token_is_400_and_no_exchange_is_made() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let cb = env.url("/qsso_backcall");
    let sso = env.sso.login_page.url("/login");
    let requests: Vec<(&str, String, Option<FormBody>)> = vec![
        (
            "POST",
            cb.clone(),
            Some(("application/x-www-form-urlencoded", b"".to_vec())),
        ),
        (
            "POST",
            cb.clone(),
            Some(("application/x-www-form-urlencoded", b"token=".to_vec())),
        ),
        (
            "POST",
            cb.clone(),
            Some(("application/x-www-form-urlencoded", b"token=+++".to_vec())),
        ),
        (
            "POST",
            cb.clone(),
            Some(("application/x-www-form-urlencoded", b"other=1".to_vec())),
        ),
        ("GET", cb.clone(), None),
        ("GET", format!("{cb}?token="), None),
        ("GET", format!("{cb}/?x=1"), None),
    ];
    for (method, url, body) in requests {
        // A sign-in this browser started, so the callback is one the gateway takes.
        let mut b = Browser::new();
        assert_eq!(b.get(&env.url("/signin")).await.status, 302);
        let p = b.request(method, &url, body, Some(&sso), &[]).await;
        assert_error_page(&p, 400, "sent no sign-in token");
    }
    assert!(env.sso.calls().is_empty(), "no exchange without a token");
    // Over 64 KiB -> 413.
    let mut b = Browser::new();
    let big = format!("token={}", "a".repeat(70 * 1024));
    let p = b
        .request(
            "POST",
            &cb,
            Some(("application/x-www-form-urlencoded", big.into_bytes())),
            Some(&sso),
            &[],
        )
        .await;
    assert_error_page(&p, 413, "too large");
}

#[tokio::test]
async fn an_unreachable_exchange_is_502() {
    let env = SsoEnv::start(SsoSetup {
        dead_exchange: true,
        ..Default::default()
    })
    .await;
    let mut b = env.browser();
    let p = callback_answer(&env, &mut b, "alice").await;
    let trace = assert_error_page(&p, 502, "could not be reached");
    assert_call_failure_logged(&env, &trace, "connection refused", "connection refused").await;
    assert_not_signed_in(&env, &mut b).await;
}

#[tokio::test]
async fn the_loop_breaker_stops_the_fourth_sign_in_within_a_minute() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();
    for i in 1..=3 {
        let p = b.get(&env.url("/signin")).await;
        assert_eq!(p.status, 302, "sign-in {i} goes to the SSO");
    }
    let p = b.get(&env.url("/signin")).await;
    assert_error_page(&p, 429, "too many times");
    // Another browser is not affected.
    let mut other = env.browser();
    assert_eq!(other.get(&env.url("/signin")).await.status, 302);
    // A completed sign-in resets the count.
    let mut c = env.browser();
    for _ in 0..2 {
        c.get(&env.url("/signin")).await;
    }
    let landing = env.sign_in(&mut c, &env.url("/signin"), "alice").await;
    assert!(landing.body.contains("Signed in as Alice"));
    for _ in 0..3 {
        assert_eq!(c.get(&env.url("/signin")).await.status, 302);
    }
}

/// Signs in, then logs out as Dify's front end does; returns the logout answer.
async fn sign_in_then_log_out(env: &SsoEnv, b: &mut Browser) -> Page {
    let landing = env.sign_in(b, &env.url("/signin"), "alice").await;
    assert!(
        landing.body.contains("Signed in as Alice"),
        "{}",
        landing.body
    );
    let from = env.url("/apps");
    let out = b
        .request(
            "POST",
            &env.url("/console/api/logout"),
            None,
            Some(&from),
            &[],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    out
}

#[tokio::test]
async fn logout_sticks_and_another_site_cannot_undo_it() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();
    let out = sign_in_then_log_out(&env, &mut b).await;
    assert!(
        out.set_cookie("dg_sso_signed_out").is_some(),
        "{:?}",
        out.set_cookies()
    );
    assert_eq!(
        b.cookie(&env.url("/"), "access_token"),
        None,
        "Dify cleared its cookies"
    );
    let calls_before = env.sso.calls().len();

    // The front end goes to /signin: no automatic sign-in.
    let p = b.get(&env.url("/signin")).await;
    assert_eq!(p.status, 302);
    assert_eq!(p.location(), Some("/sso/signed-out"));
    let page = b.follow(p, 2).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("You are signed out"));
    // Again, and with a redirect_url: still no sign-in, never the SSO.
    for _ in 0..5 {
        let p = b.get(&env.url("/signin?redirect_url=/apps")).await;
        assert_eq!(p.location(), Some("/sso/signed-out"));
    }
    assert_eq!(env.sso.calls().len(), calls_before);
    let apps = b.get(&env.url("/apps")).await;
    assert!(apps.body.contains("Not signed in"));

    // Another site cannot undo the logout.
    let evil = "http://evil.example/";
    let forged = b
        .request(
            "POST",
            &env.url("/sso/signed-out"),
            Some(("application/x-www-form-urlencoded", Vec::new())),
            Some(evil),
            &[],
        )
        .await;
    assert_eq!(forged.status, 403);
    let still = b.get(&env.url("/signin")).await;
    assert_eq!(still.location(), Some("/sso/signed-out"));
}

#[tokio::test]
async fn sign_in_again_button_starts_a_normal_sign_in() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();
    sign_in_then_log_out(&env, &mut b).await;
    let signed_out = b.get(&env.url("/sso/signed-out")).await;
    let from = signed_out.url.clone();
    let again = b
        .request(
            "POST",
            &env.url("/sso/signed-out"),
            Some(("application/x-www-form-urlencoded", Vec::new())),
            Some(&from),
            &[],
        )
        .await;
    assert_eq!(again.status, 303);
    assert_eq!(again.location(), Some("/signin"));
    let signin = b
        .request("GET", &env.url("/signin"), None, Some(&from), &[])
        .await;
    assert_eq!(signin.status, 302);
    assert!(
        signin
            .location()
            .unwrap()
            .starts_with(&env.sso.login_page.url("/login"))
    );
    let sso_page = b.follow(signin, 1).await;
    let cb = b.submit(&sso_page, "signin-alice").await;
    let landing = b.follow(cb, 5).await;
    assert!(
        landing.body.contains("Signed in as Alice"),
        "{}",
        landing.body
    );
}

/// What Chromium sends when the signed-out page's button is clicked: the page has
/// `Referrer-Policy: no-referrer`, so the form POST carries `Origin: null`, and
/// `Sec-Fetch-Site: same-origin` (checked against Chromium 156 by hand and in e2e_browser.rs).
#[tokio::test]
async fn sign_in_again_accepts_what_chromium_sends_from_the_signed_out_page() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();
    sign_in_then_log_out(&env, &mut b).await;
    let again = b
        .request(
            "POST",
            &env.url("/sso/signed-out"),
            Some(("application/x-www-form-urlencoded", Vec::new())),
            None,
            &[
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-mode", "navigate"),
                ("sec-fetch-dest", "document"),
            ],
        )
        .await;
    assert_eq!(
        (again.status, again.location()),
        (303, Some("/signin")),
        "the signed-out page's own button must work in Chromium; got {} {:?}",
        again.status,
        again.body
    );
    // A genuinely cross-site POST stays refused.
    let cross = b
        .request(
            "POST",
            &env.url("/sso/signed-out"),
            Some(("application/x-www-form-urlencoded", Vec::new())),
            None,
            &[("origin", "null"), ("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(cross.status, 403);
}

#[tokio::test]
async fn logout_goes_to_the_sso_logout_url_when_configured() {
    let probe = SsoEnv::start(SsoSetup::default()).await;
    let logout = probe.sso.logout_url("http://127.0.0.1/sso/signed-out");
    drop(probe);
    let env = SsoEnv::start(SsoSetup::default().sso(&format!("logout_url: {logout:?}"))).await;
    let mut b = env.browser();
    sign_in_then_log_out(&env, &mut b).await;
    let p = b.get(&env.url("/signin")).await;
    assert_eq!(p.status, 302);
    assert_eq!(p.location(), Some(logout.as_str()));
}

#[tokio::test]
async fn enforce_closes_difys_other_ways_in() {
    let closed: [(&str, &str); 7] = [
        ("POST", "/console/api/login"),
        ("POST", "/console/api/email-code-login"),
        ("POST", "/console/api/email-code-login/validity"),
        ("POST", "/console/api/forgot-password"),
        ("POST", "/console/api/forgot-password/resets"),
        ("GET", "/console/api/oauth/login/github"),
        ("POST", "/console/api/activate"),
    ];
    // Without enforce they reach Dify.
    let open = SsoEnv::start(SsoSetup::default()).await;
    for (method, path) in closed {
        let mut b = Browser::new();
        let p = b
            .request(
                method,
                &open.url(path),
                Some(("application/json", b"{}".to_vec())),
                None,
                &[],
            )
            .await;
        assert_eq!(
            p.status, 200,
            "{method} {path} reaches Dify without enforce: {}",
            p.body
        );
    }

    let env = SsoEnv::start(SsoSetup::default().sso("enforce: true")).await;
    for (method, path) in closed {
        let mut b = Browser::new();
        let p = b
            .request(
                method,
                &env.url(path),
                Some(("application/json", b"{}".to_vec())),
                None,
                &[],
            )
            .await;
        assert_eq!(p.status, 403, "{method} {path}: {}", p.body);
        let v: serde_json::Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["code"], "sso_enforced", "{method} {path}");
    }
    assert!(
        env.dify
            .requests()
            .iter()
            .all(|r| !r.path.starts_with("/console/api/")),
        "nothing closed may reach Dify: {:?}",
        env.dify
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
    // SSO itself, the API and logout still work.
    let mut b = env.browser();
    let out = sign_in_then_log_out(&env, &mut b).await;
    assert_eq!(out.status, 200);
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let env = SsoEnv::start(SsoSetup {
        rust_log: "debug".into(),
        ..Default::default()
    })
    .await;
    env.sso.set_token_style(TokenStyle::Nasty);
    let mut b = env.browser();
    // A success (with a nasty token), a logout, a failure with a token signed by another key, and
    // a refused token.
    let out = sign_in_then_log_out(&env, &mut b).await;
    assert_eq!(out.status, 200);
    env.sso.set_token_style(TokenStyle::Plain);
    let mut c = env.browser();
    let p = env
        .sign_in(&mut c, &env.url("/signin?redirect_url=/apps/2"), "bob")
        .await;
    assert!(p.body.contains("Signed in as Bob"));
    env.sso.set_behavior(ExchangeBehavior::WrongKey);
    let mut d = env.browser();
    let p = callback_answer(&env, &mut d, "alice").await;
    assert_eq!(p.status, 502);
    env.sso.set_behavior(ExchangeBehavior::Status(403));
    let mut e = env.browser();
    let p = callback_answer(&env, &mut e, "alice").await;
    assert_eq!(p.status, 401);

    // Let the log lines of the last requests arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = format!("{}\n{}", env.gw.stderr(), env.gw.stdout());
    assert!(
        logs.contains("sign-in complete"),
        "debug logs captured: {logs}"
    );
    let mut secrets: Vec<(String, String)> = vec![
        ("Dify SECRET_KEY".into(), SECRET_KEY.into()),
        ("sso.state_secret".into(), STATE_SECRET.into()),
    ];
    for t in env.sso.issued_tokens() {
        let enc: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
        let tail: String = t.chars().skip(4).collect();
        secrets.push(("SSO token".into(), t.clone()));
        secrets.push(("SSO token, URL-encoded".into(), enc));
        secrets.push(("SSO token after its first 4 characters".into(), tail));
    }
    for m in env.sso.minted() {
        for (what, v) in [
            ("access token", m.access_token.clone()),
            ("refresh token", m.refresh_token.clone()),
        ] {
            secrets.push((what.into(), v.clone()));
            secrets.push((
                format!("{what} after its first 4 characters"),
                v[4..].to_string(),
            ));
        }
        let sig = m.access_token.rsplit('.').next().unwrap().to_string();
        secrets.push(("access token signature".into(), sig));
    }
    for page in b.history.iter().chain(c.history.iter()) {
        for sc in page.set_cookies() {
            if let Ok(c) = cookie::Cookie::parse(sc)
                && c.value().len() >= 12
            {
                secrets.push((format!("cookie {}", c.name()), c.value().to_string()));
            }
        }
    }
    assert!(secrets.len() > 10);
    for (what, s) in secrets {
        assert!(
            !logs.contains(&s),
            "the {what} appears in the gateway's log ({s:?})"
        );
    }
}
