//! OpenID Connect (`sso.protocol: oidc`): authorization code flow with PKCE S256, `state` and
//! `nonce` always on. Discovery from `<issuer>/.well-known/openid-configuration`; the JWKS is cached
//! (refreshed hourly, at once on an unknown `kid`, and kept when a refresh fails). ID tokens are
//! checked by the `openidconnect` crate: signature with an allow list of algorithms (never `none`;
//! HS* only if configured, keyed with the client secret, never with a public key), `crit` refused,
//! `iss`, `aud`, `exp` and `iat` with [`LEEWAY_SECS`], `nonce`; checked here: `azp`, `nbf` (same
//! leeway), `at_hash`, and keys in the JWKS that must not verify anything (RSA under 2048 bits,
//! `use: enc`, an EC curve that does not fit the key's `alg`) are dropped when it is fetched.
//! The header's `jku`, `x5u`, `jwk` and `x5c` are never read: keys come only from `jwks_uri`.
//!
//! The flow has already matched `state` to the browser's per-flow cookie before [`Oidc::finish`]
//! runs, so the code is only ever redeemed for a flow this browser started. Before redeeming it,
//! the callback's `iss` (RFC 9207) must name this issuer: required when discovery advertises
//! `authorization_response_iss_parameter_supported`, checked whenever present. Docs:
//! docs/oidc-relying-party.md.

use super::http;
pub use super::jose::MIN_RSA_BITS;
use super::jose::{header, payload, usable_keys};
use crate::dify::redirect::append_query;
use crate::sso::config::{OidcConfig, SsoConfig};
use crate::sso::failure::SsoFailure;
use crate::sso::protocol::{CallbackInput, Identity, LoginStart, SignInOutcome, SignInProtocol};
use openidconnect::core::{
    CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AccessToken, AccessTokenHash, ClaimsVerificationError, ClientId, ClientSecret, IssuerUrl,
    JsonWebKey, JwsSigningAlgorithm, Nonce, SignatureVerificationError,
};
use serde::Deserialize;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Clock skew tolerated on `exp`, `iat` and `nbf` (the one leeway of every time check).
pub const LEEWAY_SECS: i64 = 60;
const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The parts of the discovery document the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// RFC 9207 §3: the provider puts `iss` in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: Option<serde_json::Value>,
}

impl Discovery {
    pub fn iss_parameter_supported(&self) -> bool {
        truthy(self.authorization_response_iss_parameter_supported.as_ref())
    }
}

/// The JWKS keys that may verify a signature, and the kids dropped from it (with why).
pub struct Keys {
    pub set: CoreJsonWebKeySet,
    pub refused: Vec<(String, String)>,
}

/// The keys of a fetched JWKS that may verify a signature; the others are logged and left out.
fn read_keys(v: serde_json::Value, trace_id: &str) -> Result<Keys, SsoFailure> {
    let (usable, refused) = usable_keys(v)
        .ok_or_else(|| SsoFailure::ProviderFailed("its JWKS is not a key set".into()))?;
    for (kid, why) in &refused {
        log::warn!(trace_id = trace_id; "JWKS: key {kid} is not used: {why}");
    }
    let set = serde_json::from_value::<CoreJsonWebKeySet>(usable)
        .map_err(|_| SsoFailure::ProviderFailed("its JWKS is not a key set".into()))?;
    Ok(Keys { set, refused })
}

pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    algs: Vec<CoreJwsSigningAlgorithm>,
    discovery: Mutex<Option<(Arc<Discovery>, Instant)>>,
    jwks: Mutex<Option<(Arc<Keys>, Instant)>>,
}

impl Oidc {
    pub fn new(sso: &SsoConfig) -> Result<Oidc, String> {
        let cfg = sso.oidc.clone();
        let algs = cfg
            .algorithms
            .iter()
            .filter(|a| !a.eq_ignore_ascii_case("none"))
            .map(|a| {
                serde_json::from_value::<CoreJwsSigningAlgorithm>(serde_json::Value::String(
                    a.clone(),
                ))
                .map_err(|_| format!("sso.oidc.algorithms: unknown algorithm {a:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Oidc {
            http: http::client(cfg.timeout)?,
            cfg,
            algs,
            discovery: Mutex::new(None),
            jwks: Mutex::new(None),
        })
    }

    fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        )
    }

