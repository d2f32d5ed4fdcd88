//! OAuth 2.0 without OpenID Connect (`sso.protocol: oauth2`): authorization code (+ PKCE S256
//! unless `pkce: false`), then the userinfo endpoint, read with JSON pointers (`sso.oauth2.claims`).
//! Presets: `github` (github.com endpoints; the primary verified address from `/user/emails`,
//! since `/user` shows only a public email) and `casdoor` (endpoints derived from `server`).
//! As for OIDC, the flow has matched `state` to the browser before [`OAuth2::finish`] runs; the
//! callback's `iss` (RFC 9207) is checked before the code is redeemed, and the token answer must
//! be of type Bearer before its access token is sent to userinfo. Docs: docs/oidc-relying-party.md.

use super::http;
use crate::dify::redirect::append_query;
use crate::sso::config::{OAuth2Config, OAuth2Preset, SsoConfig};
use crate::sso::failure::SsoFailure;
use crate::sso::protocol::{CallbackInput, Identity, LoginStart, SignInOutcome, SignInProtocol};
use serde_json::Value;

pub struct OAuth2 {
    cfg: OAuth2Config,
    http: reqwest::Client,
    authorize_url: String,
    token_url: String,
    userinfo_url: String,
    /// GitHub: where the verified addresses are listed.
    emails_url: Option<String>,
    issuer: String,
    /// Origin of the authorization endpoint: an `iss` in a callback must be on it.
    authorize_origin: String,
    claims: [String; 5],
    scopes: String,
}

fn or(value: &str, default: impl Into<String>) -> String {
    if value.is_empty() {
        default.into()
    } else {
        value.to_string()
    }
}

impl OAuth2 {
    pub fn new(sso: &SsoConfig) -> Result<OAuth2, String> {
        let c = sso.oauth2.clone();
        let server = c.server.trim_end_matches('/').to_string();
        let (authorize, token, userinfo, defaults, scopes, issuer) = match c.preset {
            OAuth2Preset::Github => (
                "https://github.com/login/oauth/authorize".to_string(),
                "https://github.com/login/oauth/access_token".to_string(),
                "https://api.github.com/user".to_string(),
                ["/id", "", "/name", "", ""],
                "read:user user:email",
                "https://github.com".to_string(),
            ),
            OAuth2Preset::Casdoor => (
                format!("{server}/login/oauth/authorize"),
                format!("{server}/api/login/oauth/access_token"),
                format!("{server}/api/userinfo"),
                ["/sub", "/email", "/name", "/groups", "/email_verified"],
                "openid profile email",
                server.clone(),
            ),
            OAuth2Preset::None => (
                String::new(),
                String::new(),
                String::new(),
                ["", "", "", "", ""],
                "",
                String::new(),
            ),
        };
        let authorize_url = or(&c.authorize_url, authorize);
        let userinfo_url = or(&c.userinfo_url, userinfo);
        let issuer = if issuer.is_empty() {
            url::Url::parse(&authorize_url)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_default()
        } else {
            issuer
        };
        let cl = &c.claims;
        let authorize_origin = url::Url::parse(&authorize_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Ok(OAuth2 {
            authorize_origin,
            http: http::client(c.timeout)?,
            token_url: or(&c.token_url, token),
            emails_url: (c.preset == OAuth2Preset::Github)
                .then(|| format!("{}/emails", userinfo_url.trim_end_matches('/'))),
            authorize_url,
            userinfo_url,
            issuer,
            claims: [
                or(&cl.id, defaults[0]),
                or(&cl.email, defaults[1]),
                or(&cl.name, defaults[2]),
                or(&cl.groups, defaults[3]),
                or(&cl.email_verified, defaults[4]),
            ],
            scopes: if c.scopes.is_empty() {
                scopes.to_string()
            } else {
                c.scopes.join(" ")
            },
            cfg: c,
        })
    }

    fn pointer<'a>(info: &'a Value, p: &str) -> Option<&'a Value> {
        if p.is_empty() { None } else { info.pointer(p) }
    }

    /// GitHub: the primary, verified address.
    async fn github_email(
        &self,
        url: &str,
        access: &str,
        trace_id: &str,
    ) -> Result<Option<String>, SsoFailure> {
        let list = http::json(
            self.http.get(url).bearer_auth(access),
            "email list",
            trace_id,
        )
        .await?;
        Ok(list.as_array().and_then(|a| {
            a.iter()
                .find(|e| e["primary"] == Value::Bool(true) && e["verified"] == Value::Bool(true))
                .and_then(|e| e["email"].as_str())
                .map(str::to_string)
        }))
    }
}

