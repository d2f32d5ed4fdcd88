//! From an authorized identity to Dify tokens (`sso.minter`). `management_service` asks the
//! company's service (docs/management-service.md); `builtin` ([`super::builtin_minter`]) mints
//! sessions itself from Dify's database and Redis.

use super::config::{MinterKind, SsoConfig};
use super::failure::SsoFailure;
use super::protocol::Identity;
use super::providers::token_exchange::{exchange_client, read_session, send_failure};
use crate::dify::{DifyConfig, DifySession};

/// What a minter knows of the sign-in besides the identity.
pub struct MintContext<'a> {
    pub trace_id: &'a str,
    /// `oidc`, `oauth2` or `cas`.
    pub protocol: &'static str,
    /// The client's address as the gateway saw it (after `server.trusted_proxies`).
    pub client_ip: Option<std::net::IpAddr>,
}

#[async_trait::async_trait]
pub trait Minter: Send + Sync {
    async fn mint(
        &self,
        identity: &Identity,
        ctx: &MintContext<'_>,
    ) -> Result<DifySession, SsoFailure>;
}

/// `POST <sso.exchange.identity_url>` with the identity as JSON; answers like the token exchange.
pub struct ManagementService {
    client: reqwest::Client,
    url: String,
}

/// The identity call's JSON body (the documented API: keep it stable).
pub fn identity_request(identity: &Identity, ctx: &MintContext<'_>) -> serde_json::Value {
    serde_json::json!({
        "trace_id": ctx.trace_id,
        "protocol": ctx.protocol,
        "issuer": identity.issuer,
        "subject": identity.subject,
        "email": identity.email,
        "email_verified": identity.email_verified,
        "name": identity.name,
        "groups": identity.groups,
    })
}

#[async_trait::async_trait]
impl Minter for ManagementService {
    async fn mint(
        &self,
        identity: &Identity,
        ctx: &MintContext<'_>,
    ) -> Result<DifySession, SsoFailure> {
        let started = std::time::Instant::now();
        log::info!(trace_id = ctx.trace_id, protocol = ctx.protocol, subject = identity.subject.as_str();
            "asking the management service for a Dify session");
        let sent = self
            .client
            .post(&self.url)
            .header("X-Request-Id", ctx.trace_id)
            .json(&identity_request(identity, ctx))
            .send()
            .await;
        let resp = sent.map_err(|e| send_failure(e, ctx.trace_id))?;
        crate::ops::metrics::METRICS
            .sso_exchange_duration
            .observe(started.elapsed().as_secs_f64());
        read_session(resp, started, ctx.trace_id).await
    }
}

/// The configured minter; None for protocols that hand over sessions themselves.
pub fn build(sso: &SsoConfig, dify: &DifyConfig) -> Result<Option<Box<dyn Minter>>, String> {
    if sso.protocol == super::Protocol::TokenExchange {
        return Ok(None);
    }
    match sso.minter {
        MinterKind::ManagementService => Ok(Some(Box::new(ManagementService {
            client: exchange_client(&sso.exchange)?,
            url: sso.exchange.identity_url.clone(),
        }))),
        MinterKind::Builtin => Ok(Some(Box::new(super::builtin_minter::BuiltinMinter::new(
            sso, dify,
        )?))),
    }
}
