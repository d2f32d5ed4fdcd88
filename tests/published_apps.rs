//! Published apps behind the company's sign-in, through the binary: per-app rules, the sign-in
//! round trip back to the app page, the web-app API checked call by call, passports bound to the
//! person they were handed to, `user_id` pinned on `/api/passport`, reload, and sign-out.
//! Dify is the mock in `support/dify_webapp.rs`, which serves apps as Dify's community edition
//! does (anyone with a passport gets in).

mod support;

use std::time::Duration;
use support::browser_sim::{Browser, Page};
use support::sso_env::{SECRET_KEY, SsoEnv, SsoSetup};

const OPEN: &str = "OpenChat00000001";
const HR: &str = "HrOnly0000000002";
const CLOSED: &str = "Closed0000000003";
const ENG: &str = "EngFlow000000004";

/// `default: signed_in`, one public app, one for the `hr` group, one switched off.
fn apps_setup() -> SsoSetup {
    SsoSetup::default()
        .sso("apps:")
        .sso("  default: signed_in")
        .sso("  rules:")
        .sso(&format!("    {OPEN}: public"))
        .sso(&format!("    {HR}: {{ groups: [hr] }}"))
        .sso(&format!("    {CLOSED}: deny"))
}

fn path_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

/// Opens a protected app page without a session, signs in as `user` at the SSO, and returns
/// where the browser lands.
async fn open_and_sign_in(env: &SsoEnv, b: &mut Browser, page: &str, user: &str) -> Page {
    let first = b.get(&env.url(page)).await;
    assert_eq!(
        first.status, 302,
        "{page} must go to the SSO: {}",
        first.body
    );
    let to = first.location().unwrap().to_string();
    assert!(to.starts_with(&env.sso.login_page.url("/login")), "{to}");
    let sso_page = b.follow(first, 3).await;
    let after = b.submit(&sso_page, &format!("signin-{user}")).await;
    b.follow(after, 10).await
}

