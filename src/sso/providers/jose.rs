//! Reading JOSE objects the OIDC provider sends: the parts of a compact JWS, and which keys of
//! a fetched JWKS may verify signatures at all. Signatures themselves are checked by the
//! `openidconnect` crate.

use super::http;

/// RFC 7518 §3.3: RSA keys for RS*/PS* are at least 2048 bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The JSON payload of a compact JWS (read only after its signature checked out).
pub fn payload(raw: &str) -> Option<serde_json::Value> {
    jws_part(raw, 1)
}

/// The JOSE header of a compact JWS (only to name its `kid` in a refusal).
pub fn header(raw: &str) -> Option<serde_json::Value> {
    jws_part(raw, 0)
}

fn jws_part(raw: &str, index: usize) -> Option<serde_json::Value> {
    let part = raw.split('.').nth(index)?;
    serde_json::from_slice(&b64url(part)?).ok()
}

fn b64url(part: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()
}

/// Splits a fetched JWKS into the keys that may verify signatures and the ones that must not
/// (each kid with why): RSA under [`MIN_RSA_BITS`], keys for encryption (`use` other than `sig`),
/// EC keys whose curve does not fit their `alg`. None if it is not a key set at all.
pub fn usable_keys(
    mut jwks: serde_json::Value,
) -> Option<(serde_json::Value, Vec<(String, String)>)> {
    let keys = jwks.get_mut("keys")?.as_array_mut()?;
    let mut refused = Vec::new();
    keys.retain(|k| {
        let why = unusable(k);
        if let Some(why) = &why {
            let kid = k.get("kid").and_then(|v| v.as_str()).map(http::short);
            refused.push((kid.unwrap_or_else(|| "(no kid)".into()), why.clone()));
        }
        why.is_none()
    });
    Some((jwks, refused))
}

fn unusable(key: &serde_json::Value) -> Option<String> {
    let field = |n: &str| key.get(n).and_then(|v| v.as_str());
    if let Some(u) = field("use")
        && u != "sig"
    {
        return Some(format!(
            "it is for {:?}, not for signatures",
            http::short(u)
        ));
    }
    match field("kty") {
        Some("RSA") => {
            let Some(n) = field("n").and_then(b64url) else {
                return Some("its RSA modulus cannot be read".into());
            };
            let bits = rsa_bits(&n);
            (bits < MIN_RSA_BITS)
                .then(|| format!("an RSA key of {bits} bits, at least {MIN_RSA_BITS} are required"))
        }
        Some("EC") => {
            let want = match field("alg")? {
                "ES256" => "P-256",
                "ES384" => "P-384",
                "ES512" => "P-521",
                _ => return None,
            };
            let crv = field("crv").unwrap_or("");
            (crv != want).then(|| {
                format!(
                    "its curve {:?} does not fit its algorithm (wants {want})",
                    http::short(crv)
                )
            })
        }
        _ => None,
    }
}

/// Bit length of a big-endian unsigned integer.
fn rsa_bits(n: &[u8]) -> usize {
    match n.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (n.len() - i) * 8 - n[i].leading_zeros() as usize,
    }
}