    /// The provider's metadata, fetched once a day; a stale copy is used if a refresh fails.
    pub async fn discover(&self, trace_id: &str) -> Result<Arc<Discovery>, SsoFailure> {
        let mut slot = self.discovery.lock().await;
        if let Some((d, at)) = slot.as_ref()
            && at.elapsed() < DISCOVERY_MAX_AGE
        {
            return Ok(d.clone());
        }
        let fetched = self.fetch_discovery(trace_id).await;
        match (fetched, slot.as_ref()) {
            (Ok(d), _) => {
                let d = Arc::new(d);
                *slot = Some((d.clone(), Instant::now()));
                Ok(d)
            }
            (Err(e), Some((stale, _))) => {
                log::warn!(trace_id = trace_id; "OIDC discovery refresh failed, using the cached copy: {e}");
                Ok(stale.clone())
            }
            (Err(e), None) => Err(e),
        }
    }

    async fn fetch_discovery(&self, trace_id: &str) -> Result<Discovery, SsoFailure> {
        let v = http::json(self.http.get(self.discovery_url()), "discovery", trace_id).await?;
        self.read_discovery(v, trace_id)
    }

    /// The provider as the first sign-in will find it: discovery (issuer and endpoints checked as
    /// a sign-in checks them) and a JWKS with a key that can verify an ID token. Fetched afresh
    /// each time; the sign-in caches are not touched. For `-t`, start-up and `/readyz`, so a
    /// wrong issuer shows at deploy time rather than at the first person's sign-in.
    pub async fn check_provider(&self) -> Result<String, String> {
        let trace_id = "provider-check";
        let said = |e: SsoFailure| match e {
            SsoFailure::ProviderFailed(m) => m,
            e => e.to_string(),
        };
        let url = self.discovery_url();
        let v = http::fetch_json(&self.http, &url, "discovery").await?;
        let url = http::loggable_text(&url);
        let d = self
            .read_discovery(v, trace_id)
            .map_err(|e| format!("{url}: {}", said(e)))?;
        let v = http::fetch_json(&self.http, &d.jwks_uri, "JWKS").await?;
        let jwks_uri = http::loggable_text(&d.jwks_uri);
        let keys = read_keys(v, trace_id).map_err(|e| format!("{jwks_uri}: {}", said(e)))?;
        let n = keys.set.keys().len();
        let needs_keys = self.algs.iter().any(|a| !a.uses_shared_secret());
        if n == 0 && needs_keys {
            return Err(format!(
                "{jwks_uri}: its JWKS has no key that can verify an ID token{}",
                if keys.refused.is_empty() {
                    String::new()
                } else {
                    let why: Vec<String> = keys
                        .refused
                        .iter()
                        .map(|(k, w)| format!("{k}: {w}"))
                        .collect();
                    format!(" (not used: {})", why.join("; "))
                }
            ));
        }
        Ok(format!(
            "discovery and JWKS of {} fetched ({n} signing key{})",
            http::loggable_text(&self.cfg.issuer),
            if n == 1 { "" } else { "s" }
        ))
    }