/// A web-app API call as Dify's front end makes it.
async fn api(
    b: &mut Browser,
    env: &SsoEnv,
    method: &str,
    path: &str,
    code: &str,
    passport: Option<&str>,
) -> Page {
    let mut headers = vec![("X-App-Code", code), ("Accept", "application/json")];
    if let Some(p) = passport {
        headers.push(("X-App-Passport", p));
    }
    let page = env.url(&format!("/chat/{code}"));
    let body = (method == "POST").then(|| ("application/json", br#"{"query":"hi"}"#.to_vec()));
    b.request(method, &env.url(path), body, Some(&page), &headers)
        .await
}

fn json(p: &Page) -> serde_json::Value {
    serde_json::from_str(&p.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", p.body))
}

async fn passport(b: &mut Browser, env: &SsoEnv, code: &str, query: &str) -> String {
    let p = api(b, env, "GET", &format!("/api/passport{query}"), code, None).await;
    assert_eq!(p.status, 200, "{}", p.body);
    json(&p)["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_public_app_is_untouched_and_needs_no_sign_in() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    let page = b.get(&env.url(&format!("/chat/{OPEN}"))).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&format!("Published app {OPEN}")));
    let token = passport(&mut b, &env, OPEN, "?user_id=visitor-7").await;
    let p = api(&mut b, &env, "GET", "/api/parameters", OPEN, Some(&token)).await;
    assert_eq!(p.status, 200, "{}", p.body);
    // As today: whatever the page said is the app user.
    assert_eq!(json(&p)["end_user"], "visitor-7");
    assert!(b.cookie(&env.url("/"), "dg_session").is_none());
}

#[tokio::test]
async fn a_protected_app_sends_to_the_sso_and_back_to_the_app_page_with_its_query() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    let landing = open_and_sign_in(&env, &mut b, &format!("/chat/{ENG}?lang=ja"), "bob").await;
    assert_eq!(landing.status, 200, "{}", landing.body);
    assert_eq!(path_of(&landing.url), format!("/chat/{ENG}?lang=ja"));
    assert!(landing.body.contains(&format!("Published app {ENG}")));
    let session = b
        .cookie(&env.url("/"), "dg_session")
        .expect("gateway session");
    assert!(!session.contains("bob"), "the session cookie is encrypted");
    // Signed in now: the page is served straight away.
    let again = b.get(&env.url(&format!("/workflow/{ENG}"))).await;
    assert_eq!(again.status, 200);
    assert!(
        env.gw
            .metric(
                "dify_gateway_app_requests_total",
                &[("app", "default"), ("outcome", "sign_in")]
            )
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn api_calls_without_a_session_get_401_json_that_difys_front_end_acts_on() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    for path in [
        "/api/passport",
        "/api/parameters",
        "/api/conversations",
        "/api/chat-messages",
    ] {
        let method = if path == "/api/chat-messages" {
            "POST"
        } else {
            "GET"
        };
        let p = api(&mut b, &env, method, path, ENG, None).await;
        assert_eq!(p.status, 401, "{path}: {}", p.body);
        let v = json(&p);
        assert_eq!(v["code"], "web_sso_auth_required", "{path}");
        assert!(v["trace_id"].as_str().is_some_and(|t| !t.is_empty()));
    }
    assert!(
        env.dify.end_users().is_empty(),
        "Dify never saw the refused calls"
    );
    // Where that front end then goes: `/webapp-signin?redirect_url=<encoded twice>`.
    let back = urlencoding(&urlencoding(&format!("/chat/{ENG}")));
    let first = b
        .get(&env.url(&format!("/webapp-signin?redirect_url={back}")))
        .await;
    assert_eq!(first.status, 302, "{}", first.body);
    let sso_page = b.follow(first, 3).await;
    let after = b.submit(&sso_page, "signin-bob").await;
    let landing = b.follow(after, 10).await;
    assert_eq!(path_of(&landing.url), format!("/chat/{ENG}"));
    // Signed in: `/webapp-signin` goes straight back to the app.
    let direct = b
        .get(&env.url(&format!("/webapp-signin?redirect_url={back}")))
        .await;
    assert_eq!(direct.status, 302);
    assert_eq!(direct.location(), Some(format!("/chat/{ENG}").as_str()));
}

fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn user_id_is_the_person_and_passports_are_bound_to_them() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut alice = env.browser();
    open_and_sign_in(&env, &mut alice, &format!("/chat/{ENG}"), "alice").await;
    // The client asks for someone else's user_id: the gateway sets the person's own.
    let token_a = passport(&mut alice, &env, ENG, "?user_id=bob%40corp.example&x=1").await;
    let rows = env.dify.end_users();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].session_id, "alice@corp.example");
    let p = api(
        &mut alice,
        &env,
        "GET",
        "/api/parameters",
        ENG,
        Some(&token_a),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(json(&p)["end_user"], "alice@corp.example");
    // The same person on another device gets the same Dify end user.
    let mut alice2 = env.browser();
    open_and_sign_in(&env, &mut alice2, &format!("/chat/{ENG}"), "alice").await;
    passport(&mut alice2, &env, ENG, "").await;
    assert_eq!(env.dify.end_users().len(), 1);
    // SSE still comes through, event by event in order.
    let sse = api(
        &mut alice,
        &env,
        "POST",
        "/api/chat-messages",
        ENG,
        Some(&token_a),
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.body.matches("data: ").count(), 4, "{}", sse.body);

    // Alice's passport with Bob's session, or with none, is refused before Dify sees it.
    let mut bob = env.browser();
    open_and_sign_in(&env, &mut bob, &format!("/chat/{ENG}"), "bob").await;
    let mut bob2 = env.browser();
    open_and_sign_in(&env, &mut bob2, &format!("/chat/{ENG}"), "bob").await;
    let before = env.dify.requests().len();
    let stolen = api(
        &mut bob,
        &env,
        "GET",
        "/api/parameters",
        ENG,
        Some(&token_a),
    )
    .await;
    assert_eq!(stolen.status, 401, "{}", stolen.body);
    assert_eq!(json(&stolen)["code"], "web_sso_auth_required");
    let mut nobody = env.browser();
    let bare = api(
        &mut nobody,
        &env,
        "GET",
        "/api/parameters",
        ENG,
        Some(&token_a),
    )
    .await;
    assert_eq!(bare.status, 401);
    // The same through the passport cookie Dify reads first, and with no X-App-Code at all.
    nobody.set_cookie_raw(&env.url("/"), &format!("passport-{ENG}"), &token_a);
    let by_cookie = nobody
        .request(
            "GET",
            &env.url("/api/meta"),
            None,
            None,
            &[("X-App-Code", ENG)],
        )
        .await;
    assert_eq!(by_cookie.status, 401);
    let no_code = bob2
        .request(
            "GET",
            &env.url("/api/meta"),
            None,
            None,
            &[("X-App-Passport", &token_a)],
        )
        .await;
    assert_eq!(
        no_code.status, 401,
        "the passport's own app_code is checked"
    );
    // A passport Dify issued directly (not bound by the gateway) is refused too.
    let unbound = dify_passport(ENG, "someone");
    let p = api(
        &mut bob,
        &env,
        "GET",
        "/api/parameters",
        ENG,
        Some(&unbound),
    )
    .await;
    assert_eq!(p.status, 401);
    // A forged one (another key) is refused, not forwarded.
    let forged = support::sso_mock::sign_hs256(
        "not-difys-key",
        &serde_json::json!({"sub": "Web API Passport", "app_code": OPEN, "end_user_id": "x"}),
    );
    let p = api(&mut bob, &env, "GET", "/api/parameters", ENG, Some(&forged)).await;
    assert_eq!(p.status, 401);
    assert_eq!(env.dify.requests().len(), before, "Dify saw none of them");
    // No passport or session cookie in any log line.
    let session = alice.cookie(&env.url("/"), "dg_session").unwrap();
    let logs = format!("{}\n{}", env.gw.stderr(), env.gw.stdout());
    for (what, secret) in [
        ("passport", token_a.as_str()),
        ("session cookie", session.as_str()),
    ] {
        let sig = secret.rsplit(['.', '/']).next().unwrap();
        assert!(!logs.contains(sig), "a {what} is in the logs");
    }
}

/// A passport as Dify itself signs it.
fn dify_passport(code: &str, end_user: &str) -> String {
    support::sso_mock::sign_hs256(
        SECRET_KEY,
        &serde_json::json!({"iss": format!("app-{code}"), "sub": "Web API Passport",
            "app_id": format!("app-{code}"), "app_code": code, "end_user_id": end_user}),
    )
}

#[tokio::test]
async fn a_group_rule_admits_one_person_and_refuses_another_with_a_page_not_a_loop() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut alice = env.browser();
    let landing = open_and_sign_in(&env, &mut alice, &format!("/chat/{HR}"), "alice").await;
    assert_eq!(landing.status, 200, "{}", landing.body);
    let token = passport(&mut alice, &env, HR, "").await;
    let p = api(&mut alice, &env, "GET", "/api/parameters", HR, Some(&token)).await;
    assert_eq!(p.status, 200, "{}", p.body);

    let mut bob = env.browser();
    let refused = open_and_sign_in(&env, &mut bob, &format!("/chat/{HR}"), "bob").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("No access to this app"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("bob@corp.example"));
    assert!(support::sso_env::trace_id_on_page(&refused.body).is_some());
    // Coming back does not loop through the SSO: the same page, at once.
    let again = b_get(&mut bob, &env, &format!("/chat/{HR}")).await;
    assert_eq!(again.status, 403);
    // The API says so in JSON, as Dify's front end reads it.
    let p = api(&mut bob, &env, "GET", "/api/passport", HR, None).await;
    assert_eq!(p.status, 401);
    assert_eq!(json(&p)["code"], "web_app_access_denied");
    // And `/webapp-signin`, where that front end then goes, shows the refusal page.
    let w = b_get(
        &mut bob,
        &env,
        &format!("/webapp-signin?redirect_url=%252Fchat%252F{HR}&code=403"),
    )
    .await;
    assert_eq!(w.status, 403);
    // Bob may still use the apps open to him.
    assert_eq!(
        b_get(&mut bob, &env, &format!("/chat/{ENG}")).await.status,
        200
    );
    // A switched-off app is refused to everyone, signed in or not.
    assert_eq!(
        b_get(&mut alice, &env, &format!("/chat/{CLOSED}"))
            .await
            .status,
        403
    );
    let mut nobody = env.browser();
    assert_eq!(
        b_get(&mut nobody, &env, &format!("/completion/{CLOSED}"))
            .await
            .status,
        403
    );
}

async fn b_get(b: &mut Browser, env: &SsoEnv, path: &str) -> Page {
    b.get(&env.url(path)).await
}

#[tokio::test]
async fn a_console_sign_in_is_reused_for_apps() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    let landing = env.sign_in(&mut b, &env.url("/signin"), "alice").await;
    support::sso_env::assert_signed_in(&landing, "Alice Example");
    let before = env.sso.calls().len();
    let page = b.get(&env.url(&format!("/chat/{HR}"))).await;
    assert_eq!(page.status, 200, "no second trip to the SSO: {}", page.body);
    assert_eq!(env.sso.calls().len(), before);
}

