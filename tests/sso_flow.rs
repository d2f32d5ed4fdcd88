//! The SSO sign-in flow end to end over HTTP (issue 3): the real gateway between a simulated
//! browser, the mock SSO login page, the mock management service and a mock Dify that checks
//! cookies, JWT signatures and CSRF as Dify does.

mod support;

use support::browser_sim::{Browser, Page};
use support::dify_mock::DifySettings;
use support::sso_env::*;
use support::sso_mock::{ExchangeBehavior, TokenStyle};
use support::{Gateway, is_uuid_v4};

fn path_of(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

/// The profile API call the page's script makes: CSRF header read from the csrf cookie.
async fn profile(env: &SsoEnv, b: &mut Browser, csrf_cookie: &str) -> Page {
    profile_at(b, &env.url(""), csrf_cookie).await
}

/// As [`profile`], with the browser on `origin`.
async fn profile_at(b: &mut Browser, origin: &str, csrf_cookie: &str) -> Page {
    let csrf = b
        .cookie(&format!("{origin}/"), csrf_cookie)
        .unwrap_or_default();
    let from = format!("{origin}/apps");
    b.request(
        "GET",
        &format!("{origin}/console/api/account/profile"),
        None,
        Some(&from),
        &[("x-csrf-token", &csrf), ("accept", "application/json")],
    )
    .await
}

#[tokio::test]
async fn cookie_mode_lands_on_redirect_url_signed_in_with_working_csrf() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();

    let first = b
        .get(&env.url("/signin?redirect_url=%2Fapps%2Fx%3Ftab%3D1"))
        .await;
    assert_eq!(first.status, 302);
    let state = first.set_cookie("dg_sso_state").expect("state cookie");
    assert_eq!(state.http_only(), Some(true));
    assert_eq!(state.max_age().map(|m| m.whole_seconds()), Some(600));
    let sso_page = b.follow(first, 2).await;
    assert!(sso_page.body.contains("Sign in as Alice Example"));

    // The SSO posts the form from its own site: the Lax state cookie is not sent with it.
    let callback = b.submit(&sso_page, "signin-alice").await;
    assert_eq!(callback.method, "POST");
    assert!(
        callback.url.ends_with("/qsso_backcall"),
        "form action {}",
        callback.url
    );
    assert_eq!(callback.status, 303, "{}", callback.body);
    assert_eq!(callback.location(), Some("/sso/continue"));
    let access = callback.set_cookie("access_token").expect("access cookie");
    let refresh = callback
        .set_cookie("refresh_token")
        .expect("refresh cookie");
    let csrf = callback.set_cookie("csrf_token").expect("csrf cookie");
    for c in [&access, &refresh, &csrf] {
        assert_eq!(c.path(), Some("/"), "{c}");
        assert_eq!(c.same_site(), Some(cookie::SameSite::Lax), "{c}");
        assert_eq!(c.secure(), None, "plain http: no Secure: {c}");
    }
    assert_eq!(access.http_only(), Some(true));
    assert_eq!(refresh.http_only(), Some(true));
    assert_eq!(
        csrf.http_only(),
        None,
        "the front end must read the csrf cookie"
    );
    assert_eq!(access.max_age().unwrap().whole_seconds(), 3600);
    assert_eq!(refresh.max_age().unwrap().whole_seconds(), 30 * 86400);
    assert_eq!(csrf.max_age().unwrap().whole_seconds(), 3600);

    let cont = b
        .request(
            "GET",
            &support::browser_sim::resolve(&callback.url, "/sso/continue"),
            None,
            Some(&callback.url),
            &[],
        )
        .await;
    assert_eq!(cont.status, 302);
    assert_eq!(cont.location(), Some("/apps/x?tab=1"));
    let landing = b.follow(cont, 3).await;
    assert_eq!(path_of(&landing.url), "/apps/x?tab=1");
    assert_signed_in(&landing, "Alice Example");
    // The flow's own cookies are gone.
    let left = b.cookie_names(&env.url("/"));
    assert!(
        !left.iter().any(|n| n.starts_with("dg_sso_")),
        "flow cookies left: {left:?}"
    );

    // The tokens are the management service's, the CSRF token minted for the same user.
    let minted = env.sso.minted();
    assert_eq!(minted.len(), 1);
    assert_eq!(access.value(), minted[0].access_token);
    assert_eq!(refresh.value(), minted[0].refresh_token);
    assert_eq!(refresh.value().len(), 128);

    // The exchange carried one trace id in the query and in X-Request-Id.
    let calls = env.sso.calls();
    assert_eq!(calls.len(), 1);
    let trace = calls[0].trace_id.clone().unwrap();
    assert!(is_uuid_v4(&trace), "{trace}");
    assert_eq!(calls[0].x_request_id.as_deref(), Some(trace.as_str()));
    assert!(
        calls[0]
            .uri
            .starts_with(&format!("/get_dify_token?trace_id={trace}&token="))
    );
    assert_eq!(
        calls[0].token.as_deref(),
        Some(env.sso.issued_tokens()[0].as_str())
    );

    // What the page's script does: profile with the CSRF header -> 200; Dify's checks hold.
    let ok = profile(&env, &mut b, "csrf_token").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("Alice Example"));
    let from = env.url("/apps");
    let no_header = b
        .request(
            "GET",
            &env.url("/console/api/account/profile"),
            None,
            Some(&from),
            &[],
        )
        .await;
    assert_eq!(no_header.status, 401);
    assert!(no_header.body.contains("CSRF token is missing or invalid."));
}

