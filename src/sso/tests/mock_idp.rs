//! Test double: one in-process identity provider on 127.0.0.1 that speaks OpenID Connect
//! (discovery, JWKS, token, userinfo, end session), GitHub-shaped OAuth2 (`/login/oauth/...`,
//! `/user`, `/user/emails`), CAS 3.0 (`/cas/login`, `/cas/p3/serviceValidate`), and plays the
//! management service's identity endpoint (`/identity`). It counts calls, so tests can prove
//! what was (not) redeemed, and its keys and answers can be changed mid-test.

use super::test_keys::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "dify-gateway";
pub const CLIENT_SECRET: &str = "client-secret-for-tests";

#[derive(Clone)]
struct Grant {
    nonce: Option<String>,
    challenge: Option<String>,
    redirect_uri: String,
}

pub struct IdpState {
    pub base: String,
    /// Merged into the next ID tokens' claims (null removes a claim).
    pub claims: serde_json::Map<String, Value>,
    /// Answer of the identity endpoint: status and body.
    pub identity_reply: (u16, String),
    pub identity_requests: Vec<(String, Value)>,
    pub github_emails: Value,
    pub github_user: Value,
    pub cas_user: String,
    pub cas_attributes: Vec<(String, String)>,
    pub token_calls: usize,
    pub validate_calls: usize,
    codes: HashMap<String, Grant>,
    tickets: HashMap<String, String>,
}

pub struct MockIdp {
    pub base: String,
    pub state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> u64 {
    crate::sso::signer::now_secs()
}

fn query_pairs(target: &str) -> HashMap<String, String> {
    let q = target.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// The public JWK of the signing key (`rsa1`), with its kid, alg and `use: sig`.
fn jwk() -> Value {
    let mut v: Value = serde_json::from_str(&format!("{{{RSA1_JWK}}}")).unwrap();
    v["kid"] = "rsa1".into();
    v["alg"] = "RS256".into();
    v["use"] = "sig".into();
    v
}

/// A compact JWS of `claims`, RS256 with `rsa1`.
fn sign(claims: &Value) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(RSA1_DER_B64)
        .unwrap();
    let key = EncodingKey::from_rsa_der(&der);
    let h = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa1"});
    let message = format!(
        "{}.{}",
        B64.encode(h.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::RS256).unwrap();
    format!("{message}.{signature}")
}

impl MockIdp {
    pub async fn start() -> MockIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(IdpState {
            base: base.clone(),
            claims: serde_json::Map::new(),
            identity_reply: (200, String::new()),
            identity_requests: Vec::new(),
            github_emails: json!([
                {"email": "ann@old.example.org", "primary": false, "verified": true},
                {"email": "Ann@Example.com", "primary": true, "verified": true}
            ]),
            github_user: json!({"id": 4242, "login": "ann", "name": "Ann Lee", "email": null}),
            cas_user: "ann".into(),
            cas_attributes: vec![
                ("mail".into(), "Ann@Example.com".into()),
                ("displayName".into(), "Ann Lee".into()),
                ("memberOf".into(), "dify-users".into()),
                ("memberOf".into(), "staff".into()),
            ],
            token_calls: 0,
            validate_calls: 0,
            codes: HashMap::new(),
            tickets: HashMap::new(),
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                    let (status, ctype, out) = route(&st, &head, &body);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                        out.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        MockIdp { base, state, task }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut IdpState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// The user signs in at the provider's login page: the browser's next stop (path and query
    /// on the gateway) for the authorization URL the gateway sent it to.
    pub fn authorize(&self, location: &str) -> String {
        let q = query_pairs(location);
        let mut s = self.state.lock().unwrap();
        assert!(
            location.starts_with(&s.base),
            "not sent to the provider: {location}"
        );
        let redirect_uri = q["redirect_uri"].clone();
        assert_eq!(q["client_id"], CLIENT_ID);
        if let Some(m) = q.get("code_challenge_method") {
            assert_eq!(m, "S256");
        }
        let code = crate::sso::signer::random_hex(12);
        s.codes.insert(
            code.clone(),
            Grant {
                nonce: q.get("nonce").cloned(),
                challenge: q.get("code_challenge").cloned(),
                redirect_uri: redirect_uri.clone(),
            },
        );
        let path = redirect_uri
            .strip_prefix("http://localhost:8080")
            .expect("callback on the gateway");
        format!(
            "{path}?code={code}&state={}",
            form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>()
        )
    }

    /// CAS login: the browser's next stop for the CAS login URL.
    pub fn cas_login(&self, location: &str) -> String {
        let q = query_pairs(location);
        let service = q["service"].clone();
        let ticket = format!("ST-{}", crate::sso::signer::random_hex(8));
        self.state
            .lock()
            .unwrap()
            .tickets
            .insert(ticket.clone(), service.clone());
        let path = service.strip_prefix("http://localhost:8080").unwrap();
        format!("{path}&ticket={ticket}")
    }
}

fn basic_ok(head: &str) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == want)
    })
}

