//! The `sso` section: keys fixed by issue 3, defaults, the seed bridge's environment as a fallback,
//! and validation that says what was expected.

use super::Secret;
pub use super::config_protocols::{
    AllowConfig, CasConfig, MinterKind, OAuth2Config, OAuth2Preset, OidcConfig,
};
use crate::config::{Issue, parse_cidr, units};
use crate::dify::{DifyConfig, SessionDelivery, is_http_url};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Sign-in protocols; each later one (oidc, oauth2, cas) adds a variant and a file in `providers/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// QSSO style: the SSO posts a one-time token, a management service swaps it for Dify tokens.
    #[default]
    TokenExchange,
    /// OpenID Connect authorization code flow with PKCE (`sso.oidc`).
    Oidc,
    /// OAuth 2.0 authorization code + userinfo (`sso.oauth2`).
    Oauth2,
    /// Apereo CAS 3.0 (`sso.cas`).
    Cas,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TokenExchange => "token_exchange",
            Protocol::Oidc => "oidc",
            Protocol::Oauth2 => "oauth2",
            Protocol::Cas => "cas",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeConfig {
    pub url: String,
    /// For identity protocols (oidc, oauth2, cas) with `sso.minter: management_service`:
    /// `POST <identity_url>` with the identity as JSON (docs/management-service.md).
    pub identity_url: String,
    #[serde(deserialize_with = "units::de_duration")]
    pub timeout: Duration,
    /// Extra request headers, e.g. an API key (values never printed).
    pub headers: BTreeMap<String, Secret>,
    pub insecure_skip_verify: bool,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            url: String::new(),
            identity_url: String::new(),
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
            insecure_skip_verify: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig {
    /// On when the section is present, unless `enabled: false`.
    #[serde(default = "yes")]
    pub enabled: bool,
    pub protocol: Protocol,
    /// May contain `{callback_url}` and `{state}`; a literal URL (the seed's) works as is.
    pub login_url: String,
    pub callback_path: String,
    pub token_param: String,
    pub exchange: ExchangeConfig,
    /// The SSO's own logout, sent to after a Dify logout; empty -> the gateway's signed-out page.
    pub logout_url: String,
    /// Clients whose `/signin` reaches Dify's own page (escape hatch when the SSO is down).
    #[serde(deserialize_with = "units::de_string_list")]
    pub bypass_cidrs: Vec<String>,
    /// Close Dify's password, email-code, forgot-password, OAuth and invitation ways in.
    pub enforce: bool,
    pub support_contact: String,
    /// Signs the gateway's state cookies; replicas must share it. Random per process if empty.
    pub state_secret: Secret,
    /// Origins the gateway is reached at besides `dify.console_web_url` and an absolute
    /// `dify.home`; the callback URL is built from the request's `Host` only when it is one.
    #[serde(deserialize_with = "units::de_string_list")]
    pub public_origins: Vec<String>,
    /// Origins the SSO sends the browser back from; empty = the origin of `sso.login_url`.
    #[serde(deserialize_with = "units::de_string_list")]
    pub callback_origins: Vec<String>,
    /// Accept a callback that no `/signin` of this browser started (sign-in begun at the SSO's
    /// portal), when it comes from one of `callback_origins`.
    pub idp_initiated: bool,
    /// Where used sign-in states are kept (single use across replicas needs `redis`).
    pub store: StoreKind,
    /// `/readyz` also requires the OpenID provider's discovery and JWKS to be fetchable (oidc
    /// only). Off by default: every replica would leave the load balancer's rotation together
    /// during an IdP outage, taking down Dify for people already signed in and for the API.
    pub ready_checks_idp: bool,
    pub oidc: OidcConfig,
    pub oauth2: OAuth2Config,
    pub cas: CasConfig,
    pub allow: AllowConfig,
    pub minter: MinterKind,
    /// `minter: builtin`: how accounts are created and joined to a workspace.
    pub provisioning: crate::dify::provisioning::ProvisioningConfig,
    /// The gateway's own session cookie (published apps, and set by every sign-in).
    pub session: super::apps::SessionConfig,
    /// Who may use which published app.
    pub apps: super::apps::AppsConfig,
    /// Deprovisioning by a directory (SCIM 2.0) on the admin listener.
    pub scim: crate::ops::scim::ScimConfig,
}

/// `sso.store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// `redis` when `dify.redis_url` is set, else `memory`.
    #[default]
    Auto,
    Memory,
    Redis,
}

