//! `sso.enforce`: every route of Dify's that creates a session or an account, or sets or resets a
//! password, is closed, so that the company's SSO is the only way in (reference §7).
//!
//! The list is derived from Dify's controllers, one entry per route family, each naming the file
//! it comes from (Dify 1.14, `api/controllers/`). A route is matched on the normalised path (see
//! `routing::path`: escapes decoded, `//`, `.` and `..` resolved), with `;params` dropped from every
//! segment and ASCII case ignored: werkzeug routes case-sensitively, so a folded variant is a 404 in
//! Dify today, and refusing it costs nothing should a proxy in front or a later Dify fold case.

use http::Method;

/// How an entry matches.
#[derive(Clone, Copy)]
enum Scope {
    /// The path itself (with or without a trailing slash) and everything below it.
    Subtree,
    /// The path itself only (with or without a trailing slash): sub-paths are other routes.
    Exact,
}

/// Which methods an entry closes.
#[derive(Clone, Copy)]
enum Methods {
    All,
    /// Everything but GET and HEAD: the route's GET only reports a status the front end needs.
    Writes,
}

struct ClosedRoute {
    path: &'static str,
    scope: Scope,
    methods: Methods,
}

const fn route(path: &'static str, scope: Scope, methods: Methods) -> ClosedRoute {
    ClosedRoute {
        path,
        scope,
        methods,
    }
}

/// Lower case, no trailing slash. OPTIONS (CORS preflight) always passes: Dify answers it and it
/// creates nothing.
const CLOSED: &[ClosedRoute] = &[
    // console/auth/login.py: password login (also accepts invitations with `invite_token`).
    route("/console/api/login", Scope::Subtree, Methods::All),
    // console/auth/login.py: one-time code by mail, then a session (`/email-code-login/validity`).
    route(
        "/console/api/email-code-login",
        Scope::Subtree,
        Methods::All,
    ),
    // console/auth/login.py: sends a password-reset mail.
    route("/console/api/reset-password", Scope::Subtree, Methods::All),
    // console/auth/forgot_password.py: reset by mailed code; `/resets` sets the password.
    route("/console/api/forgot-password", Scope::Subtree, Methods::All),
    // console/auth/oauth.py: starts GitHub/Google login.
    route("/console/api/oauth/login", Scope::Subtree, Methods::All),
    // console/auth/oauth.py: GitHub/Google's callback, `code` -> Dify session. Dify's `state`
    // there is unsigned, so nothing ties it to a login Dify started.
    route("/console/api/oauth/authorize", Scope::Subtree, Methods::All),
    // console/auth/email_register.py: self-registration (`send-email`, `validity`, and the root,
    // which creates a password account and returns a session).
    route("/console/api/email-register", Scope::Subtree, Methods::All),
    // console/auth/activate.py: accepts an invitation (`/activate/check`, `/activate`).
    route("/console/api/activate", Scope::Subtree, Methods::All),
    // console/setup.py and console/init_validate.py: the first admin. GET reports whether Dify is
    // set up, which every console page asks.
    route("/console/api/setup", Scope::Subtree, Methods::Writes),
    route("/console/api/init", Scope::Subtree, Methods::Writes),
    // web/login.py: the web-app (published app) password login and its email-code variant;
    // `/api/login/status` and `/api/logout` are other routes and stay open.
    route("/api/login", Scope::Exact, Methods::All),
    route("/api/email-code-login", Scope::Subtree, Methods::All),
    // web/forgot_password.py: the web-app password reset (`/validity`, `/resets`).
    route("/api/forgot-password", Scope::Subtree, Methods::All),
    // web/app/webapp-reset-password: the page in front of that reset. (`/webapp-signin`, the
    // page in front of the web-app login, is taken over by the gateway's own sign-in instead.)
    route("/webapp-reset-password", Scope::Subtree, Methods::All),
];

/// Whether `sso.enforce` refuses `method path` (`path` normalised, without the query).
pub fn is_closed(method: &Method, path: &str) -> bool {
    if *method == Method::OPTIONS {
        return false;
    }
    CLOSED.iter().any(|r| matches(r, method, path))
}

/// Whether some method of `path` may be refused: the cheap test the proxy runs on every request
/// (no allocation: segments are compared in place).
pub fn may_close(path: &str) -> bool {
    CLOSED.iter().any(|r| matches_path(r, path))
}

fn matches(r: &ClosedRoute, method: &Method, path: &str) -> bool {
    let method_closed = match r.methods {
        Methods::All => true,
        Methods::Writes => !matches!(*method, Method::GET | Method::HEAD),
    };
    method_closed && matches_path(r, path)
}

/// Segment by segment, each without its `;params` (some servers ignore them) and in any ASCII
/// case.
fn matches_path(r: &ClosedRoute, path: &str) -> bool {
    let mut segments = path.split('/');
    for want in r.path.split('/') {
        match segments.next() {
            Some(seg)
                if seg
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .eq_ignore_ascii_case(want) => {}
            _ => return false,
        }
    }
    match r.scope {
        Scope::Subtree => true,
        // Nothing more, or only a trailing slash.
        Scope::Exact => match segments.next() {
            None => true,
            Some("") => segments.next().is_none(),
            Some(_) => false,
        },
    }
}
