//! [`SsoFlow`]: what the proxy asks about every request. It answers `/signin`, the callback,
//! `/sso/continue` and `/sso/signed-out` itself, closes Dify's other ways in under `sso.enforce`,
//! and lets everything else through.

use super::apps::AppPolicy;
use super::browser_cookies::{self as bc, CookieWriter, FlowState, LoopCount, RedirectFlow, Site};
use super::config::{AllowConfig, SsoConfig};
use super::failure::SsoFailure;
use super::minter::Minter;
use super::origins::{PublicOrigins, RequestOrigin};
use super::protocol::{LoginStart, SignInProtocol};
use super::request::{RequestBody, SsoRequest, SsoResponse};
use super::return_target::safe_return_target;
use super::session::SessionCodec;
use super::signer::{Signer, now_secs, random_hex};
use super::used_states::{MemoryStates, RedisStates, UsedStates};
use super::{enforce, pages, providers};
use crate::dify::session::SessionHandoff;
use crate::dify::{DifyConfig, SessionDelivery};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

pub const SIGNIN_PATH: &str = "/signin";

/// The paths the flow answers itself.
enum FlowPath {
    /// One of Dify's other ways in, closed by `sso.enforce`.
    ClosedWayIn,
    SignIn,
    Callback,
    Continue,
    SignedOut,
    /// Dify's web-app sign-in page, where its app front end sends a person on a 401.
    WebappSignIn,
    SignOut,
}
pub const LOGOUT_PATH: &str = "/console/api/logout";
/// The gateway's namespace in Dify's Redis for used sign-in states (after Dify's key prefix).
pub const USED_STATE_KEY: &str = "dify_gateway:sso_state:";

/// Built once per configuration snapshot; share it in an `Arc`.
pub struct SsoFlow {
    pub(super) enabled: bool,
    pub(super) protocol: Box<dyn SignInProtocol>,
    pub(super) handoff: SessionHandoff,
    pub(super) signer: Signer,
    /// Without a trailing slash; the callback also answers with one.
    pub(super) callback_path: String,
    pub(super) home: String,
    pub(super) logout_url: Option<String>,
    pub(super) bypass: Vec<IpNet>,
    pub(super) enforce: bool,
    pub(super) support_contact: String,
    /// Identity protocols: `sso.allow` and the minter (None for token exchange).
    pub(super) allow: AllowConfig,
    pub(super) minter: Option<Box<dyn Minter>>,
    /// States already used by a callback: single use even if a browser (or someone who copied
    /// its cookie) replays the callback.
    pub(super) used_states: Box<dyn UsedStates>,
    /// Where callback URLs point (never a client's `Host` unless it is one of these).
    pub(super) origins: PublicOrigins,
    /// The SSO's origins, for callbacks without this browser's flow state.
    pub(super) callback_origins: Vec<String>,
    pub(super) idp_initiated: bool,
    /// The gateway's own session (published apps; set by every sign-in).
    pub(super) sessions: SessionCodec,
    pub(super) apps: AppPolicy,
    /// Dify's `SECRET_KEY`, to check app passports.
    pub(super) secret_key: Option<String>,
    /// Sessions ended before they ran out (deprovisioning, back-channel logout).
    pub revocations: std::sync::Arc<super::revocations::Revocations>,
    /// Deprovisioning (`sso.scim.token`), served on the admin listener.
    pub scim: Option<crate::ops::scim::Scim>,
}

/// PKCE S256: base64url(SHA-256(verifier)).
pub(super) fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

