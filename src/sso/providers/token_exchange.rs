//! QSSO-style token exchange (the OpenResty QSSO bridge's protocol): `/signin` goes to the SSO login page,
//! the SSO posts a one-time token to the callback, and a management service swaps it for Dify
//! tokens: `GET <exchange.url>?trace_id=<id>&token=<token>` -> `{"access_token", "refresh_token"}`.

use crate::dify::DifySession;
use crate::dify::redirect::{append_query, encode_component};
use crate::sso::config::SsoConfig;
use crate::sso::failure::SsoFailure;
use crate::sso::mask;
use crate::sso::protocol::{CallbackInput, LoginStart, SignInOutcome, SignInProtocol};
use std::time::Duration;

/// The management service's answer is a small JSON object; anything bigger is not it.
const MAX_ANSWER: usize = 64 * 1024;

pub struct TokenExchange {
    client: reqwest::Client,
    login_url: String,
    token_param: String,
    exchange_url: String,
}

impl TokenExchange {
    pub fn new(sso: &SsoConfig) -> Result<TokenExchange, String> {
        // The process installs the ring provider at start; this covers tests and other callers.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = exchange_client(&sso.exchange)?;
        Ok(TokenExchange {
            client,
            login_url: sso.login_url.clone(),
            token_param: sso.token_param.clone(),
            exchange_url: sso.exchange.url.clone(),
        })
    }
}

