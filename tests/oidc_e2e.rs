//! OpenID Connect end to end against a real, certified OpenID provider that no one here wrote:
//! panva's `oidc-provider` (OpenID Certified), run with Node from `tests/oidc-provider/`
//! (`provider.mjs`). A scripted browser signs in through the real gateway binary: `/signin` ->
//! the provider's authorization endpoint -> its login and consent pages (forms posted as a browser
//! posts them) -> the gateway's callback (code redeemed with PKCE, ID token checked against the
//! provider's JWKS, claims from userinfo) -> the management service's identity call ->
//! `/sso/continue` -> the Dify page it started from, where the mock Dify accepts the session
//! (cookies, JWT signature, CSRF header on the profile API).
//!
//! The test installs nothing: `npm ci --prefix tests/oidc-provider` (run by `scripts/install-deps`)
//! must have been run. Without `tests/oidc-provider/node_modules` the test fails when `CI` is set
//! and is skipped (with a notice) otherwise.
//!
//! The browser reaches the gateway as `localhost` and the provider as `127.0.0.1`, two sites, so the
//! SameSite rules of a real cross-site sign-in apply to every hop.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::browser_sim::{Browser, Page};
use support::dify_mock::{DifyMock, DifySettings};
use support::gateway::{Gateway, yq};
use support::identity_mock::IdentityMock;
use support::is_uuid_v4;
use support::sso_env::{SECRET_KEY, STATE_SECRET, assert_error_page};

