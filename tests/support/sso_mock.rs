//! A mock QSSO-style SSO login page and a mock management service that swaps its one-time tokens
//! for Dify tokens, as the seed bridge's environment has them (reference §5, §6).
//!
//! - Login page, `GET /login?ret=<callback url>`: one form per user, "Sign in as <name>", a plain
//!   `<form method=post action=<callback url>>` with a hidden field `token` holding a one-time token
//!   minted for that user (`&method=get` renders GET forms instead). `GET /logout?ret=<url>` is the
//!   SSO's own logout page.
//! - Management service, `GET /get_dify_token?trace_id=..&token=..`: a known unused token (single
//!   use) -> 200 `{"access_token": <HS256 JWT signed with Dify's SECRET_KEY>, "refresh_token": <128
//!   hex>}`; unknown or reused -> 401; a user marked `refused` -> 403. [`ExchangeBehavior`] selects
//!   failure modes. Every call is recorded.
//!
//! Depends only on `mock_http.rs` (include both with `#[path]` in an example).

#![allow(dead_code)]

use super::mock_http::{MockRequest, MockResponse, MockServer, html_escape, page};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A user the SSO knows.
#[derive(Debug, Clone)]
pub struct SsoUser {
    /// SSO login name.
    pub login: String,
    /// Display name (Dify's account name).
    pub name: String,
    /// Dify account id.
    pub user_id: String,
    /// The management service refuses this user (403), e.g. banned in Dify.
    pub refused: bool,
    /// What the exchange answer says of the person besides the tokens (`email`, `groups`).
    pub email: Option<String>,
    pub groups: Vec<String>,
}

impl SsoUser {
    pub fn new(login: &str, name: &str, user_id: &str) -> SsoUser {
        SsoUser {
            login: login.into(),
            name: name.into(),
            user_id: user_id.into(),
            refused: false,
            email: None,
            groups: Vec::new(),
        }
    }

    pub fn with_email(mut self, email: &str, groups: &[&str]) -> SsoUser {
        self.email = Some(email.into());
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    pub fn refused(mut self) -> SsoUser {
        self.refused = true;
        self
    }
}

/// What the management service does with a valid token.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeBehavior {
    /// 200 with access and refresh token.
    Ok,
    /// 200 with a `csrf_token` too.
    OkWithCsrf,
    /// This status, JSON error body.
    Status(u16),
    /// 200 with an HTML body.
    NotJson,
    /// 200 JSON without this field.
    MissingField(&'static str),
    /// Sleeps this long, then answers as `Ok`.
    Slow(Duration),
    /// The access token is signed with another key.
    WrongKey,
    /// The access token has expired.
    Expired,
}

/// What the one-time tokens look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStyle {
    /// 32 hex characters.
    Plain,
    /// With `&`, `=`, `%`, `+`, spaces, `/`, `?`, `#`, quotes, `<` and non-ASCII.
    Nasty,
}

/// One call the management service received.
#[derive(Debug, Clone)]
pub struct ExchangeCall {
    /// Path and query exactly as received.
    pub uri: String,
    pub trace_id: Option<String>,
    /// Decoded `token` parameter.
    pub token: Option<String>,
    pub x_request_id: Option<String>,
    pub headers: Vec<(String, String)>,
    pub status: u16,
}

/// The tokens the management service handed out.
#[derive(Debug, Clone)]
pub struct MintedSession {
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub csrf_token: Option<String>,
}

struct Shared {
    users: Vec<SsoUser>,
    secret_key: String,
    /// token -> user login, still unused.
    issued: Mutex<HashMap<String, String>>,
    all_issued: Mutex<Vec<String>>,
    used: Mutex<HashSet<String>>,
    behavior: Mutex<ExchangeBehavior>,
    style: Mutex<TokenStyle>,
    calls: Mutex<Vec<ExchangeCall>>,
    minted: Mutex<Vec<MintedSession>>,
}

/// The SSO login page and the management service, on two 127.0.0.1 ports.
pub struct SsoMock {
    pub login_page: MockServer,
    pub manager: MockServer,
    shared: Arc<Shared>,
}

pub const EXCHANGE_PATH: &str = "/get_dify_token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_hex32() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An HS256 JWT with `claims`.
pub fn sign_hs256(key: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("HS256 signing")
}

/// An access token exactly as Dify mints it.
pub fn dify_access_token(key: &str, user_id: &str, exp: u64) -> String {
    sign_hs256(
        key,
        &json!({"user_id": user_id, "exp": exp, "iss": "SELF_HOSTED", "sub": "Console API Passport"}),
    )
}