/// The pooled client for the management service (`sso.exchange`): its timeout, TLS choice and
/// extra headers; shared by the token exchange and the identity minter.
pub fn exchange_client(ex: &crate::sso::ExchangeConfig) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = http::HeaderMap::new();
    for (name, value) in &ex.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("sso.exchange.headers: {e}"))?;
        let mut value = http::HeaderValue::from_str(value.expose())
            .map_err(|e| format!("sso.exchange.headers: {e}"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    if ex.insecure_skip_verify {
        log::warn!(
            "sso.exchange.insecure_skip_verify is on: the token exchange accepts any TLS certificate"
        );
    }
    reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_danger_accept_invalid_certs(ex.insecure_skip_verify)
        .timeout(ex.timeout)
        .connect_timeout(ex.timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // A redirect from the management service is an error, not something to follow blindly.
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .map_err(|e| format!("cannot build the token exchange client: {e}"))
}

impl TokenExchange {
    fn login_url_for(&self, start: &LoginStart<'_>) -> String {
        self.login_url
            .replace("{callback_url}", &encode_component(start.callback_url))
            .replace("{state}", &encode_component(start.state))
    }

    async fn call(&self, token: &str, trace_id: &str) -> Result<DifySession, SsoFailure> {
        let url = append_query(
            &self.exchange_url,
            &[("trace_id", trace_id), ("token", token)],
        );
        let started = std::time::Instant::now();
        let sent = self
            .client
            .get(&url)
            .header("X-Request-Id", trace_id)
            .send()
            .await;
        // The URL carries the SSO token: send_failure logs it without the query.
        let resp = sent.map_err(|e| send_failure(e, trace_id))?;
        crate::ops::metrics::METRICS
            .sso_exchange_duration
            .observe(started.elapsed().as_secs_f64());
        read_session(resp, started, trace_id).await
    }
}

/// Reads the management service's answer (token exchange and identity call alike).
pub async fn read_session(
    mut resp: reqwest::Response,
    started: std::time::Instant,
    trace_id: &str,
) -> Result<DifySession, SsoFailure> {
    let status = resp.status().as_u16();
    log::info!(trace_id = trace_id, status = status, elapsed_ms = started.elapsed().as_millis() as u64;
            "management service answered");
    match status {
        200 => {}
        400..=499 => return Err(SsoFailure::ExchangeRefused(status)),
        _ => {
            return Err(SsoFailure::ExchangeFailed(format!(
                "it answered with status {status}"
            )));
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| send_failure(e, trace_id))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(SsoFailure::ExchangeFailed(
                "its answer is larger than 64 KiB".into(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    parse_answer(&body)
}

pub fn send_failure(e: reqwest::Error, trace_id: &str) -> SsoFailure {
    let failure = super::http::log_failure(&e, "management service", trace_id);
    if failure.kind == "timeout" {
        SsoFailure::ExchangeTimeout
    } else {
        SsoFailure::ExchangeUnreachable
    }
}

/// `{"access_token": "...", "refresh_token": "...", "csrf_token"?: "..."}`.
pub fn parse_answer(body: &[u8]) -> Result<DifySession, SsoFailure> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| SsoFailure::ExchangeFailed("its answer is not JSON".into()))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let missing = |name: &str| SsoFailure::ExchangeFailed(format!("its answer has no {name}"));
    Ok(DifySession {
        access_token: field("access_token").ok_or_else(|| missing("access_token"))?,
        refresh_token: field("refresh_token").ok_or_else(|| missing("refresh_token"))?,
        csrf_token: field("csrf_token"),
        owner: crate::dify::session::SessionOwner {
            email: field("email"),
            name: field("name"),
            groups: value
                .get("groups")
                .and_then(|g| g.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_str())
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        },
    })
}

#[async_trait::async_trait]
impl SignInProtocol for TokenExchange {
    fn name(&self) -> &'static str {
        "token_exchange"
    }

    async fn login_redirect(&self, start: &LoginStart<'_>) -> Result<String, SsoFailure> {
        Ok(self.login_url_for(start))
    }

    async fn finish(&self, callback: &CallbackInput<'_>) -> Result<SignInOutcome, SsoFailure> {
        let token = callback
            .param(&self.token_param)
            .filter(|t| !t.trim().is_empty())
            .ok_or(SsoFailure::MissingToken)?;
        refuse_odd_token(token, &self.token_param, callback)?;
        log::info!(trace_id = callback.trace_id, sso_token = mask(token).as_str(); "exchanging the SSO token");
        self.call(token, callback.trace_id)
            .await
            .map(SignInOutcome::Session)
    }
}

/// Largest sign-in token passed on to the exchange (QSSO tokens are a few dozen characters).
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A token the SSO could not have sent: several different ones, control characters, or a size no
/// SSO token has. Refused here (400) rather than handed to the management service to refuse.
fn refuse_odd_token(
    token: &str,
    param: &str,
    callback: &CallbackInput<'_>,
) -> Result<(), SsoFailure> {
    let several = callback
        .params
        .iter()
        .any(|(k, v)| k == param && v != token);
    let why = if several {
        "the callback carried several different sign-in tokens"
    } else if token.chars().any(char::is_control) {
        "the sign-in token contains control characters"
    } else if token.len() > MAX_TOKEN_LEN {
        "the sign-in token is longer than any SSO token"
    } else {
        return Ok(());
    };
    Err(SsoFailure::BadCallback(why.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_parsing() {
        let s = parse_answer(br#"{"access_token":"a","refresh_token":"r"}"#).unwrap();
        assert_eq!(
            (
                s.access_token.as_str(),
                s.refresh_token.as_str(),
                s.csrf_token
            ),
            ("a", "r", None)
        );
        let s = parse_answer(br#"{"access_token":"a","refresh_token":"r","csrf_token":"c","x":1}"#)
            .unwrap();
        assert_eq!(s.csrf_token.as_deref(), Some("c"));
        for (body, why) in [
            (&b"<html>oops</html>"[..], "not JSON"),
            (br#"{"refresh_token":"r"}"#, "no access_token"),
            (
                br#"{"access_token":"a","refresh_token":""}"#,
                "no refresh_token",
            ),
            (
                br#"{"access_token":1,"refresh_token":"r"}"#,
                "no access_token",
            ),
            (br#"[1,2]"#, "no access_token"),
        ] {
            let e = parse_answer(body).unwrap_err();
            assert!(
                matches!(&e, SsoFailure::ExchangeFailed(m) if m.contains(why)),
                "{e:?}"
            );
            assert_eq!(e.status(), 502);
        }
    }

    #[test]
    fn login_url_placeholders() {
        let sso = SsoConfig {
            login_url: "https://sso.example.com/login.php?ret={callback_url}&s={state}".into(),
            ..Default::default()
        };
        let te = TokenExchange::new(&sso).unwrap();
        let start = LoginStart {
            callback_url: "https://dify.example.com/qsso_backcall",
            state: "n 1",
            trace_id: "t",
            nonce: "",
            pkce_challenge: "",
        };
        assert_eq!(
            te.login_url_for(&start),
            "https://sso.example.com/login.php?ret=https%3A%2F%2Fdify.example.com%2Fqsso_backcall&s=n%201"
        );
        let literal = SsoConfig {
            login_url: "https://sso.example.com/login.php?ret=x%2Fy".into(),
            ..Default::default()
        };
        assert_eq!(
            TokenExchange::new(&literal).unwrap().login_url_for(&start),
            "https://sso.example.com/login.php?ret=x%2Fy"
        );
    }
}