    fn read_discovery(
        &self,
        v: serde_json::Value,
        trace_id: &str,
    ) -> Result<Discovery, SsoFailure> {
        let d: Discovery = serde_json::from_value(v).map_err(|e| {
            SsoFailure::ProviderFailed(format!("its discovery document is incomplete ({e})"))
        })?;
        // OpenID Connect Discovery 1.0 §4.3: the issuer must be exactly the one configured.
        if d.issuer != self.cfg.issuer {
            return Err(SsoFailure::ProviderFailed(format!(
                "its discovery document names issuer {:?}, not the configured {:?}",
                http::short(&d.issuer),
                self.cfg.issuer
            )));
        }
        for u in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
            if !crate::dify::is_http_url(u) {
                return Err(SsoFailure::ProviderFailed(
                    "its discovery document has an endpoint that is not an http(s) URL".into(),
                ));
            }
        }
        // The optional endpoints: one that is not http(s) is not used (a `javascript:` or `data:`
        // logout URL would otherwise end up in a Location header), and discovery still succeeds.
        let mut d = d;
        for (name, slot) in [
            ("userinfo_endpoint", &mut d.userinfo_endpoint),
            ("end_session_endpoint", &mut d.end_session_endpoint),
        ] {
            if slot
                .as_deref()
                .is_some_and(|u| !crate::dify::is_http_url(u))
            {
                log::warn!(trace_id = trace_id; "OIDC discovery: {name} is not an http(s) URL, not using it");
                *slot = None;
            }
        }
        Ok(d)
    }

    /// The signing keys: cached for an hour, refetched when `force` (unknown `kid`); on a failed
    /// refetch the cached keys stay in use (stale on error).
    async fn keys(
        &self,
        d: &Discovery,
        force: bool,
        trace_id: &str,
    ) -> Result<Arc<Keys>, SsoFailure> {
        let mut slot = self.jwks.lock().await;
        if let Some((k, at)) = slot.as_ref()
            && !force
            && at.elapsed() < JWKS_MAX_AGE
        {
            return Ok(k.clone());
        }
        let fetched = async {
            let v = http::json(self.http.get(&d.jwks_uri), "JWKS", trace_id).await?;
            read_keys(v, trace_id)
        }
        .await;
        match (fetched, slot.as_ref()) {
            (Ok(k), _) => {
                let k = Arc::new(k);
                *slot = Some((k.clone(), Instant::now()));
                Ok(k)
            }
            (Err(e), Some((stale, _))) => {
                log::warn!(trace_id = trace_id; "JWKS refresh failed, using the cached keys: {e}");
                Ok(stale.clone())
            }
            (Err(e), None) => Err(e),
        }
    }

    fn verifier<'a>(&self, d: &Discovery, keys: &CoreJsonWebKeySet) -> CoreIdTokenVerifier<'a> {
        let client_id = ClientId::new(self.cfg.client_id.clone());
        let issuer = IssuerUrl::new(d.issuer.clone()).unwrap_or_else(|_| {
            IssuerUrl::new("https://invalid.invalid".into()).expect("valid URL")
        });
        let v = if self.cfg.client_secret.is_empty() {
            CoreIdTokenVerifier::new_public_client(client_id, issuer, keys.clone())
        } else {
            CoreIdTokenVerifier::new_confidential_client(
                client_id,
                ClientSecret::new(self.cfg.client_secret.expose().to_string()),
                issuer,
                keys.clone(),
            )
        };
        let leeway = chrono::Duration::seconds(LEEWAY_SECS);
        v.set_allowed_algs(self.algs.clone())
            .set_time_fn(move || chrono::Utc::now() - leeway)
            .set_issue_time_verifier_fn(move |iat| {
                if iat > chrono::Utc::now() + leeway {
                    Err("the ID token is issued in the future".into())
                } else {
                    Ok(())
                }
            })
    }

    /// Checks the ID token (and, when it has `at_hash`, that it was issued with `access_token`);
    /// its verified claims as JSON.
    async fn verify_id_token(
        &self,
        d: &Discovery,
        raw: &str,
        nonce: &str,
        access_token: Option<&str>,
        trace_id: &str,
    ) -> Result<serde_json::Value, SsoFailure> {
        let token = CoreIdToken::from_str(raw).map_err(|e| {
            SsoFailure::InvalidIdentity(format!("the ID token cannot be read ({e})"))
        })?;
        let nonce = Nonce::new(nonce.to_string());
        let mut keys = self.keys(d, false, trace_id).await?;
        let mut verifier = self.verifier(d, &keys.set);
        let mut result = token.claims(&verifier, &nonce).map(|_| ());
        if matches!(
            result,
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey
            ))
        ) {
            log::info!(trace_id = trace_id; "ID token signed with a key not in the cached JWKS: refetching it");
            keys = self.keys(d, true, trace_id).await?;
            verifier = self.verifier(d, &keys.set);
            result = token.claims(&verifier, &nonce).map(|_| ());
        }
        if let Err(e) = result {
            log::warn!(trace_id = trace_id; "ID token refused: {e}");
            let kid =
                header(raw).and_then(|h| h.get("kid").and_then(|k| k.as_str()).map(http::short));
            if let (
                ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                ),
                Some(kid),
            ) = (&e, &kid)
                && let Some((_, why)) = keys.refused.iter().find(|(k, _)| k == kid)
            {
                return Err(SsoFailure::InvalidIdentity(format!(
                    "the ID token is signed with key {kid}, which is not accepted ({why})"
                )));
            }
            return Err(SsoFailure::InvalidIdentity(id_token_reason(&e)));
        }
        let claims = payload(raw)
            .ok_or_else(|| SsoFailure::InvalidIdentity("the ID token cannot be read".into()))?;
        // RFC 7519 §4.1.5: not before `nbf` (openidconnect does not look at it).
        match claims.get("nbf") {
            None => {}
            Some(v) => match v.as_f64() {
                Some(nbf) if nbf > (chrono::Utc::now().timestamp() + LEEWAY_SECS) as f64 => {
                    return Err(SsoFailure::InvalidIdentity(
                        "the ID token is not valid yet (nbf)".into(),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(SsoFailure::InvalidIdentity(
                        "the ID token's nbf is not a time".into(),
                    ));
                }
            },
        }
        // OIDC Core §3.1.3.8: an `at_hash` binds the ID token to the access token it came with.
        if let (Some(expected), Some(access)) = (claims.get("at_hash"), access_token) {
            let alg = token
                .signing_alg()
                .map_err(|_| SsoFailure::InvalidIdentity("the ID token is not signed".into()))?;
            let hashed = if alg.uses_shared_secret() {
                let key = CoreJsonWebKey::new_symmetric(
                    self.cfg.client_secret.expose().as_bytes().to_vec(),
                );
                AccessTokenHash::from_token(&AccessToken::new(access.to_string()), alg, &key)
            } else {
                let key = token.signing_key(&verifier).map_err(|e| {
                    SsoFailure::InvalidIdentity(id_token_reason(
                        &ClaimsVerificationError::SignatureVerification(e),
                    ))
                })?;
                AccessTokenHash::from_token(&AccessToken::new(access.to_string()), alg, key)
            };
            let matches = hashed
                .ok()
                .is_some_and(|h| expected.as_str() == Some(h.as_str()));
            if !matches {
                return Err(SsoFailure::InvalidIdentity(
                    "the ID token was not issued with this access token (at_hash)".into(),
                ));
            }
        }
        // azp (OIDC Core §2): with several audiences it must be present; when present, it is us.
        let many_aud = claims
            .get("aud")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.len() > 1);
        match claims.get("azp").and_then(|a| a.as_str()) {
            Some(azp) if azp != self.cfg.client_id => {
                return Err(SsoFailure::InvalidIdentity(
                    "the ID token was issued to another client (azp)".into(),
                ));
            }
            None if many_aud => {
                return Err(SsoFailure::InvalidIdentity(
                    "the ID token has several audiences and no azp".into(),
                ));
            }
            _ => {}
        }
        Ok(claims)
    }

    async fn redeem(
        &self,
        d: &Discovery,
        code: &str,
        verifier: &str,
        callback_url: &str,
        trace_id: &str,
    ) -> Result<serde_json::Value, SsoFailure> {
        let secret = self.cfg.client_secret.expose();
        let post_only = !d.token_endpoint_auth_methods_supported.is_empty()
            && !d
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_basic")
            && d.token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_post");
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback_url),
            ("code_verifier", verifier),
            ("client_id", self.cfg.client_id.as_str()),
        ];
        let mut req = self.http.post(&d.token_endpoint);
        if !secret.is_empty() {
            if post_only {
                pairs.push(("client_secret", secret));
            } else {
                req = req.basic_auth(form_encode(&self.cfg.client_id), Some(form_encode(secret)));
            }
        }
        let req = req
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form_body(&pairs));
        http::token(req, trace_id).await
    }
}

