//! The gateway's own cookies in the browser, apart from Dify's session:
//! - state: return target and flow trace id, from `/signin` to `/sso/continue` (signed, 10 min);
//! - carry: what the callback hands to `/sso/continue` (signed, 2 min, only sent to that path);
//! - loop counter: SSO redirects in the current 60 s window (the loop breaker);
//! - signed-out mark: set after a Dify logout so `/signin` does not log straight back in.

use http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const STATE: &str = "dg_sso_state";
pub const CARRY: &str = "dg_sso_carry";
pub const LOOP: &str = "dg_sso_loop";
pub const SIGNED_OUT: &str = "dg_sso_signed_out";
/// Per-flow cookies of redirect protocols (OIDC, OAuth2, CAS): this prefix + 8 hex of the state.
pub const FLOW_PREFIX: &str = "dg_sso_f_";
/// At most this many sign-ins in flight per browser (tabs); older ones are dropped.
pub const MAX_PARALLEL_FLOWS: usize = 4;
/// OIDC: the last ID token, for `id_token_hint` at the provider's logout (only sent to /signin).
pub const ID_TOKEN: &str = "dg_sso_idt";
pub const ID_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

pub const STATE_TTL: Duration = Duration::from_secs(600);
pub const CARRY_TTL: Duration = Duration::from_secs(120);
/// Long enough that a user who logged out is not silently logged in when they come back to the
/// tab; short enough that tomorrow's first visit signs in without a click.
pub const SIGNED_OUT_TTL: Duration = Duration::from_secs(3600);
pub const CONTINUE_PATH: &str = "/sso/continue";
pub const SIGNED_OUT_PATH: &str = "/sso/signed-out";

/// Data in the state cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    /// Trace id of this sign-in flow (a UUID).
    pub flow: String,
    /// Validated return target, if the sign-in asked for one.
    pub ret: Option<String>,
    /// Random value offered to the SSO as `{state}`; protocols that echo it can check it.
    pub nonce: String,
}

/// Data in the carry cookie. In query delivery it holds the tokens (see `flow.rs` for why).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Carry {
    pub flow: String,
    pub tokens: Option<(String, String)>,
    /// Redirect protocols: the return target from the per-flow cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
}

/// Data in a redirect protocol's per-flow cookie (`dg_sso_f_<8 hex of state>`), signed. Nothing
/// in it is secret: `state` and `nonce` travel in the authorization URL anyway, and the PKCE
/// verifier is not stored but derived from the state secret (see `Signer::derive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedirectFlow {
    pub flow: String,
    pub ret: Option<String>,
    pub state: String,
    pub nonce: String,
    /// Unix seconds; the oldest flows are dropped beyond [`MAX_PARALLEL_FLOWS`].
    pub started: u64,
}

/// The per-flow cookie's name for a `state` value (32 lowercase hex, as the gateway makes them).
pub fn flow_cookie_name(state: &str) -> Option<String> {
    (state.len() == 32
        && state
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| format!("{FLOW_PREFIX}{}", &state[..8]))
}

/// Every cookie of the request's `Cookie` headers, parsed by the `cookie` crate (malformed pairs
/// are skipped, quotes removed).
fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .map(|c| (c.name().to_string(), c.value_trimmed().to_string()))
}

/// All per-flow cookies the browser sent: (name, value).
pub fn flow_cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    request_cookies(headers)
        .filter(|(k, _)| k.starts_with(FLOW_PREFIX))
        .collect()
}

