//! The gateway's own session: who signed in, as an encrypted, authenticated cookie
//! (AES-256-GCM through the `cookie` crate's private jar). It is what published apps are checked
//! against, and a console sign-in sets it too, so opening an app after the console needs no
//! second trip to the SSO. Nothing is stored server-side: any replica with the same keys reads it.
//!
//! Keys rotate: the first of `sso.session.keys` seals, every one of them opens. Each key is
//! expanded with HKDF, so a passphrase of 32 bytes or more is enough. Without configured keys the
//! session key is derived from `sso.state_secret`.

use super::browser_cookies::{CookieWriter, Site};
use super::protocol::Identity;
use super::signer::now_secs;
use cookie::{Cookie, CookieJar, Key};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const SESSION: &str = "dg_session";

/// Who the session is for. Short field names: the cookie travels on every request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Issuer (OIDC issuer, OAuth2 provider, CAS server, or `dify` for token exchange).
    #[serde(rename = "i")]
    pub issuer: String,
    /// Stable id at that issuer.
    #[serde(rename = "s")]
    pub subject: String,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Person {
    pub fn from_identity(identity: &Identity) -> Person {
        Person {
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            email: identity.email.clone(),
            name: identity.name.clone(),
            groups: identity.groups.clone(),
        }
    }

    /// What revocations name the person by: the email (what a directory knows), else the
    /// issuer and subject.
    pub fn revocation_key(&self) -> String {
        match &self.email {
            Some(e) => e.to_lowercase(),
            None => format!("{}|{}", self.issuer, self.subject),
        }
    }

    /// How logs name the person: the email when known, else the subject.
    pub fn label(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.subject)
    }
}

/// What the cookie holds: the person and the session's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    #[serde(rename = "p")]
    pub person: Person,
    /// Signed in at, unix seconds (the absolute lifetime counts from here).
    #[serde(rename = "a")]
    pub signed_in: u64,
    /// Last seen, unix seconds (the idle timeout counts from here; refreshed as it is used).
    #[serde(rename = "l")]
    pub seen: u64,
}

pub struct SessionCodec {
    keys: Vec<Key>,
    lifetime: Duration,
    idle: Duration,
}

impl SessionCodec {
    /// `keys` are passphrases (at least 32 bytes each, checked by the configuration).
    pub fn new(keys: &[&str], lifetime: Duration, idle: Duration) -> SessionCodec {
        let keys = if keys.is_empty() {
            vec![Key::generate()]
        } else {
            keys.iter()
                .map(|k| Key::derive_from(k.as_bytes()))
                .collect()
        };
        SessionCodec {
            keys,
            lifetime,
            idle,
        }
    }

    /// A new session for someone who just signed in.
    pub fn start(&self, person: Person) -> Session {
        let now = now_secs();
        Session {
            person,
            signed_in: now,
            seen: now,
        }
    }

    /// The encrypted cookie value.
    pub fn seal(&self, session: &Session) -> String {
        let mut jar = CookieJar::new();
        let plain = serde_json::to_string(session).expect("plain data serialises");
        jar.private_mut(&self.keys[0])
            .add(Cookie::new(SESSION, plain));
        jar.get(SESSION)
            .map(|c| c.value().to_string())
            .unwrap_or_default()
    }

    /// The session in a cookie value, when a key of ours sealed it and it has not run out.
    pub fn open(&self, value: &str) -> Option<Session> {
        let now = now_secs();
        let session: Session = self.keys.iter().find_map(|key| {
            let jar = CookieJar::new();
            let plain = jar
                .private(key)
                .decrypt(Cookie::new(SESSION, value.to_string()))?;
            serde_json::from_str(plain.value()).ok()
        })?;
        let alive = session.signed_in <= now + 60
            && now.saturating_sub(session.signed_in) < self.lifetime.as_secs()
            && now.saturating_sub(session.seen) < self.idle.as_secs();
        alive.then_some(session)
    }

    /// The session this request carries, if any.
    pub fn read(&self, writer: CookieWriter, headers: &HeaderMap) -> Option<Session> {
        self.open(&writer.read(headers, SESSION)?)
    }

    /// True when the session was last marked seen long enough ago that it should be re-issued
    /// (a tenth of the idle timeout, at least a minute): an active person never runs into the
    /// idle timeout, and most requests carry no `Set-Cookie`.
    pub fn needs_refresh(&self, session: &Session) -> bool {
        let step = (self.idle.as_secs() / 10).max(60);
        now_secs().saturating_sub(session.seen) >= step
    }

    /// `Set-Cookie` for this session, `seen` set to now. The cookie lives as long as the session
    /// can: the absolute lifetime is enforced from inside it.
    pub fn set_cookie(&self, writer: CookieWriter, session: &Session) -> String {
        let mut s = session.clone();
        s.seen = now_secs();
        let left = self
            .lifetime
            .as_secs()
            .saturating_sub(s.seen.saturating_sub(s.signed_in))
            .max(1);
        writer.set(
            SESSION,
            &self.seal(&s),
            "/",
            Duration::from_secs(left),
            Site::Lax,
        )
    }

    pub fn clear_cookie(&self, writer: CookieWriter) -> String {
        writer.clear(SESSION, "/")
    }
}
