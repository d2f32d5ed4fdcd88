//! The per-protocol parts of the `sso` section (issue 6): `sso.oidc`, `sso.oauth2`, `sso.cas`,
//! the authorization rules `sso.allow` and the choice of `sso.minter`, with their validation.

use super::Secret;
use crate::config::units;
use crate::dify::is_http_url;
use serde::Deserialize;

/// Which claim names carry the identity (OIDC: top-level claim names of the ID token / userinfo).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcClaims {
    pub email: String,
    pub name: String,
    pub groups: String,
}

impl Default for OidcClaims {
    fn default() -> Self {
        OidcClaims {
            email: "email".into(),
            name: "name".into(),
            groups: "groups".into(),
        }
    }
}

pub const DEFAULT_OIDC_REDIRECT: &str = "/sso/oidc/callback";
pub const DEFAULT_OAUTH2_REDIRECT: &str = "/sso/oauth2/callback";
pub const DEFAULT_CAS_REDIRECT: &str = "/sso/cas/callback";

/// ID token signature algorithms accepted unless `sso.oidc.algorithms` says otherwise: asymmetric
/// only, so an HS* token can never be checked against a (public) key.
pub const DEFAULT_OIDC_ALGS: [&str; 6] = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"];
const KNOWN_ALGS: [&str; 13] = [
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA",
    "HS256", "HS384", "HS512",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer URL exactly as the provider names itself (`iss`); discovery is read from
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(deserialize_with = "units::de_string_list")]
    pub scopes: Vec<String>,
    pub redirect_path: String,
    pub claims: OidcClaims,
    /// After a Dify logout, also end the provider's session (`end_session_endpoint`, with
    /// `id_token_hint`) when the provider advertises it.
    pub end_session: bool,
    /// Accepted ID token signature algorithms. `none` is never accepted; HS* only by explicit
    /// choice, and then keyed with the client secret, never with a public key.
    #[serde(deserialize_with = "units::de_string_list")]
    pub algorithms: Vec<String>,
    #[serde(deserialize_with = "units::de_duration")]
    pub timeout: std::time::Duration,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            redirect_path: DEFAULT_OIDC_REDIRECT.into(),
            claims: OidcClaims::default(),
            end_session: false,
            algorithms: DEFAULT_OIDC_ALGS.iter().map(|s| s.to_string()).collect(),
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuth2Preset {
    #[default]
    None,
    Github,
    Casdoor,
}

/// JSON pointers (RFC 6901) into the userinfo answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Claims {
    pub id: String,
    pub email: String,
    pub name: String,
    pub groups: String,
    /// Optional pointer to a boolean; without it emails from userinfo count as verified only when
    /// the preset knows better (GitHub: the primary verified address).
    pub email_verified: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuth2Config {
    pub preset: OAuth2Preset,
    /// For the casdoor preset: the Casdoor server's base URL (endpoints derived from it).
    pub server: String,
    pub authorize_url: String,
    pub token_url: String,
    pub userinfo_url: String,
    /// RFC 9207: the `iss` the provider puts in its authorization responses. Set: every callback
    /// must carry exactly this `iss`. Empty: an `iss` that is present must be on the
    /// authorization endpoint's origin.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    #[serde(deserialize_with = "units::de_string_list")]
    pub scopes: Vec<String>,
    pub redirect_path: String,
    pub claims: OAuth2Claims,
    /// Send a PKCE S256 challenge (the provider ignores it if unsupported).
    pub pkce: bool,
    #[serde(deserialize_with = "units::de_duration")]
    pub timeout: std::time::Duration,
}

