//! Keeping secrets out of logs: [`mask`] for log lines, [`Secret`] for configuration values whose
//! `Debug` output might end up in a log or an error message.

use serde::Deserialize;
use std::fmt;

/// What a log line may show of a token, cookie or key: its first 4 characters and its length.
/// Enough to tell two tokens apart while debugging, useless to an attacker.
pub fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}…({} chars)", secret.chars().count())
}

/// A configuration string that must never be printed: `Debug` shows only [`mask`]ed text.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            write!(f, "Secret({})", mask(&self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_shows_only_head_and_length() {
        assert_eq!(mask("eyJhbGciOiJIUzI1NiJ9.abc"), "eyJh…(24 chars)");
        assert_eq!(mask("ab"), "ab…(2 chars)");
        assert_eq!(mask("ünïcode"), "ünïc…(7 chars)");
    }

    #[test]
    fn debug_of_a_secret_never_shows_it() {
        let s = Secret::new("supersecretvalue");
        let shown = format!("{s:?}");
        assert!(!shown.contains("supersecretvalue"), "{shown}");
        assert!(shown.contains("supe"));
    }
}