/// An `application/x-www-form-urlencoded` body.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before HTTP Basic.
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn id_token_reason(e: &ClaimsVerificationError) -> String {
    use ClaimsVerificationError as C;
    match e {
        C::Expired(_) => "the ID token has expired".into(),
        C::InvalidAudience(_) => "the ID token was issued to another client (aud)".into(),
        C::InvalidIssuer(_) => "the ID token comes from another issuer".into(),
        C::InvalidNonce(_) => "the ID token does not belong to this sign-in (nonce)".into(),
        C::Unsupported(why) if why.contains("critical") => {
            "the ID token has critical header extensions (crit) that are not understood".into()
        }
        C::SignatureVerification(s) => match s {
            SignatureVerificationError::DisallowedAlg(_)
            | SignatureVerificationError::UnsupportedAlg(_)
            | SignatureVerificationError::NoSignature => {
                "the ID token is signed with an algorithm that is not accepted".into()
            }
            SignatureVerificationError::NoMatchingKey => {
                "the ID token is signed with an unknown key".into()
            }
            SignatureVerificationError::InvalidKey(_) => {
                "the ID token's signing key does not fit its algorithm".into()
            }
            SignatureVerificationError::AmbiguousKeyId(_) => {
                "the ID token names no key (kid) and several could sign it".into()
            }
            _ => "the ID token's signature is not valid".into(),
        },
        _ => "the ID token is not valid".into(),
    }
}

