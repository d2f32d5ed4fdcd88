//! The path Dify's server will act on. Routing and SSO decisions are made on this normalised form
//! (percent escapes decoded, `//` merged, `.` and `..` resolved, as werkzeug and nginx do), so that
//! `/%73ignin` or `/console/api//login` cannot slip past a rule written for `/signin`. The request is
//! still forwarded with the URI the client sent.

use std::borrow::Cow;

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not valid UTF-8 after decoding, or a malformed escape.
    Undecodable,
    /// NUL or another control character.
    ControlCharacter,
    /// `..` above the root.
    EscapesRoot,
}

impl PathError {
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::Undecodable => "the request path is not valid percent-encoded UTF-8",
            PathError::ControlCharacter => "the request path contains a control character",
            PathError::EscapesRoot => "the request path climbs above the root",
        }
    }
}

pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let needs_work = raw.contains(['%', '\\'])
        || raw.contains("//")
        || raw.contains("/.")
        || !raw.starts_with('/');
    let decoded: Cow<str> = if raw.contains('%') {
        let bytes = percent_decode(raw.as_bytes())?;
        Cow::Owned(String::from_utf8(bytes).map_err(|_| PathError::Undecodable)?)
    } else {
        Cow::Borrowed(raw)
    };
    if decoded.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlCharacter);
    }
    if !needs_work {
        return Ok(decoded);
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::EscapesRoot)?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Strict percent decoding: `%` must be followed by two hex digits.
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3).ok_or(PathError::Undecodable)?;
            let s = std::str::from_utf8(hex).map_err(|_| PathError::Undecodable)?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| PathError::Undecodable)?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_the_upstream_server() {
        for (raw, want) in [
            ("/signin", "/signin"),
            ("//signin", "/signin"),
            ("/./signin", "/signin"),
            ("/%73ignin", "/signin"),
            ("/console/api//login", "/console/api/login"),
            ("/console/api/%6cogin", "/console/api/login"),
            ("/console/api/./login", "/console/api/login"),
            ("/console/api/../api/login", "/console/api/login"),
            ("/signin/", "/signin/"),
            ("/", "/"),
            ("/a/..", "/"),
            ("/e/", "/e/"),
            ("/%E4%B8%AD", "/中"),
        ] {
            assert_eq!(normalize(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_normalised() {
        assert_eq!(
            normalize("/console/api/login%00"),
            Err(PathError::ControlCharacter)
        );
        assert_eq!(normalize("/a%0d%0ab"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/%zz"), Err(PathError::Undecodable));
        assert_eq!(normalize("/%"), Err(PathError::Undecodable));
        assert_eq!(normalize("/%ff%fe"), Err(PathError::Undecodable));
        assert_eq!(normalize("/../etc/passwd"), Err(PathError::EscapesRoot));
    }
}
