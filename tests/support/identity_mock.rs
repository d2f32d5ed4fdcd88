//! A mock management service for the identity call (`sso.minter: management_service`,
//! docs/management-service.md): `POST /dify_session` with the JSON identity -> 200
//! `{"access_token": <HS256 JWT signed with Dify's SECRET_KEY>, "refresh_token": <128 hex>}`.
//!
//! It checks what a careful implementation checks: method, JSON body with every documented field,
//! `trace_id` equal to `X-Request-Id`, the configured API key header, `email_verified` true; then
//! finds the Dify account by email (unknown -> 403). Every call is recorded.
//!
//! Depends on `mock_http.rs` and `sso_mock.rs` (token helpers).

#![allow(dead_code)]

use super::mock_http::{MockRequest, MockResponse, MockServer};
use super::sso_mock::{MintedSession, dify_access_token};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const IDENTITY_PATH: &str = "/dify_session";

/// One identity call as received.
#[derive(Debug, Clone)]
pub struct IdentityCall {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The JSON body (Null when it was not JSON).
    pub body: Value,
    pub status: u16,
}

impl IdentityCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    secret_key: String,
    /// (header name, value) every call must carry, if set.
    api_key: Option<(String, String)>,
    /// lower-case email -> Dify account id.
    accounts: HashMap<String, String>,
    calls: Mutex<Vec<IdentityCall>>,
    minted: Mutex<Vec<MintedSession>>,
}

pub struct IdentityMock {
    pub server: MockServer,
    shared: Arc<Shared>,
}

impl IdentityMock {
    /// `accounts`: (email, Dify account id). `api_key`: a header the gateway must send.
    pub async fn start(
        secret_key: &str,
        accounts: &[(&str, &str)],
        api_key: Option<(&str, &str)>,
    ) -> IdentityMock {
        let shared = Arc::new(Shared {
            secret_key: secret_key.into(),
            api_key: api_key.map(|(k, v)| (k.to_string(), v.to_string())),
            accounts: accounts
                .iter()
                .map(|(e, id)| (e.to_lowercase(), id.to_string()))
                .collect(),
            calls: Mutex::new(Vec::new()),
            minted: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let server = MockServer::start("127.0.0.1:0", move |r| {
            let s = s.clone();
            async move { handle(&s, r) }
        })
        .await
        .expect("bind the mock management service (identity call)");
        IdentityMock { server, shared }
    }

    /// `sso.exchange.identity_url`.
    pub fn url(&self) -> String {
        self.server.url(IDENTITY_PATH)
    }

    pub fn calls(&self) -> Vec<IdentityCall> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn minted(&self) -> Vec<MintedSession> {
        self.shared.minted.lock().unwrap().clone()
    }
}

fn handle(s: &Shared, r: MockRequest) -> MockResponse {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let answer = answer(s, &r, &body);
    s.calls.lock().unwrap().push(IdentityCall {
        method: r.method.clone(),
        path: r.path.clone(),
        headers: r.header_pairs(),
        body,
        status: answer.status,
    });
    answer
}

fn refuse(status: u16, why: &str) -> MockResponse {
    MockResponse::json(status, &json!({"error": why}))
}

fn answer(s: &Shared, r: &MockRequest, body: &Value) -> MockResponse {
    if r.path != IDENTITY_PATH {
        return refuse(404, "not found");
    }
    if r.method != "POST" {
        return refuse(405, "POST only");
    }
    if !r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return refuse(415, "expected application/json");
    }
    if let Some((name, value)) = &s.api_key
        && r.header(name) != Some(value.as_str())
    {
        return refuse(401, "missing or wrong API key");
    }
    for field in [
        "trace_id",
        "protocol",
        "issuer",
        "subject",
        "email",
        "email_verified",
        "name",
        "groups",
    ] {
        if body.get(field).is_none() {
            return refuse(400, &format!("missing field {field}"));
        }
    }
    if body["trace_id"].as_str() != r.header("x-request-id") {
        return refuse(400, "trace_id differs from X-Request-Id");
    }
    if body["email_verified"] != json!(true) {
        return refuse(403, "unverified email");
    }
    let email = body["email"].as_str().unwrap_or_default();
    let Some(user_id) = s.accounts.get(email).cloned() else {
        return refuse(403, "no Dify account for this email");
    };
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let access = dify_access_token(&s.secret_key, &user_id, exp);
    let refresh: String = (0..4)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    s.minted.lock().unwrap().push(MintedSession {
        user_id,
        access_token: access.clone(),
        refresh_token: refresh.clone(),
        csrf_token: None,
    });
    MockResponse::json(
        200,
        &json!({"access_token": access, "refresh_token": refresh}),
    )
}
