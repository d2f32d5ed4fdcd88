//! The HTTP calls redirect protocols make to their provider (discovery, JWKS, token, userinfo,
//! ticket validation): one pooled rustls client, bounded answers, failures in the user's words.

use crate::sso::failure::SsoFailure;
use std::time::Duration;

/// Provider answers (discovery, JWKS, tokens, userinfo, CAS XML) are small; more is not them.
const MAX_ANSWER: usize = 1024 * 1024;

pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_backend_rustls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dify-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the sign-in provider client: {e}"))
}

/// Status and body of an answer (body capped).
pub async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    trace_id: &str,
) -> Result<(u16, Vec<u8>), SsoFailure> {
    let failed = |e: reqwest::Error| {
        log::warn!(trace_id = trace_id, error = e.without_url().to_string().as_str(); "{what}: request failed");
        SsoFailure::ProviderUnreachable
    };
    let mut resp = req.send().await.map_err(failed)?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(SsoFailure::ProviderFailed(format!(
                "its {what} answer is too large"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    log::info!(trace_id = trace_id, status = status; "{what}: answered");
    Ok((status, body))
}

/// A 200 JSON answer, or a failure naming `what`.
pub async fn json(
    req: reqwest::RequestBuilder,
    what: &str,
    trace_id: &str,
) -> Result<serde_json::Value, SsoFailure> {
    let (status, body) = send(req.header("Accept", "application/json"), what, trace_id).await?;
    if status != 200 {
        return Err(SsoFailure::ProviderFailed(format!(
            "its {what} answered with status {status}"
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|_| SsoFailure::ProviderFailed(format!("its {what} answer is not JSON")))
}

/// The token endpoint's answer: 200 JSON, or an OAuth error (`invalid_grant` ...) as a refusal.
pub async fn token(
    req: reqwest::RequestBuilder,
    trace_id: &str,
) -> Result<serde_json::Value, SsoFailure> {
    let (status, body) = send(
        req.header("Accept", "application/json"),
        "token endpoint",
        trace_id,
    )
    .await?;
    let value: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    // GitHub answers errors with 200 and an `error` field.
    let error = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.as_str())
        .map(short);
    match (status, error, value) {
        (_, Some(e), _) => Err(SsoFailure::ProviderRefused(format!(
            "the token request failed ({e})"
        ))),
        (200, None, Some(v)) => Ok(v),
        (200, None, None) => Err(SsoFailure::ProviderFailed(
            "its token answer is not JSON".into(),
        )),
        (s, None, _) => Err(SsoFailure::ProviderFailed(format!(
            "its token endpoint answered with status {s}"
        ))),
    }
}

/// A provider-supplied word for a page: printable ASCII, at most 64 chars.
pub fn short(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

/// The OAuth error a provider sent back to the callback (`error`, `error_description`).
pub fn callback_error(params: &[(String, String)]) -> Option<SsoFailure> {
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let error = get("error")?;
    let desc = get("error_description").map(short).unwrap_or_default();
    Some(SsoFailure::ProviderRefused(if desc.is_empty() {
        short(error)
    } else {
        format!("{} ({desc})", short(error))
    }))
}
