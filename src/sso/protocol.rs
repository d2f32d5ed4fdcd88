//! The one seam between the flow and a sign-in protocol. The flow owns everything browsers care
//! about (cookies, return target, loop breaker, pages); a protocol only says where to send the
//! browser and what the callback proves. Each protocol is one file in `providers/`.

use super::browser_cookies::FlowState;
use super::failure::SsoFailure;
use crate::dify::DifySession;

/// What a protocol may put in the login redirect.
pub struct LoginStart<'a> {
    /// Absolute callback URL on this gateway, as the browser reaches it.
    pub callback_url: &'a str,
    /// Random per-flow value that the SSO may echo back (also kept in the state cookie).
    pub state: &'a str,
    pub trace_id: &'a str,
    /// Redirect protocols: the flow's nonce and PKCE S256 challenge (empty for token exchange).
    pub nonce: &'a str,
    pub pkce_challenge: &'a str,
}

/// What a redirect protocol's callback may use, after the flow matched `state` to this browser's
/// per-flow cookie. Nothing of it reached the provider before the check.
pub struct FlowSecrets {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A callback as the protocol sees it.
pub struct CallbackInput<'a> {
    /// Query pairs, then form pairs of a POST body, form-decoded.
    pub params: &'a [(String, String)],
    /// The state cookie, when the browser sent it (not on a cross-site POST over plain http).
    pub state: Option<&'a FlowState>,
    /// The sign-in flow's trace id.
    pub trace_id: &'a str,
    pub callback_url: &'a str,
    /// Redirect protocols only: present once `state` was verified.
    pub flow: Option<&'a FlowSecrets>,
}

impl CallbackInput<'_> {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Who signed in, for protocols that prove an identity rather than hand over Dify tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who vouches: the OIDC issuer, the OAuth2 provider or the CAS server URL.
    pub issuer: String,
    /// Stable id at that issuer.
    pub subject: String,
    pub email: Option<String>,
    /// Whether the issuer vouches for the email address.
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// OIDC: the ID token, kept for `id_token_hint` at logout; never sent to the minter.
    pub id_token_hint: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("email", &self.email)
            .field("email_verified", &self.email_verified)
            .field("name", &self.name)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum SignInOutcome {
    /// Dify tokens, ready to hand over (token exchange).
    Session(DifySession),
    /// An identity; the flow authorizes it (`sso.allow`) and a [`super::minter::Minter`] turns it
    /// into a Dify session.
    Identity(Identity),
}

#[async_trait::async_trait]
pub trait SignInProtocol: Send + Sync {
    /// Short name for logs and the config summary.
    fn name(&self) -> &'static str;
    /// True for protocols whose callback carries back the `state` of a flow started at `/signin`
    /// (OIDC, OAuth2, CAS): the flow then keeps one signed cookie per flow and refuses a callback
    /// whose `state` does not match it before the protocol sees it.
    fn redirect_flow(&self) -> bool {
        false
    }
    /// Where `/signin` sends the browser.
    async fn login_redirect(&self, start: &LoginStart<'_>) -> Result<String, SsoFailure>;
    /// Reads the callback and finishes the sign-in.
    async fn finish(&self, callback: &CallbackInput<'_>) -> Result<SignInOutcome, SsoFailure>;
    /// Where to send a browser that signed out of Dify, to end the provider's session too
    /// (`after` = the gateway's signed-out page). None = the protocol has no such thing.
    async fn logout_redirect(&self, _id_token_hint: Option<&str>, _after: &str) -> Option<String> {
        None
    }
}
