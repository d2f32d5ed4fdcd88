//! What the gateway knows of Dify: its session cookies and tokens, and how to hand a session over
//! (reference §2 and §3). Nothing here is specific to one SSO protocol, so a later gateway that
//! mints sessions itself reuses it.

pub mod cookies;
pub mod directory;
pub mod pg_tls;
pub mod provisioning;
pub mod redirect;
pub mod redis_conn;
pub mod refresh_tokens;
pub mod session;
pub mod store;
pub mod tokens;
pub mod version;

use crate::config::Issue;
use crate::sso::Secret;
use serde::Deserialize;

pub use cookies::CookiePolicy;
pub use session::{DifySession, SessionError};

/// How a signed-in session reaches the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionDelivery {
    /// Dify >= 1.9.2: `access_token`, `refresh_token` and `csrf_token` cookies.
    Cookie,
    /// Dify <= 1.9.1: `?access_token=..&refresh_token=..` on the landing URL (the seed's way).
    Query,
}

/// The `dify` section. Values that mirror Dify's own settings must equal them (named in comments).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DifyConfig {
    /// Dify's `SECRET_KEY`: checks the access token's signature and signs CSRF tokens.
    pub secret_key: Secret,
    /// Unset: follows the Dify version (`cookie` from 1.9.2, `query` before; `cookie` while the
    /// version is unknown); the seed's environment without a secret key picks `query`.
    pub session_delivery: Option<SessionDelivery>,
    /// The Dify behind the gateway: `auto` (ask Dify's `/health`) or a version such as `1.14.2`.
    /// What depends on it: [`version::Compat`].
    #[serde(deserialize_with = "de_version")]
    pub version: String,
    /// How often `auto` asks Dify again, so an upgraded Dify is followed without a reload.
    #[serde(deserialize_with = "crate::config::units::de_duration")]
    pub version_check_interval: std::time::Duration,
    /// The access token's `iss`: `SELF_HOSTED`, `COMMUNITY`, `ENTERPRISE` or `CLOUD`. Unset:
    /// what the Dify version writes (`SELF_HOSTED` before 1.17, `COMMUNITY` from 1.17).
    pub edition: Option<String>,
    /// Where a signed-in user lands when no return target survives: a path or an absolute URL.
    pub home: Option<String>,
    /// Dify's `CONSOLE_WEB_URL` and `CONSOLE_API_URL`: both https -> cookies get `Secure`.
    pub console_web_url: String,
    pub console_api_url: String,
    /// Dify's `COOKIE_DOMAIN`: set -> `Domain=` attribute and no `__Host-` prefix.
    pub cookie_domain: String,
    /// Dify's `ACCESS_TOKEN_EXPIRE_MINUTES` and `REFRESH_TOKEN_EXPIRE_DAYS`.
    pub access_token_expire_minutes: u64,
    pub refresh_token_expire_days: u64,
    /// `sso.minter: builtin` only: Dify's PostgreSQL (`postgresql://user:password@db:5432/dify`,
    /// Dify's DB_* settings) and Redis (`redis://:password@redis:6379/0`, Dify's REDIS_* settings;
    /// `rediss://` for TLS). `redis_password`, when set, replaces the URL's password.
    pub database_url: Secret,
    pub redis_url: Secret,
    pub redis_password: Secret,
    /// Dify's `REDIS_KEY_PREFIX` (Dify >= 1.14): every key Dify reads is `<prefix>:<key>`, so every
    /// key the gateway reads or writes is too ([`DifyConfig::redis_key`]). Unset: the environment
    /// variable `REDIS_KEY_PREFIX`, else none.
    pub redis_key_prefix: Option<String>,
    /// Dify's `DATASET_OPERATOR_ENABLED`: Dify's own invitations and role changes give the role
    /// `dataset_operator` only when it is on, so `sso.provisioning` may only then. Unset: the
    /// environment variable `DATASET_OPERATOR_ENABLED`, else off.
    pub dataset_operator_enabled: Option<bool>,
    /// Environment values that could not be used, reported by [`DifyConfig::validate`].
    #[serde(skip)]
    pub env_issues: Vec<Issue>,
}

impl Default for DifyConfig {
    fn default() -> Self {
        DifyConfig {
            secret_key: Secret::default(),
            session_delivery: None,
            version: "auto".into(),
            version_check_interval: std::time::Duration::from_secs(60),
            edition: None,
            home: None,
            console_web_url: String::new(),
            console_api_url: String::new(),
            cookie_domain: String::new(),
            access_token_expire_minutes: 60,
            refresh_token_expire_days: 30,
            database_url: Secret::default(),
            redis_url: Secret::default(),
            redis_password: Secret::default(),
            redis_key_prefix: None,
            dataset_operator_enabled: None,
            env_issues: Vec::new(),
        }
    }
}

