//! Sign-ins that someone else could plant in a victim's browser, through the real binary: a
//! foreign page posting its owner's own SSO token to the callback (login CSRF), a callback URL
//! built from a client's `Host`, gateway cookies planted by a sibling subdomain, and a sign-in
//! state redeemed twice across replicas.

mod support;

use support::browser_sim::{Browser, Page};
use support::dify_mock::{DifyMock, DifySettings};
use support::dify_services::services;
use support::sso_env::*;
use support::sso_mock::SsoMock;
use support::{Gateway, yq};

const EVIL: &str = "http://evil.example/attack.html";
const SITE: &str = "https://dify.example.com";
const SITE_AUTHORITY: &str = "dify.example.com:443";

/// The attacker signs in at the SSO as themselves (Bob) and keeps the one-time token from the
/// form instead of submitting it.
async fn attackers_own_token(env: &SsoEnv) -> String {
    let mut attacker = env.browser();
    let page = env.to_sso_page(&mut attacker, &env.url("/signin")).await;
    let form = page.form("signin-bob").expect("Bob's form");
    form.fields
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.clone())
        .expect("token field")
}

fn form_body(token: &str) -> Option<(&'static str, Vec<u8>)> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish();
    Some(("application/x-www-form-urlencoded", body.into_bytes()))
}

const REFUSED: &str = "did not come from the company";

#[tokio::test]
async fn a_foreign_page_cannot_sign_the_visitor_in_as_someone_else() {
    let env = SsoEnv::start(SsoSetup::default()).await;
    let token = attackers_own_token(&env).await;
    let cb = env.url("/qsso_backcall");
    let escaped: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let get_cb = format!("{cb}?token={escaped}");
    // What a page on evil.example can make a browser send.
    type Try<'a> = (&'a str, &'a str, Option<&'a str>, Vec<(&'a str, &'a str)>);
    let tries: Vec<Try> = vec![
        // An auto-submitting form: the browser names evil.example in Origin.
        ("POST", &cb, Some(EVIL), vec![]),
        // A sandboxed iframe or `Referrer-Policy: no-referrer`: Origin null.
        ("POST", &cb, None, vec![("origin", "null")]),
        // Old clients: no Origin, a Referer of the attacker's page.
        ("POST", &cb, None, vec![("referer", EVIL)]),
        // Nothing at all said about where it came from.
        ("POST", &cb, None, vec![]),
        // A link or an <img>: GET with the token in the query.
        ("GET", &get_cb, None, vec![("referer", EVIL)]),
        ("GET", &get_cb, None, vec![("sec-fetch-site", "cross-site")]),
    ];
    for (method, url, initiator, headers) in &tries {
        let mut victim = env.browser();
        let body = (*method == "POST").then(|| form_body(&token)).flatten();
        let p = victim.request(method, url, body, *initiator, headers).await;
        assert_error_page(&p, 400, REFUSED);
        assert!(
            p.set_cookies()
                .iter()
                .all(|c| !c.starts_with("access_token")),
            "{method} {url} {headers:?}"
        );
    }
    // A victim with a sign-in of their own open in another tab: still refused from evil.example.
    let mut victim = env.browser();
    assert_eq!(victim.get(&env.url("/signin")).await.status, 302);
    let p = victim
        .request("POST", &cb, form_body(&token), Some(EVIL), &[])
        .await;
    assert_error_page(&p, 400, REFUSED);
    assert!(
        env.sso.calls().is_empty(),
        "the exchange must not be asked for a planted token: {:?}",
        env.sso.calls().len()
    );
    assert!(env.gw.stderr().contains("callback refused"));
    // The token itself still works for its owner, from the SSO's page.
    let mut bob = env.browser();
    let landing = env.sign_in(&mut bob, &env.url("/signin"), "bob").await;
    assert_signed_in(&landing, "Bob Müller");
}

/// The browser on `https://dify.example.com`, behind a TLS-terminating proxy the gateway trusts.
fn https_setup() -> SsoSetup {
    let mut dify = DifySettings::new(SECRET_KEY);
    dify.console_web_url = SITE.into();
    dify.console_api_url = SITE.into();
    SsoSetup {
        dify,
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..Default::default()
    }
}

fn https_browser(env: &SsoEnv) -> Browser {
    let mut b = env.browser();
    b.map(SITE_AUTHORITY, env.gw.listen);
    b.extra_header(SITE_AUTHORITY, "x-forwarded-proto", "https");
    b
}

/// The SSO's own page posting a token to the callback of a browser that started no sign-in.
async fn unsolicited_post(b: &mut Browser, token: &str, from: &str) -> Page {
    b.request(
        "POST",
        &format!("{SITE}/qsso_backcall"),
        form_body(token),
        Some(from),
        &[],
    )
    .await
}

#[tokio::test]
async fn over_https_a_callback_needs_a_sign_in_this_browser_started() {
    let env = SsoEnv::start(https_setup()).await;
    let token = attackers_own_token(&env).await;
    let sso_origin = env.sso.login_page.url("/login");
    // Even claiming the SSO's own origin (what a compromised or open SSO page could send), no
    // state cookie means no sign-in: IdP-initiated sign-in is off by default.
    let mut victim = https_browser(&env);
    let p = unsolicited_post(&mut victim, &token, &sso_origin).await;
    assert_error_page(&p, 400, REFUSED);
    assert!(env.sso.calls().is_empty());
    // A sign-in the browser started: its state cookie comes back on the SSO's cross-site POST.
    let mut alice = https_browser(&env);
    let landing = env
        .sign_in(
            &mut alice,
            &format!("{SITE}/signin?redirect_url=/apps/a"),
            "alice",
        )
        .await;
    assert_signed_in(&landing, "Alice Example");
}

