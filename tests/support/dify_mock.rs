//! A mock Dify (api and web in one server, used as both upstreams) that checks what real Dify
//! checks (reference §2):
//! - cookie names: `__Host-` prefix when `CONSOLE_WEB_URL` and `CONSOLE_API_URL` are https and
//!   `COOKIE_DOMAIN` is empty, plain names otherwise;
//! - the access token (cookie, else `Authorization: Bearer`): HS256 with `SECRET_KEY`, `exp`, no
//!   `token_source` claim, a known account;
//! - on authenticated console API calls (except login, logout, refresh-token): `X-CSRF-Token` equal
//!   to the csrf cookie, a valid csrf JWT whose `sub` is the access token's user, else 401
//!   "CSRF token is missing or invalid.".
//!
//! Pages: `/signin` is "Dify sign-in page" (reached only when SSO is bypassed); every other web path
//! is a console page that, signed in, shows "Signed in as <name>" and runs an inline script that
//! calls the profile API with the CSRF header read from the csrf cookie, as Dify's front end does.
//! Legacy mode (Dify <= 1.9.1): `?access_token=..&refresh_token=..` on the landing URL signs the
//! page in, and the API takes `Authorization: Bearer` without CSRF.
//!
//! Versions: the mock is the Dify release its settings name ([`DifySettings::for_version`]) where
//! the reference says releases differ: `GET /health` answers `{"status": "ok", "version": ..}`
//! and every answer carries `X-Version` (the gateway's `dify.version: auto` reads them); before
//! 1.9.2 it is the legacy front end (tokens on the landing URL, Bearer, no CSRF); the access
//! token's `iss` is recorded for each request (Dify checks only signature, `exp`, `token_source`
//! and the user, so it does not refuse any `iss`; tests compare it with what the release writes,
//! [`DifySettings::expected_iss`]); [`DifySettings::schema_sql`] is that release's database, with
//! `accounts.normalized_email` from 1.17. The web-app passport (reference §8) is the same in every
//! release the reference covers (1.9 to 1.17), so nothing here depends on the version for it.
//!
//! Depends only on `mock_http.rs`.

#![allow(dead_code)]

use super::mock_http::{MockRequest, MockResponse, MockServer, html_escape, page};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Dify's own settings that the checks depend on.
#[derive(Debug, Clone, Default)]
pub struct DifySettings {
    pub secret_key: String,
    pub console_web_url: String,
    pub console_api_url: String,
    pub cookie_domain: String,
    /// Dify <= 1.9.1: tokens on the landing URL and Bearer, no CSRF.
    pub legacy: bool,
    /// The release `/health` and `X-Version` report ("1.14.2" when empty).
    pub version: String,
}

/// `x.y.z` as numbers, for comparisons.
pub fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

impl DifySettings {
    pub fn new(secret_key: &str) -> DifySettings {
        DifySettings {
            secret_key: secret_key.into(),
            ..Default::default()
        }
    }

    /// The settings of Dify release `version` (`"1.9.1"`, `"1.14.2"`, `"1.17.1"`).
    pub fn for_version(secret_key: &str, version: &str) -> DifySettings {
        DifySettings {
            secret_key: secret_key.into(),
            legacy: version_tuple(version) < (1, 9, 2),
            version: version.into(),
            ..Default::default()
        }
    }

    pub fn version(&self) -> &str {
        if self.version.is_empty() {
            "1.14.2"
        } else {
            &self.version
        }
    }

    /// The `iss` this release writes into console access tokens (reference §2 and §9).
    pub fn expected_iss(&self) -> &'static str {
        if version_tuple(self.version()) >= (1, 17, 0) {
            "COMMUNITY"
        } else {
            "SELF_HOSTED"
        }
    }

    /// This release's database: the fixture schema, plus `accounts.normalized_email` from 1.17
    /// (varchar(255), nullable, indexed, not unique).
    pub fn schema_sql(&self) -> String {
        let mut sql = include_str!("../fixtures/dify_schema.sql").to_string();
        if version_tuple(self.version()) >= (1, 17, 0) {
            sql.push_str(NORMALIZED_EMAIL_SQL);
        }
        sql
    }

    fn secure(&self) -> bool {
        self.console_web_url.starts_with("https") && self.console_api_url.starts_with("https")
    }

    /// The name the API sets and reads for `base` (`access_token`, `refresh_token`, `csrf_token`).
    pub fn cookie_name(&self, base: &str) -> String {
        if self.secure() && self.cookie_domain.is_empty() {
            format!("__Host-{base}")
        } else {
            base.to_string()
        }
    }

    /// The csrf cookie name the front end reads (its own rule).
    pub fn frontend_csrf_cookie(&self) -> String {
        if !self.cookie_domain.is_empty() {
            "csrf_token".into()
        } else if self.console_api_url.starts_with("https") {
            "__Host-csrf_token".into()
        } else {
            "csrf_token".into()
        }
    }
}