#[tokio::test]
async fn without_redirect_url_lands_on_home_and_portal_started_sign_in_works() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let mut b = env.browser();
    let landing = env.sign_in(&mut b, &env.url("/signin"), "bob").await;
    assert_eq!(path_of(&landing.url), "/apps");
    assert_signed_in(&landing, "Bob Müller");

    // Sign-in started at the SSO portal: no state cookie at all -> dify.home.
    let mut b = env.browser();
    let callback = env.url("/qsso_backcall");
    let sso_page = b.get(&env.sso.login_url_literal(&callback)).await;
    let after = b.submit(&sso_page, "signin-alice").await;
    let landing = b.follow(after, 5).await;
    assert_eq!(path_of(&landing.url), "/apps");
    assert_signed_in(&landing, "Alice Example");
}

#[tokio::test]
async fn get_callback_and_trailing_slash_callback_work() {
    let env = SsoEnv::start(SsoSetup {
        get_form: true,
        ..Default::default()
    })
    .await;
    let mut b = env.browser();
    let sso_page = env
        .to_sso_page(&mut b, &env.url("/signin?redirect_url=/apps/get"))
        .await;
    let cb = b.submit(&sso_page, "signin-alice").await;
    assert_eq!(cb.method, "GET");
    assert!(
        path_of(&cb.url).starts_with("/qsso_backcall?token="),
        "{}",
        cb.url
    );
    let landing = b.follow(cb, 5).await;
    assert_eq!(path_of(&landing.url), "/apps/get");
    assert_signed_in(&landing, "Alice Example");

    // `/qsso_backcall/` (the seed accepts it too), form POST.
    let mut b = env.browser();
    let sso_page = b
        .get(&env.sso.login_url_literal(&env.url("/qsso_backcall/")))
        .await;
    let cb = b.submit(&sso_page, "signin-bob").await;
    assert_eq!(
        (cb.method.as_str(), path_of(&cb.url).as_str()),
        ("POST", "/qsso_backcall/")
    );
    let landing = b.follow(cb, 5).await;
    assert_signed_in(&landing, "Bob Müller");
}

#[tokio::test]
async fn tokens_with_reserved_and_non_ascii_characters_survive() {
    for get_form in [false, true] {
        let env = SsoEnv::start(SsoSetup {
            get_form,
            ..Default::default()
        })
        .await;
        env.sso.set_token_style(TokenStyle::Nasty);
        let mut b = env.browser();
        let landing = env
            .sign_in(
                &mut b,
                &env.url("/signin?redirect_url=/apps/nasty"),
                "alice",
            )
            .await;
        assert_signed_in(&landing, "Alice Example");
        let issued = env.sso.issued_tokens();
        let call = &env.sso.calls()[0];
        let sent = call.token.clone().unwrap();
        assert!(
            issued.contains(&sent),
            "get_form={get_form}: the management service got {sent:?}, issued {issued:?}"
        );
        for c in ['&', '=', '%', '+', ' ', 'ü'] {
            assert!(sent.contains(c), "{sent:?} lacks {c:?}");
        }
        assert_eq!(call.status, 200);
    }
}

#[tokio::test]
async fn csrf_token_from_the_management_service_is_used() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    env.sso.set_behavior(ExchangeBehavior::OkWithCsrf);
    let mut b = env.browser();
    let landing = env.sign_in(&mut b, &env.url("/signin"), "alice").await;
    assert_signed_in(&landing, "Alice Example");
    let minted = env.sso.minted();
    assert_eq!(
        b.cookie(&env.url("/"), "csrf_token"),
        minted[0].csrf_token.clone()
    );
    assert_eq!(profile(&env, &mut b, "csrf_token").await.status, 200);
}

