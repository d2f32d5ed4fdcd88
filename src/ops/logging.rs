//! The process log: JSON lines on stderr by default (one object per line, key-values of the
//! record as fields, so `trace_id` is searchable), or plain text for a person at a terminal.
//!
//! Pingora's own debug logs print whole request headers (cookies, `Authorization`), so the
//! `pingora*` targets are capped at `info` unless `RUST_LOG` names them explicitly. Pingora's
//! routine misses, logged by it at ERROR, are lowered to the level they deserve
//! ([`pingora_level`]), so an alert on ERROR means something is wrong.

use env_logger::fmt::Formatter;
use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Record};
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the logger; `spec` is `RUST_LOG` (default `info`).
pub fn init(format: LogFormat, spec: Option<&str>) {
    let spec = spec.unwrap_or("info");
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(spec);
    if !spec.contains("pingora") {
        builder.filter_module("pingora", global_level(spec).min(LevelFilter::Info));
        // Its health-check lines are replaced by shorter ones of ours (routing::upstream).
        builder.filter_module("pingora_load_balancing", LevelFilter::Error);
    }
    builder.target(env_logger::Target::Stderr);
    match format {
        LogFormat::Json => builder.format(write_json),
        LogFormat::Text => builder.format(write_text),
    };
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Leveled { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// env_logger, with Pingora's own messages at the level they deserve (see [`pingora_level`]).
struct Leveled {
    inner: env_logger::Logger,
}

impl log::Log for Leveled {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        // Only Pingora's warnings and errors are looked at; everything else passes untouched.
        if record.level() <= Level::Warn && record.target().starts_with("pingora") {
            let level = match record.args().as_str() {
                Some(text) => pingora_level(text, record.level()),
                None => pingora_level(&record.args().to_string(), record.level()),
            };
            if level != record.level() {
                let relevelled = Record::builder()
                    .args(*record.args())
                    .level(level)
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .key_values(record.key_values())
                    .build();
                // Filtered again at the new level: a debug line stays out under `info`.
                return self.inner.log(&relevelled);
            }
        }
        self.inner.log(record)
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Pingora logs at ERROR what is routine for a proxy: an idle upstream connection that could not
/// be reused (it then opens a new one and nothing fails; about ten a minute for one user
/// browsing), a client that left or failed its TLS handshake. An operator alerting on ERROR would
/// be paged for those; they are debug or info here, as nginx logs client-caused failures at info.
/// Anything not listed (`Accept() failed`, `Crit: ...`, failures to bind or hand sockets over)
/// keeps Pingora's level.
fn pingora_level(message: &str, level: Level) -> Level {
    const MAPPED: [(&str, Level); 12] = [
        ("failed to acquire reusable stream", Level::Debug),
        ("Idle unix connection is broken", Level::Debug),
        ("Downstream handshake error", Level::Info),
        ("Downstream handshake timeout", Level::Info),
        ("H2 handshake error", Level::Info),
        ("HTTP server fails to read from downstream", Level::Info),
        ("HTTP server fails to write to downstream", Level::Info),
        ("HTTP server fails to finish the request", Level::Info),
        ("Error finish sending body to downstream", Level::Info),
        ("failed to send error response to downstream", Level::Info),
        ("send error, draining read buf", Level::Info),
        ("Peer sent more data than expected", Level::Info),
    ];
    MAPPED
        .iter()
        .find(|(prefix, _)| message.starts_with(prefix))
        .map_or(level, |(_, l)| *l)
}

/// The level a spec gives targets it does not name (`info` when it names none).
fn global_level(spec: &str) -> LevelFilter {
    spec.split(',')
        .filter(|d| !d.contains('='))
        .filter_map(|d| d.trim().parse::<LevelFilter>().ok())
        .next_back()
        .unwrap_or(LevelFilter::Info)
}

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = match value.to_u64() {
            Some(n) => serde_json::Value::from(n),
            None => serde_json::Value::from(value.to_string()),
        };
        self.0.insert(key.as_str().to_string(), v);
        Ok(())
    }
}

fn write_json(buf: &mut Formatter, record: &Record) -> std::io::Result<()> {
    let mut fields = JsonFields(serde_json::Map::new());
    fields.0.insert("time".into(), now_rfc3339().into());
    fields
        .0
        .insert("level".into(), record.level().as_str().into());
    fields.0.insert("target".into(), record.target().into());
    fields
        .0
        .insert("message".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut fields);
    writeln!(buf, "{}", serde_json::Value::Object(fields.0))
}

struct TextFields(String);

impl<'kvs> VisitSource<'kvs> for TextFields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

fn write_text(buf: &mut Formatter, record: &Record) -> std::io::Result<()> {
    let mut kv = TextFields(String::new());
    let _ = record.key_values().visit(&mut kv);
    writeln!(
        buf,
        "{} {:5} {}: {}{}",
        now_rfc3339(),
        record.level(),
        record.target(),
        record.args(),
        kv.0
    )
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_routine_misses_are_not_errors() {
        let e = Level::Error;
        assert_eq!(
            pingora_level("failed to acquire reusable stream", e),
            Level::Debug
        );
        assert_eq!(
            pingora_level("Downstream handshake error from 10.0.0.1:5000: TLS", e),
            Level::Info
        );
        assert_eq!(
            pingora_level(
                "Peer sent more data than expected: extra 3 bytes",
                Level::Warn
            ),
            Level::Info
        );
        // Real errors stay errors.
        assert_eq!(pingora_level("Accept() failed Too many open files", e), e);
        assert_eq!(pingora_level("Crit: socket is being double closed", e), e);
        assert_eq!(
            pingora_level("Unable to send listener sockets to new process: x", e),
            e
        );
    }

    #[test]
    fn global_level_reads_bare_levels_only() {
        assert_eq!(global_level("debug"), LevelFilter::Debug);
        assert_eq!(global_level("dify_gateway=trace,warn"), LevelFilter::Warn);
        assert_eq!(global_level("dify_gateway=trace"), LevelFilter::Info);
    }
}
