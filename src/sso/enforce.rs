//! `sso.enforce`: Dify's other ways in (reference §4), closed so that SSO is the only one.

/// Path prefixes of Dify's password, email-code, forgot-password, GitHub/Google OAuth and
/// invitation-activation endpoints. `exact` ones match themselves and their sub-paths only.
const CLOSED: [(&str, bool); 5] = [
    ("/console/api/login", true),
    ("/console/api/email-code-login", false),
    ("/console/api/forgot-password", false),
    ("/console/api/oauth/login/", false),
    ("/console/api/activate", false),
];

pub fn is_closed(path: &str) -> bool {
    CLOSED
        .iter()
        .any(|(prefix, exact)| match path.strip_prefix(prefix) {
            Some(rest) => !exact || rest.is_empty() || rest.starts_with('/'),
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_the_other_ways_in_only() {
        for closed in [
            "/console/api/login",
            "/console/api/login/",
            "/console/api/email-code-login",
            "/console/api/email-code-login/validity",
            "/console/api/forgot-password",
            "/console/api/forgot-password/validity",
            "/console/api/forgot-password/resets",
            "/console/api/oauth/login/github",
            "/console/api/oauth/login/google",
            "/console/api/activate",
            "/console/api/activate/check",
        ] {
            assert!(is_closed(closed), "{closed}");
        }
        for open in [
            "/console/api/logout",
            "/console/api/refresh-token",
            "/console/api/login-status",
            "/console/api/apps",
            "/console/api/oauth/authorize/github",
            "/api/login",
            "/v1/chat-messages",
            "/signin",
        ] {
            assert!(!is_closed(open), "{open}");
        }
    }
}