#[tokio::test]
async fn https_cookies_get_the_host_prefix_and_secure_as_dify_sets_them() {
    let mut dify = DifySettings::new(SECRET_KEY);
    dify.console_web_url = "https://dify.example.com".into();
    dify.console_api_url = "https://dify.example.com".into();
    let env = SsoEnv::start(SsoSetup {
        dify,
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..Default::default()
    })
    .await;
    // The browser reaches the gateway as https://dify.example.com, behind a TLS-terminating proxy.
    let mut b = env.browser();
    b.map("dify.example.com:443", env.gw.listen);
    b.extra_header("dify.example.com:443", "x-forwarded-proto", "https");
    let first = b
        .get("https://dify.example.com/signin?redirect_url=/apps/tls")
        .await;
    // The gateway's own cookies get `__Host-` too, so a sibling subdomain cannot plant them.
    for c in first.set_cookies() {
        assert!(c.starts_with("__Host-dg_sso_"), "{c}");
    }
    let state = first.set_cookie("__Host-dg_sso_state").unwrap();
    assert_eq!(state.same_site(), Some(cookie::SameSite::None));
    assert_eq!(state.secure(), Some(true));
    assert_eq!(state.path(), Some("/"));
    let callback_url = first.location().unwrap().to_string();
    assert!(
        callback_url.contains("ret=https%3A%2F%2Fdify.example.com%2Fqsso_backcall"),
        "{callback_url}"
    );
    let sso_page = b.follow(first, 2).await;
    let cb = b.submit(&sso_page, "signin-alice").await;
    for base in ["access_token", "refresh_token", "csrf_token"] {
        let c = cb
            .set_cookie(&format!("__Host-{base}"))
            .unwrap_or_else(|| panic!("no __Host-{base}: {:?}", cb.set_cookies()));
        assert_eq!(c.secure(), Some(true));
        assert_eq!(c.domain(), None);
    }
    let landing = b.follow(cb, 5).await;
    assert_eq!(path_of(&landing.url), "/apps/tls");
    assert_signed_in(&landing, "Alice Example");
    assert_eq!(
        profile_at(&mut b, "https://dify.example.com", "__Host-csrf_token")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn cookie_domain_drops_the_prefix_and_sets_domain() {
    let mut dify = DifySettings::new(SECRET_KEY);
    dify.console_web_url = "https://dify.example.com".into();
    dify.console_api_url = "https://dify.example.com".into();
    dify.cookie_domain = ".example.com".into();
    let env = SsoEnv::start(SsoSetup {
        dify,
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..Default::default()
    })
    .await;
    let mut b = env.browser();
    b.map("dify.example.com:443", env.gw.listen);
    b.extra_header("dify.example.com:443", "x-forwarded-proto", "https");
    let sso_page = env
        .to_sso_page(&mut b, "https://dify.example.com/signin")
        .await;
    let cb = b.submit(&sso_page, "signin-alice").await;
    let c = cb
        .set_cookie("access_token")
        .expect("plain name with a cookie domain");
    assert_eq!(c.domain(), Some("example.com"));
    assert_eq!(c.secure(), Some(true));
    let landing = b.follow(cb, 5).await;
    assert_signed_in(&landing, "Alice Example");
}

#[tokio::test]
async fn query_mode_puts_the_tokens_on_the_landing_url_for_old_dify() {
    let env = SsoEnv::start(SsoSetup::default().legacy()).await;
    let mut b = env.browser();
    let sso_page = env
        .to_sso_page(
            &mut b,
            &env.url("/signin?redirect_url=%2Fapps%2Fold%3Fa%3D1"),
        )
        .await;
    let cb = b.submit(&sso_page, "signin-alice").await;
    assert_eq!(cb.status, 303);
    assert!(
        cb.set_cookies()
            .iter()
            .all(|c| !c.starts_with("access_token=")),
        "query mode sets no Dify cookies: {:?}",
        cb.set_cookies()
    );
    let landing = b.follow(cb, 5).await;
    let minted = env.sso.minted();
    let last = minted.last().unwrap();
    let expected = format!(
        "/apps/old?a=1&access_token={}&refresh_token={}",
        last.access_token, last.refresh_token
    );
    assert_eq!(path_of(&landing.url), expected);
    assert_signed_in(&landing, "Alice Example");
    // Old Dify: Bearer without CSRF.
    let from = env.url("/apps");
    let auth = format!("Bearer {}", last.access_token);
    let p = b
        .request(
            "GET",
            &env.url("/console/api/account/profile"),
            None,
            Some(&from),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
}

#[tokio::test]
async fn open_redirect_attempts_land_on_home() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let attacks = [
        "//evil.com",
        "/\\evil.com",
        "https://evil.com",
        "http://evil.com/apps",
        "/%2F%2Fevil.com",
        "/%5Cevil.com",
        "javascript:alert(1)",
        "/\r\nLocation: https://evil.com",
        "/%0d%0aSet-Cookie:x=1",
        "/apps@evil.com",
        "//user:pass@evil.com",
        "https://127.0.0.1@evil.com/",
        "/\t/evil.com",
        "/signin?redirect_url=//evil.com",
        "/qsso_backcall",
        "/sso/continue",
    ];
    for attack in attacks {
        let mut b = env.browser();
        let enc: String = form_urlencoded::byte_serialize(attack.as_bytes()).collect();
        let landing = env
            .sign_in(
                &mut b,
                &env.url(&format!("/signin?redirect_url={enc}")),
                "alice",
            )
            .await;
        assert_eq!(
            path_of(&landing.url),
            "/apps",
            "redirect_url {attack:?} must land on dify.home; hops {:?}",
            b.urls()
        );
        for hop in &b.history {
            if let Some(l) = hop.location() {
                assert!(!l.contains("evil"), "{attack:?}: a hop went to {l}");
            }
        }
        assert_signed_in(&landing, "Alice Example");
    }
    // A same-origin absolute URL is taken as its path.
    let mut b = env.browser();
    let own = env.url("/apps/own");
    let enc: String = form_urlencoded::byte_serialize(own.as_bytes()).collect();
    let landing = env
        .sign_in(
            &mut b,
            &env.url(&format!("/signin?redirect_url={enc}")),
            "alice",
        )
        .await;
    assert_eq!(path_of(&landing.url), "/apps/own");
}

#[tokio::test]
async fn a_sign_in_started_on_one_replica_finishes_on_another() {
    let sso = support::sso_mock::SsoMock::start(SECRET_KEY, users()).await;
    let dify = support::dify_mock::DifyMock::start(DifySettings::new(SECRET_KEY)).await;
    for u in users() {
        dify.add_account(&u.user_id, &u.name);
    }
    let setup = SsoSetup::default();
    let a = gateway_for(&sso, &dify, &setup, Gateway::builder())
        .start()
        .await;
    let bgw = gateway_for(&sso, &dify, &setup, Gateway::builder())
        .start()
        .await;

    // One site, "dify.test", served by replica A for /signin and replica B afterwards.
    let mut br = Browser::new();
    br.map("dify.test:80", a.listen);
    let first = br
        .get("http://dify.test/signin?redirect_url=/apps/two")
        .await;
    assert_eq!(first.status, 302);
    let sso_page = br.follow(first, 2).await;
    br.map("dify.test:80", bgw.listen);
    let cb = br.submit(&sso_page, "signin-alice").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let landing = br.follow(cb, 5).await;
    assert_eq!(path_of(&landing.url), "/apps/two", "hops {:?}", br.urls());
    assert_signed_in(&landing, "Alice Example");
    // The gateway's stderr is read by another thread: wait for the line rather than race it.
    let served = support::poll_until(std::time::Duration::from_secs(10), || async {
        b_served(&bgw).then_some(())
    })
    .await;
    assert!(served.is_some(), "replica B must have served the callback");
}

fn b_served(gw: &Gateway) -> bool {
    gw.stderr().contains("sign-in callback") || !gw.access_log().is_empty()
}

#[tokio::test]
async fn a_replica_with_another_state_secret_cannot_read_the_state() {
    let sso = support::sso_mock::SsoMock::start(SECRET_KEY, users()).await;
    let dify = support::dify_mock::DifyMock::start(DifySettings::new(SECRET_KEY)).await;
    for u in users() {
        dify.add_account(&u.user_id, &u.name);
    }
    let setup = SsoSetup::default();
    let a = gateway_for(&sso, &dify, &setup, Gateway::builder())
        .start()
        .await;
    let yaml_b = gateway_for(&sso, &dify, &setup, Gateway::builder()).to_yaml();
    let changed = yaml_b.replace(STATE_SECRET, "a-different-state-secret-0000000000");
    // Start B from the changed YAML through a builder that only carries it.
    let mut builder = Gateway::builder()
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()]);
    let sso_part = &changed[changed.find("sso:\n").unwrap()..];
    builder = builder.extra_yaml(sso_part);
    let bgw = builder.start().await;

    let mut br = Browser::new();
    br.map("dify.test:80", a.listen);
    let first = br
        .get("http://dify.test/signin?redirect_url=/apps/two")
        .await;
    let sso_page = br.follow(first, 2).await;
    br.map("dify.test:80", bgw.listen);
    let cb = br.submit(&sso_page, "signin-alice").await;
    let landing = br.follow(cb, 5).await;
    // Signed in (the callback needs no state), but the return target is not trusted.
    assert_eq!(path_of(&landing.url), "/apps", "hops {:?}", br.urls());
    assert_signed_in(&landing, "Alice Example");
}

