//! The request-cookie readers of the SSO flow: never panic on any `Cookie` header; a value found
//! is a substring of the header.
#![no_main]

use dify_gateway::sso::{flow_cookies, read_cookie};
use http::{HeaderMap, HeaderValue, header::COOKIE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(COOKIE, v);
        }
    }
    for name in ["dg_sso_state", "dg_sso_carry", "dg_sso_loop", "a", ""] {
        if let Some(v) = read_cookie(&headers, name) {
            assert!(
                data.windows(v.len().max(1))
                    .any(|w| v.is_empty() || w == v.as_bytes())
            );
        }
    }
    let _ = flow_cookies(&headers);
});
