//! `${VAR}` and `${VAR:-default}` in configuration files, expanded from the environment before the YAML
//! is parsed, the way Dify's own nginx template is filled in. Expansion keeps line numbers intact so
//! that every later error still points at the operator's line.

/// One variable that could not be expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpandError {
    pub line: usize,
    pub message: String,
}

/// Expands every `${NAME}` / `${NAME:-default}`; `$${` is a literal `${`. `lookup` is the environment
/// (a parameter so tests need not touch the process environment).
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ExpandError>> {
    expand_with(text, &lookup)
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn expand_with(text: &str, lookup: Lookup) -> Result<String, Vec<ExpandError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (idx, full_line) in text.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        // Comments are left alone: they document variables, they do not use them.
        let (line, comment) = full_line.split_at(comment_start(full_line));
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let Some(end) = closing_brace(&rest[pos + 2..]).map(|e| e + 2) else {
                errors.push(ExpandError {
                    line: line_no,
                    message: "unterminated ${ (missing })".into(),
                });
                rest = "";
                break;
            };
            match expand_one(&rest[pos + 2..pos + end], lookup) {
                Ok(v) => out.push_str(&v),
                Err(message) => errors.push(ExpandError {
                    line: line_no,
                    message,
                }),
            }
            rest = &rest[pos + end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The value of one `NAME` / `NAME:-default` (the text between `${` and its `}`). The default
/// may itself hold `${...}`, so that a setting can fall back from the gateway's own variable to
/// Dify's (`${DIFY_WEBSOCKET_UPSTREAM:-${NGINX_SOCKET_IO_UPSTREAM:-...}}`). The default is expanded
/// even when it is not used, so every variable the text names is looked up.
fn expand_one(inner: &str, lookup: Lookup) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "${{{inner}}}: expected ${{NAME}} or ${{NAME:-default}}"
        ));
    }
    // Expanded even when the variable is set (so every name is looked up); its errors count only
    // when the default is used.
    let default = default.map(|d| match d.contains("${") {
        true => expand_with(d, lookup).map_err(|errs| {
            let messages: Vec<String> = errs.into_iter().map(|e| e.message).collect();
            messages.join("; ")
        }),
        false => Ok(d.to_string()),
    });
    // As the shell's `:-`, an empty value takes the default; without one, say which it was, since
    // `VAR=` in an env file is a different mistake from a variable never passed in.
    let value = lookup(name);
    let empty = value.as_deref() == Some("");
    match (value.filter(|v| !v.is_empty()), default) {
        (Some(v), _) if v.contains('\n') => {
            Err(format!("environment variable {name} contains a line break"))
        }
        (Some(v), _) => Ok(v),
        (None, Some(d)) => d,
        (None, None) if empty => Err(format!(
            "environment variable {name} is set but empty (give it a value, or use ${{{name}:-default}} for a default)"
        )),
        (None, None) => Err(format!(
            "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
        )),
    }
}

/// The offset of the `}` that closes a `${` whose inside starts `text`, counting nested `${`.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where a YAML comment starts on this line (`#` at the start or after a blank, outside quotes);
/// the line's length when there is none.
fn comment_start(line: &str) -> usize {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return i,
            None => {}
        }
        prev = c;
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_escape() {
        let out = expand(
            "a: ${PORT}\nb: ${NOPE:-x y}\nc: ${EMPTY:-d}\nd: $${PORT}\n",
            env,
        )
        .unwrap();
        assert_eq!(out, "a: 8080\nb: x y\nc: d\nd: ${PORT}\n");
    }

    #[test]
    fn comments_are_not_expanded() {
        let out = expand("# ${NOPE}\na: ${PORT} # ${NOPE:-x}\nb: \"#${PORT}\"\n", env).unwrap();
        assert_eq!(out, "# ${NOPE}\na: 8080 # ${NOPE:-x}\nb: \"#8080\"\n");
    }

    #[test]
    fn reports_every_missing_variable_with_its_line() {
        let errs = expand(
            "a: 1\nb: ${NOPE}\nc: ${ALSO_NOPE}\nd: ${bad-name}\ne: ${X",
            env,
        )
        .unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(errs[0].message.contains("NOPE is not set"));
    }

    #[test]
    fn an_empty_variable_is_called_empty_not_unset() {
        let errs = expand("a: 1\nb: ${EMPTY}\n", env).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 2);
        assert!(
            errs[0].message.contains("EMPTY is set but empty"),
            "{errs:?}"
        );
        assert!(!errs[0].message.contains("not set"), "{errs:?}");
    }

    #[test]
    fn a_default_may_name_another_variable() {
        let out = expand("a: ${NOPE:-${PORT:-1}}\nb: ${NOPE:-${ALSO_NOPE:-x}}\n", env).unwrap();
        assert_eq!(out, "a: 8080\nb: x\n");
        let out = expand("c: ${PORT:-${NOPE:-x}} ${NOPE:-y} ${PORT:-${NOPE}}\n", env).unwrap();
        assert_eq!(out, "c: 8080 y 8080\n");
        let errs = expand("d: ${NOPE:-${ALSO_NOPE}}\ne: ${NOPE:-${X}\n", env).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("ALSO_NOPE is not set"), "{errs:?}");
        assert!(errs[1].message.contains("unterminated"), "{errs:?}");
    }
}