fn yes() -> bool {
    true
}

pub const DEFAULT_CALLBACK_PATH: &str = "/qsso_backcall";
pub const DEFAULT_TOKEN_PARAM: &str = "token";

impl Default for SsoConfig {
    fn default() -> Self {
        SsoConfig {
            enabled: false,
            protocol: Protocol::TokenExchange,
            login_url: String::new(),
            callback_path: DEFAULT_CALLBACK_PATH.into(),
            token_param: DEFAULT_TOKEN_PARAM.into(),
            exchange: ExchangeConfig::default(),
            logout_url: String::new(),
            bypass_cidrs: Vec::new(),
            enforce: false,
            support_contact: String::new(),
            state_secret: Secret::default(),
            public_origins: Vec::new(),
            callback_origins: Vec::new(),
            idp_initiated: false,
            store: StoreKind::Auto,
            ready_checks_idp: false,
            oidc: OidcConfig::default(),
            oauth2: OAuth2Config::default(),
            cas: CasConfig::default(),
            allow: AllowConfig::default(),
            minter: MinterKind::default(),
            provisioning: Default::default(),
            session: Default::default(),
            apps: Default::default(),
            scim: Default::default(),
        }
    }
}

/// `scheme://host[:port]` and nothing more.
fn is_bare_origin(o: &str) -> bool {
    url::Url::parse(o).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.path() == "/"
            && u.query().is_none()
            && u.fragment().is_none()
            && !o.ends_with("//")
    })
}

