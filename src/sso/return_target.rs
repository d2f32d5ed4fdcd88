//! Where a browser may be sent after sign-in: only a same-origin relative path. Anything else (other
//! hosts, schemes, browser quirks with backslashes or encoded slashes, control characters) lands on
//! `dify.home` instead, so `/signin?redirect_url=` can never be an open redirect.

const MAX_LEN: usize = 2048;

/// The safe path-and-query for `raw` (already form-decoded from `redirect_url`), or None.
/// `reserved` are gateway paths (sign-in, callback) that would restart the flow.
pub fn safe_return_target(raw: &str, reserved: &[&str]) -> Option<String> {
    if raw.len() > MAX_LEN || !looks_like_local_path(raw) {
        return None;
    }
    // Browsers and front ends may decode again before following: the decoded forms must pass too.
    // Only the path: an encoded space or newline inside a query value stays encoded and harmless.
    let path_part = raw.split(['?', '#']).next().unwrap_or_default();
    let mut decoded = path_part.to_string();
    for _ in 0..3 {
        let next: String = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        if !looks_like_local_path(&next) || next.contains(['?', '#']) {
            return None;
        }
        decoded = next;
    }
    // Resolve as a browser would against a placeholder origin; the origin must not change.
    let base = url::Url::parse("https://gateway.invalid/").expect("valid base");
    let joined = base.join(raw).ok()?;
    if joined.origin() != base.origin() || joined.username() != "" || joined.password().is_some() {
        return None;
    }
    // Reserved paths are matched on the path the gateway routes on (`/%73ignin` is `/signin`).
    let normalized = crate::routing::path::normalize(joined.path()).ok()?;
    let path: &str = &normalized;
    let lands_in_flow = reserved.iter().any(|r| {
        let r = r.trim_end_matches('/');
        path == r || path.starts_with(&format!("{r}/"))
    });
    if lands_in_flow || path.starts_with("/sso/") {
        return None;
    }
    let mut out = joined.path().to_string();
    if let Some(q) = joined.query() {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = joined.fragment() {
        out.push('#');
        out.push_str(f);
    }
    // Percent-encoding can triple the length: the result must fit too (it goes into the sealed
    // state cookie, and is checked again, with the same limit, at /sso/continue).
    if out.len() > MAX_LEN {
        return None;
    }
    Some(out)
}

fn looks_like_local_path(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        // Browsers drop tabs and newlines inside URLs and read `\` as `/`; `@` suggests userinfo.
        && !s.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '@')
        && !s.contains("/./") && !s.contains("/../")
}

fn percent_decode(s: &str) -> String {
    // Only `%XX` (no `+`): this is about what a path decoder would produce.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESERVED: [&str; 2] = ["/signin", "/qsso_backcall"];

    #[test]
    fn local_paths_pass_unchanged() {
        for ok in [
            "/apps",
            "/apps/x",
            "/app/123/workflow?tab=logs",
            "/datasets#top",
            "/explore/apps",
            "/apps?q=a%20b",
        ] {
            assert_eq!(
                safe_return_target(ok, &RESERVED).as_deref(),
                Some(ok),
                "{ok}"
            );
        }
    }

    #[test]
    fn non_ascii_is_percent_encoded() {
        assert_eq!(
            safe_return_target("/apps/ü", &RESERVED).as_deref(),
            Some("/apps/%C3%BC")
        );
    }

    include!("../../tests/fixtures/open_redirects.rs");

    #[test]
    fn open_redirect_corpus_is_refused() {
        for attack in OPEN_REDIRECT_CORPUS {
            assert_eq!(
                safe_return_target(attack, &RESERVED),
                None,
                "accepted {attack:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_LEN));
        assert_eq!(safe_return_target(&long, &RESERVED), None);
    }
}
