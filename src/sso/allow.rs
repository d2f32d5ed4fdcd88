//! Who may sign in: one place for every protocol that proves an identity (OIDC, OAuth2, CAS),
//! applied before anything is minted. Emails are parsed strictly and lower-cased here, so a
//! management service always sees one canonical form.

use super::config::AllowConfig;
use super::failure::SsoFailure;
use super::protocol::Identity;

/// `local@domain`: exactly one `@`, both sides non-empty, no spaces or control characters,
/// a domain of dot-separated labels; lower-cased.
pub fn parse_email(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.len() > 254 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = raw.split_once('@')?;
    if local.is_empty()
        || local.len() > 64
        || domain.contains('@')
        || local.contains(['<', '>', ',', ';', '"'])
    {
        return None;
    }
    let labels_ok = domain.split('.').all(|l| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    if !labels_ok || !domain.contains('.') && domain != "localhost" {
        return None;
    }
    Some(raw.to_lowercase())
}

/// Normalises the identity's email and applies `sso.allow`; the reason names the rule that refused.
pub fn authorize(mut identity: Identity, allow: &AllowConfig) -> Result<Identity, SsoFailure> {
    let email = match identity.email.as_deref() {
        Some(raw) => parse_email(raw).ok_or_else(|| {
            SsoFailure::InvalidIdentity(format!(
                "the email address {:?} is not a valid address",
                raw.chars().take(80).collect::<String>()
            ))
        })?,
        None => {
            return Err(SsoFailure::NotAllowed(
                "the sign-in server did not share an email address".into(),
            ));
        }
    };
    if !identity.email_verified && !allow.unverified_email {
        return Err(SsoFailure::NotAllowed(format!(
            "the email address {email} is not verified by the sign-in server"
        )));
    }
    if !allow.email_domains.is_empty() {
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        if !allow
            .email_domains
            .iter()
            .any(|d| d.trim_start_matches('@').eq_ignore_ascii_case(domain))
        {
            return Err(SsoFailure::NotAllowed(format!(
                "email addresses at {domain} are not allowed here"
            )));
        }
    }
    if !allow.groups.is_empty() && !identity.groups.iter().any(|g| allow.groups.contains(g)) {
        return Err(SsoFailure::NotAllowed(
            "your account is in none of the groups allowed here".into(),
        ));
    }
    identity.email = Some(email);
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(email: Option<&str>, verified: bool, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://id.example.com".into(),
            subject: "u1".into(),
            email: email.map(str::to_string),
            email_verified: verified,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            id_token_hint: None,
        }
    }

    #[test]
    fn strict_email_parsing() {
        assert_eq!(
            parse_email(" Ann.Lee@Example.COM ").as_deref(),
            Some("ann.lee@example.com")
        );
        for bad in [
            "a@b@example.com",
            "@example.com",
            "ann@",
            "ann",
            "ann @example.com",
            "ann@exa mple.com",
            "ann@example..com",
            "ann@.example.com",
            "a\n@example.com",
            "\"a,b\"@example.com",
            "ann@-x.com",
        ] {
            assert_eq!(parse_email(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rules() {
        let none = AllowConfig::default();
        assert_eq!(
            authorize(id(Some("A@X.org"), true, &[]), &none)
                .unwrap()
                .email
                .as_deref(),
            Some("a@x.org")
        );
        let e = authorize(id(Some("a@x.org"), false, &[]), &none).unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "sso_not_allowed"));
        let lax = AllowConfig {
            unverified_email: true,
            ..Default::default()
        };
        assert!(authorize(id(Some("a@x.org"), false, &[]), &lax).is_ok());
        assert!(authorize(id(None, true, &[]), &lax).is_err());
        assert_eq!(
            authorize(id(Some("a@b@x.org"), true, &[]), &lax)
                .unwrap_err()
                .code(),
            "sso_invalid_identity"
        );
        let domains = AllowConfig {
            email_domains: vec!["example.com".into()],
            ..Default::default()
        };
        assert!(authorize(id(Some("a@Example.com"), true, &[]), &domains).is_ok());
        assert!(authorize(id(Some("a@example.com.evil.org"), true, &[]), &domains).is_err());
        assert!(authorize(id(Some("a@sub.example.com"), true, &[]), &domains).is_err());
        let groups = AllowConfig {
            groups: vec!["dify-users".into()],
            ..Default::default()
        };
        assert!(authorize(id(Some("a@x.org"), true, &["staff", "dify-users"]), &groups).is_ok());
        assert!(authorize(id(Some("a@x.org"), true, &["staff"]), &groups).is_err());
    }
}