/// `dify.version` as text. A bare YAML number is refused rather than read: `1.10` would be the
/// float 1.1.
fn de_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(serde_json::Number),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => Ok(s),
        Raw::Number(n) => Err(serde::de::Error::custom(format!(
            "expected auto or a Dify version in quotes such as \"1.14.2\" (a bare {n} reads as a number)"
        ))),
    }
}

/// Dify's `serialize_redis_name` (api/extensions/redis_names.py): the prefix is stripped of
/// surrounding white space; an empty one leaves the key alone; otherwise `<prefix>:<key>`, with
/// the colon added even when the prefix already ends in one (`dify:` gives `dify::key`).
pub(crate) fn prefixed_redis_key(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim();
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}:{key}")
    }
}

/// Truthy and falsy spellings of a boolean as Dify's settings (pydantic) read them.
fn parse_env_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Dify's console start page.
pub const DEFAULT_HOME: &str = "/apps";

impl DifyConfig {
    /// The delivery as configured: `dify.session_delivery`, else what a fixed `dify.version`
    /// implies, else cookie. At run time [`version::Compat::delivery`] also follows a detected
    /// version.
    pub fn delivery(&self) -> SessionDelivery {
        match version::VersionSetting::parse(&self.version) {
            Ok(version::VersionSetting::Fixed(v)) => self.session_delivery.unwrap_or(v.delivery()),
            _ => self.session_delivery.unwrap_or(SessionDelivery::Cookie),
        }
    }

    pub fn home(&self) -> &str {
        self.home
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or(DEFAULT_HOME)
    }

    /// The name under which Dify keeps `key` in Redis: `dify.redis_key_prefix` applied as Dify
    /// applies `REDIS_KEY_PREFIX`. Every key the gateway reads or writes goes through this.
    pub fn redis_key(&self, key: &str) -> String {
        prefixed_redis_key(self.redis_key_prefix.as_deref().unwrap_or(""), key)
    }

    /// Whether `dataset_operator` may be given (Dify's `DATASET_OPERATOR_ENABLED`).
    pub fn dataset_operator_enabled(&self) -> bool {
        self.dataset_operator_enabled.unwrap_or(false)
    }

    /// Values the file left unset, from the environment Dify itself is configured with.
    pub fn fill_from_env(&mut self, env: &impl Fn(&str) -> Option<String>) {
        if self.redis_key_prefix.is_none() {
            self.redis_key_prefix = env("REDIS_KEY_PREFIX");
        }
        if self.dataset_operator_enabled.is_none()
            && let Some(v) = env("DATASET_OPERATOR_ENABLED").filter(|v| !v.trim().is_empty())
        {
            match parse_env_bool(&v) {
                Some(b) => self.dataset_operator_enabled = Some(b),
                None => self.env_issues.push(Issue::new(
                    "dify.dataset_operator_enabled",
                    format!(
                        "the environment variable DATASET_OPERATOR_ENABLED is {v:?}; expected true or false (as for Dify)"
                    ),
                )),
            }
        }
    }

    /// The key, when one is configured (an empty string means none).
    pub fn secret_key(&self) -> Option<&str> {
        (!self.secret_key.is_empty()).then(|| self.secret_key.expose())
    }

    pub fn validate(&self, issues: &mut Vec<Issue>) {
        issues.extend(self.env_issues.iter().cloned());
        if let Some(p) = &self.redis_key_prefix
            && p.chars().any(char::is_control)
        {
            issues.push(Issue::new(
                "dify.redis_key_prefix",
                "expected Dify's REDIS_KEY_PREFIX, text without control characters",
            ));
        }
        if let Err(e) = version::VersionSetting::parse(&self.version) {
            issues.push(Issue::new("dify.version", e));
        }
        if let Some(e) = &self.edition
            && version::Edition::parse(e).is_none()
        {
            issues.push(Issue::new(
                "dify.edition",
                format!(
                    "expected one of SELF_HOSTED, COMMUNITY, ENTERPRISE, CLOUD (the iss Dify writes), got {e:?}"
                ),
            ));
        }
        if self.version_check_interval < std::time::Duration::from_millis(100) {
            issues.push(Issue::new(
                "dify.version_check_interval",
                "expected a duration of at least 100ms such as 60s",
            ));
        }
        let home = self.home();
        if !(home.starts_with('/') && !home.starts_with("//") || is_http_url(home)) {
            issues.push(Issue::new(
                "dify.home",
                format!("expected a path such as /apps or an absolute URL such as https://dify.example.com/apps, got {home:?}"),
            ));
        }
        for (field, value) in [
            ("dify.console_web_url", &self.console_web_url),
            ("dify.console_api_url", &self.console_api_url),
        ] {
            if !value.is_empty() && !is_http_url(value) {
                issues.push(Issue::new(
                    field,
                    format!("expected Dify's setting of the same name, an http(s) URL or empty, got {value:?}"),
                ));
            }
        }
        let d = self.cookie_domain.trim_start_matches('.');
        if d.contains(['/', ':', ' ', ';', ',']) || (!self.cookie_domain.is_empty() && d.is_empty())
        {
            issues.push(Issue::new(
                "dify.cookie_domain",
                format!(
                    "expected a bare domain such as example.com (Dify's COOKIE_DOMAIN), got {:?}",
                    self.cookie_domain
                ),
            ));
        }
        if self.access_token_expire_minutes == 0 {
            issues.push(Issue::new(
                "dify.access_token_expire_minutes",
                "expected minutes above 0 (Dify's default is 60)",
            ));
        }
        if self.refresh_token_expire_days == 0 {
            issues.push(Issue::new(
                "dify.refresh_token_expire_days",
                "expected days above 0 (Dify's default is 30)",
            ));
        }
    }
}

