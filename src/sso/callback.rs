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

use super::browser_cookies::{self as bc, Carry, CookieWriter, FlowState, RedirectFlow, Site};
use super::failure::SsoFailure;
use super::flow::SsoFlow;
use super::minter::MintContext;
use super::protocol::{CallbackInput, FlowSecrets, SignInOutcome};
use super::request::{BodyError, RequestBody, SsoRequest, SsoResponse};
use super::session::Person;
use super::{apps, origins, pages};
use crate::dify::session::{CheckedSession, Handover};
use http::{Method, header};

/// Largest callback body accepted (the token form is tiny).
pub const MAX_CALLBACK_BODY: usize = 64 * 1024;
/// A JWT (base64url and dots) can go into a cookie as is.
fn is_cookie_value(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

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
        let writer = CookieWriter::for_request(req);
        let state: Option<FlowState> = writer
            .read(req.headers, bc::STATE)
            .and_then(|v| self.signer.open("state", &v));
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
        let callback_url = format!("{}{}", self.public_origin(req), self.callback_path);
        if !self.protocol.redirect_flow() {
            if let Err(refused) = self
                .check_unbound_callback(req, state.as_ref(), &flow_id)
                .await
            {
                return self.failure(req, &refused, &flow_id);
            }
            let input = CallbackInput {
                params: &params,
                state: state.as_ref(),
                trace_id: &flow_id,
                callback_url: &callback_url,
                flow: None,
            };
            // The state cookie (when the browser sent it) tells an app sign-in from a console one.
            let ret = state.as_ref().and_then(|s| s.ret.clone());
            return self.finish_callback(req, &input, ret).await;
        }
        // Redirect protocols: `state` must match this browser's per-flow cookie before the
        // protocol sees the callback (so a code or ticket is never redeemed for a forged flow),
        // and the cookie is cleared whatever happens next (single use).
        let state_param = params
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let Some(cookie_name) = bc::flow_cookie_name(&state_param) else {
            log::warn!(trace_id = req.trace_id, flow_id = flow_id.as_str(); "callback without a state of ours");
            return self.failure(req, &SsoFailure::BadState, &flow_id);
        };
        let record = writer
            .read(req.headers, &cookie_name)
            .and_then(|v| self.signer.open::<RedirectFlow>("flow", &v))
            .filter(|r| r.state == state_param);
        let clear = writer.clear(&cookie_name, "/");
        let Some(record) = record else {
            log::warn!(trace_id = req.trace_id, flow_id = flow_id.as_str(); "callback whose state matches no flow of this browser");
            return self
                .failure(req, &SsoFailure::BadState, &flow_id)
                .set_cookie(&clear);
        };
        let flow_id = record.flow.clone();
        match self.consume_state(&record.state).await {
            Ok(true) => {}
            Ok(false) => {
                log::warn!(trace_id = req.trace_id, flow_id = flow_id.as_str(); "callback replayed a used state");
                return self
                    .failure(req, &SsoFailure::BadState, &flow_id)
                    .set_cookie(&clear);
            }
            Err(f) => return self.failure(req, &f, &flow_id).set_cookie(&clear),
        }
        let secrets = FlowSecrets {
            pkce_verifier: self.pkce_verifier(&record.state, &record.nonce),
            state: record.state,
            nonce: record.nonce,
        };
        let input = CallbackInput {
            params: &params,
            state: None,
            trace_id: &flow_id,
            callback_url: &callback_url,
            flow: Some(&secrets),
        };
        self.finish_callback(req, &input, record.ret)
            .await
            .set_cookie(&clear)
    }

    /// The protocol's verdict, then the sessions handed over and the 303 to `/sso/continue`. A
    /// sign-in that returns to a published app's page gets the gateway session only; any other
    /// gets a Dify console session as well.
    async fn finish_callback(
        &self,
        req: &SsoRequest<'_>,
        input: &CallbackInput<'_>,
        ret: Option<String>,
    ) -> SsoResponse {
        let flow_id = input.trace_id.to_string();
        let for_app = ret.as_deref().is_some_and(apps::is_app_page);
        let mut id_token_hint = None;
        let (person, session) = match self.protocol.finish(input).await {
            Ok(SignInOutcome::Session(s)) => (None, s),
            Ok(SignInOutcome::Identity(identity)) => {
                let identity = match super::allow::authorize(identity, &self.allow) {
                    Ok(i) => i,
                    Err(f) => return self.failure(req, &f, &flow_id),
                };
                log::info!(trace_id = req.trace_id, flow_id = flow_id.as_str(), issuer = identity.issuer.as_str(),
                    subject = identity.subject.as_str(), for_app = for_app; "sign-in: identity authorized");
                id_token_hint = identity.id_token_hint.clone();
                let person = Person::from_identity(&identity);
                if let Err(f) = self.refuse_deactivated(&person).await {
                    return self.failure(req, &f, &flow_id);
                }
                if for_app {
                    return self.signed_in(req, &flow_id, Some(person), None, id_token_hint, ret);
                }
                let Some(minter) = &self.minter else {
                    let why = SsoFailure::NotAvailable(
                        "no way to create Dify sessions is configured".into(),
                    );
                    return self.failure(req, &why, &flow_id);
                };
                let ctx = MintContext {
                    trace_id: &flow_id,
                    protocol: self.protocol.name(),
                    client_ip: req.client_ip,
                };
                match minter.mint(&identity, &ctx).await {
                    Ok(s) => (Some(person), s),
                    Err(f) => return self.failure(req, &f, &flow_id),
                }
            }
            Err(f) => return self.failure(req, &f, &flow_id),
        };
        let checked = match self.handoff.check(session) {
            Ok(c) => c,
            Err(e) => {
                return self.failure(req, &SsoFailure::ExchangeFailed(e.to_string()), &flow_id);
            }
        };
        // Token exchange proves no identity of its own: the person is the Dify account the
        // management service vouched for (and whatever it said of them).
        let person = person.or_else(|| {
            let owner = &checked.session.owner;
            checked.user_id.as_ref().map(|id| Person {
                issuer: "dify".into(),
                subject: id.clone(),
                email: owner.email.as_deref().and_then(super::allow::parse_email),
                name: owner.name.clone(),
                groups: owner.groups.clone(),
            })
        });
        if let Some(p) = &person
            && let Err(f) = self.refuse_deactivated(p).await
        {
            return self.failure(req, &f, &flow_id);
        }
        if for_app {
            let Some(person) = person else {
                let why = SsoFailure::NotAvailable(
                    "published apps need dify.secret_key to tell who signed in".into(),
                );
                return self.failure(req, &why, &flow_id);
            };
            return self.signed_in(req, &flow_id, Some(person), None, id_token_hint, ret);
        }
        self.signed_in(req, &flow_id, person, Some(checked), id_token_hint, ret)
    }

    /// A person a directory deactivated (SCIM) does not sign in, to the console or to an app.
    async fn refuse_deactivated(&self, person: &Person) -> Result<(), SsoFailure> {
        match self
            .revocations
            .is_deactivated(&person.revocation_key())
            .await
        {
            Ok(false) => Ok(()),
            Ok(true) => Err(SsoFailure::NotAllowed(
                "this account was deactivated by the company's directory".into(),
            )),
            Err(e) => Err(SsoFailure::StoreUnavailable(e)),
        }
    }

    /// The answer to a successful callback: the gateway session (when the person is known), the
    /// Dify session (console sign-ins), and the 303 to `/sso/continue`.
    fn signed_in(
        &self,
        req: &SsoRequest<'_>,
        flow_id: &str,
        person: Option<Person>,
        dify: Option<CheckedSession>,
        id_token_hint: Option<String>,
        ret: Option<String>,
    ) -> SsoResponse {
        log::info!(trace_id = req.trace_id, flow_id = flow_id,
            user_id = dify.as_ref().and_then(|c| c.user_id.as_deref()).unwrap_or("-"),
            person = person.as_ref().map_or("-", |p| p.label()), console = dify.is_some();
            "sign-in complete");
        crate::ops::metrics::METRICS
            .sso_signins
            .with_label_values(&[self.protocol.name(), "success", "ok"])
            .inc();
        let writer = CookieWriter::for_request(req);
        let mut carry = Carry {
            flow: flow_id.to_string(),
            tokens: None,
            ret,
        };
        let mut set_cookies = Vec::new();
        if let Some(person) = person {
            set_cookies.push(self.start_session(req, person));
        }
        if let Some(hint) =
            id_token_hint.filter(|h| h.len() <= MAX_COOKIE_VALUE && is_cookie_value(h))
        {
            set_cookies.push(writer.set(
                bc::ID_TOKEN,
                &hint,
                super::flow::SIGNIN_PATH,
                bc::ID_TOKEN_TTL,
                Site::Lax,
            ));
        }
        if let Some(checked) = &dify {
            match self.handoff.handover(checked, &self.home) {
                Handover::Cookies(cookies) => set_cookies.extend(cookies),
                Handover::Redirect(direct) => {
                    let s = &checked.session;
                    carry.tokens = Some((s.access_token.clone(), s.refresh_token.clone()));
                    if self.signer.seal("carry", bc::CARRY_TTL, &carry).len() > MAX_COOKIE_VALUE {
                        let mut resp = SsoResponse::redirect(302, &direct);
                        for c in &set_cookies {
                            resp = resp.set_cookie(c);
                        }
                        return resp.set_cookie(&writer.clear(bc::LOOP, "/"));
                    }
                }
            }
        }
        let sealed = self.signer.seal("carry", bc::CARRY_TTL, &carry);
        let mut resp = SsoResponse::redirect(303, bc::CONTINUE_PATH);
        for c in set_cookies {
            resp = resp.set_cookie(&c);
        }
        resp.set_cookie(&writer.set(bc::CARRY, &sealed, "/", bc::CARRY_TTL, Site::Lax))
            .set_cookie(&writer.clear(bc::LOOP, "/"))
    }

    /// Login CSRF: a page on any site can post its owner's own SSO token to the callback and so
    /// sign the visitor in as someone else. A callback of a protocol without a per-flow `state`
    /// (token exchange) is taken when it is tied to a sign-in this browser started (the state
    /// cookie, which over HTTPS comes back even on the SSO's cross-site POST), or, where the cookie
    /// cannot come (a cross-site POST over plain HTTP, which drops `SameSite=Lax` cookies) or was
    /// never set (IdP-initiated sign-in, opted in with `sso.idp_initiated`), when the browser says
    /// it comes from the SSO's own origin. A callback a foreign site sent is refused either way;
    /// a state is redeemed once.
    async fn check_unbound_callback(
        &self,
        req: &SsoRequest<'_>,
        state: Option<&FlowState>,
        flow_id: &str,
    ) -> Result<(), SsoFailure> {
        let from = origins::initiator(req, &self.callback_origins);
        let refuse = |why: &str| {
            log::warn!(trace_id = req.trace_id, flow_id = flow_id, initiator = format!("{from:?}").as_str();
                "callback refused: {why}");
            Err(SsoFailure::UntrustedCallback)
        };
        if from == origins::Initiator::Foreign {
            return refuse("it was sent from an origin that is not the SSO's");
        }
        match state {
            Some(s) => {
                if !self.consume_state(&s.nonce).await? {
                    return refuse("its sign-in state was used already");
                }
                Ok(())
            }
            None if from != origins::Initiator::Sso => refuse(
                "no sign-in was started in this browser and it does not show the SSO's origin",
            ),
            // Over plain HTTP the browser withholds the state cookie from the SSO's POST, so an
            // SP-initiated sign-in looks like this; elsewhere only an IdP-initiated one does.
            None if !req.is_https() && *req.method == Method::POST => Ok(()),
            None if self.idp_initiated => Ok(()),
            None => refuse("no sign-in was started in this browser (IdP-initiated sign-in is off)"),
        }
    }

    pub(super) fn continue_after_callback(&self, req: &SsoRequest<'_>) -> SsoResponse {
        let writer = CookieWriter::for_request(req);
        let state: Option<FlowState> = writer
            .read(req.headers, bc::STATE)
            .and_then(|v| self.signer.open("state", &v));
        let carry: Option<Carry> = writer
            .read(req.headers, bc::CARRY)
            .and_then(|v| self.signer.open("carry", &v));
        // Re-check the target: the state was validated when sealed, but the rules may have changed.
        let landing = carry
            .as_ref()
            .and_then(|c| c.ret.as_deref())
            .or(state.as_ref().and_then(|s| s.ret.as_deref()))
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
        SsoResponse::redirect(302, &location)
            .set_cookie(&writer.clear(bc::STATE, "/"))
            .set_cookie(&writer.clear(bc::CARRY, "/"))
            .set_cookie(&writer.clear(bc::LOOP, "/"))
    }
}