const CLIENT_ID: &str = "dify-gateway-e2e";
const CLIENT_SECRET: &str = "oidc-e2e-client-secret-5b2f9c0e41d7a8e3";
const LOGIN: &str = "ann";
const PASSWORD: &str = "correct horse battery staple";
/// The provider's user (see provider.mjs).
const SUBJECT: &str = "ann-7d1f0c52";
const ANN_ID: &str = "6f1c0d2a-0000-4000-8000-0000000a0001";
const API_KEY: &str = "mgmt-api-key-e2e-3c9d71f0a4b2";
/// How long Node may take to start the provider on a busy machine.
const PROVIDER_START: Duration = Duration::from_secs(60);

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// The Node to run: the one `scripts/install-deps` put into `.tools/` when the system's was too
/// old or missing, else `node` on PATH.
fn node() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/node/bin/node");
    if local.is_file() {
        local
    } else {
        PathBuf::from("node")
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Whether the provider can run here: its npm dependencies installed and `node` on PATH. Missing
/// under CI fails the test; elsewhere it is skipped with a notice.
fn provider_available() -> bool {
    let installed = provider_dir()
        .join("node_modules/oidc-provider/package.json")
        .is_file();
    let node = Command::new(node())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = match (installed, node) {
        (true, true) => return true,
        (false, _) => {
            "tests/oidc-provider/node_modules is missing: run `npm ci --prefix tests/oidc-provider` (scripts/install-deps does it)"
        }
        (true, false) => {
            "`node` is not on PATH (scripts/install-deps installs Node.js into .tools/)"
        }
    };
    if in_ci() {
        panic!("the OIDC end-to-end test cannot run: {missing}");
    }
    eprintln!("SKIPPED oidc_e2e: {missing}");
    false
}

/// The Node process running `provider.mjs`; killed when dropped.
struct OidcProvider {
    child: Child,
    issuer: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn capture_lines(pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl OidcProvider {
    /// Starts the provider on a free port with one client whose only redirect URI is
    /// `redirect_uri`; returns once it printed `ready <issuer>` (it listens by then).
    async fn start(redirect_uri: &str) -> OidcProvider {
        let mut child = Command::new(node())
            .arg("provider.mjs")
            .arg("--port=0")
            .arg(format!("--redirect-uri={redirect_uri}"))
            .arg(format!("--client-id={CLIENT_ID}"))
            .arg(format!("--client-secret={CLIENT_SECRET}"))
            .arg(format!("--password={PASSWORD}"))
            .current_dir(provider_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}"));
        let stdout = capture_lines(child.stdout.take().unwrap());
        let stderr = capture_lines(child.stderr.take().unwrap());
        let mut p = OidcProvider {
            child,
            issuer: String::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + PROVIDER_START;
        loop {
            let ready = p
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix("ready ").map(str::to_string));
            if let Some(issuer) = ready {
                p.issuer = issuer;
                return p;
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "the OIDC provider exited during start-up ({status}):\n{}",
                    p.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the OIDC provider did not print `ready` within {PROVIDER_START:?}:\n{}",
                p.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn output(&self) -> String {
        format!(
            "-- stdout --\n{}\n-- stderr --\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// `(id_token, access_token)` of every successful token answer the provider gave.
    fn issued_tokens(&self) -> Vec<(String, String)> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("issued-tokens "))
            .map(|j| {
                let v: serde_json::Value = serde_json::from_str(j).expect("issued-tokens JSON");
                (
                    v["id_token"].as_str().unwrap_or_default().to_string(),
                    v["access_token"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- oidc-provider output ----\n{}\n---- end ----",
                self.output()
            );
        }
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn path_and_query(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

/// Fills the named fields of form `id` on `page` and submits it (not followed).
async fn fill_and_submit(b: &mut Browser, page: &Page, id: &str, values: &[(&str, &str)]) -> Page {
    let mut form = page.form(id).unwrap_or_else(|| {
        panic!(
            "no form {id:?} on {} ({}): {}",
            page.url, page.status, page.body
        )
    });
    for (name, value) in values {
        let names: Vec<String> = form.fields.iter().map(|(n, _)| n.clone()).collect();
        let field = form
            .fields
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("form {id:?} has no field {name:?}: {names:?}"));
        field.1 = value.to_string();
    }
    b.submit_form(&form, &page.url.clone()).await
}

/// `/signin` -> the provider (already signed in and consented) -> the callback URL it sends the
/// browser to, not followed.
async fn provider_callback(b: &mut Browser, signin: &str, callback: &str) -> String {
    let mut page = b.get(signin).await;
    for _ in 0..8 {
        let to = page
            .location()
            .unwrap_or_else(|| panic!("{} answered {}: {}", page.url, page.status, page.body))
            .to_string();
        if to.starts_with(callback) {
            return to;
        }
        page = b.get(&to).await;
    }
    panic!(
        "the provider never sent the browser back to {callback}: {:#?}",
        b.urls()
    );
}

/// The callback URL with its `iss` replaced: `Some(s)` starting with `/` is appended to the real
/// issuer, another `Some` replaces it, `None` drops the parameter.
fn tamper_iss(url: &str, issuer: &str, to: Option<&str>) -> String {
    let mut u = url::Url::parse(url).expect("callback URL");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "iss")
        .collect();
    let mut q = u.query_pairs_mut();
    q.clear();
    for (k, v) in &pairs {
        q.append_pair(k, v);
    }
    match to {
        Some(s) if s.starts_with('/') => {
            q.append_pair("iss", &format!("{issuer}{s}"));
        }
        Some(s) => {
            q.append_pair("iss", s);
        }
        None => {}
    }
    drop(q);
    u.to_string()
}

#[tokio::test]
async fn oidc_sign_in_through_a_certified_provider_lands_signed_in_on_dify() {
    if !provider_available() {
        return;
    }
    let started = Instant::now();

    // The gateway's port is known before it starts: the provider must know the redirect URI.
    let builder = Gateway::builder();
    let port = builder.listen.port();
    let gw = |path: &str| format!("http://localhost:{port}{path}");
    let callback = gw("/sso/oidc/callback");

    let op = OidcProvider::start(&callback).await;
    let identity = IdentityMock::start(
        SECRET_KEY,
        &[("ann.lee@example.com", ANN_ID)],
        Some(("X-Api-Key", API_KEY)),
    )
    .await;
    let dify = DifyMock::start(DifySettings::new(SECRET_KEY)).await;
    dify.add_account(ANN_ID, "Ann Lee");

    let yaml = format!(
        "sso:\n  \
           protocol: oidc\n  \
           state_secret: {state}\n  \
           oidc:\n    \
             issuer: {issuer}\n    \
             client_id: {client}\n    \
             client_secret: \"${{OIDC_CLIENT_SECRET:-}}\"\n    \
             scopes: [openid, email, profile, groups]\n  \
           allow:\n    \
             email_domains: [example.com]\n    \
             groups: [dify-users]\n  \
           exchange:\n    \
             identity_url: {identity}\n    \
             timeout: 5s\n    \
             headers: {{X-Api-Key: \"${{MGMT_API_KEY:-}}\"}}\n\
         dify:\n  \
           secret_key: {secret}\n",
        state = yq(STATE_SECRET),
        issuer = yq(&op.issuer),
        client = yq(CLIENT_ID),
        identity = yq(&identity.url()),
        secret = yq(SECRET_KEY),
    );
    let gateway = builder
        .upstream("api", &[dify.addr()])
        .upstream("web", &[dify.addr()])
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("MGMT_API_KEY", API_KEY)
        .rust_log("info,dify_gateway=debug")
        .extra_yaml(&yaml)
        .start()
        .await;

    let mut b = Browser::new();

    // 1. /signin -> the provider's authorization endpoint, code flow with PKCE S256, state, nonce.
    let first = b.get(&gw("/signin?redirect_url=%2Fapps%2Fx")).await;
    assert_eq!(first.status, 302, "/signin: {}", first.body);
    let authorize = first.location().expect("Location").to_string();
    assert!(
        authorize.starts_with(&format!("{}/auth?", op.issuer)),
        "/signin must send the browser to the provider's authorization endpoint, got {authorize}"
    );
    for (name, expected) in [
        ("response_type", Some("code")),
        ("client_id", Some(CLIENT_ID)),
        ("redirect_uri", Some(callback.as_str())),
        ("code_challenge_method", Some("S256")),
        ("scope", Some("openid email profile groups")),
    ] {
        assert_eq!(
            query_param(&authorize, name).as_deref(),
            expected,
            "{name} in {authorize}"
        );
    }
    for name in ["state", "nonce", "code_challenge"] {
        assert!(
            query_param(&authorize, name).is_some_and(|v| v.len() >= 16),
            "{name} missing or short in {authorize}"
        );
    }

    // 2. The provider's own login page (its interaction), reached through its redirects.
    let login = b.follow(first, 5).await;
    assert_eq!(login.status, 200, "{}: {}", login.url, login.body);
    assert!(
        login
            .url
            .starts_with(&format!("{}/interaction/", op.issuer)),
        "expected the provider's login page, got {} ({:?})",
        login.url,
        b.urls()
    );

    // A wrong password is refused by the provider and the login page comes back.
    let wrong = fill_and_submit(
        &mut b,
        &login,
        "login",
        &[("login", LOGIN), ("password", "not the password")],
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("Wrong login or password."));

    // 3. Sign in, then consent; each form post is answered with a redirect through /auth/<uid>.
    let after_login = fill_and_submit(
        &mut b,
        &wrong,
        "login",
        &[("login", LOGIN), ("password", PASSWORD)],
    )
    .await;
    assert_eq!(after_login.status, 303, "{}", after_login.body);
    let consent = b.follow(after_login, 5).await;
    assert_eq!(consent.status, 200, "{}: {}", consent.url, consent.body);
    assert!(
        consent.form("consent").is_some(),
        "expected the provider's consent page at {}: {}",
        consent.url,
        consent.body
    );
    let after_consent = fill_and_submit(&mut b, &consent, "consent", &[]).await;
    assert_eq!(after_consent.status, 303, "{}", after_consent.body);

    // 4. Provider -> gateway callback -> /sso/continue -> /apps/x, signed in.
    let landing = b.follow(after_consent, 10).await;
    let hops = b.urls();
    assert_eq!(
        path_and_query(&landing.url),
        "/apps/x",
        "landed elsewhere; hops: {hops:#?}\nbody: {}",
        landing.body
    );
    assert!(
        landing.url.starts_with(&gw("/")),
        "{} is not on the gateway",
        landing.url
    );
    assert_eq!(landing.status, 200, "{}", landing.body);
    assert!(
        landing.body.contains("Signed in as Ann Lee"),
        "the mock Dify did not accept the session: {}",
        landing.body
    );

    // The callback hop: a cross-site top-level GET with code, state and the RFC 9207 `iss`.
    let cb = b
        .history
        .iter()
        .find(|p| p.url.starts_with(&callback))
        .cloned()
        .unwrap_or_else(|| panic!("the provider never sent the browser to {callback}: {hops:#?}"));
    assert_eq!(cb.method, "GET");
    assert!(
        cb.is_redirect(),
        "callback answered {}: {}",
        cb.status,
        cb.body
    );
    let code = query_param(&cb.url, "code").expect("code on the callback");
    assert_eq!(
        query_param(&cb.url, "state"),
        query_param(&authorize, "state")
    );
    assert_eq!(
        query_param(&cb.url, "iss").as_deref(),
        Some(op.issuer.as_str())
    );
    assert!(
        b.history
            .iter()
            .any(|p| p.url == gw("/sso/continue") && p.location() == Some("/apps/x")),
        "expected /sso/continue -> /apps/x: {hops:#?}"
    );
    let left = b.cookie_names(&gw("/"));
    assert!(
        !left.iter().any(|n| n.starts_with("dg_sso_")),
        "the flow's cookies must be gone after the sign-in: {left:?}"
    );

    // The management service got the verified identity, once, with the API key and trace id.
    let calls = identity.calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(call.status, 200, "{call:#?}");
    assert_eq!(call.header("x-api-key"), Some(API_KEY));
    let trace = call.body["trace_id"].as_str().unwrap_or_default();
    assert!(is_uuid_v4(trace), "trace id {trace:?}");
    assert_eq!(call.header("x-request-id"), Some(trace));
    assert_eq!(
        call.body,
        serde_json::json!({
            "trace_id": trace,
            "protocol": "oidc",
            "issuer": op.issuer,
            "subject": SUBJECT,
            "email": "ann.lee@example.com",
            "email_verified": true,
            "name": "Ann Lee",
            "groups": ["dify-users", "staff"],
        })
    );

    // The browser holds the minted session; Dify's front end call (CSRF header read from the csrf
    // cookie) succeeds, and the same call without the header is refused as Dify refuses it.
    let minted = identity.minted();
    assert_eq!(minted.len(), 1);
    assert_eq!(
        b.cookie(&gw("/"), "access_token").as_deref(),
        Some(minted[0].access_token.as_str())
    );
    assert_eq!(
        b.cookie(&gw("/"), "refresh_token").as_deref(),
        Some(minted[0].refresh_token.as_str())
    );
    let csrf = b.cookie(&gw("/"), "csrf_token").expect("csrf cookie");
    let from = gw("/apps/x");
    let profile = b
        .request(
            "GET",
            &gw("/console/api/account/profile"),
            None,
            Some(&from),
            &[("x-csrf-token", &csrf), ("accept", "application/json")],
        )
        .await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    let who: serde_json::Value = serde_json::from_str(&profile.body).expect("profile JSON");
    assert_eq!(who["id"], ANN_ID);
    assert_eq!(who["name"], "Ann Lee");
    let no_csrf = b
        .request(
            "GET",
            &gw("/console/api/account/profile"),
            None,
            Some(&from),
            &[("accept", "application/json")],
        )
        .await;
    assert_eq!(no_csrf.status, 401, "{}", no_csrf.body);
    assert!(
        dify.requests()
            .iter()
            .any(|r| r.path == "/apps/x" && r.status == 200),
        "the mock Dify never served /apps/x"
    );

    // The provider redeemed the code exactly once.
    let issued = op.issued_tokens();
    assert_eq!(issued.len(), 1, "{}", op.output());
    let (id_token, provider_access) = issued[0].clone();
    assert!(id_token.split('.').count() == 3 && !provider_access.is_empty());

    // Replaying the callback (same code and state) is refused before the provider is asked again.
    let replay = b.get(&cb.url).await;
    assert_error_page(
        &replay,
        400,
        "could not be matched to one started in this browser",
    );
    assert_eq!(identity.calls().len(), 1);
    assert_eq!(op.issued_tokens().len(), 1);

    // RFC 9207 as the real provider does it: it promises `iss` in discovery, so a callback with
    // another issuer (a mix-up) or none is refused before the code reaches its token endpoint.
    let discovery = b
        .get(&format!("{}/.well-known/openid-configuration", op.issuer))
        .await;
    let discovery: serde_json::Value = serde_json::from_str(&discovery.body).expect("discovery");
    assert_eq!(
        discovery["authorization_response_iss_parameter_supported"],
        serde_json::json!(true)
    );
    for (what, tamper) in [
        ("another issuer", Some("https://idp.attacker.example")),
        ("a trailing slash", Some("/")),
        ("no iss", None),
    ] {
        let callback_url = provider_callback(&mut b, &gw("/signin"), &callback).await;
        let tampered = tamper_iss(&callback_url, &op.issuer, tamper);
        let refused = b.get(&tampered).await;
        assert_error_page(&refused, 401, "(iss)");
        assert_eq!(op.issued_tokens().len(), 1, "{what}: the code was redeemed");
        assert_eq!(identity.calls().len(), 1, "{what}");
    }

    // No secret or token reaches the gateway's logs (stderr, stdout, access log).
    let logs = format!(
        "{}\n{}\n{}",
        gateway.stderr(),
        gateway.stdout(),
        gateway.access_log_text()
    );
    assert!(
        logs.contains(trace),
        "the gateway's logs should name the sign-in's trace id {trace}:\n{logs}"
    );
    for (what, secret) in [
        ("Dify access token", minted[0].access_token.as_str()),
        ("Dify refresh token", minted[0].refresh_token.as_str()),
        ("CSRF token", csrf.as_str()),
        ("ID token", id_token.as_str()),
        ("ID token signature", id_token.rsplit('.').next().unwrap()),
        ("provider access token", provider_access.as_str()),
        ("authorization code", code.as_str()),
        ("client secret", CLIENT_SECRET),
        ("management API key", API_KEY),
        ("password", PASSWORD),
    ] {
        assert!(
            !logs.contains(secret),
            "the {what} appears in the gateway's logs:\n{logs}"
        );
    }
    eprintln!(
        "oidc_e2e: signed in through oidc-provider in {:?} ({} hops)",
        started.elapsed(),
        b.history.len()
    );
}