/// A string or number as text.
fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait::async_trait]
impl SignInProtocol for OAuth2 {
    fn name(&self) -> &'static str {
        "oauth2"
    }

    fn redirect_flow(&self) -> bool {
        true
    }

    async fn login_redirect(&self, start: &LoginStart<'_>) -> Result<String, SsoFailure> {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", self.cfg.client_id.as_str()),
            ("redirect_uri", start.callback_url),
            ("state", start.state),
        ];
        if !self.scopes.is_empty() {
            params.push(("scope", &self.scopes));
        }
        if self.cfg.pkce {
            params.push(("code_challenge", start.pkce_challenge));
            params.push(("code_challenge_method", "S256"));
        }
        Ok(append_query(&self.authorize_url, &params))
    }

    async fn finish(&self, cb: &CallbackInput<'_>) -> Result<SignInOutcome, SsoFailure> {
        let flow = cb.flow.ok_or(SsoFailure::BadState)?;
        http::single_params(cb.params, &["code", "iss", "error"])?;
        // RFC 9207: with `sso.oauth2.issuer` set, `iss` is required and exact; without it, a
        // provider that does send one must name its own origin (mix-up, RFC 9700 §4.4).
        let configured = &self.cfg.issuer;
        http::check_iss(
            cb.param("iss"),
            |iss| {
                if configured.is_empty() {
                    url::Url::parse(iss)
                        .is_ok_and(|u| u.origin().ascii_serialization() == self.authorize_origin)
                } else {
                    iss == configured
                }
            },
            !configured.is_empty(),
            cb.trace_id,
        )?;
        if let Some(refused) = http::callback_error(cb.params) {
            return Err(refused);
        }
        let code = cb
            .param("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SsoFailure::BadCallback("the sign-in server sent no code".into()))?;
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", cb.callback_url),
            ("client_id", self.cfg.client_id.as_str()),
            ("client_secret", self.cfg.client_secret.expose()),
        ];
        if self.cfg.pkce {
            pairs.push(("code_verifier", &flow.pkce_verifier));
        }
        let req = self
            .http
            .post(&self.token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(super::oidc::form_body(&pairs));
        let tokens = http::token(req, cb.trace_id).await?;
        http::require_bearer(&tokens)?;
        let access = tokens
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                SsoFailure::ProviderFailed("its token answer has no access_token".into())
            })?
            .to_string();
        let info = http::json(
            self.http.get(&self.userinfo_url).bearer_auth(&access),
            "userinfo",
            cb.trace_id,
        )
        .await?;
        let [id, email, name, groups, verified] = &self.claims;
        let subject = scalar(Self::pointer(&info, id)).ok_or_else(|| {
            SsoFailure::InvalidIdentity("the userinfo answer has no user id".into())
        })?;
        let name = scalar(Self::pointer(&info, name)).or_else(|| {
            scalar(info.pointer("/login")).filter(|_| self.cfg.preset == OAuth2Preset::Github)
        });
        let (email, email_verified) = match &self.emails_url {
            Some(url) => (self.github_email(url, &access, cb.trace_id).await?, true),
            None => (
                scalar(Self::pointer(&info, email)),
                super::oidc::truthy(Self::pointer(&info, verified)),
            ),
        };
        Ok(SignInOutcome::Identity(Identity {
            issuer: self.issuer.clone(),
            subject,
            email,
            email_verified,
            name,
            groups: super::oidc::string_list(Self::pointer(&info, groups)),
            id_token_hint: None,
        }))
    }
}
