//! Tamper-proof, expiring cookie values: `base64url(json).base64url(HMAC-SHA256)`, keyed with
//! `sso.state_secret`. Each value names its purpose, so a value sealed as one cookie can never be
//! replayed as another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

#[derive(Serialize, serde::Deserialize)]
struct Envelope<T> {
    /// Purpose, checked on opening.
    p: String,
    /// Expiry, unix seconds.
    e: u64,
    d: T,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Hex of `n` random bytes from the OS-seeded CSPRNG.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Signer {
    /// With no configured secret, a random one: fine for one process, but state sealed by one
    /// replica cannot be opened by another (the caller warns).
    pub fn new(secret: Option<&str>) -> Signer {
        let key = match secret {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => random_hex(32).into_bytes(),
        };
        Signer { key }
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }

    /// A value only this gateway can compute: base64url(HMAC(key, purpose NUL input)), 43 chars.
    /// Used for the PKCE verifier, so the per-flow cookie need not carry it.
    pub fn derive(&self, purpose: &str, input: &str) -> String {
        let mut data = Vec::with_capacity(purpose.len() + input.len() + 8);
        data.extend_from_slice(b"derive\0");
        data.extend_from_slice(purpose.as_bytes());
        data.push(0);
        data.extend_from_slice(input.as_bytes());
        B64.encode(self.mac(&data).finalize().into_bytes())
    }

    pub fn seal<T: Serialize>(&self, purpose: &str, ttl: Duration, data: &T) -> String {
        let env = Envelope {
            p: purpose.to_string(),
            e: now_secs() + ttl.as_secs(),
            d: data,
        };
        let body = B64.encode(serde_json::to_vec(&env).expect("plain data serialises"));
        let tag = B64.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The data, if the value is ours, meant for `purpose`, and not expired.
    pub fn open<T: DeserializeOwned>(&self, purpose: &str, value: &str) -> Option<T> {
        let (body, tag) = value.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        self.mac(body.as_bytes()).verify_slice(&tag).ok()?;
        let env: Envelope<T> = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        (env.p == purpose && env.e > now_secs()).then_some(env.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_purpose_binding() {
        let s = Signer::new(Some("0123456789abcdef0123"));
        let v = s.seal("state", Duration::from_secs(60), &("x", 1));
        assert_eq!(s.open::<(String, u32)>("state", &v), Some(("x".into(), 1)));
        assert_eq!(s.open::<(String, u32)>("carry", &v), None);
    }

    #[test]
    fn tampering_other_keys_and_expiry_fail() {
        let s = Signer::new(Some("0123456789abcdef0123"));
        let v = s.seal("state", Duration::from_secs(60), &"ret");
        let (body, tag) = v.split_once('.').unwrap();
        let forged_body = B64.encode(br#"{"p":"state","e":99999999999,"d":"//evil"}"#);
        assert_eq!(
            s.open::<String>("state", &format!("{forged_body}.{tag}")),
            None
        );
        assert_eq!(s.open::<String>("state", &format!("{body}.AAAA")), None);
        assert_eq!(s.open::<String>("state", "garbage"), None);
        assert_eq!(
            Signer::new(Some("another-secret-value")).open::<String>("state", &v),
            None
        );
        let expired = s.seal("state", Duration::ZERO, &"ret");
        assert_eq!(s.open::<String>("state", &expired), None);
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(random_hex(16), random_hex(16));
        let a = Signer::new(None);
        let v = a.seal("x", Duration::from_secs(9), &1);
        assert_eq!(Signer::new(None).open::<u32>("x", &v), None);
    }
}