/// A string claim.
fn text(v: &serde_json::Value, name: &str) -> Option<String> {
    v.get(name)
        .and_then(|c| c.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `true`, or the string "true" some providers send.
pub fn truthy(v: Option<&serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A list of strings, or one string, as groups.
pub fn string_list(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str())
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    }
}

#[async_trait::async_trait]
impl SignInProtocol for Oidc {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn redirect_flow(&self) -> bool {
        true
    }

    async fn login_redirect(&self, start: &LoginStart<'_>) -> Result<String, SsoFailure> {
        let d = self.discover(start.trace_id).await?;
        let scope = self.cfg.scopes.join(" ");
        Ok(append_query(
            &d.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &self.cfg.client_id),
                ("redirect_uri", start.callback_url),
                ("scope", &scope),
                ("state", start.state),
                ("nonce", start.nonce),
                ("code_challenge", start.pkce_challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
    }

    async fn finish(&self, cb: &CallbackInput<'_>) -> Result<SignInOutcome, SsoFailure> {
        let flow = cb.flow.ok_or(SsoFailure::BadState)?;
        http::single_params(cb.params, &["code", "iss", "error"])?;
        let d = self.discover(cb.trace_id).await?;
        // RFC 9207 / RFC 9700 §4.4 (mix-up): before anything of the answer is used, even its error
        // text, it must come from this issuer.
        http::check_iss(
            cb.param("iss"),
            |iss| iss == d.issuer,
            d.iss_parameter_supported(),
            cb.trace_id,
        )?;
        if let Some(refused) = http::callback_error(cb.params) {
            return Err(refused);
        }
        let code = cb
            .param("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SsoFailure::BadCallback("the sign-in server sent no code".into()))?;
        let tokens = self
            .redeem(&d, code, &flow.pkce_verifier, cb.callback_url, cb.trace_id)
            .await?;
        // OIDC Core §3.1.3.3: token_type MUST be Bearer; the access token is sent as one below.
        http::require_bearer(&tokens)?;
        let raw = tokens
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| SsoFailure::ProviderFailed("its token answer has no id_token".into()))?;
        let access = tokens
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty());
        let claims = self
            .verify_id_token(&d, raw, &flow.nonce, access, cb.trace_id)
            .await?;
        let names = &self.cfg.claims;
        let subject = text(&claims, "sub")
            .ok_or_else(|| SsoFailure::InvalidIdentity("the ID token has no subject".into()))?;
        let mut identity = Identity {
            issuer: d.issuer.clone(),
            subject,
            email: text(&claims, &names.email),
            email_verified: truthy(claims.get("email_verified")),
            name: text(&claims, &names.name),
            groups: string_list(claims.get(&names.groups)),
            id_token_hint: self.cfg.end_session.then(|| raw.to_string()),
        };
        // Some providers keep email and groups out of the ID token: ask userinfo for them.
        if let (None, Some(url), Some(access)) =
            (&identity.email, d.userinfo_endpoint.as_deref(), access)
        {
            let info = http::json(
                self.http.get(url).bearer_auth(access),
                "userinfo",
                cb.trace_id,
            )
            .await?;
            if text(&info, "sub").as_deref() != Some(identity.subject.as_str()) {
                return Err(SsoFailure::InvalidIdentity(
                    "the userinfo answer is about another user".into(),
                ));
            }
            identity.email = text(&info, &names.email);
            identity.email_verified = truthy(info.get("email_verified"));
            identity.name = identity.name.or_else(|| text(&info, &names.name));
            if identity.groups.is_empty() {
                identity.groups = string_list(info.get(&names.groups));
            }
        }
        Ok(SignInOutcome::Identity(identity))
    }

    async fn logout_redirect(&self, id_token_hint: Option<&str>, after: &str) -> Option<String> {
        if !self.cfg.end_session {
            return None;
        }
        let d = self.discover("-").await.ok()?;
        let end = d.end_session_endpoint.as_deref()?;
        let mut params = vec![
            ("client_id", self.cfg.client_id.as_str()),
            ("post_logout_redirect_uri", after),
        ];
        if let Some(h) = id_token_hint {
            params.push(("id_token_hint", h));
        }
        Some(append_query(end, &params))
    }
}