/// What Dify 1.17's migration adds to `accounts`.
pub const NORMALIZED_EMAIL_SQL: &str = "\nALTER TABLE accounts ADD COLUMN normalized_email character varying(255);\n\
     CREATE INDEX account_normalized_email_idx ON accounts USING btree (normalized_email);\n";

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct DifyRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// The account the request was authenticated as, if any.
    pub user_id: Option<String>,
    /// The `iss` of the access token it was authenticated with.
    pub iss: Option<String>,
}

/// The codes of the apps this Dify has published.
pub const PUBLISHED_APPS: &[&str] = &[
    "OpenChat00000001",
    "HrOnly0000000002",
    "Closed0000000003",
    "EngFlow000000004",
];

struct Shared {
    settings: DifySettings,
    /// What `/health` and `X-Version` say now (an upgrade changes it).
    version: Mutex<String>,
    /// account id -> name
    accounts: Mutex<HashMap<String, String>>,
    requests: Mutex<Vec<DifyRequest>>,
    /// Published apps (`/chat/<code>`..., `/api/*`).
    webapps: super::dify_webapp::WebApps,
}

pub struct DifyMock {
    pub server: MockServer,
    shared: Arc<Shared>,
}

impl DifyMock {
    pub async fn start(settings: DifySettings) -> DifyMock {
        DifyMock::start_on("127.0.0.1:0", settings).await
    }

    pub async fn start_on(bind: &str, settings: DifySettings) -> DifyMock {
        let shared = Arc::new(Shared {
            version: Mutex::new(settings.version().to_string()),
            settings,
            accounts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            webapps: super::dify_webapp::WebApps::new(PUBLISHED_APPS),
        });
        let s = shared.clone();
        let server = MockServer::start(bind, move |r| {
            let s = s.clone();
            async move { handle(&s, r) }
        })
        .await
        .expect("bind the mock Dify");
        DifyMock { server, shared }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    /// An account Dify knows (a row in `accounts` with a workspace join).
    pub fn add_account(&self, user_id: &str, name: &str) {
        self.shared
            .accounts
            .lock()
            .unwrap()
            .insert(user_id.into(), name.into());
    }

    /// Dify's `end_users` rows of the published apps.
    pub fn end_users(&self) -> Vec<super::dify_webapp::EndUser> {
        self.shared.webapps.end_users()
    }

    pub fn requests(&self) -> Vec<DifyRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn settings(&self) -> &DifySettings {
        &self.shared.settings
    }

    /// Dify was upgraded: `/health` and `X-Version` report `version` from now on.
    pub fn set_version(&self, version: &str) {
        *self.shared.version.lock().unwrap() = version.into();
    }

    /// The `iss` of every authenticated request, in order.
    pub fn seen_iss(&self) -> Vec<String> {
        self.requests().into_iter().filter_map(|r| r.iss).collect()
    }

    /// How many times `/health` was asked.
    pub fn health_checks(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/health")
            .count()
    }
}

/// Checks an HS256 JWT as PyJWT does for Dify: signature, `exp` (required, no leeway).
fn decode(key: &str, token: &str) -> Result<Value, String> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 0;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(key.as_bytes()),
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| format!("{:?}", e.kind()))
}

/// The signed-in account: (id, name), or why not.
fn authenticate(
    s: &Shared,
    r: &MockRequest,
    token: Option<String>,
) -> Result<(String, String), String> {
    let token = token.ok_or("no access token")?;
    let claims =
        decode(&s.settings.secret_key, &token).map_err(|e| format!("invalid token: {e}"))?;
    if claims.get("token_source").is_some() {
        return Err("token_source claim not allowed on the console".into());
    }
    let user_id = claims["user_id"]
        .as_str()
        .ok_or("no user_id in the token")?
        .to_string();
    let _ = r;
    let name = s
        .accounts
        .lock()
        .unwrap()
        .get(&user_id)
        .cloned()
        .ok_or("account not found")?;
    Ok((user_id, name))
}

