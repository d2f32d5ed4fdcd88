//! A mock OpenID provider (and plain OAuth 2.0 authorization server) for the relying-party tests
//! through the real binary. It behaves like a provider where the relying party's checks depend on
//! it, and can be made to misbehave one way at a time:
//!
//! - `GET /.well-known/openid-configuration`: discovery (`issuer` is the base URL), with
//!   [`Knobs::discovery`] merged in.
//! - `GET /jwks`: [`Knobs::jwks`] (public JWKs of the fixed test keys in
//!   `tests/fixtures/oidc_mock_keys.json`), or 503 with [`Knobs::jwks_down`].
//! - `GET /authorize`: checks `response_type=code`, the client, the registered `redirect_uri`
//!   (exact), `state` and a PKCE S256 challenge, then answers 302 to the redirect URI with `code`
//!   and `state` (and `iss`, as [`Knobs::callback_iss`] says). No login page: the user is signed in.
//! - `POST /token`: client authentication (`client_secret_basic`, form-encoded as RFC 6749 §2.3.1
//!   says, or `client_secret_post`), a single-use code, `redirect_uri` equal to the authorization
//!   request's, the PKCE verifier; answers `id_token` (a compact JWS signed as [`Knobs::signing`]
//!   says, claims from the grant and [`Knobs::claims`], header edits from [`Knobs::header`]),
//!   `access_token`, `token_type: Bearer`, `expires_in`, with [`Knobs::token_answer`] merged in.
//! - `GET /userinfo`: the access token as Bearer, the user's claims with [`Knobs::userinfo`]
//!   merged in.
//! - `GET /logout`: end session (recorded).
//! - anything under `/attacker/`: counted (URLs put in `jku`/`x5u` headers must never be fetched).
//!
//! Every knob map merges into what a correct provider sends; a JSON null removes the field.

#![allow(dead_code)]

use super::mock_http::{MockRequest, MockResponse, MockServer};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value, json};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

pub const CLIENT_ID: &str = "dify-gateway-rp";
pub const CLIENT_SECRET: &str = "rp-client-secret-9d0b1e7c3a5f";
pub const SUBJECT: &str = "ann-0c7e41";

/// The fixed test keys: kid -> {private_pem, public_pem, jwk}.
fn keys() -> &'static Value {
    static KEYS: OnceLock<Value> = OnceLock::new();
    KEYS.get_or_init(|| {
        serde_json::from_str(include_str!("../fixtures/oidc_mock_keys.json"))
            .expect("tests/fixtures/oidc_mock_keys.json")
    })
}

/// The public JWK of test key `kid` (`rsa1`, `rsa2`, `rsa-weak` (1024 bits), `ec1`), with its
/// `kid`, `alg` and `use: sig`.
pub fn jwk(kid: &str) -> Value {
    keys()[kid]["jwk"].clone()
}

/// `base` with `edits` merged in (null removes a field).
pub fn merged(mut base: Value, edits: &Map<String, Value>) -> Value {
    if let Some(o) = base.as_object_mut() {
        for (k, v) in edits {
            if v.is_null() {
                o.remove(k);
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

/// A JSON object literal as a map (for the knobs).
pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("a JSON object")
}

/// How the ID token is signed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signing {
    /// RS256, key `rsa1` (2048 bits, published by default).
    Rsa1,
    /// RS256, key `rsa2` (2048 bits, not published by default).
    Rsa2,
    /// RS256, key `rsa-weak` (1024 bits).
    RsaWeak,
    /// ES256, key `ec1` (P-256, published by default).
    Ec1,
    /// `alg: none`, empty signature.
    None,
    /// HS256 keyed with `rsa1`'s public key PEM, `kid: rsa1` (algorithm confusion).
    HsWithPublicKey,
    /// HS256 keyed with the client secret (what a provider using HS* sends).
    HsWithClientSecret,
}

/// The `iss` parameter of the authorization response (RFC 9207).
#[derive(Clone, Debug, PartialEq)]
pub enum CallbackIss {
    /// The provider's issuer, as a provider that implements RFC 9207 sends it.
    Issuer,
    /// No `iss` (a provider without RFC 9207).
    Omit,
    /// Some other value (a mix-up).
    Other(String),
}

/// Ways to make the provider misbehave; the defaults are a correct provider.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub signing: Signing,
    /// The JWKS' keys.
    pub jwks: Vec<Value>,
    pub jwks_down: bool,
    /// Merged into the ID token's JOSE header.
    pub header: Map<String, Value>,
    /// Merged into the ID token's claims (set `at_hash` to a value, or use [`Knobs::at_hash`]).
    pub claims: Map<String, Value>,
    /// Put the correct `at_hash` of the access token into the ID token.
    pub at_hash: bool,
    pub discovery: Map<String, Value>,
    pub token_answer: Map<String, Value>,
    pub userinfo: Map<String, Value>,
    pub callback_iss: CallbackIss,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            signing: Signing::Rsa1,
            jwks: vec![jwk("rsa1"), jwk("ec1")],
            jwks_down: false,
            header: Map::new(),
            claims: Map::new(),
            at_hash: false,
            discovery: Map::new(),
            token_answer: Map::new(),
            userinfo: Map::new(),
            callback_iss: CallbackIss::Omit,
        }
    }
}

