//! The pages the flow answers with itself: the sign-in error page (HTML, or JSON when asked for),
//! the signed-out page, and the `sso.enforce` refusal. Self-contained HTML, no scripts.

use super::browser_cookies::SIGNED_OUT_PATH;
use super::failure::SsoFailure;
use super::request::SsoResponse;

use crate::pages::{CSP, escape as escape_html, layout};

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

fn page(status: u16, title: &str, inner: &str) -> SsoResponse {
    let mut r = SsoResponse::with_body(status, HTML, layout(title, inner));
    r.headers.push((
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(CSP),
    ));
    r
}

/// The sign-in error answer; `trace_id` is the flow's, for the user to quote to the administrator.
pub fn error(
    failure: &SsoFailure,
    trace_id: &str,
    support_contact: &str,
    wants_json: bool,
) -> SsoResponse {
    let status = failure.status();
    let reason = failure.to_string();
    if wants_json {
        let mut body = serde_json::json!({
            "code": failure.code(),
            "message": reason,
            "status": status,
            "trace_id": trace_id,
            "retry_url": "/signin",
        });
        if !support_contact.is_empty() {
            body["support_contact"] = support_contact.into();
        }
        return SsoResponse::with_body(status, JSON, body.to_string());
    }
    let contact = if support_contact.is_empty() {
        "If this keeps happening, contact your administrator".to_string()
    } else {
        format!(
            "If this keeps happening, contact {}",
            escape_html(support_contact)
        )
    };
    let inner = format!(
        "<h1>Sign-in failed</h1><p>{reason}</p>\
         <p><a class=\"btn\" href=\"/signin\">Try again</a></p>\
         <p class=\"muted\">{contact} and quote this trace id: <code>{trace}</code></p>",
        reason = escape_html(&reason),
        trace = escape_html(trace_id),
    );
    page(status, "Sign-in failed", &inner)
}

/// `/sso/signed-out`: the button posts back here, which clears the mark and starts a sign-in.
pub fn signed_out() -> SsoResponse {
    let inner = format!(
        "<h1>You are signed out</h1><p>You have signed out of Dify.</p>\
         <form method=\"post\" action=\"{SIGNED_OUT_PATH}\"><button class=\"btn\" type=\"submit\">Sign in again</button></form>"
    );
    form_may_leave(page(200, "Signed out", &inner))
}

/// A page whose button's POST is answered by a redirect chain that ends at the SSO's own origin
/// (sign in again, sign out): browsers apply `form-action` to every hop of it, so here the form
/// may lead anywhere the flow does.
fn form_may_leave(mut r: SsoResponse) -> SsoResponse {
    for (name, value) in r.headers.iter_mut() {
        if *name == http::header::CONTENT_SECURITY_POLICY {
            *value = http::HeaderValue::from_static(CSP_SIGNED_OUT);
        }
    }
    r
}

/// [`CSP`] without `form-action`, for the signed-out page.
const CSP_SIGNED_OUT: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

/// Dify's other ways in, closed by `sso.enforce`.
pub fn enforced(trace_id: &str) -> SsoResponse {
    let body = serde_json::json!({
        "code": "sso_enforced",
        "message": "This Dify only accepts single sign-on; sign in through /signin.",
        "status": 403,
        "trace_id": trace_id,
    });
    SsoResponse::with_body(403, JSON, body.to_string())
}

/// A published app's page refused by its rule: who is signed in, and who to ask.
pub fn app_refused(
    person: Option<&str>,
    trace_id: &str,
    support_contact: &str,
    wants_json: bool,
) -> SsoResponse {
    let message = "This app is not open to you.";
    if wants_json {
        return app_api_refused("web_app_access_denied", message, trace_id);
    }
    let who = match person {
        Some(p) => format!(
            "<p>You are signed in as <strong>{}</strong>.</p>",
            escape_html(p)
        ),
        None => String::new(),
    };
    let contact = if support_contact.is_empty() {
        "To get access, ask your administrator".to_string()
    } else {
        format!("To get access, contact {}", escape_html(support_contact))
    };
    let inner = format!(
        "<h1>No access to this app</h1><p>{message}</p>{who}\
         <form method=\"post\" action=\"/sso/logout\"><button class=\"btn\" type=\"submit\">Sign out</button></form>\
         <p class=\"muted\">{contact} and quote this trace id: <code>{trace}</code></p>",
        trace = escape_html(trace_id),
    );
    form_may_leave(page(403, "No access", &inner))
}

/// A web-app API call the gateway refused, as Dify's app front end reads an error: on a 401 with
/// `web_sso_auth_required` or `web_app_access_denied` it drops its passport and sends the
/// person to `/webapp-signin`, which the gateway answers.
pub fn app_api_refused(code: &str, message: &str, trace_id: &str) -> SsoResponse {
    let body = serde_json::json!({
        "code": code,
        "message": message,
        "status": 401,
        "trace_id": trace_id,
    });
    SsoResponse::with_body(401, JSON, body.to_string())
}

/// `/sso/logout` reached from another site: a button, so the person decides.
pub fn confirm_sign_out(action: &str) -> SsoResponse {
    let inner = format!(
        "<h1>Sign out?</h1><p>Another site sent you here to sign out of Dify.</p>\
         <form method=\"post\" action=\"{}\"><button class=\"btn\" type=\"submit\">Sign out</button></form>",
        escape_html(action)
    );
    form_may_leave(page(200, "Sign out", &inner))
}

pub fn method_not_allowed(allow: &'static str) -> SsoResponse {
    let mut r = SsoResponse::with_body(405, "text/plain; charset=utf-8", "method not allowed\n");
    r.headers
        .push((http::header::ALLOW, http::HeaderValue::from_static(allow)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &SsoResponse) -> String {
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    #[test]
    fn error_page_has_reason_trace_retry_and_contact() {
        let r = error(
            &SsoFailure::ExchangeTimeout,
            "t-123",
            "it@example.com <ext. 5>",
            false,
        );
        assert_eq!(r.status, 504);
        let b = body(&r);
        assert!(b.contains("did not answer in time"), "{b}");
        assert!(b.contains("t-123") && b.contains("href=\"/signin\""));
        assert!(
            b.contains("it@example.com &lt;ext. 5&gt;"),
            "contact is escaped: {b}"
        );
        assert_eq!(r.header(&http::header::CACHE_CONTROL), Some("no-store"));
    }

    #[test]
    fn error_json_when_asked() {
        let r = error(&SsoFailure::ExchangeRefused(403), "t-1", "", true);
        assert_eq!(r.status, 401);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "sso_token_refused");
        assert_eq!(v["trace_id"], "t-1");
        assert_eq!(v["retry_url"], "/signin");
        assert!(v.get("support_contact").is_none());
    }

    #[test]
    fn signed_out_page_offers_sign_in_again() {
        let r = signed_out();
        assert_eq!(r.status, 200);
        let b = body(&r);
        assert!(
            b.contains("You are signed out")
                && b.contains("Sign in again")
                && b.contains("method=\"post\"")
        );
    }

    #[test]
    fn enforced_is_json_403() {
        let r = enforced("t");
        assert_eq!(r.status, 403);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "sso_enforced");
    }
}