#[tokio::test]
async fn bypass_cidrs_reach_difys_own_sign_in_page() {
    let env = SsoEnv::start(SsoSetup::default().sso("bypass_cidrs: [\"127.0.0.1/32\"]")).await;
    let mut b = env.browser();
    let p = b.get(&env.url("/signin")).await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(p.body.contains("Dify sign-in page"));
}

#[tokio::test]
async fn the_seed_environment_without_an_sso_section_turns_the_flow_on() {
    for with_key in [true, false] {
        let sso = support::sso_mock::SsoMock::start(SECRET_KEY, users()).await;
        let mut settings = DifySettings::new(SECRET_KEY);
        settings.legacy = !with_key;
        let dify = support::dify_mock::DifyMock::start(settings).await;
        for u in users() {
            dify.add_account(&u.user_id, &u.name);
        }
        let builder = Gateway::builder()
            .embedded_default()
            .upstream("api", &[dify.addr()])
            .upstream("web", &[dify.addr()]);
        let base = format!("http://127.0.0.1:{}", builder.listen.port());
        let mut builder = builder
            .env(
                "QSSO_LOGIN_URL",
                &sso.login_url_literal(&format!("{base}/qsso_backcall")),
            )
            .env("DIFY_TOKEN_BY_QSSO_API_BASE_URL", &sso.exchange_url())
            .env("DIFY_HOME_PAGE_BASE_URL", &format!("{base}/apps"));
        if with_key {
            builder = builder.env("DIFY_SECRET_KEY", SECRET_KEY);
        }
        let gw = builder.start().await;
        let mut b = Browser::new();
        let first = b.get(&format!("{base}/signin")).await;
        assert_eq!(first.status, 302, "with_key={with_key}: {}", first.body);
        let sso_page = b.follow(first, 2).await;
        let cb = b.submit(&sso_page, "signin-alice").await;
        let landing = b.follow(cb, 5).await;
        let url = landing.url.clone();
        assert!(url.starts_with(&format!("{base}/apps")), "{url}");
        if with_key {
            assert_eq!(path_of(&url), "/apps");
            assert!(b.cookie(&base, "access_token").is_some());
        } else {
            assert!(
                path_of(&url).starts_with("/apps?access_token="),
                "the seed's query delivery: {url}"
            );
        }
        assert_signed_in(&landing, "Alice Example");
        drop(gw);
    }
}

/// Over https the state cookie is `SameSite=None; Secure`, so it comes back with the SSO's
/// cross-site POST: one trace id from `/signin` through the exchange to the error page.
#[tokio::test]
async fn over_https_one_trace_id_runs_from_signin_to_the_exchange_and_the_error_page() {
    let env = SsoEnv::start(SsoSetup {
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..Default::default()
    })
    .await;
    env.sso.set_behavior(ExchangeBehavior::Status(500));
    let mut b = env.browser();
    b.extra_header(&env.gw.listen.to_string(), "x-forwarded-proto", "https");
    let sso_page = env.to_sso_page(&mut b, &env.url("/signin")).await;
    let p = b.submit(&sso_page, "signin-alice").await;
    let trace = assert_error_page(&p, 502, "status 500");
    assert_eq!(env.sso.calls()[0].trace_id.as_deref(), Some(trace.as_str()));
    let logs = env.gw.stderr();
    let started = logs
        .lines()
        .find(|l| l.contains("sending the browser to the SSO"))
        .unwrap_or_else(|| panic!("no sign-in start in the log: {logs}"));
    assert!(
        started.contains(&trace),
        "the /signin log line must carry the flow's trace id {trace}: {started}"
    );
}
