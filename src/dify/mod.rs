//! What the gateway knows of Dify: its session cookies and tokens, and how to hand a session over
//! (reference §2 and §3). Nothing here is specific to one SSO protocol, so a later gateway that
//! mints sessions itself reuses it.

pub mod cookies;
pub mod provisioning;
pub mod redirect;
pub mod redis_conn;
pub mod refresh_tokens;
pub mod session;
pub mod store;
pub mod tokens;

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
    /// `cookie` unless given; the seed's environment without a secret key picks `query`.
    pub session_delivery: Option<SessionDelivery>,
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
}

impl Default for DifyConfig {
    fn default() -> Self {
        DifyConfig {
            secret_key: Secret::default(),
            session_delivery: None,
            home: None,
            console_web_url: String::new(),
            console_api_url: String::new(),
            cookie_domain: String::new(),
            access_token_expire_minutes: 60,
            refresh_token_expire_days: 30,
            database_url: Secret::default(),
            redis_url: Secret::default(),
            redis_password: Secret::default(),
        }
    }
}

/// Dify's console start page.
pub const DEFAULT_HOME: &str = "/apps";

impl DifyConfig {
    pub fn delivery(&self) -> SessionDelivery {
        self.session_delivery.unwrap_or(SessionDelivery::Cookie)
    }

    pub fn home(&self) -> &str {
        self.home
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or(DEFAULT_HOME)
    }

    /// A Redis key as Dify names it (placeholder until the key prefix lands).
    pub fn redis_key(&self, key: &str) -> String {
        key.to_string()
    }

    /// The key, when one is configured (an empty string means none).
    pub fn secret_key(&self) -> Option<&str> {
        (!self.secret_key.is_empty()).then(|| self.secret_key.expose())
    }

    pub fn validate(&self, issues: &mut Vec<Issue>) {
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
    fn absolute_home_is_accepted() {
        let c = DifyConfig {
            home: Some("https://dify.example.com/apps".into()),
            ..Default::default()
        };
        assert!(issues_of(&c).is_empty());
    }
}
