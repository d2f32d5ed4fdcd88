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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug)]
pub enum SignInOutcome {
    /// Dify tokens, ready to hand over (token exchange).
    Session(DifySession),
    /// An identity; turning it into a Dify session is the gateway's job (a later issue).
    Identity(Identity),
}

#[async_trait::async_trait]
pub trait SignInProtocol: Send + Sync {
    /// Short name for logs and the config summary.
    fn name(&self) -> &'static str;
    /// Where `/signin` sends the browser.
    fn login_redirect(&self, start: &LoginStart<'_>) -> String;
    /// Reads the callback and finishes the sign-in.
    async fn finish(&self, callback: &CallbackInput<'_>) -> Result<SignInOutcome, SsoFailure>;
}
