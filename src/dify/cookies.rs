//! Dify's session cookies exactly as Dify sets them (reference §2): names with or without the
//! `__Host-` prefix, `Secure`, `Domain`, `HttpOnly` (not for the CSRF cookie, JavaScript reads it),
//! `Path=/`, `SameSite=Lax`, and Dify's Max-Age values.

use super::DifyConfig;
use cookie::{Cookie, SameSite};

pub const ACCESS_TOKEN: &str = "access_token";
pub const REFRESH_TOKEN: &str = "refresh_token";
pub const CSRF_TOKEN: &str = "csrf_token";
const HOST_PREFIX: &str = "__Host-";

/// The attributes Dify derives from its `CONSOLE_WEB_URL`, `CONSOLE_API_URL` and `COOKIE_DOMAIN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiePolicy {
    pub secure: bool,
    /// `__Host-` names: only when secure and no cookie domain (the prefix forbids `Domain`).
    pub host_prefix: bool,
    /// `Domain=` value, without the leading dot Dify strips too.
    pub domain: Option<String>,
    pub access_max_age_secs: i64,
    pub refresh_max_age_secs: i64,
}

impl CookiePolicy {
    pub fn from_config(dify: &DifyConfig) -> CookiePolicy {
        // Dify's own test is a plain prefix test on both settings, so "https" is all that counts.
        let secure =
            dify.console_web_url.starts_with("https") && dify.console_api_url.starts_with("https");
        let domain = dify.cookie_domain.trim().trim_start_matches('.');
        let domain = (!domain.is_empty()).then(|| domain.to_string());
        CookiePolicy {
            secure,
            host_prefix: secure && domain.is_none(),
            domain,
            access_max_age_secs: (dify.access_token_expire_minutes as i64).saturating_mul(60),
            refresh_max_age_secs: (dify.refresh_token_expire_days as i64).saturating_mul(86_400),
        }
    }

    /// The name Dify uses for `base` (`access_token`, `refresh_token`, `csrf_token`).
    pub fn name(&self, base: &str) -> String {
        if self.host_prefix {
            format!("{HOST_PREFIX}{base}")
        } else {
            base.to_string()
        }
    }

    fn build(
        &self,
        base: &str,
        value: &str,
        http_only: bool,
        max_age_secs: i64,
    ) -> Cookie<'static> {
        let mut c = Cookie::build((self.name(base), value.to_string()))
            .path("/")
            .same_site(SameSite::Lax)
            .http_only(http_only)
            .secure(self.secure)
            .max_age(time::Duration::seconds(max_age_secs))
            .build();
        if let Some(d) = &self.domain {
            c.set_domain(d.clone());
        }
        c
    }

    pub fn access_cookie(&self, token: &str) -> Cookie<'static> {
        self.build(ACCESS_TOKEN, token, true, self.access_max_age_secs)
    }

    pub fn refresh_cookie(&self, token: &str) -> Cookie<'static> {
        self.build(REFRESH_TOKEN, token, true, self.refresh_max_age_secs)
    }

    /// Readable by scripts: Dify's front end copies it into the `X-CSRF-Token` header.
    pub fn csrf_cookie(&self, token: &str) -> Cookie<'static> {
        self.build(CSRF_TOKEN, token, false, self.access_max_age_secs)
    }

    /// The three `Set-Cookie` values of a session, in Dify's order.
    pub fn session_set_cookies(&self, access: &str, refresh: &str, csrf: &str) -> Vec<String> {
        vec![
            self.access_cookie(access).to_string(),
            self.refresh_cookie(refresh).to_string(),
            self.csrf_cookie(csrf).to_string(),
        ]
    }
}

/// Whether `value` can travel as a cookie value unchanged (RFC 6265 cookie-octets). Dify reads its
/// cookies verbatim, so a token that needs encoding cannot be delivered as a cookie.
pub fn is_cookie_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(web: &str, api: &str, domain: &str) -> CookiePolicy {
        CookiePolicy::from_config(&DifyConfig {
            console_web_url: web.into(),
            console_api_url: api.into(),
            cookie_domain: domain.into(),
            ..Default::default()
        })
    }

    #[test]
    fn plain_http_has_no_prefix_and_no_secure() {
        let p = policy("", "", "");
        let set = p.session_set_cookies("a.b.c", "ff00", "x.y.z");
        assert_eq!(
            set[0],
            "access_token=a.b.c; HttpOnly; SameSite=Lax; Path=/; Max-Age=3600"
        );
        assert_eq!(
            set[1],
            "refresh_token=ff00; HttpOnly; SameSite=Lax; Path=/; Max-Age=2592000"
        );
        assert_eq!(
            set[2],
            "csrf_token=x.y.z; SameSite=Lax; Path=/; Max-Age=3600"
        );
    }

    #[test]
    fn https_without_domain_uses_host_prefix() {
        let p = policy("https://dify.example.com", "https://dify.example.com", "");
        assert!(p.secure && p.host_prefix);
        let c = p.access_cookie("t").to_string();
        assert!(c.starts_with("__Host-access_token=t;"), "{c}");
        assert!(c.contains("Secure") && !c.contains("Domain"), "{c}");
        assert!(
            p.csrf_cookie("t")
                .to_string()
                .starts_with("__Host-csrf_token=")
        );
    }

    #[test]
    fn https_with_domain_drops_prefix_and_leading_dot() {
        let p = policy(
            "https://a.example.com",
            "https://api.example.com",
            ".example.com",
        );
        let c = p.refresh_cookie("r").to_string();
        assert!(c.starts_with("refresh_token=r;"), "{c}");
        assert!(
            c.contains("Domain=example.com") && c.contains("Secure"),
            "{c}"
        );
    }

    #[test]
    fn one_http_url_means_not_secure() {
        let p = policy("https://dify.example.com", "http://dify.example.com", "");
        assert!(!p.secure && !p.host_prefix);
    }

    #[test]
    fn max_age_follows_dify_settings() {
        let p = CookiePolicy::from_config(&DifyConfig {
            access_token_expire_minutes: 5,
            refresh_token_expire_days: 2,
            ..Default::default()
        });
        assert!(p.access_cookie("a").to_string().contains("Max-Age=300"));
        assert!(p.csrf_cookie("a").to_string().contains("Max-Age=300"));
        assert!(p.refresh_cookie("a").to_string().contains("Max-Age=172800"));
    }

    #[test]
    fn cookie_safe_values() {
        assert!(is_cookie_safe("eyJh.eyJ1-_x.sig"));
        assert!(is_cookie_safe(&"ab".repeat(64)));
        for bad in ["", "a b", "a;b", "a,b", "a\"b", "a\\b", "ä"] {
            assert!(!is_cookie_safe(bad), "{bad:?}");
        }
    }
}
