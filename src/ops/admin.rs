//! The admin listener (`server.admin_listen`, never the public port): `/healthz` says the process
//! answers; `/readyz` says every public listener accepts, a configuration is loaded and every
//! routed upstream has a reachable backend, so a load balancer sends traffic only where it can be
//! served.

use crate::ops::metrics::METRICS;
use crate::state::SharedSnapshot;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct AdminApp {
    pub state: SharedSnapshot,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session
            .req_header()
            .uri
            .path()
            .starts_with(crate::ops::scim::PREFIX)
        {
            return self.scim(session).await;
        }
        let (status, body) = match session.req_header().uri.path() {
            "/healthz" => (200, serde_json::json!({"status": "ok"})),
            "/readyz" => self.readiness(),
            "/metrics" => {
                let body = METRICS.render();
                return Response::builder()
                    .status(200)
                    .header("Content-Type", "text/plain; version=0.0.4")
                    .header("Content-Length", body.len())
                    .body(body)
                    .unwrap_or_default();
            }
            _ => (
                404,
                serde_json::json!({"code": "not_found", "message": "try /healthz, /readyz or /metrics"}),
            ),
        };
        let body = body.to_string().into_bytes();
        Response::builder()
            .status(status)
            .header("Content-Type", "application/json")
            .header("Content-Length", body.len())
            .header("Cache-Control", "no-store")
            .body(body)
            .unwrap_or_default()
    }
}

impl AdminApp {
    /// SCIM, when `sso.scim.token` is set: the bearer token first, then the request.
    async fn scim(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let snap = self.state.load_full();
        let trace_id = uuid::Uuid::new_v4().to_string();
        let Some(scim) = snap.sso.as_ref().and_then(|f| f.scim.as_ref()) else {
            return scim_response(
                404,
                &serde_json::json!({"status": "404", "detail": "SCIM is off (sso.scim.token)"}),
            );
        };
        let header = session.req_header();
        let auth = header
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !scim.authorized(auth) {
            log::warn!(trace_id = trace_id.as_str(); "SCIM request refused: wrong or missing bearer token");
            return scim_response(
                401,
                &serde_json::json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "401",
                "detail": "a bearer token (sso.scim.token) is required"}),
            );
        }
        let method = header.method.as_str().to_string();
        let path = header.uri.path().to_string();
        let query = header.uri.query().map(str::to_string);
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= crate::ops::scim::MAX_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return scim_response(
                        413,
                        &serde_json::json!({"status": "413", "detail": "body too large"}),
                    );
                }
                Ok(None) => break,
                Err(_) => {
                    return scim_response(
                        400,
                        &serde_json::json!({"status": "400", "detail": "the body could not be read"}),
                    );
                }
            }
        }
        let answer = scim
            .handle(&method, &path, query.as_deref(), &body, &trace_id)
            .await;
        scim_response(answer.status, &answer.body)
    }

    fn readiness(&self) -> (u16, serde_json::Value) {
        let snap = self.state.load();
        let dify = dify_info(&snap.config.dify);
        if !crate::ops::listeners::all_accepting() {
            return (
                503,
                serde_json::json!({
                    "status": "not_ready",
                    "reason": "the public listeners do not accept connections yet",
                    "config_generation": snap.generation,
                    "dify": dify,
                }),
            );
        }
        let down: Vec<&str> = snap
            .routed_upstreams()
            .filter(|u| !u.is_ready())
            .map(|u| u.name.as_str())
            .collect();
        // sso.ready_checks_idp: the OpenID provider counts as one more upstream.
        let idp = crate::sso::idp_check::readiness(snap.config.sso.as_ref());
        let idp_ready = idp.as_ref().is_none_or(|(ready, _)| *ready);
        let mut body = if down.is_empty() && idp_ready {
            serde_json::json!({"status": "ready", "config_generation": snap.generation, "dify": dify})
        } else {
            let mut body = serde_json::json!({
                "status": "not_ready",
                "config_generation": snap.generation,
                "dify": dify,
            });
            if !down.is_empty() {
                body["unreachable_upstreams"] = serde_json::json!(down);
            }
            body
        };
        if let Some((_, detail)) = idp {
            body["idp"] = detail;
        }
        let status = if body["status"] == "ready" { 200 } else { 503 };
        (status, body)
    }
}

/// Which Dify the gateway behaves for, and what follows from it.
fn dify_info(dify: &crate::dify::DifyConfig) -> serde_json::Value {
    use crate::dify::version::{Compat, delivery_name};
    let compat = Compat::from_config(dify);
    let (version, source) = compat.version();
    serde_json::json!({
        "version": version.map(|v| v.to_string()),
        "version_source": source.as_str(),
        "session_delivery": delivery_name(compat.delivery()),
        "iss": compat.edition().as_str(),
    })
}

fn scim_response(status: u16, body: &serde_json::Value) -> Response<Vec<u8>> {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    Response::builder()
        .status(status)
        .header("Content-Type", "application/scim+json")
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_default()
}