fn non_empty(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl SsoConfig {
    /// The `sso` section in force: the file's, or, without one, one built from the seed bridge's
    /// environment (`QSSO_LOGIN_URL`, `DIFY_TOKEN_BY_QSSO_API_BASE_URL`, `DIFY_HOME_PAGE_BASE_URL`,
    /// `DIFY_SECRET_KEY`/`SECRET_KEY`). In that case `dify` values the file left unset are filled
    /// too: home, secret key, and delivery (`cookie` with a key, `query` without, as the seed did),
    /// plus Dify's own cookie settings when they are in the environment.
    pub fn resolve(
        from_file: Option<SsoConfig>,
        dify: &mut DifyConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Option<SsoConfig> {
        if from_file.is_some() {
            return from_file;
        }
        let login_url = non_empty(env, "QSSO_LOGIN_URL");
        let exchange_url = non_empty(env, "DIFY_TOKEN_BY_QSSO_API_BASE_URL");
        if login_url.is_none() && exchange_url.is_none() {
            return None;
        }
        // One of the two alone is still taken as the wish to turn SSO on, so that validation names
        // the missing one instead of the gateway silently running without SSO.
        if dify.home.is_none() {
            dify.home = non_empty(env, "DIFY_HOME_PAGE_BASE_URL");
        }
        if dify.secret_key.is_empty()
            && let Some(k) =
                non_empty(env, "DIFY_SECRET_KEY").or_else(|| non_empty(env, "SECRET_KEY"))
        {
            dify.secret_key = Secret::new(k);
        }
        if dify.session_delivery.is_none() {
            let with_key = !dify.secret_key.is_empty();
            dify.session_delivery = Some(if with_key {
                SessionDelivery::Cookie
            } else {
                SessionDelivery::Query
            });
        }
        for (field, var) in [
            (&mut dify.console_web_url, "CONSOLE_WEB_URL"),
            (&mut dify.console_api_url, "CONSOLE_API_URL"),
            (&mut dify.cookie_domain, "COOKIE_DOMAIN"),
        ] {
            if field.is_empty() {
                *field = non_empty(env, var).unwrap_or_default();
            }
        }
        Some(SsoConfig {
            enabled: true,
            login_url: login_url.unwrap_or_default(),
            exchange: ExchangeConfig {
                url: exchange_url.unwrap_or_default(),
                ..Default::default()
            },
            // Replicas configured only by environment (compose, Kubernetes) share it this way.
            state_secret: Secret::new(
                non_empty(env, "DIFY_GATEWAY_SSO_STATE_SECRET").unwrap_or_default(),
            ),
            ..Default::default()
        })
    }

    /// The callback path of the configured protocol.
    pub fn effective_callback_path(&self) -> &str {
        match self.protocol {
            Protocol::TokenExchange => &self.callback_path,
            Protocol::Oidc => &self.oidc.redirect_path,
            Protocol::Oauth2 => &self.oauth2.redirect_path,
            Protocol::Cas => &self.cas.redirect_path,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn summary(&self, dify: &DifyConfig) -> String {
        let protocol = self.protocol.name();
        let mut s = format!("sso {protocol} callback {}", self.effective_callback_path());
        if self.enforce {
            s.push_str(" enforced");
        }
        if self.idp_initiated {
            s.push_str(" idp-initiated");
        }
        if !self.bypass_cidrs.is_empty() {
            s.push_str(&format!(" bypass {}", self.bypass_cidrs.join(",")));
        }
        let store = if self.store_in_redis(dify) {
            "redis"
        } else {
            "memory"
        };
        s.push_str(&format!(" states in {store}"));
        s
    }

    /// The file's semantic problems. A disabled section is not checked beyond its syntax.
    pub fn validate(&self, dify: &DifyConfig, issues: &mut Vec<Issue>) {
        if !self.enabled {
            return;
        }
        let mut bad = |field: &str, msg: String| issues.push(Issue::new(field, msg));
        match self.protocol {
            Protocol::TokenExchange => self.validate_token_exchange(&mut bad),
            Protocol::Oidc => self.oidc.validate(&mut bad),
            Protocol::Oauth2 => self.oauth2.validate(&mut bad),
            Protocol::Cas => self.cas.validate(&mut bad),
        }
        if self.protocol != Protocol::TokenExchange {
            self.allow.validate(&mut bad);
            self.validate_minter(dify, &mut bad);
        }
        self.validate_apps(dify, &mut bad);
        let cb = &self.callback_path;
        if !cb.starts_with('/') || cb.starts_with("//") || cb.contains(['?', '#', ' ', '\\']) {
            bad(
                "sso.callback_path",
                format!("expected a path such as /qsso_backcall, got {cb:?}"),
            );
        } else if cb.trim_end_matches('/') == "/signin"
            || cb.starts_with("/sso/")
            || cb.trim_end_matches('/').is_empty()
        {
            bad(
                "sso.callback_path",
                format!("{cb:?} is taken by the gateway; expected a path such as /qsso_backcall"),
            );
        }
        let tp = &self.token_param;
        if tp.is_empty()
            || !tp
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bad(
                "sso.token_param",
                format!("expected a form field name such as token, got {tp:?}"),
            );
        }
        let lo = &self.logout_url;
        if !lo.is_empty() && !is_http_url(lo) {
            bad(
                "sso.logout_url",
                format!(
                    "expected an absolute http(s) URL of the SSO's logout, or empty, got {lo:?}"
                ),
            );
        }
        for (i, cidr) in self.bypass_cidrs.iter().enumerate() {
            if parse_cidr(cidr).is_none() {
                bad(
                    &format!("sso.bypass_cidrs[{i}]"),
                    format!("expected a CIDR such as 10.0.0.0/8 or an address, got {cidr:?}"),
                );
            }
        }
        for (key, list) in [
            ("sso.public_origins", &self.public_origins),
            ("sso.callback_origins", &self.callback_origins),
        ] {
            for (i, o) in list.iter().enumerate() {
                if !is_bare_origin(o) {
                    bad(
                        &format!("{key}[{i}]"),
                        format!(
                            "expected an origin such as https://dify.example.com (scheme, host, optional port, no path), got {o:?}"
                        ),
                    );
                }
            }
        }
        if self.idp_initiated && self.protocol != Protocol::TokenExchange {
            bad(
                "sso.idp_initiated",
                format!(
                    "sso.protocol {} always starts at /signin (its callback must carry the state the gateway issued); \
                     IdP-initiated sign-in is for token_exchange",
                    self.protocol.name()
                ),
            );
        }
        if self.store == StoreKind::Redis && dify.redis_url.is_empty() {
            bad(
                "sso.store",
                "redis keeps used sign-in states in Dify's Redis: expected dify.redis_url too"
                    .into(),
            );
        }
        if !self.state_secret.is_empty() && self.state_secret.expose().len() < 16 {
            bad(
                "sso.state_secret",
                "expected at least 16 characters of random text (e.g. `openssl rand -hex 32`)"
                    .into(),
            );
        }
        if dify.delivery() == SessionDelivery::Cookie && dify.secret_key().is_none() {
            bad(
                "dify.secret_key",
                "expected Dify's SECRET_KEY: cookie delivery checks the access token and signs the CSRF token with it \
                 (or set dify.session_delivery: query for Dify <= 1.9.1)"
                    .into(),
            );
        }
    }

    /// The SSO's origins a callback may come from (see `origins.rs`).
    pub fn effective_callback_origins(&self) -> Vec<String> {
        if !self.callback_origins.is_empty() {
            return self.callback_origins.clone();
        }
        let login = self
            .login_url
            .replace("{callback_url}", "x")
            .replace("{state}", "x");
        super::origins::origin_of(&login).into_iter().collect()
    }

    /// Whether used states go to Redis.
    pub fn store_in_redis(&self, dify: &DifyConfig) -> bool {
        match self.store {
            StoreKind::Redis => true,
            StoreKind::Memory => false,
            StoreKind::Auto => !dify.redis_url.is_empty(),
        }
    }

    fn validate_apps(&self, dify: &DifyConfig, bad: &mut impl FnMut(&str, String)) {
        for (i, k) in self.session.keys.iter().enumerate() {
            if k.expose().len() < 32 {
                bad(
                    &format!("sso.session.keys[{i}]"),
                    "expected a random secret of at least 32 bytes (e.g. `openssl rand -base64 32`)"
                        .into(),
                );
            }
        }
        let s = &self.session;
        if s.lifetime.is_zero() {
            bad(
                "sso.session.lifetime",
                "expected a duration such as 12h".into(),
            );
        }
        if s.idle_timeout.is_zero() || s.idle_timeout > s.lifetime {
            bad(
                "sso.session.idle_timeout",
                "expected a duration such as 2h, no longer than sso.session.lifetime".into(),
            );
        }
        if let Err(e) = self.apps.default.parse() {
            bad("sso.apps.default", e);
        }
        for (code, rule) in &self.apps.rules {
            if code.is_empty()
                || !code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                bad(
                    &format!("sso.apps.rules.{code}"),
                    format!(
                        "expected an app code as in the share URL (/chat/<code>), got {code:?}"
                    ),
                );
            }
            if let Err(e) = rule.parse() {
                bad(&format!("sso.apps.rules.{code}"), e);
            }
        }
        if !self.scim.token.is_empty() {
            if self.scim.token.expose().len() < 32 {
                bad(
                    "sso.scim.token",
                    "expected a random secret of at least 32 bytes (e.g. `openssl rand -base64 32`)".into(),
                );
            }
            if self.minter != MinterKind::Builtin {
                bad(
                    "sso.scim.token",
                    "SCIM needs sso.minter: builtin (it bans accounts in Dify's database and deletes their refresh tokens in Redis)".into(),
                );
            }
        }
        let protected = super::apps::AppPolicy::new(&self.apps).is_ok_and(|p| p.active());
        if protected && dify.secret_key().is_none() {
            bad(
                "dify.secret_key",
                "protected published apps (sso.apps) need Dify's SECRET_KEY to check the app passports"
                    .into(),
            );
        }
    }

    fn validate_token_exchange(&self, bad: &mut impl FnMut(&str, String)) {
        let login = &self.login_url;
        let filled = login.replace("{callback_url}", "x").replace("{state}", "x");
        if login.is_empty() {
            bad("sso.login_url", "expected the SSO login page, e.g. https://sso.example.com/login?ret={callback_url}".into());
        } else if !is_http_url(&filled) {
            bad(
                "sso.login_url",
                format!("expected an absolute http(s) URL, got {login:?}"),
            );
        } else if filled.contains(['{', '}']) {
            bad(
                "sso.login_url",
                format!(
                    "unknown placeholder in {login:?}; expected only {{callback_url}} and {{state}}"
                ),
            );
        }
        let ex = &self.exchange;
        if ex.url.is_empty() {
            bad("sso.exchange.url", "expected the management service's token exchange URL, e.g. http://manager:8087/get_dify_token".into());
        } else if !is_http_url(&ex.url) || ex.url.contains('#') {
            bad(
                "sso.exchange.url",
                format!(
                    "expected an absolute http(s) URL without #fragment, got {:?}",
                    ex.url
                ),
            );
        }
        self.validate_exchange_client(bad);
    }

    fn validate_minter(&self, dify: &DifyConfig, bad: &mut impl FnMut(&str, String)) {
        match self.minter {
            MinterKind::Builtin => {
                self.provisioning
                    .validate(dify.dataset_operator_enabled(), bad);
                if dify.database_url.is_empty() {
                    bad("dify.database_url", "expected Dify's PostgreSQL for sso.minter: builtin, e.g. postgresql://postgres:difyai123456@db:5432/dify".into());
                } else if let Err(e) = crate::dify::store::parse_url(dify.database_url.expose()) {
                    bad("dify.database_url", e);
                }
                if dify.redis_url.is_empty() {
                    bad("dify.redis_url", "expected Dify's Redis for sso.minter: builtin, e.g. redis://:difyai123456@redis:6379/0".into());
                } else if let Err(e) = crate::dify::redis_conn::client(
                    dify.redis_url.expose(),
                    Some(dify.redis_password.expose()),
                ) {
                    bad("dify.redis_url", e);
                }
                if dify.secret_key().is_none() {
                    bad("dify.secret_key", "expected Dify's SECRET_KEY: sso.minter: builtin signs the access token with it".into());
                }
            }
            MinterKind::ManagementService => {
                let url = &self.exchange.identity_url;
                if url.is_empty() {
                    bad("sso.exchange.identity_url", "expected the management service's identity URL, e.g. http://manager:8087/dify_session (docs/management-service.md)".into());
                } else if !is_http_url(url) || url.contains('#') {
                    bad(
                        "sso.exchange.identity_url",
                        format!("expected an absolute http(s) URL without #fragment, got {url:?}"),
                    );
                }
                self.validate_exchange_client(bad);
            }
        }
    }

    fn validate_exchange_client(&self, bad: &mut impl FnMut(&str, String)) {
        let ex = &self.exchange;
        if ex.timeout.is_zero() || ex.timeout > Duration::from_secs(300) {
            bad(
                "sso.exchange.timeout",
                "expected a duration above 0 and at most 5m, such as 10s".into(),
            );
        }
        for (name, value) in &ex.headers {
            let field = format!("sso.exchange.headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                bad(
                    &field,
                    format!("expected a header name such as X-Api-Key, got {name:?}"),
                );
            } else if http::HeaderValue::from_str(value.expose()).is_err() {
                bad(
                    &field,
                    "expected a header value of visible ASCII characters".into(),
                );
            }
        }
    }
}