fn bearer(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization")
            .then(|| v.trim().strip_prefix("Bearer ").map(str::to_string))?
    })
}

fn route(st: &Arc<Mutex<IdpState>>, head: &str, body: &str) -> (u16, &'static str, String) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("");
    let mut s = st.lock().unwrap();
    let base = s.base.clone();
    const J: &str = "application/json";
    match (method, path) {
        ("GET", "/.well-known/openid-configuration") => (
            200,
            J,
            json!({
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
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            })
            .to_string(),
        ),
        ("GET", "/jwks") => (200, J, json!({ "keys": [jwk()] }).to_string()),
        ("POST", "/token") | ("POST", "/login/oauth/access_token") => {
            s.token_calls += 1;
            let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            let client_ok = basic_ok(head)
                || (form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                    && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET));
            if !client_ok {
                return (401, J, json!({"error": "invalid_client"}).to_string());
            }
            let Some(grant) = form.get("code").and_then(|c| s.codes.remove(c)) else {
                return (400, J, json!({"error": "invalid_grant"}).to_string());
            };
            if let Some(ch) = &grant.challenge {
                let v = form.get("code_verifier").cloned().unwrap_or_default();
                if &B64.encode(sha2::Sha256::digest(v.as_bytes())) != ch {
                    return (
                        400,
                        J,
                        json!({"error": "invalid_grant", "error_description": "PKCE"}).to_string(),
                    );
                }
            }
            if form.get("redirect_uri") != Some(&grant.redirect_uri) {
                return (400, J, json!({"error": "invalid_grant"}).to_string());
            }
            if path == "/login/oauth/access_token" {
                let answer = json!({"access_token": "gho_access", "token_type": "bearer", "scope": "read:user,user:email"});
                return (200, J, answer.to_string());
            }
            let mut claims = json!({
                "iss": base,
                "sub": "user-1",
                "aud": CLIENT_ID,
                "exp": now() + 300,
                "iat": now(),
                "email": "Ann@Example.com",
                "email_verified": true,
                "name": "Ann Lee",
                "groups": ["dify-users", "staff"],
            });
            if let Some(n) = grant.nonce {
                claims["nonce"] = n.into();
            }
            for (k, v) in &s.claims {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            let id_token = sign(&claims);
            let answer = json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 300,
                "id_token": id_token});
            (200, J, answer.to_string())
        }
        ("GET", "/userinfo") => {
            if bearer(head).as_deref() != Some("at-1") {
                return (401, J, "{}".into());
            }
            (
                200,
                J,
                json!({"sub": "user-1", "email": "info@example.com", "email_verified": true})
                    .to_string(),
            )
        }
        ("GET", "/user") => {
            if bearer(head).as_deref() != Some("gho_access") {
                return (401, J, "{}".into());
            }
            (200, J, s.github_user.to_string())
        }
        ("GET", "/user/emails") => {
            if bearer(head).as_deref() != Some("gho_access") {
                return (401, J, "{}".into());
            }
            (200, J, s.github_emails.to_string())
        }
        ("GET", "/cas/p3/serviceValidate") => {
            s.validate_calls += 1;
            let q = query_pairs(target);
            let ticket = q.get("ticket").cloned().unwrap_or_default();
            let service = q.get("service").cloned().unwrap_or_default();
            let x = "application/xml";
            let fail = |code: &str, msg: &str| {
                format!(
                    "<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\">\n  <cas:authenticationFailure code=\"{code}\">{msg}</cas:authenticationFailure>\n</cas:serviceResponse>"
                )
            };
            match s.tickets.remove(&ticket) {
                None => (200, x, fail("INVALID_TICKET", "Ticket not recognized")),
                Some(svc) if svc != service => {
                    (200, x, fail("INVALID_SERVICE", "Service mismatch"))
                }
                Some(_) => {
                    let attrs: String = s
                        .cas_attributes
                        .iter()
                        .map(|(k, v)| format!("<cas:{k}>{v}</cas:{k}>"))
                        .collect();
                    (
                        200,
                        x,
                        format!(
                            "<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\">\n <cas:authenticationSuccess>\n  <cas:user>{}</cas:user>\n  <cas:attributes>{attrs}</cas:attributes>\n </cas:authenticationSuccess>\n</cas:serviceResponse>",
                            s.cas_user
                        ),
                    )
                }
            }
        }
        ("POST", "/identity") => {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            s.identity_requests.push((head.to_string(), v));
            let (status, out) = s.identity_reply.clone();
            (status, J, out)
        }
        _ => (404, J, "{}".into()),
    }
}
