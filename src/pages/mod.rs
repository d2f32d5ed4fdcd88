//! Answers the gateway writes itself: an HTML page for a person, JSON with a code for a program.
//! Never an empty body, always the trace id, so a user can quote it to an administrator.

use bytes::Bytes;
use http::HeaderMap;

/// Paths called by programs (Dify's APIs and webhooks): errors there are JSON.
const API_PREFIXES: [&str; 8] = [
    "/console/api",
    "/api",
    "/v1",
    "/files",
    "/mcp",
    "/triggers",
    "/openapi",
    "/e/",
];

/// Whether the caller wants JSON: an API path, or an `Accept` that prefers JSON to HTML.
pub fn wants_json(path: &str, headers: &HeaderMap) -> bool {
    if API_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("json") && !accept.contains("text/html")
}

/// A rendered answer: status, content type and body.
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

/// An error of the gateway's own (not an upstream's answer).
pub struct ErrorPage<'a> {
    pub status: u16,
    /// Stable, machine-readable: `upstream_unreachable`, `payload_too_large`, ...
    pub code: &'a str,
    /// Plain language, for the person reading it.
    pub message: &'a str,
    pub trace_id: &'a str,
}

impl ErrorPage<'_> {
    pub fn render(&self, json: bool) -> Page {
        if json {
            let body = serde_json::json!({
                "code": self.code,
                "message": self.message,
                "status": self.status,
                "trace_id": self.trace_id,
            });
            return Page {
                status: self.status,
                content_type: "application/json",
                body: Bytes::from(body.to_string()),
            };
        }
        let title = status_title(self.status);
        let body = format!(
            "<h1>{} {title}</h1>\n<p>{}</p>\n<p><a class=\"btn\" href=\"\">Try again</a> or go to the \
             <a href=\"/\">start page</a>.</p>\n<p class=\"muted\">If it keeps happening, give your \
             administrator this trace id: <code>{}</code></p>",
            self.status,
            escape(self.message),
            escape(self.trace_id)
        );
        Page {
            status: self.status,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(layout(&format!("{} {title}", self.status), &body)),
        }
    }
}

/// Pages carry no scripts and load nothing; forms may only post back to the gateway.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// The HTML frame every page of the gateway shares; `body_html` brings its own heading.
pub fn layout(title: &str, body_html: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;\
         padding:0 1rem;color:#1f2937}}h1{{font-size:1.5rem}}code{{background:#f3f4f6;padding:.1rem .3rem}}\
         .btn{{display:inline-block;background:#155eef;color:#fff;border:0;border-radius:.4rem;\
         padding:.6rem 1.1rem;font-size:1rem;text-decoration:none;cursor:pointer}}\
         .muted{{color:#6b7280;font-size:.9rem}}</style></head>\n<body>\n{body_html}\n</body></html>\n",
        t = escape(title)
    )
}

pub fn status_title(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// HTML escaping for text placed in pages.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_and_json_clients_get_json() {
        let none = HeaderMap::new();
        assert!(wants_json("/console/api/apps", &none));
        assert!(wants_json("/e/hook", &none));
        assert!(!wants_json("/apps", &none));
        let mut accept = HeaderMap::new();
        accept.insert(http::header::ACCEPT, "application/json".parse().unwrap());
        assert!(wants_json("/apps", &accept));
        accept.insert(
            http::header::ACCEPT,
            "text/html,application/json;q=0.9".parse().unwrap(),
        );
        assert!(!wants_json("/apps", &accept));
    }

    #[test]
    fn pages_carry_the_trace_id_and_escape_text() {
        let e = ErrorPage {
            status: 502,
            code: "upstream_unreachable",
            message: "<b>x</b>",
            trace_id: "t-1",
        };
        let html = e.render(false);
        let text = std::str::from_utf8(&html.body).unwrap();
        assert!(
            text.contains("t-1") && text.contains("&lt;b&gt;") && text.contains("502 Bad Gateway")
        );
        let json: serde_json::Value = serde_json::from_slice(&e.render(true).body).unwrap();
        assert_eq!(json["code"], "upstream_unreachable");
        assert_eq!(json["trace_id"], "t-1");
    }
}