#[derive(Clone, Debug)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
}

/// Why the token endpoint refused a request (the tests assert what the provider saw).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenRefusal {
    Client,
    UnknownCode,
    RedirectUri,
    Pkce,
    GrantType,
}

struct Shared {
    base: OnceLock<String>,
    redirect_uris: Vec<String>,
    knobs: Mutex<Knobs>,
    codes: Mutex<HashMap<String, Grant>>,
    access_tokens: Mutex<Vec<String>>,
    issued: Mutex<Vec<(String, String)>>,
    token_refusals: Mutex<Vec<TokenRefusal>>,
    client_auth: Mutex<Vec<&'static str>>,
    logouts: Mutex<Vec<Vec<(String, String)>>>,
    authorize_calls: AtomicUsize,
    token_calls: AtomicUsize,
    userinfo_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    attacker_calls: AtomicUsize,
}

pub struct OidcMock {
    pub server: MockServer,
    shared: Arc<Shared>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// OIDC Core §3.1.3.6: the left half of the access token's hash, for the ID token's `alg` (SHA-256
/// for every algorithm this mock signs with).
pub fn at_hash(access_token: &str) -> String {
    B64.encode(&sha2::Sha256::digest(access_token.as_bytes())[..16])
}

/// A compact JWS of `claims` signed as `signing` says, with `header` merged into the JOSE header
/// (the signature stays valid over the edited header).
pub fn sign(signing: Signing, claims: &Value, header: &Map<String, Value>) -> String {
    let der = |kid: &str| {
        STANDARD
            .decode(keys()[kid]["private_der_b64"].as_str().unwrap())
            .expect("base64 test key")
    };
    let (alg, name, kid, key) = match signing {
        Signing::Rsa1 | Signing::Rsa2 | Signing::RsaWeak => {
            let kid = match signing {
                Signing::Rsa1 => "rsa1",
                Signing::Rsa2 => "rsa2",
                _ => "rsa-weak",
            };
            let key = EncodingKey::from_rsa_der(&der(kid));
            (Algorithm::RS256, "RS256", Some(kid), key)
        }
        Signing::Ec1 => (
            Algorithm::ES256,
            "ES256",
            Some("ec1"),
            EncodingKey::from_ec_der(&der("ec1")),
        ),
        Signing::HsWithPublicKey => (
            Algorithm::HS256,
            "HS256",
            Some("rsa1"),
            EncodingKey::from_secret(keys()["rsa1"]["public_pem"].as_str().unwrap().as_bytes()),
        ),
        Signing::HsWithClientSecret => (
            Algorithm::HS256,
            "HS256",
            None,
            EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
        ),
        Signing::None => {
            let h = merged(json!({"alg": "none", "typ": "JWT"}), header);
            return format!(
                "{}.{}.",
                B64.encode(h.to_string()),
                B64.encode(claims.to_string())
            );
        }
    };
    let mut h = json!({"alg": name, "typ": "JWT"});
    if let Some(kid) = kid {
        h["kid"] = kid.into();
    }
    let h = merged(h, header);
    let message = format!(
        "{}.{}",
        B64.encode(h.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("sign");
    format!("{message}.{signature}")
}

impl OidcMock {
    /// A provider whose one client (`CLIENT_ID`) has exactly `redirect_uris` registered.
    pub async fn start(redirect_uris: &[&str], knobs: Knobs) -> OidcMock {
        let shared = Arc::new(Shared {
            base: OnceLock::new(),
            redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
            knobs: Mutex::new(knobs),
            codes: Mutex::default(),
            access_tokens: Mutex::default(),
            issued: Mutex::default(),
            token_refusals: Mutex::default(),
            client_auth: Mutex::default(),
            logouts: Mutex::default(),
            authorize_calls: AtomicUsize::new(0),
            token_calls: AtomicUsize::new(0),
            userinfo_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            attacker_calls: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let server = MockServer::start("127.0.0.1:0", move |r| {
            let s = s.clone();
            async move { handle(&s, r) }
        })
        .await
        .expect("bind the mock OpenID provider");
        shared
            .base
            .set(format!("http://{}", server.addr))
            .expect("set once");
        OidcMock { server, shared }
    }

    /// The issuer (`sso.oidc.issuer`), also the base URL of every endpoint.
    pub fn issuer(&self) -> String {
        self.shared.base.get().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Changes the knobs for the next requests.
    pub fn set(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.shared.knobs.lock().unwrap());
    }

    pub fn knobs(&self) -> Knobs {
        self.shared.knobs.lock().unwrap().clone()
    }

    pub fn authorize_calls(&self) -> usize {
        self.shared.authorize_calls.load(Ordering::SeqCst)
    }
    pub fn token_calls(&self) -> usize {
        self.shared.token_calls.load(Ordering::SeqCst)
    }
    pub fn userinfo_calls(&self) -> usize {
        self.shared.userinfo_calls.load(Ordering::SeqCst)
    }
    pub fn jwks_calls(&self) -> usize {
        self.shared.jwks_calls.load(Ordering::SeqCst)
    }
    pub fn attacker_calls(&self) -> usize {
        self.shared.attacker_calls.load(Ordering::SeqCst)
    }
    /// Why each refused token request was refused, in order.
    pub fn token_refusals(&self) -> Vec<TokenRefusal> {
        self.shared.token_refusals.lock().unwrap().clone()
    }
    /// How the client authenticated at each accepted token request (`basic` or `post`).
    pub fn client_auth(&self) -> Vec<&'static str> {
        self.shared.client_auth.lock().unwrap().clone()
    }
    /// `(id_token, access_token)` of every successful token answer.
    pub fn issued(&self) -> Vec<(String, String)> {
        self.shared.issued.lock().unwrap().clone()
    }
    /// The query of every end-session request.
    pub fn logouts(&self) -> Vec<Vec<(String, String)>> {
        self.shared.logouts.lock().unwrap().clone()
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> MockResponse {
    MockResponse::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
    .header("cache-control", "no-store")
}

fn handle(s: &Shared, r: MockRequest) -> MockResponse {
    let base = s.base.get().cloned().unwrap_or_default();
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => {
            let doc = json!({
                "issuer": base,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "jwks_uri": format!("{base}/jwks"),
                "userinfo_endpoint": format!("{base}/userinfo"),
                "end_session_endpoint": format!("{base}/logout"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "scopes_supported": ["openid", "email", "profile", "groups"],
            });
            let edits = s.knobs.lock().unwrap().discovery.clone();
            MockResponse::json(200, &merged(doc, &edits))
        }
        ("GET", "/jwks") => {
            s.jwks_calls.fetch_add(1, Ordering::SeqCst);
            let k = s.knobs.lock().unwrap();
            if k.jwks_down {
                return MockResponse::text(503, "down");
            }
            MockResponse::json(200, &json!({"keys": k.jwks}))
        }
        ("GET", "/authorize") => authorize(s, &r),
        ("POST", "/token") => token(s, &r, &base),
        ("GET" | "POST", "/userinfo") => {
            s.userinfo_calls.fetch_add(1, Ordering::SeqCst);
            let known = r
                .bearer()
                .is_some_and(|t| s.access_tokens.lock().unwrap().contains(&t));
            if !known {
                return MockResponse::json(401, &json!({"error": "invalid_token"}))
                    .header("www-authenticate", "Bearer error=\"invalid_token\"");
            }
            let edits = s.knobs.lock().unwrap().userinfo.clone();
            MockResponse::json(200, &merged(user_claims(), &edits))
        }
        ("GET", "/logout") => {
            s.logouts.lock().unwrap().push(r.query_pairs());
            MockResponse::html(200, "<p>Signed out at the provider.</p>")
        }
        (_, p) if p.starts_with("/attacker/") => {
            s.attacker_calls.fetch_add(1, Ordering::SeqCst);
            MockResponse::json(200, &json!({"keys": [jwk("rsa2")]}))
        }
        _ => MockResponse::text(404, "not found"),
    }
}

/// The signed-in user's claims (ID token and userinfo).
fn user_claims() -> Value {
    json!({
        "sub": SUBJECT,
        "email": "Ann.Lee@Example.com",
        "email_verified": true,
        "name": "Ann Lee",
        "groups": ["dify-users", "staff"],
    })
}

fn authorize(s: &Shared, r: &MockRequest) -> MockResponse {
    s.authorize_calls.fetch_add(1, Ordering::SeqCst);
    let q = |n: &str| r.query_param(n);
    // Errors about the client or redirect URI are shown here, never sent to the redirect URI
    // (RFC 6749 §4.1.2.1).
    if q("client_id").as_deref() != Some(CLIENT_ID) {
        return MockResponse::text(400, "unknown client_id");
    }
    let Some(redirect_uri) = q("redirect_uri").filter(|u| s.redirect_uris.contains(u)) else {
        return MockResponse::text(400, "redirect_uri is not registered for this client");
    };
    if q("response_type").as_deref() != Some("code")
        || q("code_challenge_method").as_deref() != Some("S256")
        || q("code_challenge").is_none_or(|c| c.len() != 43)
        || q("state").is_none_or(|s| s.is_empty())
    {
        return MockResponse::text(400, "expected the code flow with state and PKCE S256");
    }
    let code = random();
    s.codes.lock().unwrap().insert(
        code.clone(),
        Grant {
            client_id: CLIENT_ID.into(),
            redirect_uri: redirect_uri.clone(),
            nonce: q("nonce"),
            challenge: q("code_challenge").unwrap_or_default(),
        },
    );
    let mut to = url::Url::parse(&redirect_uri).expect("registered redirect URI");
    {
        let mut qp = to.query_pairs_mut();
        qp.append_pair("code", &code);
        qp.append_pair("state", &q("state").unwrap_or_default());
        match &s.knobs.lock().unwrap().callback_iss {
            CallbackIss::Issuer => {
                qp.append_pair("iss", s.base.get().unwrap());
            }
            CallbackIss::Other(v) => {
                qp.append_pair("iss", v);
            }
            CallbackIss::Omit => {}
        }
    }
    MockResponse::new(302, "text/plain", "").header("location", to.as_str())
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before they are put into Basic.
fn basic_credentials(r: &MockRequest) -> Option<(String, String)> {
    let v = r.header("authorization")?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

fn token(s: &Shared, r: &MockRequest, base: &str) -> MockResponse {
    s.token_calls.fetch_add(1, Ordering::SeqCst);
    let refuse = |why: TokenRefusal, status: u16, error: &str, text: &str| {
        s.token_refusals.lock().unwrap().push(why);
        oauth_error(status, error, text)
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
    let f = |n: &str| form.get(n).map(String::as_str);
    let auth = match basic_credentials(r) {
        Some((id, secret)) if id == CLIENT_ID && secret == CLIENT_SECRET => "basic",
        Some(_) => "bad",
        None if f("client_id") == Some(CLIENT_ID) && f("client_secret") == Some(CLIENT_SECRET) => {
            "post"
        }
        None => "bad",
    };
    if auth == "bad" {
        return refuse(
            TokenRefusal::Client,
            401,
            "invalid_client",
            "client authentication failed",
        );
    }
    if f("grant_type") != Some("authorization_code") {
        return refuse(
            TokenRefusal::GrantType,
            400,
            "unsupported_grant_type",
            "authorization_code only",
        );
    }
    // Single use: a code is gone once presented, whatever happens next.
    let Some(grant) = f("code").and_then(|c| s.codes.lock().unwrap().remove(c)) else {
        return refuse(
            TokenRefusal::UnknownCode,
            400,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if f("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return refuse(
            TokenRefusal::RedirectUri,
            400,
            "invalid_grant",
            "redirect_uri differs from the authorization request's",
        );
    }
    let verifier = f("code_verifier").unwrap_or_default();
    let verifier_ok = (43..=128).contains(&verifier.len())
        && B64.encode(sha2::Sha256::digest(verifier.as_bytes())) == grant.challenge;
    if !verifier_ok {
        return refuse(
            TokenRefusal::Pkce,
            400,
            "invalid_grant",
            "PKCE verification failed",
        );
    }
    s.client_auth.lock().unwrap().push(auth);
    let k = s.knobs.lock().unwrap().clone();
    let access_token = format!("at-{}", random());
    s.access_tokens.lock().unwrap().push(access_token.clone());
    let t = now();
    let mut claims = merged(
        user_claims(),
        &obj(json!({"iss": base, "aud": grant.client_id, "exp": t + 300, "iat": t})),
    );
    if let Some(n) = grant.nonce {
        claims["nonce"] = n.into();
    }
    if k.at_hash {
        claims["at_hash"] = at_hash(&access_token).into();
    }
    let claims = merged(claims, &k.claims);
    let id_token = sign(k.signing, &claims, &k.header);
    s.issued
        .lock()
        .unwrap()
        .push((id_token.clone(), access_token.clone()));
    let answer = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
        "scope": "openid email profile",
    });
    MockResponse::json(200, &merged(answer, &k.token_answer))
        .header("cache-control", "no-store")
        .header("pragma", "no-cache")
}
