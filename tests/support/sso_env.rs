//! The SSO test bench: mock SSO login page, mock management service and mock Dify (as the api and
//! web upstreams), and the real gateway configured for them; plus a simulated browser that walks
//! the sign-in flow.

#![allow(dead_code)]

use super::browser_sim::{Browser, Page};
use super::dify_mock::{DifyMock, DifySettings};
use super::gateway::{Gateway, GatewayBuilder, yq};
use super::sso_mock::{SsoMock, SsoUser};

pub const SECRET_KEY: &str = "sk-test-dify-secret-KEY-4f1c9a77e2b84d0f";
pub const STATE_SECRET: &str = "state-secret-0123456789abcdef-shared";
pub const ALICE_ID: &str = "6f1c0d2a-0000-4000-8000-00000000a11c";
pub const BOB_ID: &str = "6f1c0d2a-0000-4000-8000-0000000000b0";
pub const MALLORY_ID: &str = "6f1c0d2a-0000-4000-8000-0000000000ff";

pub fn users() -> Vec<SsoUser> {
    vec![
        SsoUser::new("alice", "Alice Example", ALICE_ID).with_email("Alice@corp.example", &["hr"]),
        SsoUser::new("bob", "Bob Müller", BOB_ID).with_email("bob@corp.example", &["eng"]),
        SsoUser::new("mallory", "Mallory Banned", MALLORY_ID).refused(),
    ]
}

/// What to put in the gateway's config.
#[derive(Clone)]
pub struct SsoSetup {
    pub dify: DifySettings,
    /// Raw YAML lines under `sso:` (beyond login_url, exchange url, state_secret).
    pub sso_extra: Vec<String>,
    /// Raw YAML lines under `dify:` (beyond secret_key).
    pub dify_extra: Vec<String>,
    pub exchange_timeout: String,
    /// Put a dead address as the exchange URL.
    pub dead_exchange: bool,
    pub with_secret_key: bool,
    pub rust_log: String,
    pub trusted_proxies: Vec<String>,
    /// The SSO page renders GET forms (the token arrives in the callback's query string).
    pub get_form: bool,
}

impl Default for SsoSetup {
    fn default() -> Self {
        SsoSetup {
            dify: DifySettings::new(SECRET_KEY),
            sso_extra: Vec::new(),
            dify_extra: Vec::new(),
            exchange_timeout: "3s".into(),
            dead_exchange: false,
            with_secret_key: true,
            rust_log: "info".into(),
            trusted_proxies: Vec::new(),
            get_form: false,
        }
    }
}

impl SsoSetup {
    pub fn sso(mut self, line: &str) -> Self {
        self.sso_extra.push(line.into());
        self
    }

    pub fn dify_line(mut self, line: &str) -> Self {
        self.dify_extra.push(line.into());
        self
    }

    pub fn legacy(mut self) -> Self {
        self.dify.legacy = true;
        self.dify_extra.push("session_delivery: query".into());
        self
    }
}

pub struct SsoEnv {
    pub sso: SsoMock,
    pub dify: DifyMock,
    pub gw: Gateway,
    pub setup: SsoSetup,
}

impl SsoEnv {
    pub async fn start(setup: SsoSetup) -> SsoEnv {
        let sso = SsoMock::start(SECRET_KEY, users()).await;
        let dify = DifyMock::start(setup.dify.clone()).await;
        for u in users() {
            dify.add_account(&u.user_id, &u.name);
        }
        let gw = gateway_for(&sso, &dify, &setup, Gateway::builder())
            .start()
            .await;
        SsoEnv {
            sso,
            dify,
            gw,
            setup,
        }
    }

    /// `http://127.0.0.1:<gateway port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    pub fn browser(&self) -> Browser {
        Browser::new()
    }

    /// Starts a sign-in at `signin_url`, picks `user` on the SSO page (form `signin-<user>`) and
    /// follows the browser to where it lands. Returns the landing page.
    pub async fn sign_in(&self, b: &mut Browser, signin_url: &str, user: &str) -> Page {
        let sso_page = self.to_sso_page(b, signin_url).await;
        let after = b.submit(&sso_page, &format!("signin-{user}")).await;
        b.follow(after, 10).await
    }

    /// `/signin...` -> 302 to the SSO -> the SSO page (asserts both hops).
    pub async fn to_sso_page(&self, b: &mut Browser, signin_url: &str) -> Page {
        let first = b.get(signin_url).await;
        assert_eq!(
            first.status, 302,
            "{signin_url} must redirect to the SSO; body {:?}",
            first.body
        );
        let to = first.location().expect("Location").to_string();
        assert!(
            to.starts_with(&self.sso.login_page.url("/login")),
            "{signin_url} must go to the SSO login page, got {to}"
        );
        let page = b.follow(first, 3).await;
        assert_eq!(page.status, 200, "SSO page: {}", page.body);
        page
    }
}

