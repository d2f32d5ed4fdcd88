//! Durations (`10s`, `500ms`, `1h`, or a bare number of seconds as nginx reads it) and sizes (`100M`,
//! `100MiB`, `64k`) in configuration files.

use serde::{Deserialize, Deserializer, de};
use std::time::Duration;

/// A duration written the way an nginx operator writes one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("expected a duration such as 10s, 500ms or 1h, got {t:?} ({e})"))
}

/// A size in bytes. Everything nginx's size grammar accepts reads as nginx reads it: bare bytes
/// (`0` included) and `k`, `m`, `g` in either case (powers of 1024). `KiB`, `MiB`, `GiB` are the
/// same multiples; `KB`, `MB`, `GB` are decimal. What 0 means is the field's to say.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("expected a size such as 100M, 100MiB or 65536, got {t:?}");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "b" | "B" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "m" | "M" | "MiB" => 1 << 20,
        "g" | "G" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Accepts a YAML string or a YAML number (seconds / bytes).
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Text(String),
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(Duration::from_secs(n)),
        Raw::Text(s) => parse_duration(&s).map_err(de::Error::custom),
    }
}

pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(s) => parse_size(&s).map_err(de::Error::custom),
    }
}

/// A thread count: a number, or `auto` for one per CPU core (nginx `worker_processes auto`).
pub fn de_threads<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = match Raw::deserialize(d)? {
        Raw::Int(n) => n,
        Raw::Text(s) if s.trim().eq_ignore_ascii_case("auto") => {
            return Ok(std::thread::available_parallelism().map_or(2, |n| n.get()));
        }
        Raw::Text(s) => s.trim().parse().map_err(|_| {
            de::Error::custom(format!("expected a number of threads or auto, got {s:?}"))
        })?,
    };
    usize::try_from(n).map_err(|_| de::Error::custom("expected a number of threads or auto"))
}

/// A list written as a YAML list or as one comma-separated string (handy from an environment
/// variable); blanks are dropped.
pub fn de_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list = match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    };
    Ok(list
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A list written as a YAML list or as one string of words separated by blanks or commas
/// (nginx's `ssl_protocols TLSv1.2 TLSv1.3`).
pub fn de_word_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(de_string_list(d)?
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_string)
        .collect())
}

/// A switch: a YAML boolean, or `true` / `false` / empty (off) as text from an environment
/// variable. Anything else is an error rather than nginx's silent "not true, so off".
pub fn de_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(b),
        Raw::Text(s) => match s.trim() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            other => Err(de::Error::custom(format!(
                "expected true or false, got {other:?}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("ten seconds").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100M").unwrap(), 100 << 20);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("42").unwrap(), 42);
        // nginx's own forms, as Dify's .env writes them.
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("0m").unwrap(), 0);
        assert_eq!(parse_size("15m").unwrap(), 15 << 20);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