/// The value of cookie `name` in the request, if any (first one wins, as in most servers).
pub fn read(headers: &HeaderMap, name: &str) -> Option<String> {
    request_cookies(headers)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// How the gateway's cookies are written for this request.
#[derive(Debug, Clone, Copy)]
pub struct CookieWriter {
    pub https: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// `SameSite=Lax`: sent on top-level GETs from other sites, not on their POSTs.
    Lax,
    /// `SameSite=None; Secure` over https, so the state is also present on a callback form POSTed
    /// from the SSO's site (browsers refuse `None` without `Secure`, so plain http falls back to
    /// Lax and the continue step picks the state up).
    CrossSite,
}

impl CookieWriter {
    pub fn set(&self, name: &str, value: &str, path: &str, ttl: Duration, site: Site) -> String {
        let same_site = match site {
            Site::CrossSite if self.https => "None",
            _ => "Lax",
        };
        let secure = if self.https { "; Secure" } else { "" };
        format!(
            "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={same_site}{secure}",
            ttl.as_secs()
        )
    }

    pub fn clear(&self, name: &str, path: &str) -> String {
        let secure = if self.https { "; Secure" } else { "" };
        format!("{name}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax{secure}")
    }
}

/// The loop breaker's count: `<count>.<window start, unix seconds>`. Not signed: forging it can
/// only weaken the breaker for one's own browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopCount {
    pub count: u32,
    pub since: u64,
}

pub const LOOP_WINDOW: Duration = Duration::from_secs(60);
pub const LOOP_LIMIT: u32 = 3;

impl LoopCount {
    pub fn parse(value: Option<&str>, now: u64) -> LoopCount {
        let parsed = value.and_then(|v| {
            let (c, s) = v.split_once('.')?;
            Some(LoopCount {
                count: c.parse().ok()?,
                since: s.parse().ok()?,
            })
        });
        match parsed {
            Some(l) if l.since <= now && now - l.since < LOOP_WINDOW.as_secs() => l,
            _ => LoopCount {
                count: 0,
                since: now,
            },
        }
    }

    pub fn exhausted(&self) -> bool {
        self.count >= LOOP_LIMIT
    }

    /// One more redirect to the SSO; the cookie lives until the window closes.
    pub fn bumped(&self, now: u64) -> (String, Duration) {
        let left = (self.since + LOOP_WINDOW.as_secs())
            .saturating_sub(now)
            .max(1);
        (
            format!("{}.{}", self.count + 1, self.since),
            Duration::from_secs(left),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cookie_among_many_headers() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; dg_sso_state=xyz.abc".parse().unwrap(),
        );
        h.append(http::header::COOKIE, "dg_sso_loop=2.100".parse().unwrap());
        assert_eq!(read(&h, STATE).as_deref(), Some("xyz.abc"));
        assert_eq!(read(&h, LOOP).as_deref(), Some("2.100"));
        assert_eq!(read(&h, CARRY), None);
    }

    #[test]
    fn cookie_attributes_follow_scheme() {
        let https = CookieWriter { https: true };
        let s = https.set(STATE, "v", "/", STATE_TTL, Site::CrossSite);
        assert_eq!(
            s,
            "dg_sso_state=v; Path=/; Max-Age=600; HttpOnly; SameSite=None; Secure"
        );
        let http = CookieWriter { https: false };
        assert_eq!(
            http.set(STATE, "v", "/", STATE_TTL, Site::CrossSite),
            "dg_sso_state=v; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            http.clear(LOOP, "/"),
            "dg_sso_loop=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn loop_count_window() {
        let now = 1_000_000;
        assert_eq!(
            LoopCount::parse(None, now),
            LoopCount {
                count: 0,
                since: now
            }
        );
        let l = LoopCount::parse(Some("2.999990"), now);
        assert_eq!(l.count, 2);
        assert!(!l.exhausted());
        assert_eq!(
            l.bumped(now),
            ("3.999990".to_string(), Duration::from_secs(50))
        );
        assert!(LoopCount::parse(Some("3.999990"), now).exhausted());
        // An old window starts over; garbage and future stamps too.
        assert_eq!(LoopCount::parse(Some("3.999900"), now).count, 0);
        assert_eq!(LoopCount::parse(Some("x.y"), now).count, 0);
        assert_eq!(LoopCount::parse(Some("3.2000000"), now).count, 0);
    }
}