#[tokio::test]
async fn sign_out_ends_the_app_session() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    open_and_sign_in(&env, &mut b, &format!("/chat/{ENG}"), "bob").await;
    // Another site cannot sign someone out: it gets a button.
    let cross = b
        .request(
            "GET",
            &env.url("/sso/logout"),
            None,
            Some("http://evil.example/"),
            &[("Sec-Fetch-Site", "cross-site")],
        )
        .await;
    assert_eq!(cross.status, 200);
    assert!(cross.body.contains("Sign out?"));
    assert_eq!(
        b_get(&mut b, &env, &format!("/chat/{ENG}")).await.status,
        200
    );
    let out = b.get(&env.url("/sso/logout")).await;
    assert_eq!(out.status, 303);
    let signed_out = b.follow(out, 3).await;
    assert!(
        signed_out.body.contains("You are signed out"),
        "{}",
        signed_out.body
    );
    // The next protected page does not sign straight back in.
    let next = b.get(&env.url(&format!("/chat/{ENG}"))).await;
    assert_eq!(next.status, 302);
    assert!(next.location().unwrap().contains("/sso/signed-out"));
}

#[tokio::test]
async fn reload_changes_a_rule_without_a_restart() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    assert_eq!(
        b_get(&mut b, &env, &format!("/chat/{OPEN}")).await.status,
        200
    );
    let yaml = std::fs::read_to_string(&env.gw.config_path).unwrap();
    let changed = yaml.replace(&format!("{OPEN}: public"), &format!("{OPEN}: deny"));
    assert_ne!(yaml, changed);
    std::fs::write(&env.gw.config_path, changed).unwrap();
    env.gw.signal(libc::SIGHUP);
    let refused = support::poll_until(Duration::from_secs(30), || {
        let url = env.url(&format!("/chat/{OPEN}"));
        async move {
            let mut b = Browser::new();
            (b.get(&url).await.status == 403).then_some(())
        }
    })
    .await;
    assert!(refused.is_some(), "the reloaded rule never applied");
}

