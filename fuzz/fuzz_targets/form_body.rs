//! Callback form bodies and query strings as the SSO flow parses them: never panic; what is parsed
//! serialises and parses back to the same pairs.
#![no_main]

use dify_gateway::sso::SsoRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(data).into_owned().collect();
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        ser.append_pair(k, v);
    }
    let again: Vec<(String, String)> = form_urlencoded::parse(ser.finish().as_bytes())
        .into_owned()
        .collect();
    assert_eq!(pairs, again);
    if let Ok(query) = std::str::from_utf8(data) {
        let headers = http::HeaderMap::new();
        let req = SsoRequest {
            method: &http::Method::GET,
            path: "/qsso_backcall",
            query: Some(query),
            headers: &headers,
            client_ip: None,
            scheme: "http",
            host: "gateway.test",
            trace_id: "fuzz",
        };
        let _ = req.query_param("token");
        let _ = req.query_param("redirect_url");
        let _ = req.wants_json();
    }
});
