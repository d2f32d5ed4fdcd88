use crate::config::Issue;
use crate::dify::DifyConfig;
use serde::Deserialize;
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig { pub enabled: bool }
impl SsoConfig {
    pub fn resolve(from_file: Option<SsoConfig>, _dify: &mut DifyConfig, _env: &impl Fn(&str) -> Option<String>) -> Option<SsoConfig> { from_file }
    pub fn is_enabled(&self) -> bool { self.enabled }
    pub fn summary(&self) -> String { "sso on".into() }
    pub fn validate(&self, _dify: &DifyConfig, _issues: &mut Vec<Issue>) {}
}
pub struct SsoFlow;
impl SsoFlow {
    pub fn new(_sso: &SsoConfig, _dify: &DifyConfig) -> Result<SsoFlow, String> { Ok(SsoFlow) }
}
pub struct SsoRequest<'a> {
    pub method: &'a http::Method, pub path: &'a str, pub query: Option<&'a str>, pub headers: &'a http::HeaderMap,
    pub client_ip: Option<std::net::IpAddr>, pub scheme: &'a str, pub host: &'a str, pub trace_id: &'a str,
}
pub struct SsoResponse { pub status: u16, pub headers: Vec<(http::HeaderName, http::HeaderValue)>, pub body: bytes::Bytes }
pub enum BodyError { TooLarge, Io(String) }
#[async_trait::async_trait]
pub trait RequestBody: Send { async fn read_to_limit(&mut self, limit: usize) -> Result<bytes::Bytes, BodyError>; }
impl SsoFlow {
    pub async fn handle(&self, _req: &SsoRequest<'_>, _body: &mut dyn RequestBody) -> Option<SsoResponse> { None }
    pub fn on_upstream_response(&self, _m: &http::Method, _p: &str, _s: u16) -> Vec<(http::HeaderName, http::HeaderValue)> { Vec::new() }
}