/// An absolute `http://` or `https://` URL with a host.
pub fn is_http_url(text: &str) -> bool {
    url::Url::parse(text)
        .map(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues_of(c: &DifyConfig) -> Vec<Issue> {
        let mut v = Vec::new();
        c.validate(&mut v);
        v
    }

    #[test]
    fn defaults_follow_dify() {
        let c = DifyConfig::default();
        assert_eq!(c.delivery(), SessionDelivery::Cookie);
        assert_eq!(c.home(), "/apps");
        assert_eq!(c.secret_key(), None);
        assert!(issues_of(&c).is_empty());
    }

    #[test]
    fn bad_values_are_named_with_what_was_expected() {
        let c = DifyConfig {
            home: Some("apps".into()),
            console_web_url: "dify.example.com".into(),
            cookie_domain: "https://example.com".into(),
            access_token_expire_minutes: 0,
            refresh_token_expire_days: 0,
            ..Default::default()
        };
        let fields: Vec<String> = issues_of(&c).into_iter().map(|i| i.field).collect();
        assert_eq!(
            fields,
            [
                "dify.home",
                "dify.console_web_url",
                "dify.cookie_domain",
                "dify.access_token_expire_minutes",
                "dify.refresh_token_expire_days"
            ]
        );
        let protocol_relative = DifyConfig {
            home: Some("//evil.com".into()),
            ..Default::default()
        };
        assert_eq!(issues_of(&protocol_relative).len(), 1);
    }

    #[test]
    fn redis_keys_are_prefixed_exactly_as_dify_prefixes_them() {
        let with = |p: Option<&str>| DifyConfig {
            redis_key_prefix: p.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(with(None).redis_key("refresh_token:t"), "refresh_token:t");
        assert_eq!(
            with(Some("")).redis_key("refresh_token:t"),
            "refresh_token:t"
        );
        assert_eq!(with(Some("  ")).redis_key("k"), "k");
        assert_eq!(
            with(Some("dify")).redis_key("refresh_token:t"),
            "dify:refresh_token:t"
        );
        assert_eq!(with(Some(" dify ")).redis_key("k"), "dify:k");
        assert_eq!(with(Some("dify:")).redis_key("k"), "dify::k");
    }

    #[test]
    fn prefix_and_dataset_operator_come_from_the_environment_unless_set() {
        let env = |k: &str| match k {
            "REDIS_KEY_PREFIX" => Some("tenant-a".to_string()),
            "DATASET_OPERATOR_ENABLED" => Some("True".to_string()),
            _ => None,
        };
        let mut c = DifyConfig::default();
        c.fill_from_env(&env);
        assert_eq!(c.redis_key("k"), "tenant-a:k");
        assert!(c.dataset_operator_enabled());
        let mut c = DifyConfig {
            redis_key_prefix: Some(String::new()),
            dataset_operator_enabled: Some(false),
            ..Default::default()
        };
        c.fill_from_env(&env);
        assert_eq!(c.redis_key("k"), "k", "the file's empty prefix wins");
        assert!(!c.dataset_operator_enabled());
        let mut c = DifyConfig::default();
        c.fill_from_env(&|k: &str| (k == "DATASET_OPERATOR_ENABLED").then(|| "maybe".to_string()));
        let issues = issues_of(&c);
        assert_eq!(issues[0].field, "dify.dataset_operator_enabled");
        assert!(
            issues[0].message.contains("\"maybe\""),
            "{}",
            issues[0].message
        );
    }

    #[test]
    fn absolute_home_is_accepted() {
        let c = DifyConfig {
            home: Some("https://dify.example.com/apps".into()),
            ..Default::default()
        };
        assert!(issues_of(&c).is_empty());
    }
}
