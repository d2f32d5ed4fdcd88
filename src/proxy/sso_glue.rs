//! Between Pingora's session and the protocol-neutral SSO flow: the flow sees an [`SsoRequest`]
//! and answers with an [`SsoResponse`]; this file does the translating.

use crate::proxy::context::RequestCtx;
use crate::proxy::respond;
use crate::sso::{BodyError, RequestBody, SsoRequest};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Reads the request body from the Pingora session, refusing more than `limit` bytes.
struct SessionBody<'a>(&'a mut Session);

#[async_trait]
impl RequestBody for SessionBody<'_> {
    async fn read_to_limit(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = self
            .0
            .read_request_body()
            .await
            .map_err(|e| BodyError::Io(e.to_string()))?
        {
            if buf.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// Lets the SSO flow answer the request; true when it did.
pub async fn intercept(session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
    let Some(flow) = ctx.snap.sso.clone() else {
        return Ok(false);
    };
    // Ordinary traffic: no need to copy the request header for the flow.
    if !flow.may_answer(&ctx.path) {
        return Ok(false);
    }
    let header = session.req_header().clone();
    let client = ctx.client.clone();
    let host = crate::proxy::forwarding::header_str(&header, "host")
        .unwrap_or("")
        .to_string();
    let req = SsoRequest {
        method: &header.method,
        path: &ctx.path,
        query: header.uri.query(),
        headers: &header.headers,
        client_ip: client.as_ref().and_then(|c| c.client_ip),
        scheme: client.as_ref().map_or("http", |c| c.scheme),
        host: &host,
        trace_id: &ctx.trace_id,
    };
    let Some(answer) = flow.handle(&req, &mut SessionBody(session)).await else {
        return Ok(false);
    };
    respond::send(session, ctx, answer.status, answer.headers, answer.body).await?;
    Ok(true)
}

/// Adds what the flow wants on a proxied answer (the signed-out mark after Dify's logout).
pub fn after_upstream(
    session: &Session,
    response: &mut ResponseHeader,
    ctx: &RequestCtx,
) -> pingora::Result<()> {
    if let Some(flow) = &ctx.snap.sso {
        let method = &session.req_header().method;
        let https = ctx.client.as_ref().is_some_and(|c| c.scheme == "https");
        for (name, value) in
            flow.on_upstream_response(method, &ctx.path, response.status.as_u16(), https)
        {
            response.append_header(name, value)?;
        }
    }
    Ok(())
}
