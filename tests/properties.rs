//! Property tests (issue 8), in the normal suite: config expansion and parsing, path normalisation,
//! redirect target validation, form body parsing. (The private cookie reader's properties live next
//! to it, in `src/sso/prop_tests.rs`.)

use dify_gateway::config::Config;
use dify_gateway::config::expand::expand;
use dify_gateway::config::units::{parse_duration, parse_size};
use dify_gateway::routing::RouteTable;
use dify_gateway::routing::path::normalize;
use dify_gateway::sso::return_target::safe_return_target;
use proptest::prelude::*;

const RESERVED: [&str; 2] = ["/signin", "/qsso_backcall"];

/// The gateway answers these itself (`/signin`, the callback with or without a trailing slash,
/// `/sso/...`); `/qsso_backcall{` is another path.
fn re_enters_flow(p: &str) -> bool {
    let bare = p.trim_end_matches('/');
    bare == "/signin"
        || bare == "/qsso_backcall"
        || p.starts_with("/qsso_backcall/")
        || p.starts_with("/sso/")
}

/// Regression from `fuzz/run.sh` (return_target, crash-bf13350f): `/qsso_backcall{/{` was flagged
/// by a too-broad oracle (a string prefix of the callback path). It is a different path, not the
/// callback; the real callback spellings are refused.
#[test]
fn fuzz_regression_callback_lookalike_is_another_path() {
    let ok = safe_return_target("/qsso_backcall{/{", &RESERVED).expect("a different path");
    assert!(!re_enters_flow(&normalize(&ok).unwrap()));
    for flow in [
        "/qsso_backcall",
        "/qsso_backcall/",
        "/qsso_backcall/x",
        "/qsso_backcal%6c",
        "/qsso_backcall%2f",
        "/%73ignin",
        "/sso/continue",
    ] {
        assert_eq!(safe_return_target(flow, &RESERVED), None, "{flow}");
    }
}

/// Regression from `fuzz/run.sh` (return_target, crash-e6cf933c, 1121 bytes of `/{{//</{/!/!Â'...`):
/// a target under the 2048-byte limit was accepted, but its percent-encoded form (3x longer) was
/// over it, so the same check at `/sso/continue` refused what `/signin` had sealed into the state
/// cookie (and the cookie could outgrow what browsers keep). The encoded form is now limited too.
#[test]
fn fuzz_regression_encoded_target_must_fit_the_limit() {
    let raw = format!("/{{{{//</{{/!/!{}", "Â'".repeat(400));
    assert!(raw.len() < 2048);
    match safe_return_target(&raw, &RESERVED) {
        None => {}
        Some(ok) => {
            assert!(ok.len() <= 2048, "{} bytes", ok.len());
            assert_eq!(safe_return_target(&ok, &RESERVED), Some(ok.clone()));
        }
    }
    let fits = format!("/apps/{}", "é".repeat(300));
    let ok = safe_return_target(&fits, &RESERVED).expect("1.8 KB encoded fits");
    assert_eq!(safe_return_target(&ok, &RESERVED), Some(ok.clone()));
}

/// Paths built from the pieces that matter: slashes, dots, escapes, the closed endpoints' names.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just("/.".to_string()),
        Just("/..".to_string()),
        Just("%2f".to_string()),
        Just("%2F".to_string()),
        Just("%2e".to_string()),
        Just("%25".to_string()),
        Just("%00".to_string()),
        Just("%".to_string()),
        Just("\\".to_string()),
        Just(";".to_string()),
        Just("console".to_string()),
        Just("api".to_string()),
        Just("login".to_string()),
        Just("signin".to_string()),
        Just("%6cogin".to_string()),
        Just("%73ignin".to_string()),
        Just("é".to_string()),
        "[a-zA-Z0-9._~-]{1,6}",
        "%[0-9a-fA-F]{2}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

/// What werkzeug's router acts on: the percent-decoded path with `//` merged (werkzeug redirects
/// to the merged form) and dot segments resolved (browsers and the gateway's route both resolve
/// them; werkzeug would 404 them, which only makes it stricter).
fn dify_view(raw: &str) -> Option<String> {
    let decoded = percent_encoding_decode(raw)?;
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop()?;
            }
            s => segs.push(s),
        }
    }
    let mut out: String = segs.iter().map(|s| format!("/{s}")).collect();
    if out.is_empty()
        || (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/.."))
            && !out.ends_with('/')
    {
        out.push('/');
    }
    Some(out)
}

