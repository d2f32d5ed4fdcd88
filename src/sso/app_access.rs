//! The flow's side of published apps: the verdict on each app page and web-app API call, the
//! `/webapp-signin` page Dify's app front end sends a person to on a 401, and `/sso/logout`.
//! Sign-in itself is the same flow as the console's (`/signin`'s start, the callback,
//! `/sso/continue`); a sign-in whose return target is an app page only skips the Dify session.

use super::apps::{self, AppRequest, Verdict};
use super::browser_cookies::{self as bc, CookieWriter, Site};
use super::flow::SsoFlow;
use super::pages;
use super::request::{SsoRequest, SsoResponse};
use super::session::{Person, Session};
use crate::ops::metrics::METRICS;

pub const WEBAPP_SIGNIN_PATH: &str = "/webapp-signin";
pub const LOGOUT_PATH: &str = "/sso/logout";

/// What the proxy does with a published app's request.
pub enum AppCheck {
    /// Not ours to judge, or admitted: forward it.
    Forward(AppForward),
    /// Answer the browser with this instead.
    Answer(SsoResponse),
}

/// How an admitted request is forwarded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppForward {
    /// `GET /api/passport` of a protected app: the `user_id` Dify must get (whatever the client
    /// sent is replaced) and the person tag to bind the passport Dify answers with.
    pub passport: Option<PassportCall>,
    /// A refreshed session cookie to add to the answer.
    pub set_cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassportCall {
    pub user_id: String,
    pub person_tag: String,
}

impl SsoFlow {
    /// True when some published app is not public: only then are app requests looked at.
    pub fn apps_protected(&self) -> bool {
        self.enabled && self.apps.active()
    }

    /// The session this request carries, if any and not ended early.
    pub(super) async fn session_of(&self, req: &SsoRequest<'_>) -> Option<Session> {
        let session = self
            .sessions
            .read(CookieWriter::for_request(req), req.headers)?;
        if self
            .revocations
            .is_revoked(&session.person.revocation_key(), session.signed_in)
            .await
        {
            log::info!(trace_id = req.trace_id, person = session.person.label(); "gateway session ended early (revoked)");
            return None;
        }
        Some(session)
    }

    /// `Set-Cookie` starting a gateway session for someone who just signed in.
    pub(super) fn start_session(&self, req: &SsoRequest<'_>, person: Person) -> String {
        let session = self.sessions.start(person);
        self.sessions
            .set_cookie(CookieWriter::for_request(req), &session)
    }

    /// The verdict on a request for a published app's page or API (call only when
    /// [`SsoFlow::apps_protected`]).
    pub async fn check_app(&self, req: &SsoRequest<'_>) -> AppCheck {
        // A CORS preflight carries no credentials and Dify answers it without app data.
        let Some(kind) = apps::classify(req.path).filter(|_| *req.method != http::Method::OPTIONS)
        else {
            return AppCheck::Forward(AppForward::default());
        };
        let session = self.session_of(req).await;
        let (verdict, code, passport_call) = match kind {
            AppRequest::Page { code } => (
                self.apps.page(code, session.as_ref()),
                code.map(str::to_string),
                false,
            ),
            AppRequest::Api => {
                let secret = self.secret_key.as_deref().unwrap_or_default();
                let carried = apps::carried(req.headers, req.query, secret);
                let is_passport = req.path == apps::PASSPORT_PATH;
                let code = carried
                    .named_codes
                    .first()
                    .cloned()
                    .or_else(|| carried.passports.iter().find_map(|p| p.app_code.clone()));
                (
                    self.apps.api(&carried, session.as_ref(), is_passport),
                    code,
                    is_passport,
                )
            }
        };
        let label = self.apps.metric_label(code.as_deref());
        let outcome = match verdict {
            Verdict::Pass => "public",
            Verdict::Admitted => "admitted",
            Verdict::SignIn => "sign_in",
            Verdict::Refused => "refused",
            Verdict::WrongPassport => "wrong_passport",
        };
        METRICS
            .app_requests
            .with_label_values(&[label, outcome])
            .inc();
        let is_page = matches!(kind, AppRequest::Page { .. });
        match verdict {
            Verdict::Pass => AppCheck::Forward(AppForward::default()),
            Verdict::Admitted => {
                let session = session.expect("admitted means signed in");
                let passport = passport_call.then(|| PassportCall {
                    user_id: self.apps.user_id(&session.person),
                    person_tag: self.apps.person_tag(&session.person),
                });
                let set_cookie = self.sessions.needs_refresh(&session).then(|| {
                    self.sessions
                        .set_cookie(CookieWriter::for_request(req), &session)
                });
                AppCheck::Forward(AppForward {
                    passport,
                    set_cookie,
                })
            }
            Verdict::SignIn if is_page => {
                log::info!(trace_id = req.trace_id, app = label; "published app: not signed in, to the SSO");
                let back = match req.query {
                    Some(q) => format!("{}?{q}", req.path),
                    None => req.path.to_string(),
                };
                AppCheck::Answer(self.start_sign_in_to(req, Some(back)).await)
            }
            Verdict::Refused if is_page => {
                let who = session.as_ref().map_or("-", |s| s.person.label());
                log::info!(trace_id = req.trace_id, app = label, person = who; "published app: refused by its rule");
                AppCheck::Answer(self.refusal(req, session.as_ref()))
            }
            api_verdict => {
                let (code, message) = match api_verdict {
                    Verdict::Refused => ("web_app_access_denied", "This app is not open to you."),
                    Verdict::WrongPassport => (
                        "web_sso_auth_required",
                        "This app passport belongs to another sign-in; sign in again.",
                    ),
                    _ => ("web_sso_auth_required", "Sign in to use this app."),
                };
                log::info!(trace_id = req.trace_id, app = label, code = code; "published app: API call refused");
                AppCheck::Answer(pages::app_api_refused(code, message, req.trace_id))
            }
        }
    }

