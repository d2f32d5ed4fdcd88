//! What the proxy hands the SSO flow and what it gets back: plain `http` types, no Pingora, so the
//! flow is tested without a server and another front end could drive it.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use std::net::IpAddr;

pub struct SsoRequest<'a> {
    pub method: &'a Method,
    /// Already normalised (percent-decoded, slashes merged), no query.
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
    /// "http" or "https" as the browser used it.
    pub scheme: &'a str,
    /// Host header as sent (may include :port).
    pub host: &'a str,
    /// This request's trace id (UUID), also returned by the proxy as X-Request-Id.
    pub trace_id: &'a str,
}

impl SsoRequest<'_> {
    /// Form-decoded query pairs (`+` and `%XX` decoded as browsers encode forms).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// True when the client asked for JSON rather than a page (API clients, fetch calls).
    pub fn wants_json(&self) -> bool {
        let accept = self
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        accept.contains("application/json") && !accept.contains("text/html")
    }

    pub fn is_https(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("https")
    }

    /// `scheme://host` of the gateway as the browser sees it.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

pub struct SsoResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl SsoResponse {
    /// Every answer of the flow is personal and short-lived: never cached, never leaks a referrer.
    fn new(status: u16) -> SsoResponse {
        SsoResponse {
            status,
            headers: vec![
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
            ],
            body: Bytes::new(),
        }
    }

    pub fn redirect(status: u16, location: &str) -> SsoResponse {
        let mut r = SsoResponse::new(status);
        match HeaderValue::from_str(location) {
            Ok(v) => r.headers.push((header::LOCATION, v)),
            // Unreachable for validated targets; never emit a header that could split the response.
            Err(_) => r
                .headers
                .push((header::LOCATION, HeaderValue::from_static("/"))),
        }
        r.headers
            .push((header::CONTENT_LENGTH, HeaderValue::from_static("0")));
        r
    }

    pub fn with_body(
        status: u16,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> SsoResponse {
        let mut r = SsoResponse::new(status);
        let body = body.into();
        r.headers
            .push((header::CONTENT_TYPE, HeaderValue::from_static(content_type)));
        r.headers.push((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
        r.headers
            .push((header::CONTENT_LENGTH, HeaderValue::from(body.len())));
        r.body = body;
        r
    }

    pub fn set_cookie(mut self, value: &str) -> SsoResponse {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((header::SET_COOKIE, v));
        }
        self
    }

    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    pub fn set_cookies(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == header::SET_COOKIE)
            .filter_map(|(_, v)| v.to_str().ok())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Io(String),
}

#[async_trait::async_trait]
pub trait RequestBody: Send {
    /// Reads the whole request body, failing with TooLarge past `limit` bytes.
    async fn read_to_limit(&mut self, limit: usize) -> Result<Bytes, BodyError>;
}

/// A body already in memory (tests, or a proxy that buffered it).
pub struct BufferedBody(pub Bytes);

#[async_trait::async_trait]
impl RequestBody for BufferedBody {
    async fn read_to_limit(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        if self.0.len() > limit {
            Err(BodyError::TooLarge)
        } else {
            Ok(self.0.clone())
        }
    }
}