fn percent_encoding_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalize_is_idempotent(raw in tricky_path()) {
        if let Ok(once) = normalize(&raw) {
            let twice = normalize(&once).map(|c| c.into_owned());
            // `%` that came from `%25` may not decode again: the second pass must not change
            // anything else.
            if !once.contains('%') {
                prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
            }
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"));
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            prop_assert!(!once.chars().any(char::is_control));
        }
    }

    #[test]
    fn normalize_never_panics_on_anything(raw in ".{0,64}") {
        let _ = normalize(&raw);
    }

    /// The gateway routes (and applies SSO rules) on what Dify will see: same route, and anything
    /// Dify would decode to a closed login endpoint is refused or seen as that endpoint.
    #[test]
    fn normalize_routes_like_dify(raw in tricky_path()) {
        let table = RouteTable::new(&dify_gateway::config::stock_routes());
        match (normalize(&raw), dify_view(&raw)) {
            (Ok(ours), Some(theirs)) => {
                prop_assert_eq!(ours.as_ref(), theirs.as_str());
                prop_assert_eq!(format!("{:?}", table.find(&ours)), format!("{:?}", table.find(&theirs)));
            }
            // What Dify could not decode either, or would refuse, we may refuse; but we never
            // accept what cannot be decoded.
            (Ok(ours), None) => prop_assert!(false, "accepted undecodable {raw:?} as {ours:?}"),
            (Err(_), _) => {}
        }
    }

    #[test]
    fn return_targets_never_leave_the_site(raw in prop_oneof![
        ".{0,40}",
        "(/|//|\\\\|https?:|javascript:|data:|%2f|%5c|@|\t|\n| |\\.|\\.\\.|[a-z]{1,5}){1,8}",
    ]) {
        if let Some(ok) = safe_return_target(&raw, &RESERVED) {
            prop_assert!(ok.starts_with('/'), "{raw:?} -> {ok:?}");
            prop_assert!(!ok.starts_with("//") && !ok.starts_with("/\\"), "{raw:?} -> {ok:?}");
            // A browser resolving it against our origin stays on our origin.
            let base = url::Url::parse("https://dify.example.com/").unwrap();
            let to = base.join(&ok).unwrap();
            prop_assert_eq!(to.origin(), base.origin(), "{:?} -> {:?}", raw, ok);
            prop_assert!(!ok.chars().any(|c| c.is_control()));
            // Not back into the sign-in flow, even spelled differently.
            let p = normalize(to.path()).map(|c| c.into_owned()).unwrap_or_default();
            prop_assert!(!re_enters_flow(&p), "{raw:?}");
            // Accepted targets are stable.
            prop_assert_eq!(safe_return_target(&ok, &RESERVED), Some(ok.clone()));
        }
    }

    #[test]
    fn form_bodies_parse_without_panic_and_round_trip(pairs in prop::collection::vec(("\\PC{0,12}", "\\PC{0,24}"), 0..6)) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            ser.append_pair(k, v);
        }
        let body = ser.finish();
        let back: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
        prop_assert_eq!(back, pairs);
    }

    #[test]
    fn form_parse_of_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for (k, v) in form_urlencoded::parse(&body) {
            prop_assert!(k.len() <= body.len() * 3 && v.len() <= body.len() * 3);
        }
    }

    #[test]
    fn expansion_keeps_lines_and_substitutes(
        name in "[A-Z][A-Z0-9_]{0,8}",
        value in "[a-zA-Z0-9./:-][a-zA-Z0-9 ./:-]{0,19}",
        default in "[a-zA-Z0-9./:-]{0,10}",
        prefix in "[a-z: ]{0,8}",
        lines in 0usize..4,
    ) {
        let padding = "x: 1\n".repeat(lines);
        let text = format!("{padding}{prefix}${{{name}}} ${{{name}_UNSET:-{default}}} $${{{name}}}\n# ${{NOPE\n");
        let out = expand(&text, |k| (k == name).then(|| value.clone())).unwrap();
        prop_assert_eq!(out.lines().count(), text.lines().count());
        let line = out.lines().nth(lines).unwrap();
        prop_assert_eq!(line.to_string(), format!("{prefix}{value} {default} ${{{name}}}"));
        // Comments are left alone.
        let tail = "# ${NOPE\n";
        prop_assert!(out.ends_with(tail), "comment changed: {:?}", out);
    }

    #[test]
    fn expansion_never_panics(text in "(\\$|\\{|\\}|:-|[A-Z]|\n|#| ){0,40}") {
        let _ = expand(&text, |_| Some("v".into()));
    }

    #[test]
    fn config_from_arbitrary_text_never_panics(text in "(server:|limits:|  |\n|listen: |read_timeout: |[0-9]{1,4}|s|ms|M|\\$\\{X\\}|\"|-|\\[|\\]){0,30}") {
        let _ = Config::from_text(&text, "prop.yaml", |_| None);
    }

    #[test]
    fn durations_and_sizes_parse_what_they_print(secs in 1u64..100_000, mb in 1u64..4096) {
        prop_assert_eq!(parse_duration(&format!("{secs}s")).unwrap().as_secs(), secs);
        prop_assert_eq!(parse_size(&format!("{mb}M")).unwrap(), mb << 20);
        let yaml = format!("limits:\n  read_timeout: {secs}s\n  client_header_timeout: {secs}s\n  client_max_body_size: {mb}M\n");
        let c = Config::from_text(&yaml, "prop.yaml", |_| None).unwrap();
        prop_assert_eq!(c.limits.read_timeout.as_secs(), secs);
        prop_assert_eq!(c.limits.client_header_timeout.as_secs(), secs);
        prop_assert_eq!(c.limits.client_max_body_size, mb << 20);
    }
}
