//! `routing::path::normalize`: never panics; what it accepts is absolute, has no `//`, no dot
//! segments, no control characters, and normalising it again changes nothing.
#![no_main]

use dify_gateway::routing::path::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(once) = normalize(raw) {
        assert!(once.starts_with('/'), "{raw:?} -> {once:?}");
        assert!(!once.contains("//"), "{raw:?} -> {once:?}");
        assert!(
            !once.split('/').any(|s| s == "." || s == ".."),
            "{raw:?} -> {once:?}"
        );
        assert!(!once.chars().any(char::is_control), "{raw:?} -> {once:?}");
        if !once.contains('%') {
            assert_eq!(normalize(&once).unwrap(), once, "not idempotent on {raw:?}");
        }
    }
});