/// The access token the API reads: the cookie wins over a Bearer header.
fn access_token(s: &Shared, r: &MockRequest) -> Option<String> {
    r.cookie(&s.settings.cookie_name("access_token"))
        .or_else(|| r.bearer())
}

fn check_csrf(s: &Shared, r: &MockRequest, user_id: &str) -> bool {
    let Some(header) = r.header("x-csrf-token").filter(|h| !h.is_empty()) else {
        return false;
    };
    let Some(cookie) = r.cookie(&s.settings.cookie_name("csrf_token")) else {
        return false;
    };
    if header != cookie {
        return false;
    }
    match decode(&s.settings.secret_key, header) {
        Ok(claims) => claims["sub"].as_str() == Some(user_id),
        Err(_) => false,
    }
}

fn unauthorized(message: &str) -> MockResponse {
    MockResponse::json(
        401,
        &json!({"code": "unauthorized", "message": message, "status": 401}),
    )
}

fn handle(s: &Shared, r: MockRequest) -> MockResponse {
    let version = s.version.lock().unwrap().clone();
    let (answer, user) = if r.method == "GET" && r.path == "/health" {
        (
            MockResponse::json(200, &json!({"status": "ok", "version": version})),
            None,
        )
    } else {
        route(s, &r)
    };
    // The token the request was authenticated with, as the route read it.
    let iss = user.as_ref().and_then(|_| {
        let token = access_token(s, &r).or_else(|| r.query_param("access_token"))?;
        decode(&s.settings.secret_key, &token).ok()?["iss"]
            .as_str()
            .map(str::to_string)
    });
    s.requests.lock().unwrap().push(DifyRequest {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.header_pairs(),
        status: answer.status,
        user_id: user,
        iss,
    });
    answer.header("x-version", &version)
}

fn route(s: &Shared, r: &MockRequest) -> (MockResponse, Option<String>) {
    let path = r.path.as_str();
    let method = r.method.as_str();
    if path.starts_with("/console/api/") {
        return console_api(s, r, path, method);
    }
    if let Some(answer) = s.webapps.handle(&s.settings.secret_key, r) {
        return (answer, None);
    }
    if path.starts_with("/api/") || path.starts_with("/v1/") {
        return (MockResponse::json(404, &json!({"code": "not_found"})), None);
    }
    if path == "/signin" {
        let inner = "<h1>Dify sign-in page</h1><p>Dify's own password sign-in (reached only when \
                     single sign-on is bypassed).</p>";
        return (MockResponse::html(200, page("Dify", inner)), None);
    }
    console_page(s, r)
}

fn console_api(
    s: &Shared,
    r: &MockRequest,
    path: &str,
    method: &str,
) -> (MockResponse, Option<String>) {
    let settings = &s.settings;
    match (method, path) {
        ("POST", "/console/api/logout") => match authenticate(s, r, access_token(s, r)) {
            Ok((id, _)) => {
                let mut resp = MockResponse::json(200, &json!({"result": "success"}));
                for base in ["access_token", "refresh_token", "csrf_token"] {
                    let mut c = format!(
                        "{}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax",
                        settings.cookie_name(base)
                    );
                    if settings.secure() {
                        c.push_str("; Secure");
                    }
                    if !settings.cookie_domain.is_empty() {
                        c.push_str(&format!(
                            "; Domain={}",
                            settings.cookie_domain.trim_start_matches('.')
                        ));
                    }
                    if base != "csrf_token" {
                        c.push_str("; HttpOnly");
                    }
                    resp = resp.header("set-cookie", &c);
                }
                (resp, Some(id))
            }
            Err(e) => (unauthorized(&e), None),
        },
        ("POST", "/console/api/login")
        | ("POST", "/console/api/refresh-token")
        | (_, "/console/api/email-code-login")
        | (_, "/console/api/forgot-password")
        | (_, "/console/api/activate") => (
            MockResponse::json(200, &json!({"result": "success", "reached": "dify"})),
            None,
        ),
        _ if path.starts_with("/console/api/oauth/login/")
            || path.starts_with("/console/api/forgot-password/")
            || path.starts_with("/console/api/email-code-login/")
            || path.starts_with("/console/api/activate/") =>
        {
            (
                MockResponse::json(200, &json!({"result": "success", "reached": "dify"})),
                None,
            )
        }
        ("GET", "/console/api/account/profile") => {
            let (id, name) = match authenticate(s, r, access_token(s, r)) {
                Ok(a) => a,
                Err(e) => return (unauthorized(&e), None),
            };
            if !settings.legacy && !check_csrf(s, r, &id) {
                return (unauthorized("CSRF token is missing or invalid."), None);
            }
            let email = format!(
                "{}@example.com",
                name.split(' ').next().unwrap_or("user").to_lowercase()
            );
            (
                MockResponse::json(200, &json!({"id": id, "name": name, "email": email})),
                Some(id),
            )
        }
        _ => (MockResponse::json(404, &json!({"code": "not_found"})), None),
    }
}

