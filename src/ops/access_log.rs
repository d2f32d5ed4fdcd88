//! One JSON line per request. It names the path without its query string and never a header
//! value, so no cookie, `Authorization` or callback token can reach it.
//!
//! This runs once per request, so it is kept cheap: a borrowed struct serialised into a reused
//! per-thread buffer, one `write` per line, and a timestamp formatted once per second.

use crate::proxy::context::RequestCtx;
use pingora::proxy::Session;
use serde::Serialize;
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    time: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    trace_id: &'a str,
    client: Option<IpAddr>,
    method: &'a str,
    path: &'a str,
    status: u16,
    upstream: Option<&'a str>,
    backend: Option<SocketAddr>,
    upstream_time_ms: Option<f64>,
    duration_ms: f64,
    bytes_sent: usize,
    bytes_received: usize,
    error: Option<&'a str>,
    dify_trace_id: Option<&'a str>,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    static CLOCK: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

impl AccessLog {
    /// To `path` (appended, created if needed) or stderr.
    pub fn open(path: Option<&str>) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
            None => Box::new(std::io::stderr()),
        };
        Ok(AccessLog {
            out: Mutex::new(out),
        })
    }

    pub fn write(&self, session: &Session, error: Option<&pingora::Error>, ctx: &RequestCtx) {
        let req = session.req_header();
        let resp = session.response_written();
        let dify_trace_id = resp
            .and_then(|r| r.headers.get("x-trace-id"))
            .and_then(|v| v.to_str().ok());
        CLOCK.with_borrow_mut(|clock| {
            let entry = Entry {
                time: now_to_the_second(clock),
                kind: "access",
                trace_id: &ctx.trace_id,
                client: ctx.client.as_ref().and_then(|c| c.client_ip),
                method: req.method.as_str(),
                path: req.uri.path(),
                status: resp.map_or(0, |r| r.status.as_u16()),
                upstream: ctx.upstream.as_ref().map(|u| u.name.as_str()),
                backend: ctx.backend,
                upstream_time_ms: ctx.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                bytes_sent: session.body_bytes_sent(),
                bytes_received: session.body_bytes_read(),
                error: ctx.error_code.or(error.map(|_| "proxy_error")),
                dify_trace_id,
            };
            LINE.with_borrow_mut(|line| {
                line.clear();
                if serde_json::to_writer(&mut *line, &entry).is_ok() {
                    line.push(b'\n');
                    if let Ok(mut out) = self.out.lock() {
                        let _ = out.write_all(line);
                    }
                }
            });
        });
    }
}

/// RFC 3339 UTC time to the second (as nginx's `$time_iso8601`), formatted once per second.
fn now_to_the_second(clock: &mut (u64, String)) -> &str {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if clock.0 != secs || clock.1.is_empty() {
        let t = time::OffsetDateTime::from_unix_timestamp(secs as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        clock.0 = secs;
        clock.1 = t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
    }
    &clock.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_to_the_second() {
        let mut clock = (0, String::new());
        let t = now_to_the_second(&mut clock).to_string();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
        assert!(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok()
        );
    }
}
