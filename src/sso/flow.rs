//! [`SsoFlow`]: what the proxy asks about every request. It answers `/signin`, the callback,
//! `/sso/continue` and `/sso/signed-out` itself, closes Dify's other ways in under `sso.enforce`,
//! and lets everything else through.

use super::browser_cookies::{self as bc, CookieWriter, FlowState, LoopCount, Site};
use super::config::SsoConfig;
use super::failure::SsoFailure;
use super::protocol::{LoginStart, SignInProtocol};
use super::request::{RequestBody, SsoRequest, SsoResponse};
use super::return_target::safe_return_target;
use super::signer::{Signer, now_secs, random_hex};
use super::{enforce, pages, providers};
use crate::dify::session::SessionHandoff;
use crate::dify::{DifyConfig, SessionDelivery};
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

pub const SIGNIN_PATH: &str = "/signin";
pub const LOGOUT_PATH: &str = "/console/api/logout";

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
        let callback_path = sso.callback_path.trim_end_matches('/');
        Ok(SsoFlow {
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
        })
    }

    /// None = not ours, proxy as usual. Some = answer the browser with this.
    pub async fn handle(
        &self,
        req: &SsoRequest<'_>,
        body: &mut dyn RequestBody,
    ) -> Option<SsoResponse> {
        if !self.enabled {
            return None;
        }
        let bypassed = req
            .client_ip
            .is_some_and(|ip| self.bypass.iter().any(|n| n.contains(&ip)));
        let path = req.path;
        let get = matches!(*req.method, Method::GET | Method::HEAD);
        if self.enforce && !bypassed && *req.method != Method::OPTIONS && enforce::is_closed(path) {
            log::info!(trace_id = req.trace_id, path = path; "sso.enforce: refused a non-SSO way in");
            return Some(pages::enforced(req.trace_id));
        }
        if path == SIGNIN_PATH || path == "/signin/" {
            if !get {
                return None;
            }
            if bypassed {
                log::info!(trace_id = req.trace_id; "sign-in from a bypass_cidrs client: Dify's own page");
                return None;
            }
            return Some(self.start_sign_in(req));
        }
        if path.trim_end_matches('/') == self.callback_path {
            return Some(self.callback(req, body).await);
        }
        if path == bc::CONTINUE_PATH {
            return Some(if get {
                self.continue_after_callback(req)
            } else {
                pages::method_not_allowed("GET, HEAD")
            });
        }
        if path == bc::SIGNED_OUT_PATH {
            return Some(match *req.method {
                Method::GET | Method::HEAD => pages::signed_out(),
                Method::POST => self.sign_in_again(req),
                _ => pages::method_not_allowed("GET, HEAD, POST"),
            });
        }
        None
    }

    /// For proxied requests, after the upstream answered: headers to add to the response.
    pub fn on_upstream_response(
        &self,
        method: &Method,
        path: &str,
        status: u16,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let is_logout = path.trim_end_matches('/') == LOGOUT_PATH;
        if !self.enabled || *method != Method::POST || !is_logout || status != 200 {
            return Vec::new();
        }
        // No scheme here, so no `Secure`: the mark only ever withholds an automatic sign-in.
        let mark = CookieWriter { https: false }.set(
            bc::SIGNED_OUT,
            "1",
            "/",
            bc::SIGNED_OUT_TTL,
            Site::Lax,
        );
        vec![(
            http::header::SET_COOKIE,
            HeaderValue::from_str(&mark).expect("ASCII cookie"),
        )]
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

    fn start_sign_in(&self, req: &SsoRequest<'_>) -> SsoResponse {
        let writer = CookieWriter {
            https: req.is_https(),
        };
        if bc::read(req.headers, bc::SIGNED_OUT).is_some() {
            let to = self.logout_url.as_deref().unwrap_or(bc::SIGNED_OUT_PATH);
            log::info!(trace_id = req.trace_id; "sign-in after logout: no automatic sign-in, to {to}");
            return SsoResponse::redirect(302, to);
        }
        let now = now_secs();
        let count = LoopCount::parse(bc::read(req.headers, bc::LOOP).as_deref(), now);
        if count.exhausted() {
            return self.failure(req, &SsoFailure::RedirectLoop, req.trace_id);
        }
        let asked = req.query_param("redirect_url").filter(|r| !r.is_empty());
        // A same-origin absolute URL is taken as its path; every other absolute URL is refused.
        let origin = req.origin();
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
        let callback_url = format!("{}{}", req.origin(), self.callback_path);
        let location = self.protocol.login_redirect(&LoginStart {
            callback_url: &callback_url,
            state: &state.nonce,
            trace_id: &state.flow,
        });
        let (loop_value, loop_ttl) = count.bumped(now);
        log::info!(trace_id = req.trace_id, flow_id = state.flow.as_str(), attempt = count.count + 1;
            "sign-in: sending the browser to the SSO ({})", self.protocol.name());
        let sealed = self.signer.seal("state", bc::STATE_TTL, &state);
        SsoResponse::redirect(302, &location)
            .set_cookie(&writer.set(bc::STATE, &sealed, "/", bc::STATE_TTL, Site::CrossSite))
            .set_cookie(&writer.set(bc::LOOP, &loop_value, "/", loop_ttl, Site::Lax))
    }

    /// The signed-out page's button: clear the mark and start a normal sign-in. Same-origin only,
    /// so another site cannot undo a logout behind the user's back.
    fn sign_in_again(&self, req: &SsoRequest<'_>) -> SsoResponse {
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let cross_origin = header("origin").is_some_and(|o| o != req.origin())
            || header("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none");
        if cross_origin {
            return SsoResponse::with_body(
                403,
                "text/plain; charset=utf-8",
                "cross-site request refused\n",
            );
        }
        let writer = CookieWriter {
            https: req.is_https(),
        };
        SsoResponse::redirect(303, SIGNIN_PATH).set_cookie(&writer.clear(bc::SIGNED_OUT, "/"))
    }
}
