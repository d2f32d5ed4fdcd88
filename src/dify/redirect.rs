//! Building URLs that carry values: the legacy `?access_token=..&refresh_token=..` landing URL
//! (reference §3) and any other query added to a URL that may already have one.

/// Percent-encodes one query value or key. Spaces become `%20`, not `+`: a server that decodes
/// query strings without form rules still reads them right, and a literal `+` is `%2B`.
pub fn encode_component(value: &str) -> String {
    // byte_serialize writes a space as `+` and a literal `+` as `%2B`, so every `+` left is a space.
    form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `url` with `params` appended to its query (`&` when it already has one, `?` otherwise), before
/// any `#fragment`.
pub fn append_query(url: &str, params: &[(&str, &str)]) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with(['?', '&']) {
        ""
    } else {
        "&"
    };
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect();
    let mut out = format!("{base}{sep}{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_or_ampersand() {
        assert_eq!(
            append_query("/apps", &[("a", "1"), ("b", "2")]),
            "/apps?a=1&b=2"
        );
        assert_eq!(append_query("/apps?x=1", &[("a", "1")]), "/apps?x=1&a=1");
        assert_eq!(append_query("/apps?", &[("a", "1")]), "/apps?a=1");
        assert_eq!(append_query("/apps?x=1&", &[("a", "1")]), "/apps?x=1&a=1");
        assert_eq!(
            append_query("https://d.example.com/apps#top", &[("a", "1")]),
            "https://d.example.com/apps?a=1#top"
        );
    }

    #[test]
    fn awkward_values_survive_form_decoding() {
        let value = "a&b=c%d+e f/ü?#";
        let url = append_query("/apps?x=1", &[("access_token", value)]);
        assert!(!url.contains(' ') && url.is_ascii(), "{url}");
        let query = url.split_once('?').unwrap().1;
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            pairs,
            [
                ("x".to_string(), "1".to_string()),
                ("access_token".to_string(), value.to_string())
            ]
        );
    }
}