fn console_page(s: &Shared, r: &MockRequest) -> (MockResponse, Option<String>) {
    let settings = &s.settings;
    // Legacy front end: tokens on the landing URL, kept in localStorage, sent as Bearer.
    let legacy_token = settings
        .legacy
        .then(|| r.query_param("access_token"))
        .flatten();
    let signed_in = match &legacy_token {
        Some(t) => authenticate(s, r, Some(t.clone())),
        None if settings.legacy => Err("no token on the landing URL".into()),
        None => authenticate(s, r, r.cookie(&settings.cookie_name("access_token"))),
    };
    let here = match &r.query {
        Some(q) => format!("{}?{q}", r.path),
        None => r.path.clone(),
    };
    let user = signed_in.as_ref().ok().map(|(id, _)| id.clone());
    let inner = match signed_in {
        Ok((id, name)) => {
            let script = if settings.legacy {
                format!(
                    "const t = {tok};\n\
                     localStorage.setItem('console_token', t);\n\
                     fetch('/console/api/account/profile', {{headers: {{'Authorization': 'Bearer ' + t}}}})",
                    tok = js_string(legacy_token.as_deref().unwrap_or(""))
                )
            } else {
                format!(
                    "const name = {csrf};\n\
                     const c = document.cookie.split('; ').find(x => x.startsWith(name + '='));\n\
                     const csrf = c ? decodeURIComponent(c.slice(name.length + 1)) : '';\n\
                     fetch('/console/api/account/profile', {{headers: {{'X-CSRF-Token': csrf}}, credentials: 'same-origin'}})",
                    csrf = js_string(&settings.frontend_csrf_cookie())
                )
            };
            format!(
                "<h1 id=\"who\">Signed in as {name}</h1>\
                 <p class=\"note\">Mock Dify console page <code>{here}</code>, account <code id=\"user-id\">{id}</code>.</p>\
                 <p id=\"profile\">Calling the profile API...</p>\
                 <p><button class=\"btn\" id=\"logout\">Log out</button></p>\
                 <script>\n{script}\n\
                 .then(async r => {{ const t = await r.text(); document.getElementById('profile').textContent = r.ok\n\
                   ? 'Profile API answered for ' + JSON.parse(t).name + ' (CSRF check passed)'\n\
                   : 'Profile API failed: ' + r.status + ' ' + t; }})\n\
                 .catch(e => {{ document.getElementById('profile').textContent = 'Profile API failed: ' + e; }});\n\
                 document.getElementById('logout').onclick = async () => {{\n\
                   const r = await fetch('/console/api/logout', {{method: 'POST', credentials: 'same-origin'}});\n\
                   document.getElementById('profile').textContent = 'logout answered ' + r.status;\n\
                   location.href = '/signin';\n\
                 }};\n</script>",
                name = html_escape(&name),
                here = html_escape(&here),
                id = html_escape(&id),
            )
        }
        Err(why) => {
            let signin = format!(
                "/signin?redirect_url={}",
                form_urlencoded::byte_serialize(here.as_bytes()).collect::<String>()
            );
            format!(
                "<h1 id=\"who\">Not signed in</h1><p class=\"note\">Mock Dify console page <code>{here}</code>: {why}.</p>\
                 <p><a class=\"btn\" id=\"signin\" href=\"{signin}\">Sign in</a></p>",
                here = html_escape(&here),
                why = html_escape(&why),
                signin = html_escape(&signin),
            )
        }
    };
    (MockResponse::html(200, page("Mock Dify", &inner)), user)
}

/// A JavaScript string literal (JSON is one), safe inside `<script>`.
fn js_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
}
