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
    // `;params` on a segment (`/console/api/login;x`): some servers drop them, so a rule must too.
    if path.contains(';') {
        let stripped: Vec<&str> = path
            .split('/')
            .map(|seg| seg.split(';').next().unwrap_or(""))
            .collect();
        if matches_closed(&stripped.join("/")) {
            return true;
        }
    }
    matches_closed(path)
}

fn matches_closed(path: &str) -> bool {
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
            "/console/api/login;x",
            "/console/api/login;jsessionid=1/",
            "/console/api;x/login",
            "/console/api/forgot-password;a/resets",
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