    /// `/webapp-signin?redirect_url=<app page>`: where Dify's app front end sends a person whose
    /// call was refused with 401. Back to the app when the session admits them, the refusal page
    /// when it never will, the SSO otherwise.
    pub(super) async fn webapp_sign_in(&self, req: &SsoRequest<'_>) -> SsoResponse {
        let target = req
            .query_param("redirect_url")
            .map(|t| decode_twice(&t))
            .and_then(|t| super::return_target::safe_return_target(&t, &self.reserved_paths()))
            .filter(|t| apps::is_app_page(t));
        let Some(target) = target else {
            return self.start_sign_in_to(req, None).await;
        };
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let code = match apps::classify(path) {
            Some(AppRequest::Page { code }) => code,
            _ => None,
        };
        let session = self.session_of(req).await;
        match self.apps.page(code, session.as_ref()) {
            Verdict::Pass | Verdict::Admitted => SsoResponse::redirect(302, &target),
            Verdict::Refused if session.is_some() || self.apps.rule(code) == &apps::Rule::Deny => {
                self.refusal(req, session.as_ref())
            }
            _ => self.start_sign_in_to(req, Some(target)).await,
        }
    }

    fn refusal(&self, req: &SsoRequest<'_>, session: Option<&Session>) -> SsoResponse {
        pages::app_refused(
            session.map(|s| s.person.label()),
            req.trace_id,
            &self.support_contact,
            req.wants_json(),
        )
    }

    /// `/sso/logout`: ends the gateway session and, where the protocol has one, the SSO's, then
    /// the signed-out page. A cross-site request gets a button instead, so another site cannot
    /// sign someone out behind their back.
    pub(super) async fn sign_out(&self, req: &SsoRequest<'_>) -> SsoResponse {
        if super::origins::is_cross_site(req) {
            return pages::confirm_sign_out(LOGOUT_PATH);
        }
        let writer = CookieWriter::for_request(req);
        let who = self.session_of(req).await;
        log::info!(trace_id = req.trace_id, person = who.as_ref().map_or("-", |s| s.person.label());
            "signed out of the gateway session");
        let hint = writer
            .read_scoped(req.headers, bc::ID_TOKEN, super::flow::SIGNIN_PATH)
            .filter(|h| !h.is_empty());
        let after = format!("{}{}", self.public_origin(req), bc::SIGNED_OUT_PATH);
        let provider_logout = match &self.logout_url {
            Some(_) => None,
            None => self.protocol.logout_redirect(hint.as_deref(), &after).await,
        };
        let to = self
            .logout_url
            .as_deref()
            .or(provider_logout.as_deref())
            .unwrap_or(bc::SIGNED_OUT_PATH);
        SsoResponse::redirect(303, to)
            .set_cookie(&self.sessions.clear_cookie(writer))
            .set_cookie(&writer.clear(bc::ID_TOKEN, super::flow::SIGNIN_PATH))
            .set_cookie(&writer.set(bc::SIGNED_OUT, "1", "/", bc::SIGNED_OUT_TTL, Site::Lax))
    }
}

/// Dify's front end encodes the return path twice (`encodeURIComponent`, then the query
/// encoding); a value that still looks encoded after the query decoding is decoded once more.
fn decode_twice(value: &str) -> String {
    if value.starts_with('/') {
        return value.to_string();
    }
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .unwrap_or_default()
}