impl SsoMock {
    /// Starts both servers. `secret_key` is Dify's `SECRET_KEY`.
    pub async fn start(secret_key: &str, users: Vec<SsoUser>) -> SsoMock {
        SsoMock::start_on("127.0.0.1:0", "127.0.0.1:0", secret_key, users).await
    }

    pub async fn start_on(
        login_bind: &str,
        manager_bind: &str,
        secret_key: &str,
        users: Vec<SsoUser>,
    ) -> SsoMock {
        let shared = Arc::new(Shared {
            users,
            secret_key: secret_key.into(),
            issued: Mutex::new(HashMap::new()),
            all_issued: Mutex::new(Vec::new()),
            used: Mutex::new(HashSet::new()),
            behavior: Mutex::new(ExchangeBehavior::Ok),
            style: Mutex::new(TokenStyle::Plain),
            calls: Mutex::new(Vec::new()),
            minted: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let login_page = MockServer::start(login_bind, move |r| {
            let s = s.clone();
            async move { login_handler(&s, r) }
        })
        .await
        .expect("bind the mock SSO login page");
        let s = shared.clone();
        let manager = MockServer::start(manager_bind, move |r| {
            let s = s.clone();
            async move { manager_handler(&s, r).await }
        })
        .await
        .expect("bind the mock management service");
        SsoMock {
            login_page,
            manager,
            shared,
        }
    }

    /// `sso.login_url` with the gateway's placeholder.
    pub fn login_url_template(&self) -> String {
        self.login_page.url("/login?ret={callback_url}")
    }

    /// The seed's literal `QSSO_LOGIN_URL` for a fixed callback URL.
    pub fn login_url_literal(&self, callback_url: &str) -> String {
        let ret: String = form_urlencoded::byte_serialize(callback_url.as_bytes()).collect();
        self.login_page.url(&format!("/login?ret={ret}"))
    }

    /// The SSO's own logout page, returning to `ret`.
    pub fn logout_url(&self, ret: &str) -> String {
        let ret: String = form_urlencoded::byte_serialize(ret.as_bytes()).collect();
        self.login_page.url(&format!("/logout?ret={ret}"))
    }

    pub fn exchange_url(&self) -> String {
        self.manager.url(EXCHANGE_PATH)
    }

    pub fn set_behavior(&self, b: ExchangeBehavior) {
        *self.shared.behavior.lock().unwrap() = b;
    }

    pub fn set_token_style(&self, s: TokenStyle) {
        *self.shared.style.lock().unwrap() = s;
    }

    pub fn calls(&self) -> Vec<ExchangeCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Every one-time token the login page minted.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.all_issued.lock().unwrap().clone()
    }

    pub fn minted(&self) -> Vec<MintedSession> {
        self.shared.minted.lock().unwrap().clone()
    }

    pub fn users(&self) -> &[SsoUser] {
        &self.shared.users
    }
}

fn mint_sso_token(s: &Shared, login: &str) -> String {
    let token = match *s.style.lock().unwrap() {
        TokenStyle::Plain => random_hex32(),
        TokenStyle::Nasty => format!("q&s=o %2B+ü/é?x#y \"'<é>;,{}=", &random_hex32()[..12]),
    };
    s.issued
        .lock()
        .unwrap()
        .insert(token.clone(), login.to_string());
    s.all_issued.lock().unwrap().push(token.clone());
    token
}

fn login_handler(s: &Shared, r: MockRequest) -> MockResponse {
    match r.path.as_str() {
        "/login" | "/login.php" => {
            let Some(ret) = r.query_param("ret").filter(|v| !v.is_empty()) else {
                return MockResponse::html(
                    400,
                    page(
                        "Mock SSO",
                        "<h1>Mock SSO</h1><p>No <code>ret</code> (callback URL) given.</p>",
                    ),
                );
            };
            let method = if r.query_param("method").as_deref() == Some("get") {
                "get"
            } else {
                "post"
            };
            let mut forms = String::new();
            for u in &s.users {
                let token = mint_sso_token(s, &u.login);
                let label = if u.refused {
                    format!(
                        "Sign in as {} (a user the management service refuses)",
                        u.name
                    )
                } else {
                    format!("Sign in as {}", u.name)
                };
                forms.push_str(&format!(
                    "<form id=\"signin-{login}\" method=\"{method}\" action=\"{action}\">\
                     <input type=\"hidden\" name=\"token\" value=\"{token}\">\
                     <button class=\"btn\" id=\"btn-{login}\" type=\"submit\">{label}</button></form>",
                    login = html_escape(&u.login),
                    action = html_escape(&ret),
                    token = html_escape(&token),
                    label = html_escape(&label),
                ));
            }
            let inner = format!(
                "<h1>Mock SSO login</h1>\
                 <p class=\"note\">A stand-in for the company SSO (QSSO style). Choosing a user sends \
                 the browser back to <code>{ret}</code> with a form POST whose field <code>token</code> \
                 is a one-time sign-in token.</p>{forms}",
                ret = html_escape(&ret)
            );
            MockResponse::html(200, page("Mock SSO login", &inner))
        }
        "/logout" => {
            let ret = r.query_param("ret").unwrap_or_default();
            let back = if ret.starts_with("http://") || ret.starts_with("https://") {
                format!(
                    "<p><a id=\"back\" href=\"{}\">Back to Dify</a></p>",
                    html_escape(&ret)
                )
            } else {
                String::new()
            };
            MockResponse::html(
                200,
                page(
                    "Mock SSO",
                    &format!("<h1>Signed out of the mock SSO</h1>{back}"),
                ),
            )
        }
        _ => MockResponse::text(404, "not found\n"),
    }
}

async fn manager_handler(s: &Shared, r: MockRequest) -> MockResponse {
    let uri = match &r.query {
        Some(q) => format!("{}?{q}", r.path),
        None => r.path.clone(),
    };
    let mut call = ExchangeCall {
        uri,
        trace_id: r.query_param("trace_id"),
        token: r.query_param("token"),
        x_request_id: r.header("x-request-id").map(str::to_string),
        headers: r.header_pairs(),
        status: 0,
    };
    // Recorded on arrival (status 0 until answered), so a slow answer is visible at once.
    let index = {
        let mut calls = s.calls.lock().unwrap();
        calls.push(call.clone());
        calls.len() - 1
    };
    let answer = exchange(s, &r, &call).await;
    call.status = answer.status;
    s.calls.lock().unwrap()[index] = call;
    answer
}

async fn exchange(s: &Shared, r: &MockRequest, call: &ExchangeCall) -> MockResponse {
    if r.path != EXCHANGE_PATH || r.method != "GET" {
        return MockResponse::json(404, &json!({"error": "not found"}));
    }
    let behavior = s.behavior.lock().unwrap().clone();
    if let ExchangeBehavior::Slow(d) = &behavior {
        tokio::time::sleep(*d).await;
    }
    let Some(token) = call.token.clone().filter(|t| !t.is_empty()) else {
        return MockResponse::json(400, &json!({"error": "token is required"}));
    };
    if call.trace_id.as_deref().is_none_or(str::is_empty) {
        return MockResponse::json(400, &json!({"error": "trace_id is required"}));
    }
    // Single use: the token is gone once presented.
    let login = s.issued.lock().unwrap().remove(&token);
    let fresh = s.used.lock().unwrap().insert(token);
    let Some(login) = login.filter(|_| fresh) else {
        return MockResponse::json(401, &json!({"error": "invalid or used sso token"}));
    };
    let Some(user) = s.users.iter().find(|u| u.login == login).cloned() else {
        return MockResponse::json(401, &json!({"error": "unknown user"}));
    };
    if user.refused {
        return MockResponse::json(403, &json!({"error": "this user may not use Dify"}));
    }
    let exp = now() + 3600;
    let access = match behavior {
        ExchangeBehavior::WrongKey => {
            dify_access_token("another-key-not-difys", &user.user_id, exp)
        }
        ExchangeBehavior::Expired => dify_access_token(&s.secret_key, &user.user_id, now() - 60),
        _ => dify_access_token(&s.secret_key, &user.user_id, exp),
    };
    let refresh = format!(
        "{}{}{}{}",
        random_hex32(),
        random_hex32(),
        random_hex32(),
        random_hex32()
    );
    let csrf = (behavior == ExchangeBehavior::OkWithCsrf)
        .then(|| sign_hs256(&s.secret_key, &json!({"sub": user.user_id, "exp": exp})));
    let mut body = json!({"access_token": access, "refresh_token": refresh});
    if let Some(c) = &csrf {
        body["csrf_token"] = json!(c);
    }
    if let Some(e) = &user.email {
        body["email"] = json!(e);
        body["groups"] = json!(user.groups);
    }
    match behavior {
        ExchangeBehavior::Status(code) => {
            return MockResponse::json(code, &json!({"error": "management service failure"}));
        }
        ExchangeBehavior::NotJson => {
            return MockResponse::html(200, "<html><body>502 Bad Gateway</body></html>");
        }
        ExchangeBehavior::MissingField(f) => {
            body.as_object_mut().unwrap().remove(f);
        }
        _ => {}
    }
    s.minted.lock().unwrap().push(MintedSession {
        user_id: user.user_id.clone(),
        access_token: access,
        refresh_token: refresh,
        csrf_token: csrf,
    });
    MockResponse::json(200, &body)
}