#[tokio::test]
async fn machine_endpoints_and_client_identity_headers() {
    let env = SsoEnv::start(apps_setup()).await;
    let mut b = env.browser();
    // Machine endpoints never need a gateway session.
    for path in [
        "/v1/chat-messages",
        "/files/x/file-preview",
        "/e/abc",
        "/mcp/server/x",
        "/triggers/plugin/x",
    ] {
        let p = b.get(&env.url(path)).await;
        assert_ne!(p.status, 302, "{path}");
        assert_ne!(p.status, 401, "{path}");
    }
    // An identity header a client sends never reaches Dify.
    open_and_sign_in(&env, &mut b, &format!("/chat/{ENG}"), "bob").await;
    let p = b
        .request(
            "GET",
            &env.url(&format!("/chat/{ENG}")),
            None,
            None,
            &[
                ("X-Forwarded-User", "alice"),
                ("Remote-User", "alice"),
                ("X-Auth-Request-Email", "alice@corp.example"),
            ],
        )
        .await;
    assert_eq!(p.status, 200);
    let seen = env.dify.requests();
    let last = seen
        .iter()
        .rev()
        .find(|r| r.path == format!("/chat/{ENG}"))
        .unwrap();
    for (name, _) in &last.headers {
        assert!(
            !["x-forwarded-user", "remote-user", "x-auth-request-email"].contains(&name.as_str()),
            "{name} reached Dify"
        );
    }
}

