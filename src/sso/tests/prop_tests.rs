//! Property tests of the cookie header reader (issue 8).

use crate::sso::browser_cookies::read;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

fn headers(values: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(http::header::COOKIE, v);
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn reading_arbitrary_cookie_headers_never_panics(
        values in prop::collection::vec("[ -~]{0,80}", 0..4),
        name in "[a-z_]{1,12}",
    ) {
        let _ = read(&headers(&values), &name);
    }

    /// A cookie is found among others, whatever the spacing, and the first one wins.
    #[test]
    fn finds_the_first_cookie_of_that_name(
        others in prop::collection::vec(("[a-z]{1,8}", "[A-Za-z0-9._-]{0,16}"), 0..5),
        value in "[A-Za-z0-9._-]{0,40}",
        later in "[A-Za-z0-9._-]{0,10}",
        sep in "; ?",
    ) {
        let name = "dg_sso_state";
        let mut parts: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let at = parts.len() / 2;
        parts.insert(at, format!("{name}={value}"));
        parts.push(format!("{name}={later}"));
        let h = headers(&[parts.join(&sep)]);
        prop_assert_eq!(read(&h, name), Some(value));
    }

    /// A name that is only a suffix or prefix of another cookie's name does not match it.
    #[test]
    fn never_matches_another_name(value in "[A-Za-z0-9]{0,10}") {
        let h = headers(&[format!("xdg_sso_state={value}; dg_sso_state_x={value}")]);
        prop_assert_eq!(read(&h, "dg_sso_state"), None);
    }
}
