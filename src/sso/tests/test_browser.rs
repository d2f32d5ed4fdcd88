//! A browser stand-in for the flow tests: it carries cookies by hand between `/signin`, the
//! callback and `/sso/continue`, and leaves them out where a browser would (a cross-site POST).

use super::mock_exchange::{Reply, capture_logs};
use crate::dify::{DifyConfig, SessionDelivery};
use crate::sso::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use std::collections::BTreeMap;
use std::time::Duration;

pub const KEY: &str = "dify-secret-key-for-tests-0123456789";
pub const USER: &str = "5c1e1f0a-7d2b-4c4e-9a55-3f0d5e6b7a80";
/// The origin of [`sso`]'s login page.
pub const SSO_ORIGIN: &str = "https://sso.example.com";
pub const ODD: &str = "a&b=c%d+e f/ü?#";

pub fn sso(exchange_url: &str) -> SsoConfig {
    let mut headers = BTreeMap::new();
    headers.insert("X-Api-Key".to_string(), Secret::new("mgmt-api-key-5555"));
    SsoConfig {
        enabled: true,
        login_url: "https://sso.example.com/login.php?ret={callback_url}".into(),
        exchange: ExchangeConfig {
            url: exchange_url.into(),
            timeout: Duration::from_secs(5),
            headers,
            ..Default::default()
        },
        support_contact: "it-help@example.com".into(),
        state_secret: Secret::new("state-secret-for-tests-0123456789"),
        ..Default::default()
    }
}

pub fn dify(delivery: SessionDelivery, key: &str) -> DifyConfig {
    DifyConfig {
        secret_key: Secret::new(key),
        session_delivery: Some(delivery),
        ..Default::default()
    }
}

pub fn tokens_reply(access: &str, refresh: &str) -> Reply {
    Reply::json(
        200,
        serde_json::json!({"access_token": access, "refresh_token": refresh}),
    )
}

/// A browser: a cookie jar, a client address and an origin.
pub struct Browser {
    pub jar: BTreeMap<String, String>,
    pub ip: std::net::IpAddr,
    pub accept: &'static str,
}

impl Browser {
    pub fn new() -> Browser {
        let _ = rustls::crypto::ring::default_provider().install_default();
        capture_logs();
        Browser {
            jar: BTreeMap::new(),
            ip: "192.0.2.10".parse().unwrap(),
            accept: "text/html",
        }
    }

    pub fn take_cookies(&mut self, resp: &SsoResponse) {
        for c in resp.set_cookies() {
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// `target` is path and query; `with_cookies` false stands for a cross-site POST (Lax cookies
    /// are not sent).
    pub async fn send(
        &mut self,
        flow: &SsoFlow,
        method: Method,
        target: &str,
        form: Option<&str>,
        with_cookies: bool,
    ) -> Option<SsoResponse> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(self.accept));
        if with_cookies && !self.jar.is_empty() {
            let cookie: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.insert(
                header::COOKIE,
                HeaderValue::from_str(&cookie.join("; ")).unwrap(),
            );
        }
        // A browser names the page that posted a form: here the SSO's login page.
        if method == Method::POST && !with_cookies {
            headers.insert(header::ORIGIN, HeaderValue::from_static(SSO_ORIGIN));
        }
        if form.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        let trace = uuid::Uuid::new_v4().to_string();
        let req = SsoRequest {
            method: &method,
            path,
            query,
            headers: &headers,
            client_ip: Some(self.ip),
            scheme: "http",
            host: "localhost:8080",
            trace_id: &trace,
        };
        let mut body = BufferedBody(Bytes::from(form.unwrap_or_default().to_string()));
        let resp = flow.handle(&req, &mut body).await;
        if let Some(r) = &resp {
            self.take_cookies(r);
        }
        resp
    }

    pub async fn get(&mut self, flow: &SsoFlow, target: &str) -> SsoResponse {
        self.send(flow, Method::GET, target, None, true)
            .await
            .expect("answered by the flow")
    }

    /// The SSO's form POST to the callback, from another site.
    pub async fn post_callback(&mut self, flow: &SsoFlow, form: &str) -> SsoResponse {
        self.send(flow, Method::POST, "/qsso_backcall", Some(form), false)
            .await
            .expect("answered by the flow")
    }
}

pub fn location(r: &SsoResponse) -> &str {
    r.header(&header::LOCATION).unwrap_or_default()
}

pub fn form(token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .finish()
}
