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

/// Why a call to another server failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFailure {
    /// The URL called, without its query, fragment or user info (they may carry tokens).
    pub url: String,
    /// One word or two for dashboards: `timeout`, `connection refused`, `dns`, `tls`, `connect`,
    /// `request`, `answer`.
    pub kind: &'static str,
    /// What each layer said, outermost first: `tcp connect error: Connection refused (os error
    /// 111)`, `invalid peer certificate: UnknownIssuer`, `operation timed out`.
    pub cause: String,
}

impl CallFailure {
    pub fn of(e: &reqwest::Error) -> CallFailure {
        let url = e.url().map(loggable_url).unwrap_or_default();
        // reqwest's own line ("error sending request for url (...)") carries the whole URL and
        // says nothing of the cause: the layers below it do.
        let mut said: Vec<String> = Vec::new();
        let mut kind = None;
        let mut layer: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(err) = layer {
            kind = kind.or_else(|| kind_of(err));
            let text = err.to_string();
            // Some layers repeat the one below them in their own text.
            if !said.iter().any(|s| s.contains(&text)) {
                said.push(text);
            }
            layer = err.source();
        }
        let kind = match kind {
            _ if e.is_timeout() => "timeout",
            Some(k) => k,
            None if e.is_connect() => "connect",
            None if e.is_body() || e.is_decode() => "answer",
            None => "request",
        };
        let cause = if said.is_empty() {
            e.to_string()
                .split(" for url (")
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            said.join(": ")
        };
        CallFailure { url, kind, cause }
    }
}

/// What kind of failure one layer of the error is, when it says.
fn kind_of(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if let Some(mut io) = err.downcast_ref::<std::io::Error>() {
        // tokio-rustls hands rustls' verdict on the certificate up as an io::Error, which the
        // connector wraps in another one.
        while let Some(inner) = io.get_ref() {
            if inner.is::<rustls::Error>() {
                return Some("tls");
            }
            match inner.downcast_ref::<std::io::Error>() {
                Some(next) => io = next,
                None => break,
            }
        }
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Some("connection refused"),
            std::io::ErrorKind::TimedOut => Some("timeout"),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                Some("connection reset")
            }
            _ => None,
        };
    }
    if err.downcast_ref::<rustls::Error>().is_some() {
        return Some("tls");
    }
    // hyper-util's resolver error is private; its text is its only mark.
    let text = err.to_string();
    if text.starts_with("dns error") || text.contains("failed to lookup address") {
        return Some("dns");
    }
    None
}

/// `url` without what may carry a secret: user info, query and fragment.
pub fn loggable_url(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// [`loggable_url`] of a URL given as text; as written when it has nothing to take out (or does
/// not parse), so an issuer reads as configured.
pub fn loggable_text(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u)
            if !u.username().is_empty()
                || u.password().is_some()
                || u.query().is_some()
                || u.fragment().is_some() =>
        {
            loggable_url(&u)
        }
        _ => url.to_string(),
    }
}

/// One warning for a call that got no answer: what was called, where, and why it failed.
pub fn log_failure(e: &reqwest::Error, what: &str, trace_id: &str) -> CallFailure {
    let f = CallFailure::of(e);
    log::warn!(trace_id = trace_id, url = f.url.as_str(), cause = f.cause.as_str(), kind = f.kind;
        "{what}: request to {} failed ({}): {}", f.url, f.kind, f.cause);
    f
}

/// Status and body of an answer (body capped).
pub async fn send(
    req: reqwest::RequestBuilder,
    what: &str,
    trace_id: &str,
) -> Result<(u16, Vec<u8>), SsoFailure> {
    let failed = |e: reqwest::Error| {
        log_failure(&e, what, trace_id);
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

/// For the checks before serving: a 200 JSON answer from `url`, or what went wrong in an
/// operator's words (the URL without its query, the cause of a failed call).
pub async fn fetch_json(
    client: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<serde_json::Value, String> {
    let shown = loggable_text(url);
    let failed = |e: reqwest::Error| {
        let f = CallFailure::of(&e);
        format!("{what} {shown}: {} ({})", f.cause, f.kind)
    };
    let mut resp = client
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(failed)?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("{what} {shown}: answered with status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("{what} {shown}: the answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|_| format!("{what} {shown}: the answer is not JSON"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logged_url_has_no_secret() {
        let url = url::Url::parse("https://user:pw@idp.example/exchange?token=abc&trace_id=t#frag")
            .unwrap();
        assert_eq!(loggable_url(&url), "https://idp.example/exchange");
        assert_eq!(
            loggable_text("https://user:pw@idp.example/realms/x"),
            "https://idp.example/realms/x"
        );
        assert_eq!(
            loggable_text("https://idp.example/realms/x"),
            "https://idp.example/realms/x"
        );
    }

    async fn fail(url: &str, timeout: Duration) -> CallFailure {
        let e = client(timeout).unwrap().get(url).send().await.unwrap_err();
        CallFailure::of(&e)
    }

    #[tokio::test]
    async fn connection_refused_is_named() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let f = fail(
            &format!("http://127.0.0.1:{port}/x?token=secret"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(f.kind, "connection refused", "{f:?}");
        assert!(
            f.cause.to_lowercase().contains("connection refused"),
            "{f:?}"
        );
        assert_eq!(f.url, format!("http://127.0.0.1:{port}/x"));
        assert!(!f.cause.contains("secret"), "{f:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let _conn = l.accept().await;
            std::future::pending::<()>().await
        });
        let f = fail(&format!("http://{addr}/slow"), Duration::from_millis(300)).await;
        held.abort();
        assert_eq!(f.kind, "timeout", "{f:?}");
        assert!(f.cause.contains("timed out"), "{f:?}");
    }

    #[tokio::test]
    async fn an_unknown_certificate_is_a_tls_failure_naming_the_problem() {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let served = tokio::spawn(async move {
            if let Ok((tcp, _)) = l.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let f = fail(&format!("https://{addr}/"), Duration::from_secs(5)).await;
        served.abort();
        assert_eq!(f.kind, "tls", "{f:?}");
        assert!(f.cause.contains("UnknownIssuer"), "{f:?}");
    }
}
