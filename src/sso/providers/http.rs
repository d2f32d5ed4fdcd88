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

/// RFC 6749 §3.1: a parameter of the authorization response sent twice is ambiguous (which
/// one would be used?), so the callback is refused rather than one picked.
pub fn single_params(params: &[(String, String)], names: &[&str]) -> Result<(), SsoFailure> {
    for name in names {
        if params.iter().filter(|(k, _)| k == name).count() > 1 {
            return Err(SsoFailure::BadCallback(format!(
                "the sign-in answer has {name} more than once"
            )));
        }
    }
    Ok(())
}

/// RFC 9207 §2.4: the `iss` of an authorization response (success or error) must name the
/// server the browser was sent to; `required` when that server promised to send it. Checked
/// before the code is redeemed or the error shown, so a mix-up never reaches the token endpoint.
pub fn check_iss(
    iss: Option<&str>,
    expected: impl Fn(&str) -> bool,
    required: bool,
    trace_id: &str,
) -> Result<(), SsoFailure> {
    match iss {
        Some(iss) if expected(iss) => Ok(()),
        Some(iss) => {
            log::warn!(trace_id = trace_id, iss = short(iss).as_str(); "callback from another issuer (iss), refused before the code is redeemed");
            Err(SsoFailure::InvalidIdentity(
                "the sign-in answer comes from another sign-in server (iss) and was not used"
                    .into(),
            ))
        }
        None if required => {
            log::warn!(trace_id = trace_id; "callback without iss from a provider that promises it, refused before the code is redeemed");
            Err(SsoFailure::InvalidIdentity(
                "the sign-in answer does not name its sign-in server (iss), which this server always does; it was not used".into(),
            ))
        }
        None => Ok(()),
    }
}

/// RFC 6749 §7.1, RFC 6750: the access token is only ever sent as a Bearer token, so a token
/// answer of another type (DPoP, MAC, none) is refused instead of misused. Case-insensitive:
/// GitHub answers `bearer`.
pub fn require_bearer(tokens: &serde_json::Value) -> Result<(), SsoFailure> {
    match tokens.get("token_type").and_then(|t| t.as_str()) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => Ok(()),
        Some(t) => Err(SsoFailure::ProviderFailed(format!(
            "its token answer is of token_type {:?}, not Bearer",
            short(t)
        ))),
        None => Err(SsoFailure::ProviderFailed(
            "its token answer has no token_type (Bearer expected)".into(),
        )),
    }
}