#[tokio::test]
async fn idp_initiated_sign_in_is_an_opt_in_and_only_from_the_sso() {
    let env = SsoEnv::start(https_setup().sso("idp_initiated: true")).await;
    let sso_origin = env.sso.login_page.url("/login");
    let token = attackers_own_token(&env).await;
    let mut from_evil = https_browser(&env);
    let p = unsolicited_post(&mut from_evil, &token, EVIL).await;
    assert_error_page(&p, 400, REFUSED);
    assert!(env.sso.calls().is_empty());
    // The SSO's portal starts the sign-in: accepted, and the browser lands on Dify's home.
    let mut b = https_browser(&env);
    let cb = unsolicited_post(&mut b, &token, &sso_origin).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let landing = b.follow(cb, 5).await;
    assert_signed_in(&landing, "Bob Müller");
}

#[tokio::test]
async fn the_callback_url_comes_from_configuration_not_from_host() {
    let mut setup = SsoSetup::default().sso("public_origins: [\"http://other.example:8080\"]");
    setup.dify.console_web_url = "http://dify.example.com".into();
    let env = SsoEnv::start(setup).await;
    let to_sso = |host: &'static str| {
        let env = &env;
        async move {
            let mut b = env.browser();
            let authority = if host.contains(':') {
                host.to_string()
            } else {
                format!("{host}:80")
            };
            b.map(&authority, env.gw.listen);
            let p = b.get(&format!("http://{host}/signin")).await;
            assert_eq!(p.status, 302, "Host {host}: {}", p.body);
            let location = p.location().unwrap().to_string();
            let (_, ret) = location.split_once("ret=").unwrap();
            form_urlencoded::parse(ret.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap()
        }
    };
    assert_eq!(
        to_sso("evil.example").await,
        "http://dify.example.com/qsso_backcall"
    );
    // The gateway's stderr is read by another thread: wait for the line rather than race it.
    let logged = support::poll_until(std::time::Duration::from_secs(10), || async {
        env.gw
            .stderr()
            .contains("the request's Host is not a configured public origin")
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "the refusal is logged");
    assert_eq!(
        to_sso("dify.example.com").await,
        "http://dify.example.com/qsso_backcall"
    );
    // Another configured origin is used as the browser reached it.
    assert_eq!(
        to_sso("other.example:8080").await,
        "http://other.example:8080/qsso_backcall"
    );
}

#[tokio::test]
async fn over_https_cookies_planted_by_a_sibling_subdomain_are_not_read() {
    let env = SsoEnv::start(https_setup()).await;
    let mut b = https_browser(&env);
    // What `Set-Cookie: ...; Domain=example.com` from evil.example.com leaves in the jar: bare
    // names, which the gateway only uses over plain HTTP. A lock-out by loop counter, and a
    // signed-out mark that would hide the sign-in.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    b.set_cookie_raw(SITE, "dg_sso_loop", &format!("3.{now}"));
    b.set_cookie_raw(SITE, "dg_sso_signed_out", "1");
    let landing = env
        .sign_in(
            &mut b,
            &format!("{SITE}/signin?redirect_url=/apps/p"),
            "alice",
        )
        .await;
    assert_signed_in(&landing, "Alice Example");
}

#[tokio::test]
async fn a_state_is_redeemed_once_across_replicas_sharing_redis() {
    let Some(services) = services().await else {
        return;
    };
    let sso = SsoMock::start(SECRET_KEY, users()).await;
    let dify = DifyMock::start(DifySettings::new(SECRET_KEY)).await;
    for u in users() {
        dify.add_account(&u.user_id, &u.name);
    }
    // A key prefix of its own, so parallel runs do not meet in the shared Redis.
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    // Over HTTPS, where the state cookie comes back on the SSO's POST (over plain HTTP the
    // browser withholds it and the SSO token's own single use is what stops a replay).
    let mut setup = SsoSetup::default()
        .sso("store: redis")
        .dify_line(&format!("redis_url: {}", yq(&services.redis_url)))
        .dify_line(&format!("redis_key_prefix: {}", yq(&prefix)));
    setup.trusted_proxies = vec!["127.0.0.1/32".into()];
    let a = gateway_for(&sso, &dify, &setup, Gateway::builder())
        .start()
        .await;
    let b = gateway_for(&sso, &dify, &setup, Gateway::builder())
        .start()
        .await;
    let mut br = Browser::new();
    br.map("dify.test:443", a.listen);
    br.extra_header("dify.test:443", "x-forwarded-proto", "https");
    let first = br.get("https://dify.test/signin").await;
    let sso_page = br.follow(first, 2).await;
    let form = sso_page.form("signin-alice").unwrap();
    let cb = br.submit_form(&form, &sso_page.url).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let calls = sso.calls().len();
    // The same callback, state cookie and all, replayed at replica B.
    br.map("dify.test:443", b.listen);
    let again = br.submit_form(&form, &sso_page.url).await;
    assert_error_page(&again, 400, REFUSED);
    assert_eq!(
        sso.calls().len(),
        calls,
        "replica B must not ask the exchange"
    );
    let mut redis = services.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:dify_gateway:sso_state:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");
}