#[tokio::test]
async fn path_variants_of_an_app_page_and_of_the_passport_call_are_judged_alike() {
    let env = SsoEnv::start(apps_setup()).await;
    for variant in [
        format!("/chat/{HR}"),
        format!("//chat/{HR}"),
        format!("/chat/./{HR}"),
        format!("/chat/x/../{HR}"),
        format!("/chat/{HR}/"),
        format!("/%63hat/{HR}"),
        format!("/chat/{HR}?x=%2F..%2F"),
        format!("/chatbot/{HR}"),
        format!("/workflow/{HR}/run"),
    ] {
        // A fresh browser each time: a fourth trip to the SSO within a minute meets the loop breaker.
        let p = env.browser().get(&env.url(&variant)).await;
        assert_eq!(p.status, 302, "{variant} must go to the SSO: {}", p.body);
    }
    assert!(
        env.dify.requests().iter().all(|r| !r.path.contains(HR)),
        "Dify never served the protected app to someone not signed in"
    );
    let mut alice = env.browser();
    open_and_sign_in(&env, &mut alice, &format!("/chat/{ENG}"), "alice").await;
    for variant in [
        "/api/passport?user_id=bob%40corp.example",
        "/api//passport?user_id=bob%40corp.example",
        "/api/./passport?user_id=bob%40corp.example",
        "/api/pass%70ort?user_id=bob%40corp.example",
        "/api/passport?user_id=bob%40corp.example&user_id=bob%40corp.example",
        "/api/passport?user%5Fid=bob%40corp.example",
    ] {
        api(&mut alice, &env, "GET", variant, ENG, None).await;
    }
    let rows = env.dify.end_users();
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|u| u.session_id == "alice@corp.example"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn over_https_an_app_sign_in_gets_the_host_prefixed_session_and_no_console_session() {
    let mut setup = apps_setup();
    setup.dify.console_web_url = "https://dify.example.com".into();
    setup.dify.console_api_url = "https://dify.example.com".into();
    setup.trusted_proxies = vec!["127.0.0.1/32".into()];
    let env = SsoEnv::start(setup).await;
    let mut b = env.browser();
    b.map("dify.example.com:443", env.gw.listen);
    b.extra_header("dify.example.com:443", "x-forwarded-proto", "https");
    let first = b.get(&format!("https://dify.example.com/chat/{HR}")).await;
    assert_eq!(first.status, 302, "{}", first.body);
    let sso_page = b.follow(first, 2).await;
    let cb = b.submit(&sso_page, "signin-alice").await;
    let session = cb
        .set_cookie("__Host-dg_session")
        .unwrap_or_else(|| panic!("{:?}", cb.set_cookies()));
    assert_eq!(
        (session.secure(), session.http_only(), session.path()),
        (Some(true), Some(true), Some("/"))
    );
    assert_eq!(session.same_site(), Some(cookie::SameSite::Lax));
    for c in cb.set_cookies() {
        assert!(
            !c.contains("access_token") && !c.contains("refresh_token"),
            "{c}"
        );
    }
    let landing = b.follow(cb, 5).await;
    assert_eq!(path_of(&landing.url), format!("/chat/{HR}"));
    assert!(landing.body.contains(&format!("Published app {HR}")));
    // Dify's own passport cookie name over HTTPS (`__Host-passport-<code>`) is checked as well.
    let mut nobody = env.browser();
    nobody.map("dify.example.com:443", env.gw.listen);
    nobody.extra_header("dify.example.com:443", "x-forwarded-proto", "https");
    nobody.set_cookie_raw(
        "https://dify.example.com/",
        &format!("__Host-passport-{HR}"),
        &dify_passport(HR, "x"),
    );
    let p = nobody
        .request("GET", "https://dify.example.com/api/meta", None, None, &[])
        .await;
    assert_eq!(p.status, 401, "{}", p.body);
}
