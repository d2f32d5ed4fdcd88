//! `sso::return_target::safe_return_target`: never panics and never accepts a target that leaves
//! the site or re-enters the sign-in flow.
#![no_main]

use dify_gateway::routing::path::normalize;
use dify_gateway::sso::return_target::safe_return_target;
use libfuzzer_sys::fuzz_target;

const RESERVED: [&str; 2] = ["/signin", "/qsso_backcall"];

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(ok) = safe_return_target(raw, &RESERVED) {
        assert!(
            ok.starts_with('/') && !ok.starts_with("//"),
            "{raw:?} -> {ok:?}"
        );
        let base = url::Url::parse("https://dify.example.com/").unwrap();
        let to = base.join(&ok).expect("joins");
        assert_eq!(to.origin(), base.origin(), "{raw:?} -> {ok:?}");
        assert!(
            !ok.chars().any(|c| c.is_control() || c == '\\'),
            "{raw:?} -> {ok:?}"
        );
        let p = normalize(to.path())
            .map(|c| c.into_owned())
            .unwrap_or_default();
        assert!(!re_enters_flow(&p), "{raw:?} -> {ok:?} re-enters the flow");
        assert_eq!(
            safe_return_target(&ok, &RESERVED).as_deref(),
            Some(ok.as_str())
        );
    }
});

/// The gateway answers these itself (`/signin`, the callback with or without a trailing slash,
/// `/sso/...`): a return target there would restart the flow. `/qsso_backcall{` is another path.
fn re_enters_flow(p: &str) -> bool {
    let bare = p.trim_end_matches('/');
    bare == "/signin"
        || bare == "/qsso_backcall"
        || p.starts_with("/qsso_backcall/")
        || p.starts_with("/sso/")
}
