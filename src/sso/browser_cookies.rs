//! The gateway's own cookies in the browser, apart from Dify's session:
//! - state: return target and flow trace id, from `/signin` to `/sso/continue` (signed, 10 min);
//! - carry: what the callback hands to `/sso/continue` (signed, 2 min, cleared there);
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

/// The gateway's cookies for one request's scheme. Over HTTPS every name gets the `__Host-`
/// prefix (so a sibling subdomain cannot plant one: browsers accept such a cookie only from this
/// host, `Secure`, `Path=/`, without `Domain`), and only the prefixed name is read back; the one
/// cookie scoped to a narrower path ([`ID_TOKEN`]) gets `__Secure-` instead. Plain HTTP keeps the
/// bare names, which is all browsers allow there.
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
    /// Lax and the callback relies on the SSO's origin instead: see `callback.rs`).
    CrossSite,
}

impl CookieWriter {
    /// The gateway's cookies for the scheme this request came in on.
    pub fn for_request(req: &super::request::SsoRequest<'_>) -> CookieWriter {
        CookieWriter {
            https: req.is_https(),
        }
    }

    /// The name cookie `base` has on this scheme, for a cookie of path `path`.
    pub fn name(&self, base: &str, path: &str) -> String {
        match (self.https, path) {
            (false, _) => base.to_string(),
            (true, "/") => format!("__Host-{base}"),
            (true, _) => format!("__Secure-{base}"),
        }
    }

    /// The request's value of the gateway's cookie `base` (path `/`) on this scheme.
    pub fn read(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        read(headers, &self.name(base, "/"))
    }

    /// As [`CookieWriter::read`], for a cookie scoped to `path`.
    pub fn read_scoped(&self, headers: &HeaderMap, base: &str, path: &str) -> Option<String> {
        read(headers, &self.name(base, path))
    }

    /// The per-flow cookies of redirect protocols on this scheme: (base name, value).
    pub fn flow_cookies(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        let prefix = self.name(FLOW_PREFIX, "/");
        request_cookies(headers)
            .filter_map(|(k, v)| {
                k.strip_prefix(prefix.as_str())
                    .map(|rest| (format!("{FLOW_PREFIX}{rest}"), v))
            })
            .collect()
    }

    /// `Set-Cookie` for the gateway's cookie `base` (given unprefixed).
    pub fn set(&self, base: &str, value: &str, path: &str, ttl: Duration, site: Site) -> String {
        let same_site = match site {
            Site::CrossSite if self.https => "None",
            _ => "Lax",
        };
        let secure = if self.https { "; Secure" } else { "" };
        format!(
            "{}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite={same_site}{secure}",
            self.name(base, path),
            ttl.as_secs()
        )
    }

    pub fn clear(&self, base: &str, path: &str) -> String {
        let secure = if self.https { "; Secure" } else { "" };
        format!(
            "{}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
            self.name(base, path)
        )
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
