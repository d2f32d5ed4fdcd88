//! One JSON line per request. It names the path without its query string and never a header
//! value, so no cookie, `Authorization` or callback token can reach it.

use crate::ops::logging::now_rfc3339;
use crate::proxy::context::RequestCtx;
use pingora::proxy::Session;
use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::sync::Mutex;

pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
}

impl AccessLog {
    /// To `path` (appended, created if needed) or stderr.
    pub fn open(path: Option<&str>) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => Box::new(std::io::stderr()),
        };
        Ok(AccessLog {
            out: Mutex::new(out),
        })
    }

    pub fn write(&self, session: &Session, error: Option<&pingora::Error>, ctx: &RequestCtx) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let dify_trace = session
            .response_written()
            .and_then(|r| r.headers.get("x-trace-id"))
            .and_then(|v| v.to_str().ok());
        let client = ctx
            .client
            .as_ref()
            .and_then(|c| c.client_ip)
            .map(|ip| ip.to_string());
        let line = serde_json::json!({
            "time": now_rfc3339(),
            "type": "access",
            "trace_id": ctx.trace_id,
            "client": client,
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "status": status,
            "upstream": ctx.upstream.as_ref().map(|u| u.name.as_str()),
            "backend": ctx.backend.map(|a| a.to_string()),
            "upstream_time_ms": ctx.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            "duration_ms": ctx.started.elapsed().as_secs_f64() * 1000.0,
            "bytes_sent": session.body_bytes_sent(),
            "bytes_received": session.body_bytes_read(),
            "error": ctx.error_code.or(error.map(|_| "proxy_error")),
            "dify_trace_id": dify_trace,
        });
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }
}
