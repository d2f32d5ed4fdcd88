//! A browser simulated over plain HTTP for the SSO flow tests: follows nothing by itself, keeps a
//! cookie jar by hand (`Set-Cookie` parsed with the `cookie` crate; host-only cookies, `Path`,
//! `Max-Age=0` deletion, `__Host-` rules) and applies the `SameSite` rules browsers apply: a
//! cross-site POST (the SSO's callback form) carries only `SameSite=None` cookies, a top-level GET
//! carries `Lax` ones too.
//!
//! Requests go to the socket address mapped for a URL's authority (default: the authority itself),
//! with `Host` set to the authority, so two gateway processes can serve one site.

#![allow(dead_code)]

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const HOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
struct JarCookie {
    /// `host:port` it belongs to (host-only cookies).
    authority: String,
    name: String,
    value: String,
    path: String,
    same_site: Option<SameSite>,
    secure: bool,
    http_only: bool,
}

/// One response as the browser got it.
#[derive(Debug, Clone)]
pub struct Page {
    pub url: String,
    pub method: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub elapsed: Duration,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// The `Set-Cookie` for cookie `name`, parsed.
    pub fn set_cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.set_cookies()
            .into_iter()
            .filter_map(|c| Cookie::parse(c).ok())
            .find(|c| c.name() == name)
    }

    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308)
    }

    /// The form with this `id`: (method, absolute action URL, fields).
    pub fn form(&self, id: &str) -> Option<Form> {
        let marker = format!("id=\"{id}\"");
        let start = self.body.find(&marker)?;
        let open = self.body[..start].rfind("<form")?;
        let end = self.body[open..].find("</form>")? + open;
        let html = &self.body[open..end];
        let tag_end = html.find('>')?;
        let tag = &html[..tag_end];
        let method = attr(tag, "method").unwrap_or_else(|| "get".into());
        let action = attr(tag, "action").unwrap_or_default();
        let mut fields = Vec::new();
        let mut rest = &html[tag_end..];
        while let Some(i) = rest.find("<input") {
            let t_end = rest[i..].find('>').map_or(rest.len(), |e| e + i);
            let t = &rest[i..t_end];
            if let Some(name) = attr(t, "name") {
                fields.push((name, attr(t, "value").unwrap_or_default()));
            }
            rest = &rest[t_end..];
        }
        Some(Form {
            method: method.to_ascii_uppercase(),
            action: resolve(&self.url, &action),
            fields,
        })
    }
}

/// A form as a browser would submit it.
#[derive(Debug, Clone)]
pub struct Form {
    pub method: String,
    pub action: String,
    pub fields: Vec<(String, String)>,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(html_unescape(&tag[i..j]))
}

pub fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `reference` resolved against `base` as a browser does.
pub fn resolve(base: &str, reference: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(reference))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| reference.to_string())
}

/// `scheme://host:port` of a URL.
pub fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// Registrable "site" for SameSite purposes: the host (IP literals and `localhost` are their own).
fn site_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

fn authority_of(u: &url::Url) -> String {
    format!(
        "{}:{}",
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(80)
    )
}

