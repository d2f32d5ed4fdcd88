//! Handing a Dify session to the browser: check it as Dify will, complete it (mint the CSRF token),
//! then either `Set-Cookie` it (Dify >= 1.9.2) or put it on the landing URL (Dify <= 1.9.1).

use super::cookies::{CookiePolicy, is_cookie_safe};
use super::redirect::append_query;
use super::tokens::{TokenError, mint_csrf_token, verify_access_token};
use super::version::Compat;
use super::{DifyConfig, SessionDelivery};
use crate::sso::mask;
use std::fmt;
use std::time::Duration;

/// Tokens for one signed-in Dify account, as a management service (or a later minting step) gives them.
#[derive(Clone, PartialEq, Eq)]
pub struct DifySession {
    pub access_token: String,
    pub refresh_token: String,
    pub csrf_token: Option<String>,
    /// What the management service said of the person, besides the tokens (all optional).
    pub owner: SessionOwner,
}

/// The person a session is for, as a token exchange answer may describe them (`email`, `name`,
/// `groups`): what published-app rules can go on when the protocol proves no identity itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOwner {
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

impl fmt::Debug for DifySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DifySession")
            .field("access_token", &mask(&self.access_token))
            .field("refresh_token", &mask(&self.refresh_token))
            .field("csrf_token", &self.csrf_token.as_deref().map(mask))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the {0} contains characters a cookie cannot carry, so Dify could not read it")]
    NotCookieSafe(&'static str),
    #[error("cookie delivery needs dify.secret_key to create the CSRF token")]
    NoSecretKey,
}

/// A session that passed the checks, with everything its delivery needs.
#[derive(Debug, Clone)]
pub struct CheckedSession {
    pub session: DifySession,
    /// Known when the access token was checked (a secret key is configured).
    pub user_id: Option<String>,
    /// Decided once, at the check, so a Dify upgrade seen in between cannot split the handover.
    pub delivery: SessionDelivery,
}

/// What to send the browser to hand the session over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// `Set-Cookie` values; the caller then redirects wherever it likes.
    Cookies(Vec<String>),
    /// The landing URL carrying the tokens.
    Redirect(String),
}

/// Built once per configuration. The delivery follows the Dify version when it is not set, so it is
/// resolved per sign-in (one atomic load) rather than fixed here.
#[derive(Clone)]
pub struct SessionHandoff {
    compat: Compat,
    policy: CookiePolicy,
    secret: Option<String>,
    csrf_ttl: Duration,
}

impl SessionHandoff {
    pub fn new(dify: &DifyConfig) -> SessionHandoff {
        SessionHandoff {
            compat: Compat::from_config(dify),
            policy: CookiePolicy::from_config(dify),
            secret: dify.secret_key().map(str::to_string),
            csrf_ttl: Duration::from_secs(dify.access_token_expire_minutes.saturating_mul(60)),
        }
    }

    pub fn delivery(&self) -> SessionDelivery {
        self.compat.delivery()
    }

    /// Checks what Dify will check (signature, expiry, user) when a key is known, and for cookie
    /// delivery completes the CSRF token.
    pub fn check(&self, session: DifySession) -> Result<CheckedSession, SessionError> {
        let user_id = match &self.secret {
            Some(key) => Some(verify_access_token(key, &session.access_token)?),
            None => None,
        };
        let mut session = session;
        let delivery = self.delivery();
        if delivery == SessionDelivery::Cookie {
            if session.csrf_token.as_deref().is_none_or(str::is_empty) {
                let (Some(key), Some(user)) = (&self.secret, &user_id) else {
                    return Err(SessionError::NoSecretKey);
                };
                session.csrf_token = Some(mint_csrf_token(key, user, self.csrf_ttl));
            }
            for (what, value) in [
                ("access token", &session.access_token),
                ("refresh token", &session.refresh_token),
                (
                    "CSRF token",
                    session.csrf_token.as_ref().expect("set above"),
                ),
            ] {
                if !is_cookie_safe(value) {
                    return Err(SessionError::NotCookieSafe(what));
                }
            }
        }
        Ok(CheckedSession {
            session,
            user_id,
            delivery,
        })
    }

    /// The handover for `landing` (a path or absolute URL the browser goes to next).
    pub fn handover(&self, checked: &CheckedSession, landing: &str) -> Handover {
        let s = &checked.session;
        match checked.delivery {
            SessionDelivery::Cookie => Handover::Cookies(self.policy.session_set_cookies(
                &s.access_token,
                &s.refresh_token,
                s.csrf_token.as_deref().unwrap_or_default(),
            )),
            SessionDelivery::Query => Handover::Redirect(append_query(
                landing,
                &[
                    ("access_token", &s.access_token),
                    ("refresh_token", &s.refresh_token),
                ],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tokens::{mint_access_token, verify_csrf_token};
    use super::*;

    const KEY: &str = "test-secret-key-for-dify";

    fn handoff(delivery: SessionDelivery, key: &str) -> SessionHandoff {
        SessionHandoff::new(&DifyConfig {
            secret_key: crate::sso::Secret::new(key),
            session_delivery: Some(delivery),
            ..Default::default()
        })
    }

    fn session(access: String) -> DifySession {
        DifySession {
            access_token: access,
            refresh_token: "ab".repeat(64),
            csrf_token: None,
            owner: Default::default(),
        }
    }

    #[test]
    fn cookie_mode_mints_csrf_for_the_user() {
        let h = handoff(SessionDelivery::Cookie, KEY);
        let checked = h
            .check(session(mint_access_token(
                KEY,
                "u-1",
                Duration::from_secs(60),
            )))
            .unwrap();
        assert_eq!(checked.user_id.as_deref(), Some("u-1"));
        let csrf = checked.session.csrf_token.clone().unwrap();
        assert_eq!(verify_csrf_token(KEY, &csrf).as_deref(), Some("u-1"));
        let Handover::Cookies(set) = h.handover(&checked, "/apps") else {
            panic!("cookies expected")
        };
        assert_eq!(set.len(), 3);
        assert!(set[2].starts_with(&format!("csrf_token={csrf};")));
    }

    #[test]
    fn cookie_mode_refuses_foreign_keys_and_missing_key() {
        let h = handoff(SessionDelivery::Cookie, KEY);
        let foreign = session(mint_access_token("other", "u-1", Duration::from_secs(60)));
        assert_eq!(
            h.check(foreign).unwrap_err(),
            SessionError::Token(TokenError::BadSignature)
        );
        let keyless = handoff(SessionDelivery::Cookie, "");
        assert_eq!(
            keyless.check(session("a.b.c".into())).unwrap_err(),
            SessionError::NoSecretKey
        );
    }

    #[test]
    fn query_mode_without_key_passes_tokens_through_encoded() {
        let h = handoff(SessionDelivery::Query, "");
        let s = DifySession {
            access_token: "a&b=c".into(),
            refresh_token: "r %+ü".into(),
            csrf_token: None,
            owner: Default::default(),
        };
        let checked = h.check(s).unwrap();
        assert_eq!(
            h.handover(&checked, "https://d.example.com/apps?x=1"),
            Handover::Redirect("https://d.example.com/apps?x=1&access_token=a%26b%3Dc&refresh_token=r%20%25%2B%C3%BC".into())
        );
    }

    #[test]
    fn debug_masks_tokens() {
        let s = session("eyJhbGciOiJIUzI1NiJ9.secretpart".into());
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("secretpart") && !shown.contains(&"ab".repeat(64)),
            "{shown}"
        );
    }
}