impl SsoFlow {
    pub fn new(sso: &SsoConfig, dify: &DifyConfig) -> Result<SsoFlow, String> {
        let secret = (!sso.state_secret.is_empty()).then(|| sso.state_secret.expose());
        if sso.enabled && secret.is_none() {
            log::warn!(
                "sso.state_secret is not set: using a random one for this process; \
                 with several gateway replicas set the same sso.state_secret on all of them"
            );
        }
        if sso.enabled && dify.delivery() == SessionDelivery::Query {
            log::warn!(
                "dify.session_delivery is query: tokens go on the landing URL, which only Dify <= 1.9.1 reads; \
                 use cookie for Dify 1.9.2 and later"
            );
        }
        let bypass = sso
            .bypass_cidrs
            .iter()
            .map(|c| {
                crate::config::parse_cidr(c)
                    .ok_or_else(|| format!("sso.bypass_cidrs: bad CIDR {c:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let callback_path = sso.effective_callback_path().trim_end_matches('/');
        let origins = PublicOrigins::new(
            [dify.console_web_url.clone(), dify.home().to_string()]
                .into_iter()
                .chain(sso.public_origins.iter().cloned()),
        );
        if sso.enabled && origins.is_empty() {
            log::warn!(
                "no public origin is configured (dify.console_web_url, an absolute dify.home or sso.public_origins): \
                 the SSO callback URL is built from each request's Host header"
            );
        }
        let used_states: Box<dyn UsedStates> = if sso.store_in_redis(dify) {
            let client = crate::dify::redis_conn::dify_client(dify)?;
            Box::new(RedisStates::new(client, dify.redis_key(USED_STATE_KEY)))
        } else {
            Box::new(MemoryStates::default())
        };
        let session_keys: Vec<&str> = if sso.session.keys.is_empty() {
            secret.into_iter().collect()
        } else {
            sso.session.keys.iter().map(|k| k.expose()).collect()
        };
        let apps = AppPolicy::new(&sso.apps)?;
        let revocation_redis = if dify.redis_url.is_empty() {
            None
        } else {
            Some((
                crate::dify::redis_conn::dify_client(dify)?,
                dify.redis_key(""),
            ))
        };
        let revocations = std::sync::Arc::new(super::revocations::Revocations::new(
            revocation_redis,
            sso.session.lifetime,
        ));
        let scim = if sso.scim.token.is_empty() || sso.minter != super::config::MinterKind::Builtin
        {
            None
        } else {
            let prov = sso.provisioning.resolve(dify.dataset_operator_enabled())?;
            Some(crate::ops::scim::Scim::new(
                sso.scim.token.expose(),
                crate::dify::store::DifyStore::new(dify.database_url.expose(), 4)
                    .map_err(|e| format!("dify.database_url: {e}"))?,
                crate::dify::refresh_tokens::RefreshTokens::new(
                    crate::dify::redis_conn::dify_client(dify)?,
                    dify.redis_key_prefix.as_deref().unwrap_or(""),
                ),
                prov.workspace_id,
                revocations.clone(),
            ))
        };
        Ok(SsoFlow {
            scim,
            sessions: SessionCodec::new(
                &session_keys,
                sso.session.lifetime,
                sso.session.idle_timeout,
            ),
            apps,
            revocations,
            secret_key: dify.secret_key().map(str::to_string),
            enabled: sso.enabled,
            protocol: providers::build(sso)?,
            handoff: SessionHandoff::new(dify),
            signer: Signer::new(secret),
            callback_path: if callback_path.is_empty() {
                "/".into()
            } else {
                callback_path.into()
            },
            home: dify.home().to_string(),
            logout_url: (!sso.logout_url.is_empty()).then(|| sso.logout_url.clone()),
            bypass,
            enforce: sso.enforce,
            support_contact: sso.support_contact.clone(),
            allow: sso.allow.clone(),
            minter: super::minter::build(sso, dify)?,
            used_states,
            origins,
            callback_origins: sso.effective_callback_origins(),
            idp_initiated: sso.idp_initiated,
        })
    }

    /// Which of the flow's paths `path` is, if any. The one place that knows them, so the proxy
    /// can skip ordinary traffic cheaply ([`SsoFlow::may_answer`]) and `handle` agrees with it.
    fn classify(&self, path: &str) -> Option<FlowPath> {
        if !self.enabled {
            return None;
        }
        if self.enforce && enforce::may_close(path) {
            return Some(FlowPath::ClosedWayIn);
        }
        if path == SIGNIN_PATH || path == "/signin/" {
            return Some(FlowPath::SignIn);
        }
        if path.trim_end_matches('/') == self.callback_path {
            return Some(FlowPath::Callback);
        }
        if path == bc::CONTINUE_PATH {
            return Some(FlowPath::Continue);
        }
        if path == super::app_access::LOGOUT_PATH {
            return Some(FlowPath::SignOut);
        }
        if path.trim_end_matches('/') == super::app_access::WEBAPP_SIGNIN_PATH
            && (self.enforce || self.apps.active())
        {
            return Some(FlowPath::WebappSignIn);
        }
        (path == bc::SIGNED_OUT_PATH).then_some(FlowPath::SignedOut)
    }

    /// Whether [`SsoFlow::handle`] may answer a request for this (normalised) path.
    pub fn may_answer(&self, path: &str) -> bool {
        self.classify(path).is_some()
    }

    /// None = not ours, proxy as usual. Some = answer the browser with this.
    pub async fn handle(
        &self,
        req: &SsoRequest<'_>,
        body: &mut dyn RequestBody,
    ) -> Option<SsoResponse> {
        let which = self.classify(req.path)?;
        let bypassed = req
            .client_ip
            .is_some_and(|ip| self.bypass.iter().any(|n| n.contains(&ip)));
        let get = matches!(*req.method, Method::GET | Method::HEAD);
        match which {
            FlowPath::ClosedWayIn => {
                if bypassed || !enforce::is_closed(req.method, req.path) {
                    return None;
                }
                log::info!(trace_id = req.trace_id, path = req.path; "sso.enforce: refused a non-SSO way in");
                Some(pages::enforced(req.trace_id))
            }
            FlowPath::SignIn => {
                if !get {
                    return None;
                }
                if bypassed {
                    log::info!(trace_id = req.trace_id; "sign-in from a bypass_cidrs client: Dify's own page");
                    return None;
                }
                let asked = req.query_param("redirect_url").filter(|r| !r.is_empty());
                Some(self.start_sign_in_to(req, asked).await)
            }
            FlowPath::WebappSignIn if get => Some(self.webapp_sign_in(req).await),
            FlowPath::WebappSignIn => Some(pages::method_not_allowed("GET, HEAD")),
            FlowPath::SignOut => Some(match *req.method {
                Method::GET | Method::HEAD | Method::POST => self.sign_out(req).await,
                _ => pages::method_not_allowed("GET, HEAD, POST"),
            }),
            FlowPath::Callback => Some(self.callback(req, body).await),
            FlowPath::Continue => Some(if get {
                self.continue_after_callback(req)
            } else {
                pages::method_not_allowed("GET, HEAD")
            }),
            FlowPath::SignedOut => Some(match *req.method {
                Method::GET | Method::HEAD => pages::signed_out(),
                Method::POST => self.sign_in_again(req),
                _ => pages::method_not_allowed("GET, HEAD, POST"),
            }),
        }
    }

    /// For proxied requests, after the upstream answered: headers to add to the response.
    pub fn on_upstream_response(
        &self,
        method: &Method,
        path: &str,
        status: u16,
        https: bool,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let is_logout = path.trim_end_matches('/') == LOGOUT_PATH;
        if !self.enabled || *method != Method::POST || !is_logout || status != 200 {
            return Vec::new();
        }
        let writer = CookieWriter { https };
        // Signing out of the console ends the gateway session too (published apps included).
        let mark = writer.set(bc::SIGNED_OUT, "1", "/", bc::SIGNED_OUT_TTL, Site::Lax);
        [mark, self.sessions.clear_cookie(writer)]
            .iter()
            .map(|c| {
                (
                    http::header::SET_COOKIE,
                    HeaderValue::from_str(c).expect("ASCII cookie"),
                )
            })
            .collect()
    }

    pub(super) fn failure(
        &self,
        req: &SsoRequest<'_>,
        failure: &SsoFailure,
        flow_id: &str,
    ) -> SsoResponse {
        log::warn!(trace_id = req.trace_id, flow_id = flow_id, code = failure.code(), status = failure.status();
            "sign-in failed: {failure}");
        crate::ops::metrics::METRICS
            .sso_signins
            .with_label_values(&[self.protocol.name(), "failure", failure.code()])
            .inc();
        pages::error(failure, flow_id, &self.support_contact, req.wants_json())
    }

    /// Paths a return target must not point at: they would restart the flow.
    pub(super) fn reserved_paths(&self) -> [&str; 2] {
        [SIGNIN_PATH, &self.callback_path]
    }

    /// Marks a `state` used; false when it was used before.
    pub(super) async fn consume_state(&self, state: &str) -> Result<bool, SsoFailure> {
        self.used_states
            .consume(state, bc::STATE_TTL)
            .await
            .map_err(SsoFailure::StoreUnavailable)
    }

    /// The origin this request's callback and signed-out URLs are built from.
    pub(super) fn public_origin(&self, req: &SsoRequest<'_>) -> String {
        match self.origins.for_request(req) {
            RequestOrigin::Ours(o) => o,
            RequestOrigin::Elsewhere { canonical, asked } => {
                log::warn!(trace_id = req.trace_id, asked = asked.as_str();
                    "the request's Host is not a configured public origin: callback URL built from {canonical} instead");
                canonical
            }
        }
    }

    /// Sends the browser to the SSO; `asked` is where it should land afterwards (a local path, or
    /// an absolute URL of our own origin).
    pub(super) async fn start_sign_in_to(
        &self,
        req: &SsoRequest<'_>,
        asked: Option<String>,
    ) -> SsoResponse {
        let writer = CookieWriter::for_request(req);
        let origin = self.public_origin(req);
        if writer.read(req.headers, bc::SIGNED_OUT).is_some() {
            let hint = writer
                .read_scoped(req.headers, bc::ID_TOKEN, SIGNIN_PATH)
                .filter(|h| !h.is_empty());
            let after = format!("{origin}{}", bc::SIGNED_OUT_PATH);
            let provider_logout = match &self.logout_url {
                Some(_) => None,
                None => self.protocol.logout_redirect(hint.as_deref(), &after).await,
            };
            let to = self
                .logout_url
                .as_deref()
                .or(provider_logout.as_deref())
                .unwrap_or(bc::SIGNED_OUT_PATH);
            log::info!(trace_id = req.trace_id; "sign-in after logout: no automatic sign-in, to {}",
                to.split('?').next().unwrap_or(""));
            let mut resp = SsoResponse::redirect(302, to);
            if hint.is_some() {
                resp = resp.set_cookie(&writer.clear(bc::ID_TOKEN, SIGNIN_PATH));
            }
            return resp;
        }
        let now = now_secs();
        let count = LoopCount::parse(writer.read(req.headers, bc::LOOP).as_deref(), now);
        if count.exhausted() {
            return self.failure(req, &SsoFailure::RedirectLoop, req.trace_id);
        }
        // A same-origin absolute URL is taken as its path; every other absolute URL is refused.
        let ret = asked
            .as_deref()
            .map(|r| match r.strip_prefix(origin.as_str()) {
                Some(rest) if rest.starts_with('/') => rest,
                _ => r,
            })
            .and_then(|r| safe_return_target(r, &self.reserved_paths()));
        if asked.is_some() && ret.is_none() {
            log::warn!(trace_id = req.trace_id; "sign-in: redirect_url refused (not a local path), using dify.home");
        }
        let state = FlowState {
            flow: uuid::Uuid::new_v4().to_string(),
            ret,
            nonce: random_hex(16),
        };
        let callback_url = format!("{origin}{}", self.callback_path);
        let redirect_flow = self.protocol.redirect_flow();
        let (nonce, verifier) = if redirect_flow {
            let nonce = random_hex(16);
            let verifier = self.pkce_verifier(&state.nonce, &nonce);
            (nonce, verifier)
        } else {
            (String::new(), String::new())
        };
        let challenge = if redirect_flow {
            pkce_challenge(&verifier)
        } else {
            String::new()
        };
        let location = match self
            .protocol
            .login_redirect(&LoginStart {
                callback_url: &callback_url,
                state: &state.nonce,
                trace_id: &state.flow,
                nonce: &nonce,
                pkce_challenge: &challenge,
            })
            .await
        {
            Ok(l) => l,
            Err(f) => return self.failure(req, &f, &state.flow),
        };
        let (loop_value, loop_ttl) = count.bumped(now);
        log::info!(trace_id = req.trace_id, flow_id = state.flow.as_str(), attempt = count.count + 1;
            "sign-in: sending the browser to the SSO ({})", self.protocol.name());
        let mut resp = SsoResponse::redirect(302, &location);
        if redirect_flow {
            // One cookie per flow (tabs sign in side by side), the oldest dropped past the cap.
            let mut open: Vec<(String, Option<RedirectFlow>)> = writer
                .flow_cookies(req.headers)
                .into_iter()
                .map(|(n, v)| {
                    let f = self.signer.open::<RedirectFlow>("flow", &v);
                    (n, f)
                })
                .collect();
            open.sort_by_key(|(_, f)| f.as_ref().map_or(0, |f| f.started));
            let keep = bc::MAX_PARALLEL_FLOWS - 1;
            let excess = open.len().saturating_sub(keep);
            for (i, (name, f)) in open.iter().enumerate() {
                if i < excess || f.is_none() {
                    resp = resp.set_cookie(&writer.clear(name, "/"));
                }
            }
            let name = bc::flow_cookie_name(&state.nonce).expect("32 hex");
            let record = RedirectFlow {
                flow: state.flow.clone(),
                ret: state.ret.clone(),
                state: state.nonce.clone(),
                nonce,
                started: now,
            };
            let sealed = self.signer.seal("flow", bc::STATE_TTL, &record);
            resp = resp.set_cookie(&writer.set(&name, &sealed, "/", bc::STATE_TTL, Site::Lax));
        } else {
            let sealed = self.signer.seal("state", bc::STATE_TTL, &state);
            resp = resp.set_cookie(&writer.set(
                bc::STATE,
                &sealed,
                "/",
                bc::STATE_TTL,
                Site::CrossSite,
            ));
        }
        resp.set_cookie(&writer.set(bc::LOOP, &loop_value, "/", loop_ttl, Site::Lax))
    }

    /// The flow's PKCE verifier: derived from the state secret, never stored in the browser.
    pub(super) fn pkce_verifier(&self, state: &str, nonce: &str) -> String {
        self.signer.derive("pkce", &format!("{state}.{nonce}"))
    }

    /// The signed-out page's button: clear the mark and start a normal sign-in. Same-origin only,
    /// so another site cannot undo a logout behind the user's back.
    fn sign_in_again(&self, req: &SsoRequest<'_>) -> SsoResponse {
        // Fetch metadata decides when the browser sends it: the signed-out page has
        // `Referrer-Policy: no-referrer`, so Chromium posts its button with `Origin: null` and
        // `Sec-Fetch-Site: same-origin`. Without it, the Origin (if any) must be ours; an opaque
        // `null` origin without fetch metadata is refused.
        if super::origins::is_cross_site(req) {
            return SsoResponse::with_body(
                403,
                "text/plain; charset=utf-8",
                "cross-site request refused\n",
            );
        }
        let writer = CookieWriter::for_request(req);
        SsoResponse::redirect(303, SIGNIN_PATH).set_cookie(&writer.clear(bc::SIGNED_OUT, "/"))
    }
}
