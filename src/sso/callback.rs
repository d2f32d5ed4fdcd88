//! The second half of a sign-in: the callback (exchange, session) and `/sso/continue`.
//!
//! Why two steps: the SSO posts the callback form from its own site, and browsers do not send
//! `SameSite=Lax` cookies (the state, the loop counter) with a cross-site POST. So the callback
//! finishes the sign-in on its own (a callback without state is valid: sign-in started at the SSO
//! portal), sets Dify's cookies (browsers accept `Set-Cookie` on a top-level navigation), then
//! 303s to `/sso/continue`, a same-site GET where the state cookie is sent: it clears the flow's
//! cookies and redirects to the return target or `dify.home`.
//!
//! Query delivery (old Dify) needs the tokens on the landing URL, and the landing URL is only known
//! at the continue step. The tokens cross the 303 in the "carry" cookie: HMAC-signed (no one can
//! plant a session of their own), HttpOnly, `Path=/sso/continue` (sent nowhere else), 2 minutes,
//! cleared at once. They are the browser's own tokens, which query delivery shows it anyway; what
//! matters is that they never appear in a URL the gateway handles or logs before the final hop.
//! Should the sealed cookie grow past what browsers keep, the callback redirects straight to
//! `dify.home` with the tokens, as the seed bridge always did.

use super::browser_cookies::{self as bc, Carry, CookieWriter, FlowState, Site};
use super::failure::SsoFailure;
use super::flow::SsoFlow;
use super::pages;
use super::protocol::{CallbackInput, SignInOutcome};
use super::request::{BodyError, RequestBody, SsoRequest, SsoResponse};
use crate::dify::session::Handover;
use http::{Method, header};

/// Largest callback body accepted (the token form is tiny).
pub const MAX_CALLBACK_BODY: usize = 64 * 1024;
/// Browsers keep cookies up to about 4096 bytes including the name.
const MAX_COOKIE_VALUE: usize = 3800;

impl SsoFlow {
    pub(super) async fn callback(
        &self,
        req: &SsoRequest<'_>,
        body: &mut dyn RequestBody,
    ) -> SsoResponse {
        let is_post = *req.method == Method::POST;
        if !is_post && *req.method != Method::GET {
            return pages::method_not_allowed("GET, POST");
        }
        let state: Option<FlowState> =
            bc::read(req.headers, bc::STATE).and_then(|v| self.signer.open("state", &v));
        let flow_id = state
            .as_ref()
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |s| s.flow.clone());
        log::info!(trace_id = req.trace_id, flow_id = flow_id.as_str(), with_state = state.is_some(), method = req.method.as_str();
            "sign-in callback");
        // Form fields first: on a POST the body is what the SSO meant.
        let mut params = Vec::new();
        if is_post {
            let content_type = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if content_type
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
            {
                match body.read_to_limit(MAX_CALLBACK_BODY).await {
                    Ok(bytes) => params.extend(form_urlencoded::parse(&bytes).into_owned()),
                    Err(BodyError::TooLarge) => {
                        return self.failure(req, &SsoFailure::BodyTooLarge, &flow_id);
                    }
                    Err(BodyError::Io(e)) => {
                        return self.failure(req, &SsoFailure::BadCallback(e), &flow_id);
                    }
                }
            }
        }
        params.extend(req.query_pairs());
        let callback_url = format!("{}{}", req.origin(), self.callback_path);
        let input = CallbackInput {
            params: &params,
            state: state.as_ref(),
            trace_id: &flow_id,
            callback_url: &callback_url,
        };
        let session = match self.protocol.finish(&input).await {
            Ok(SignInOutcome::Session(s)) => s,
            Ok(SignInOutcome::Identity(_)) => {
                let why =
                    SsoFailure::NotAvailable("this gateway cannot create Dify sessions yet".into());
                return self.failure(req, &why, &flow_id);
            }
            Err(f) => return self.failure(req, &f, &flow_id),
        };
        let checked = match self.handoff.check(session) {
            Ok(c) => c,
            Err(e) => {
                return self.failure(req, &SsoFailure::ExchangeFailed(e.to_string()), &flow_id);
            }
        };
        log::info!(trace_id = req.trace_id, flow_id = flow_id.as_str(), user_id = checked.user_id.as_deref().unwrap_or("-");
            "sign-in complete");
        crate::ops::metrics::METRICS
            .sso_signins
            .with_label_values(&[self.protocol.name(), "success", "ok"])
            .inc();
        let writer = CookieWriter {
            https: req.is_https(),
        };
        let mut carry = Carry {
            flow: flow_id.clone(),
            tokens: None,
        };
        let mut set_cookies = Vec::new();
        match self.handoff.handover(&checked, &self.home) {
            Handover::Cookies(cookies) => set_cookies = cookies,
            Handover::Redirect(direct) => {
                let s = &checked.session;
                carry.tokens = Some((s.access_token.clone(), s.refresh_token.clone()));
                if self.signer.seal("carry", bc::CARRY_TTL, &carry).len() > MAX_COOKIE_VALUE {
                    return SsoResponse::redirect(302, &direct)
                        .set_cookie(&writer.clear(bc::LOOP, "/"));
                }
            }
        }
        let sealed = self.signer.seal("carry", bc::CARRY_TTL, &carry);
        let mut resp = SsoResponse::redirect(303, bc::CONTINUE_PATH);
        for c in set_cookies {
            resp = resp.set_cookie(&c);
        }
        resp.set_cookie(&writer.set(
            bc::CARRY,
            &sealed,
            bc::CONTINUE_PATH,
            bc::CARRY_TTL,
            Site::Lax,
        ))
        .set_cookie(&writer.clear(bc::LOOP, "/"))
    }

    pub(super) fn continue_after_callback(&self, req: &SsoRequest<'_>) -> SsoResponse {
        let state: Option<FlowState> =
            bc::read(req.headers, bc::STATE).and_then(|v| self.signer.open("state", &v));
        let carry: Option<Carry> =
            bc::read(req.headers, bc::CARRY).and_then(|v| self.signer.open("carry", &v));
        // Re-check the target: the state was validated when sealed, but the rules may have changed.
        let landing = state
            .as_ref()
            .and_then(|s| s.ret.as_deref())
            .and_then(|r| super::return_target::safe_return_target(r, &self.reserved_paths()))
            .unwrap_or_else(|| self.home.clone());
        let flow_id = carry
            .as_ref()
            .map(|c| c.flow.as_str())
            .or(state.as_ref().map(|s| s.flow.as_str()))
            .unwrap_or("-");
        log::info!(trace_id = req.trace_id, flow_id = flow_id,
            started_flow_id = state.as_ref().map_or("-", |s| s.flow.as_str()), completed = carry.is_some();
            "sign-in: continuing to the landing page");
        let location = match carry.and_then(|c| c.tokens) {
            Some((access, refresh)) => crate::dify::redirect::append_query(
                &landing,
                &[("access_token", &access), ("refresh_token", &refresh)],
            ),
            None => landing,
        };
        let writer = CookieWriter {
            https: req.is_https(),
        };
        SsoResponse::redirect(302, &location)
            .set_cookie(&writer.clear(bc::STATE, "/"))
            .set_cookie(&writer.clear(bc::CARRY, bc::CONTINUE_PATH))
            .set_cookie(&writer.clear(bc::LOOP, "/"))
    }
}
