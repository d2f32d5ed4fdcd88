//! The process log: JSON lines on stderr by default (one object per line, key-values of the
//! record as fields, so `trace_id` is searchable), or plain text for a person at a terminal.
//!
//! Pingora's own debug logs print whole request headers (cookies, `Authorization`), so the
//! `pingora*` targets are capped at `info` unless `RUST_LOG` names them explicitly.

use env_logger::fmt::Formatter;
use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Record};
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
    let _ = builder.try_init();
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
    fn global_level_reads_bare_levels_only() {
        assert_eq!(global_level("debug"), LevelFilter::Debug);
        assert_eq!(global_level("dify_gateway=trace,warn"), LevelFilter::Warn);
        assert_eq!(global_level("dify_gateway=trace"), LevelFilter::Info);
    }
}
