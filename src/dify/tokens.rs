//! Dify's JWTs (reference §2): the access token, HS256 with `SECRET_KEY`, carrying `user_id`; and the
//! CSRF token `{"sub": <user id>, "exp": ...}` signed the same way.

use super::version::Edition;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not signed with dify.secret_key (Dify would reject it)")]
    BadSignature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not a JWT Dify accepts ({0})")]
    Malformed(String),
    #[error("the access token carries no user_id")]
    NoUser,
    #[error("the access token carries a token_source claim, which Dify rejects on the console")]
    TokenSource,
}

#[derive(Deserialize)]
struct AccessClaims {
    user_id: Option<String>,
    token_source: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct CsrfClaims {
    sub: String,
    exp: u64,
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    // Dify (PyJWT) checks `exp` without leeway and nothing else.
    v.leeway = 0;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    v
}

/// Checks the signature and expiry as Dify does and returns the account id.
pub fn verify_access_token(secret: &str, token: &str) -> Result<String, TokenError> {
    use jsonwebtoken::errors::ErrorKind;
    let data = jsonwebtoken::decode::<AccessClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation(),
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidAlgorithm => TokenError::Malformed("not HS256".into()),
        other => TokenError::Malformed(format!("{other:?}")),
    })?;
    if data.claims.token_source.is_some() {
        return Err(TokenError::TokenSource);
    }
    data.claims
        .user_id
        .filter(|u| !u.is_empty())
        .ok_or(TokenError::NoUser)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A CSRF token for `user_id` valid for `ttl` (Dify uses the access token lifetime).
pub fn mint_csrf_token(secret: &str, user_id: &str, ttl: Duration) -> String {
    let claims = CsrfClaims {
        sub: user_id.to_string(),
        exp: now_secs() + ttl.as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with a byte key cannot fail")
}

/// The `sub` of a valid CSRF token (used by tests and mock Difys to check what Dify checks).
pub fn verify_csrf_token(secret: &str, token: &str) -> Option<String> {
    jsonwebtoken::decode::<CsrfClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation(),
    )
    .ok()
    .map(|d| d.claims.sub)
}

/// An access token as Dify before 1.17 mints it (`iss` `SELF_HOSTED`); for tests and demos.
pub fn mint_access_token(secret: &str, user_id: &str, ttl: Duration) -> String {
    mint_access_token_as(secret, user_id, ttl, Edition::SelfHosted)
}

/// An access token as Dify mints it, with `iss` the edition Dify itself would write (its
/// `EDITION` before 1.17, the deployment edition from 1.17; [`super::version::Compat::edition`]).
/// Dify does not check `iss`, but what the gateway mints should be indistinguishable from Dify's.
pub fn mint_access_token_as(secret: &str, user_id: &str, ttl: Duration, iss: Edition) -> String {
    let claims = serde_json::json!({
        "user_id": user_id,
        "exp": now_secs() + ttl.as_secs(),
        "iss": iss.as_str(),
        "sub": "Console API Passport",
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with a byte key cannot fail")
}

/// A refresh token as Dify makes one (`secrets.token_hex(64)`): 64 random bytes, 128 hex chars.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 64];
    rand::fill(&mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-9f73s3ljTXVcMT3Blb3ljTqtsKiGHXVcMT3BlbkFJLK7U";
    const USER: &str = "9a8b7c6d-0000-4000-8000-000000000001";

    #[test]
    fn access_token_round_trip_gives_user_id() {
        let t = mint_access_token(KEY, USER, Duration::from_secs(3600));
        assert_eq!(verify_access_token(KEY, &t), Ok(USER.to_string()));
    }

    #[test]
    fn access_token_carries_the_edition_as_iss() {
        for e in Edition::ALL {
            let t = mint_access_token_as(KEY, USER, Duration::from_secs(60), e);
            let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&t)
                .unwrap()
                .claims;
            assert_eq!(claims["iss"], e.as_str());
            assert_eq!(claims["sub"], "Console API Passport");
            assert_eq!(verify_access_token(KEY, &t), Ok(USER.to_string()));
        }
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        let t = mint_access_token("another-key", USER, Duration::from_secs(3600));
        assert_eq!(verify_access_token(KEY, &t), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_and_malformed_tokens_are_refused() {
        let claims = serde_json::json!({"user_id": USER, "exp": now_secs() - 5});
        let old = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(KEY.as_bytes()),
        )
        .unwrap();
        assert_eq!(verify_access_token(KEY, &old), Err(TokenError::Expired));
        assert!(matches!(
            verify_access_token(KEY, "not-a-jwt"),
            Err(TokenError::Malformed(_))
        ));
        let no_exp = jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"user_id": USER}),
            &EncodingKey::from_secret(KEY.as_bytes()),
        )
        .unwrap();
        assert!(verify_access_token(KEY, &no_exp).is_err());
    }

    #[test]
    fn token_source_claim_and_missing_user_are_refused() {
        let key = EncodingKey::from_secret(KEY.as_bytes());
        let exp = now_secs() + 60;
        let ts = jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"user_id": USER, "exp": exp, "token_source": "webapp"}),
            &key,
        )
        .unwrap();
        assert_eq!(verify_access_token(KEY, &ts), Err(TokenError::TokenSource));
        let nouser =
            jsonwebtoken::encode(&Header::default(), &serde_json::json!({"exp": exp}), &key)
                .unwrap();
        assert_eq!(verify_access_token(KEY, &nouser), Err(TokenError::NoUser));
    }

    #[test]
    fn refresh_tokens_are_128_hex_and_differ() {
        let a = new_refresh_token();
        assert_eq!(a.len(), 128);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, new_refresh_token());
    }

    #[test]
    fn csrf_token_carries_sub_and_exp() {
        let t = mint_csrf_token(KEY, USER, Duration::from_secs(3600));
        assert_eq!(verify_csrf_token(KEY, &t).as_deref(), Some(USER));
        assert_eq!(verify_csrf_token("other", &t), None);
        let claims: serde_json::Value =
            jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&t)
                .unwrap()
                .claims;
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp >= now_secs() + 3590 && exp <= now_secs() + 3600);
        assert_eq!(
            claims.as_object().unwrap().len(),
            2,
            "only sub and exp: {claims}"
        );
    }
}