pub fn gateway_for(
    sso: &SsoMock,
    dify: &DifyMock,
    setup: &SsoSetup,
    builder: GatewayBuilder,
) -> GatewayBuilder {
    let exchange = if setup.dead_exchange {
        format!("http://{}/get_dify_token", super::dead_addr())
    } else {
        sso.exchange_url()
    };
    let mut y = String::from("sso:\n");
    let mut login_url = sso.login_url_template();
    if setup.get_form {
        login_url = login_url.replace("/login?", "/login?method=get&");
    }
    y.push_str(&format!("  login_url: {}\n", yq(&login_url)));
    y.push_str(&format!("  state_secret: {}\n", yq(STATE_SECRET)));
    y.push_str("  exchange:\n");
    y.push_str(&format!("    url: {}\n", yq(&exchange)));
    y.push_str(&format!("    timeout: {}\n", yq(&setup.exchange_timeout)));
    for l in &setup.sso_extra {
        y.push_str(&format!("  {l}\n"));
    }
    y.push_str("dify:\n");
    if setup.with_secret_key {
        y.push_str(&format!("  secret_key: {}\n", yq(SECRET_KEY)));
    }
    for (key, value) in [
        ("console_web_url", &setup.dify.console_web_url),
        ("console_api_url", &setup.dify.console_api_url),
        ("cookie_domain", &setup.dify.cookie_domain),
    ] {
        if !value.is_empty() {
            y.push_str(&format!("  {key}: {}\n", yq(value)));
        }
    }
    for l in &setup.dify_extra {
        y.push_str(&format!("  {l}\n"));
    }
    let tp: Vec<&str> = setup.trusted_proxies.iter().map(String::as_str).collect();
    builder
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()])
        .trusted_proxies(&tp)
        .rust_log(&setup.rust_log)
        .extra_yaml(&y)
}

/// The trace id shown on a gateway error page (`<code>UUID</code>`).
pub fn trace_id_on_page(body: &str) -> Option<String> {
    let mut rest = body;
    while let Some(i) = rest.find("<code>") {
        let after = &rest[i + 6..];
        let end = after.find("</code>")?;
        let candidate = &after[..end];
        if uuid::Uuid::parse_str(candidate).is_ok() {
            return Some(candidate.to_string());
        }
        rest = &after[end..];
    }
    None
}

/// Checks a sign-in error page: status, HTML, the reason, a "Try again" link, no redirect, no
/// Dify session cookie; returns the trace id shown.
pub fn assert_error_page(p: &Page, status: u16, reason: &str) -> String {
    assert_eq!(
        p.status, status,
        "status of {} {}; body {}",
        p.method, p.url, p.body
    );
    assert!(
        p.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "an error page must be HTML: {:?}",
        p.headers
    );
    assert!(
        p.location().is_none(),
        "a failure must never redirect: {:?}",
        p.location()
    );
    assert!(p.body.contains("Sign-in failed"), "{}", p.body);
    assert!(
        p.body.contains(reason),
        "reason {reason:?} not on the page: {}",
        p.body
    );
    assert!(
        p.body.contains("href=\"/signin\""),
        "no Try again link: {}",
        p.body
    );
    for c in p.set_cookies() {
        assert!(
            !c.contains("access_token=")
                && !c.contains("refresh_token=")
                && !c.contains("csrf_token="),
            "a failure must not set a Dify session cookie: {c}"
        );
    }
    let trace =
        trace_id_on_page(&p.body).unwrap_or_else(|| panic!("no trace id on the page: {}", p.body));
    assert!(
        uuid::Uuid::parse_str(&trace).is_ok_and(|u| u.get_version_num() == 4),
        "trace id {trace} is not a UUID v4"
    );
    trace
}

/// The mock Dify's page for a signed-in user.
pub fn assert_signed_in(p: &Page, name: &str) {
    assert_eq!(p.status, 200, "{} -> {}: {}", p.url, p.status, p.body);
    assert!(
        p.body.contains(&format!("Signed in as {name}")),
        "landing page {} is not signed in as {name}: {}",
        p.url,
        p.body
    );
}