impl Default for OAuth2Config {
    fn default() -> Self {
        OAuth2Config {
            preset: OAuth2Preset::None,
            server: String::new(),
            authorize_url: String::new(),
            token_url: String::new(),
            userinfo_url: String::new(),
            issuer: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            scopes: Vec::new(),
            redirect_path: DEFAULT_OAUTH2_REDIRECT.into(),
            claims: OAuth2Claims::default(),
            pkce: true,
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// CAS attribute names for the identity (the subject is the CAS `<cas:user>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CasAttributes {
    pub email: String,
    pub name: String,
    pub groups: String,
}

impl Default for CasAttributes {
    fn default() -> Self {
        CasAttributes {
            email: "mail".into(),
            name: "displayName".into(),
            groups: "memberOf".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CasConfig {
    /// The CAS server's base URL, e.g. https://cas.example.com/cas.
    pub server: String,
    pub redirect_path: String,
    pub attributes: CasAttributes,
    /// Whether CAS emails count as verified (CAS has no such notion; the directory vouches).
    pub email_verified: bool,
    #[serde(deserialize_with = "units::de_duration")]
    pub timeout: std::time::Duration,
}

impl Default for CasConfig {
    fn default() -> Self {
        CasConfig {
            server: String::new(),
            redirect_path: DEFAULT_CAS_REDIRECT.into(),
            attributes: CasAttributes::default(),
            email_verified: true,
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Who may sign in, checked once for every protocol that yields an identity.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowConfig {
    /// Email domains allowed (exact, case-insensitive); empty = any.
    #[serde(deserialize_with = "units::de_string_list")]
    pub email_domains: Vec<String>,
    /// At least one of these groups is required; empty = no group rule.
    #[serde(deserialize_with = "units::de_string_list")]
    pub groups: Vec<String>,
    /// Accept emails the provider does not vouch for (`email_verified` false or absent).
    pub unverified_email: bool,
}

/// How an identity becomes Dify tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinterKind {
    /// `POST sso.exchange.identity_url` (docs/management-service.md).
    #[default]
    ManagementService,
    /// Sessions minted by the gateway itself from Dify's database and Redis (`sso.provisioning`,
    /// `dify.database_url`, `dify.redis_url`).
    Builtin,
}

pub(super) fn check_redirect_path(field: &str, path: &str, bad: &mut impl FnMut(&str, String)) {
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['?', '#', ' ', '\\']) {
        bad(
            field,
            format!("expected a path such as /sso/oidc/callback, got {path:?}"),
        );
    } else if path.trim_end_matches('/') == "/signin"
        || path.trim_end_matches('/').is_empty()
        || path.trim_end_matches('/') == "/sso/continue"
        || path.trim_end_matches('/') == "/sso/signed-out"
    {
        bad(field, format!("{path:?} is taken by the gateway"));
    }
}

fn check_url(field: &str, url: &str, what: &str, bad: &mut impl FnMut(&str, String)) {
    if url.is_empty() {
        bad(field, format!("expected {what}"));
    } else if !is_http_url(url) || url.contains('#') {
        bad(
            field,
            format!("expected an absolute http(s) URL without #fragment ({what}), got {url:?}"),
        );
    }
}

fn check_timeout(field: &str, t: std::time::Duration, bad: &mut impl FnMut(&str, String)) {
    if t.is_zero() || t > std::time::Duration::from_secs(300) {
        bad(
            field,
            "expected a duration above 0 and at most 5m, such as 10s".into(),
        );
    }
}

impl OidcConfig {
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        check_url(
            "sso.oidc.issuer",
            &self.issuer,
            "the provider's issuer URL, e.g. https://id.example.com/realms/main",
            bad,
        );
        if self.client_id.is_empty() {
            bad(
                "sso.oidc.client_id",
                "expected the client id registered at the provider".into(),
            );
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            bad(
                "sso.oidc.scopes",
                "expected a list that contains openid".into(),
            );
        }
        check_redirect_path("sso.oidc.redirect_path", &self.redirect_path, bad);
        if self.algorithms.is_empty() {
            bad(
                "sso.oidc.algorithms",
                format!("expected some of {}", DEFAULT_OIDC_ALGS.join(", ")),
            );
        }
        for alg in &self.algorithms {
            if !KNOWN_ALGS.contains(&alg.as_str()) {
                bad(
                    "sso.oidc.algorithms",
                    format!(
                        "unknown or refused algorithm {alg:?}; expected some of {}",
                        KNOWN_ALGS.join(", ")
                    ),
                );
            } else if alg.starts_with("HS") && self.client_secret.is_empty() {
                bad(
                    "sso.oidc.algorithms",
                    format!(
                        "{alg} needs sso.oidc.client_secret (HMAC ID tokens are keyed with it)"
                    ),
                );
            }
        }
        for (field, name) in [
            ("sso.oidc.claims.email", &self.claims.email),
            ("sso.oidc.claims.name", &self.claims.name),
            ("sso.oidc.claims.groups", &self.claims.groups),
        ] {
            if name.is_empty() {
                bad(field, "expected a claim name".into());
            }
        }
        check_timeout("sso.oidc.timeout", self.timeout, bad);
    }
}

impl OAuth2Config {
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        let derived = match self.preset {
            OAuth2Preset::Github => true,
            OAuth2Preset::Casdoor => {
                check_url(
                    "sso.oauth2.server",
                    &self.server,
                    "the Casdoor server's URL for the casdoor preset, e.g. https://door.example.com",
                    bad,
                );
                true
            }
            OAuth2Preset::None => false,
        };
        for (field, url, what) in [
            (
                "sso.oauth2.authorize_url",
                &self.authorize_url,
                "the authorization endpoint",
            ),
            (
                "sso.oauth2.token_url",
                &self.token_url,
                "the token endpoint",
            ),
            (
                "sso.oauth2.userinfo_url",
                &self.userinfo_url,
                "the userinfo endpoint",
            ),
        ] {
            if !(derived && url.is_empty()) {
                check_url(field, url, what, bad);
            }
        }
        if !self.issuer.is_empty() {
            check_url(
                "sso.oauth2.issuer",
                &self.issuer,
                "the issuer the provider sends as iss",
                bad,
            );
        }
        if self.client_id.is_empty() {
            bad(
                "sso.oauth2.client_id",
                "expected the client id registered at the provider".into(),
            );
        }
        if self.client_secret.is_empty() {
            bad(
                "sso.oauth2.client_secret",
                "expected the client secret registered at the provider".into(),
            );
        }
        if self.preset == OAuth2Preset::None && self.claims.id.is_empty() {
            bad(
                "sso.oauth2.claims.id",
                "expected a JSON pointer to the user's id, e.g. /id".into(),
            );
        }
        for (field, p) in [
            ("sso.oauth2.claims.id", &self.claims.id),
            ("sso.oauth2.claims.email", &self.claims.email),
            ("sso.oauth2.claims.name", &self.claims.name),
            ("sso.oauth2.claims.groups", &self.claims.groups),
            (
                "sso.oauth2.claims.email_verified",
                &self.claims.email_verified,
            ),
        ] {
            if !p.is_empty() && !p.starts_with('/') {
                bad(
                    field,
                    format!("expected a JSON pointer such as /email, got {p:?}"),
                );
            }
        }
        check_redirect_path("sso.oauth2.redirect_path", &self.redirect_path, bad);
        check_timeout("sso.oauth2.timeout", self.timeout, bad);
    }
}

impl CasConfig {
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        check_url(
            "sso.cas.server",
            &self.server,
            "the CAS server's base URL, e.g. https://cas.example.com/cas",
            bad,
        );
        check_redirect_path("sso.cas.redirect_path", &self.redirect_path, bad);
        check_timeout("sso.cas.timeout", self.timeout, bad);
    }
}

impl AllowConfig {
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        for (i, d) in self.email_domains.iter().enumerate() {
            if d.is_empty() || d.contains(['@', '/', ' ']) || !d.contains('.') {
                bad(
                    &format!("sso.allow.email_domains[{i}]"),
                    format!("expected a domain such as example.com, got {d:?}"),
                );
            }
        }
    }
}