#[derive(Default)]
pub struct Browser {
    jar: Vec<JarCookie>,
    map: HashMap<String, SocketAddr>,
    /// Extra headers sent to an authority (e.g. `X-Forwarded-Proto: https` to simulate TLS).
    extra: HashMap<String, Vec<(String, String)>>,
    /// Every hop, in order.
    pub history: Vec<Page>,
    pub accept: String,
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            accept: "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into(),
            ..Default::default()
        }
    }

    /// Sends requests for `authority` (`host:port`) to `addr`.
    pub fn map(&mut self, authority: &str, addr: SocketAddr) {
        self.map.insert(authority.into(), addr);
    }

    pub fn extra_header(&mut self, authority: &str, name: &str, value: &str) {
        self.extra
            .entry(authority.into())
            .or_default()
            .push((name.into(), value.into()));
    }

    /// The value of cookie `name` held for the URL's authority.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let u = url::Url::parse(url).ok()?;
        let a = authority_of(&u);
        self.jar
            .iter()
            .find(|c| c.authority == a && c.name == name)
            .map(|c| c.value.clone())
    }

    pub fn cookie_names(&self, url: &str) -> Vec<String> {
        let Ok(u) = url::Url::parse(url) else {
            return Vec::new();
        };
        let a = authority_of(&u);
        self.jar
            .iter()
            .filter(|c| c.authority == a)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Sets a cookie as a script would (for the CSRF-less and forged-cookie cases).
    pub fn set_cookie_raw(&mut self, url: &str, name: &str, value: &str) {
        let u = url::Url::parse(url).expect("url");
        let a = authority_of(&u);
        self.jar.retain(|c| !(c.authority == a && c.name == name));
        self.jar.push(JarCookie {
            authority: a,
            name: name.into(),
            value: value.into(),
            path: "/".into(),
            same_site: Some(SameSite::Lax),
            secure: false,
            http_only: false,
        });
    }

    pub fn clear_cookies(&mut self) {
        self.jar.clear();
    }

    /// A top-level GET typed into the address bar.
    pub async fn get(&mut self, url: &str) -> Page {
        self.request("GET", url, None, None, &[]).await
    }

    /// One request. `initiator` is the URL of the page that caused it (None: typed by the user).
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        body: Option<(&str, Vec<u8>)>,
        initiator: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Page {
        let u = url::Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url:?}: {e}"));
        let authority = authority_of(&u);
        let addr = self.map.get(&authority).copied().unwrap_or_else(|| {
            let host = match u.host_str() {
                Some("localhost") => "127.0.0.1",
                Some(h) => h,
                None => "127.0.0.1",
            };
            format!("{host}:{}", u.port_or_known_default().unwrap_or(80))
                .parse()
                .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
        });
        let same_site = initiator.is_none_or(|i| site_of(i) == site_of(url));
        let path = u.path();
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|c| c.authority == authority && path_matches(&c.path, path))
            .filter(|c| match c.same_site {
                Some(SameSite::None) => true,
                Some(SameSite::Strict) => same_site,
                _ => same_site || method == "GET",
            })
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        let target = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(target)
            .header(
                "host",
                u.host_str().map_or(authority.clone(), |h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                }),
            )
            .header("user-agent", "browser-sim/1");
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
        {
            b = b.header("accept", self.accept.as_str());
        }
        if !cookies.is_empty() {
            b = b.header("cookie", cookies.join("; "));
        }
        if let Some(i) = initiator
            && method != "GET"
        {
            b = b.header("origin", origin_of(i));
        }
        for (k, v) in self.extra.get(&authority).cloned().unwrap_or_default() {
            b = b.header(k, v);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = match body {
            Some((ct, bytes)) => {
                b = b.header("content-type", ct);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(body)).expect("valid request");
        let started = Instant::now();
        let fut = async move {
            let stream = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect {addr} for {url}: {e}"));
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("HTTP/1 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let resp = sender
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("request to {addr} failed: {e}"));
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("response body").to_bytes();
            (parts, body)
        };
        let (parts, body) = tokio::time::timeout(HOP_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("no complete answer from {url} within {HOP_TIMEOUT:?}"));
        let page = Page {
            url: url.to_string(),
            method: method.to_string(),
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: started.elapsed(),
        };
        for sc in page.set_cookies() {
            self.store(&authority, u.path(), &sc);
        }
        self.history.push(page.clone());
        page
    }

    fn store(&mut self, authority: &str, request_path: &str, header: &str) {
        let Ok(c) = Cookie::parse(header.to_string()) else {
            return;
        };
        if c.domain().is_some() {
            // Domain cookies are not needed by these tests; keep them host-only.
        }
        let path = c
            .path()
            .map(str::to_string)
            .unwrap_or_else(|| default_path(request_path));
        if c.name().starts_with("__Host-")
            && (!c.secure().unwrap_or(false) || path != "/" || c.domain().is_some())
        {
            return; // browsers refuse such a cookie
        }
        self.jar
            .retain(|j| !(j.authority == authority && j.name == c.name() && j.path == path));
        let expired = c.max_age().is_some_and(|m| m.whole_seconds() <= 0)
            || (c.max_age().is_none()
                && c.expires_datetime()
                    .is_some_and(|e| e < time::OffsetDateTime::now_utc()));
        if expired {
            return;
        }
        self.jar.push(JarCookie {
            authority: authority.into(),
            name: c.name().into(),
            value: c.value().into(),
            path,
            same_site: c.same_site(),
            secure: c.secure().unwrap_or(false),
            http_only: c.http_only().unwrap_or(false),
        });
    }

    /// One redirect hop from `page`, as a browser navigation follows it.
    pub async fn hop(&mut self, page: &Page) -> Page {
        let to = resolve(&page.url, page.location().expect("a redirect"));
        self.request("GET", &to, None, Some(&page.url), &[]).await
    }

    /// Follows redirects from `page` (at most `limit` hops) as a browser navigation does; returns
    /// the final page.
    pub async fn follow(&mut self, mut page: Page, limit: usize) -> Page {
        for _ in 0..limit {
            if !page.is_redirect() {
                return page;
            }
            let to = resolve(
                &page.url,
                page.location().expect("redirect without Location"),
            );
            let (method, body) = match page.status {
                307 | 308 => (page.method.clone(), None),
                _ => ("GET".to_string(), None),
            };
            let from = page.url.clone();
            page = self.request(&method, &to, body, Some(&from), &[]).await;
        }
        assert!(
            !page.is_redirect(),
            "more than {limit} redirects: {:?}",
            self.urls()
        );
        page
    }

    /// Submits a form found on `page` (as clicking its button does) and returns the answer
    /// (not followed).
    pub async fn submit(&mut self, page: &Page, form_id: &str) -> Page {
        let form = page
            .form(form_id)
            .unwrap_or_else(|| panic!("no form {form_id:?} on {}: {}", page.url, page.body));
        self.submit_form(&form, &page.url.clone()).await
    }

    pub async fn submit_form(&mut self, form: &Form, from: &str) -> Page {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.fields.iter())
            .finish();
        if form.method == "POST" {
            self.request(
                "POST",
                &form.action,
                Some(("application/x-www-form-urlencoded", encoded.into_bytes())),
                Some(from),
                &[],
            )
            .await
        } else {
            // A GET form replaces the action's query with its fields.
            let mut u = url::Url::parse(&form.action).expect("form action URL");
            u.set_query(Some(&encoded));
            self.request("GET", u.as_str(), None, Some(from), &[]).await
        }
    }

    /// The URLs visited so far, with statuses (for assertion messages).
    pub fn urls(&self) -> Vec<String> {
        self.history
            .iter()
            .map(|p| format!("{} {} -> {}", p.method, p.url, p.status))
            .collect()
    }
}

fn path_matches(cookie_path: &str, request_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || request_path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

fn default_path(request_path: &str) -> String {
    match request_path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => request_path[..i].into(),
    }
}
