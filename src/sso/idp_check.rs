//! Whether the OpenID provider (`sso.protocol: oidc`) can be signed in with: its discovery
//! document and JWKS fetched as a sign-in fetches them. `-t` fails on it, start-up warns, and
//! with `sso.ready_checks_idp: true` `/readyz` reports it (kept fresh by
//! [`crate::ops::idp_watch`]).

use super::config::SsoConfig;
use super::providers::oidc::Oidc;
use arc_swap::ArcSwapOption;
use std::sync::Arc;

/// The last check's outcome, for `/readyz`.
#[derive(Debug, Clone)]
pub struct IdpStatus {
    /// The issuer that was checked (a reload may name another).
    pub issuer: String,
    pub result: Result<String, String>,
}

static LAST: ArcSwapOption<IdpStatus> = ArcSwapOption::const_empty();

/// The SSO configuration when it signs in with OpenID Connect, the only protocol with a
/// provider document to check before anyone signs in.
pub fn oidc_in_use(sso: Option<&SsoConfig>) -> Option<&SsoConfig> {
    sso.filter(|s| s.is_enabled() && s.protocol == super::Protocol::Oidc)
}

/// Fetches discovery and the JWKS of `sso.oidc.issuer`, bounded by `sso.oidc.timeout` per call;
/// the outcome is remembered for `/readyz`.
pub async fn check(sso: &SsoConfig) -> Result<String, String> {
    let result = match Oidc::new(sso) {
        Ok(oidc) => oidc.check_provider().await,
        Err(e) => Err(e),
    };
    LAST.store(Some(Arc::new(IdpStatus {
        issuer: sso.oidc.issuer.clone(),
        result: result.clone(),
    })));
    result
}

/// [`check`] from code that has no runtime yet (`-t`, start-up).
pub fn check_blocking(sso: &SsoConfig) -> Result<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the check: {e}"))?
        .block_on(check(sso))
}

/// Whether the last check of `issuer` succeeded; None when it was not checked.
pub fn last_ok(issuer: &str) -> Option<bool> {
    LAST.load_full()
        .filter(|s| s.issuer == issuer)
        .map(|s| s.result.is_ok())
}

/// What `/readyz` says of the provider: None when it is not asked to (`sso.ready_checks_idp`
/// off, or not OpenID Connect); else whether it is ready, and the detail for the body.
pub fn readiness(sso: Option<&SsoConfig>) -> Option<(bool, serde_json::Value)> {
    let sso = oidc_in_use(sso).filter(|s| s.ready_checks_idp)?;
    let last = LAST.load_full().filter(|s| s.issuer == sso.oidc.issuer);
    let issuer = super::providers::http::loggable_text(&sso.oidc.issuer);
    Some(match last.as_ref().map(|s| &s.result) {
        Some(Ok(_)) => (true, serde_json::json!({"issuer": issuer, "status": "ok"})),
        Some(Err(e)) => (
            false,
            serde_json::json!({"issuer": issuer, "status": "unreachable", "error": e}),
        ),
        None => (
            false,
            serde_json::json!({"issuer": issuer, "status": "not checked yet"}),
        ),
    })
}
