//! Dify's published apps as its community edition serves them (api/controllers/web/passport.py,
//! wraps.py, libs/token.py of Dify 1.14): the app pages, `GET /api/passport` (the `X-App-Code`
//! header, `?user_id=` -> the EndUser's `session_id`, a passport JWT, HS256 with `SECRET_KEY`
//! and no `exp`), and the API calls that take the passport from the `passport-<code>` cookie first,
//! then `X-App-Passport`, load the app from its `app_code` claim and the EndUser from its
//! `end_user_id`. Anyone with the link gets in: that is what the gateway changes.

use super::mock_http::{MockRequest, MockResponse, page};
use serde_json::{Value, json};
use std::sync::Mutex;

/// One `end_users` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndUser {
    pub id: String,
    pub app_code: String,
    /// What `?user_id=` said (a random id when none): Dify's "user" in its logs, `sys.user_id`.
    pub session_id: String,
}

#[derive(Default)]
pub struct WebApps {
    /// Published app codes (`sites.code`).
    pub codes: Vec<String>,
    pub end_users: Mutex<Vec<EndUser>>,
}

fn app_id(code: &str) -> String {
    format!("app-{code}")
}

impl WebApps {
    pub fn new(codes: &[&str]) -> WebApps {
        WebApps {
            codes: codes.iter().map(|c| c.to_string()).collect(),
            end_users: Mutex::new(Vec::new()),
        }
    }

    /// Answers `r` when it is a published app's page or web-app API call.
    pub fn handle(&self, secret_key: &str, r: &MockRequest) -> Option<MockResponse> {
        let path = r.path.as_str();
        let mut parts = path.trim_start_matches('/').splitn(3, '/');
        let family = parts.next().unwrap_or("");
        if ["chat", "chatbot", "completion", "workflow"].contains(&family) {
            let code = parts.next().unwrap_or("");
            return Some(if self.codes.iter().any(|c| c == code) {
                let inner =
                    format!("<h1 id=\"app\">Published app {code}</h1><p>The {family} app.</p>");
                MockResponse::html(200, page(&format!("App {code}"), &inner))
            } else {
                MockResponse::html(404, page("Not found", "<h1>App not found</h1>"))
            });
        }
        let api = path.strip_prefix("/api")?;
        Some(match (r.method.as_str(), api) {
            ("GET", "/passport") => self.passport(secret_key, r),
            ("GET", "/system-features") => {
                MockResponse::json(200, &json!({"webapp_auth": {"enabled": false}}))
            }
            (
                _,
                "/parameters" | "/meta" | "/site" | "/conversations" | "/messages"
                | "/chat-messages",
            ) => match self.end_user(secret_key, r) {
                Ok(user) if api == "/chat-messages" => sse(&user),
                Ok(user) => MockResponse::json(
                    200,
                    &json!({"app_code": user.app_code, "end_user": user.session_id}),
                ),
                Err(why) => unauthorized(&why),
            },
            _ => MockResponse::json(404, &json!({"code": "not_found", "status": 404})),
        })
    }

    fn passport(&self, secret_key: &str, r: &MockRequest) -> MockResponse {
        let Some(code) = r.header("x-app-code").map(str::to_string) else {
            return unauthorized("X-App-Code header is missing.");
        };
        if !self.codes.contains(&code) {
            return MockResponse::json(
                404,
                &json!({"code": "not_found", "message": "Site not found.", "status": 404}),
            );
        }
        let session_id = r
            .query_param("user_id")
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let user = {
            let mut rows = self.end_users.lock().unwrap();
            match rows
                .iter()
                .find(|u| u.app_code == code && u.session_id == session_id)
            {
                Some(u) => u.clone(),
                None => {
                    let u = EndUser {
                        id: uuid::Uuid::new_v4().to_string(),
                        app_code: code.clone(),
                        session_id,
                    };
                    rows.push(u.clone());
                    u
                }
            }
        };
        let claims = json!({
            "iss": app_id(&code),
            "sub": "Web API Passport",
            "app_id": app_id(&code),
            "app_code": code,
            "end_user_id": user.id,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret_key.as_bytes()),
        )
        .unwrap();
        MockResponse::json(200, &json!({"access_token": token}))
    }

    /// As Dify's `decode_jwt_token`: the passport, its app and its EndUser.
    fn end_user(&self, secret_key: &str, r: &MockRequest) -> Result<EndUser, String> {
        let code = r.header("x-app-code").unwrap_or_default().to_string();
        let token = r
            .cookie(&format!("passport-{code}"))
            .or_else(|| r.header("x-app-passport").map(str::to_string))
            .ok_or("App token is missing.")?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(secret_key.as_bytes()),
            &v,
        )
        .map_err(|e| format!("Invalid token: {e}"))?
        .claims;
        let end_user_id = claims["end_user_id"].as_str().unwrap_or_default();
        self.end_users
            .lock()
            .unwrap()
            .iter()
            .find(|u| {
                u.id == end_user_id && Some(u.app_code.as_str()) == claims["app_code"].as_str()
            })
            .cloned()
            .ok_or_else(|| "End user not found.".to_string())
    }

    pub fn end_users(&self) -> Vec<EndUser> {
        self.end_users.lock().unwrap().clone()
    }
}

fn unauthorized(message: &str) -> MockResponse {
    MockResponse::json(
        401,
        &json!({"code": "unauthorized", "message": message, "status": 401}),
    )
}

/// A chat answer as Dify streams it: Server-Sent Events, one `message` event per piece.
fn sse(user: &EndUser) -> MockResponse {
    let mut body = String::new();
    for piece in ["Hello ", "from ", "the app"] {
        body.push_str(&format!(
            "data: {}\n\n",
            json!({"event": "message", "answer": piece, "from_end_user_id": user.id})
        ));
    }
    body.push_str(&format!(
        "data: {}\n\n",
        json!({"event": "message_end", "metadata": {"user": user.session_id}})
    ));
    MockResponse::new(200, "text/event-stream", body)
}
