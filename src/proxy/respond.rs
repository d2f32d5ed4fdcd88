//! Writing an answer of the gateway's own to the client.

use crate::pages::{ErrorPage, Page, wants_json};
use crate::proxy::context::RequestCtx;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Sends `status` with `headers` and `body`, plus the trace id; ends the request.
pub async fn send(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 4))?;
    for (name, value) in headers {
        resp.append_header(name, value)?;
    }
    resp.insert_header("Content-Length", body.len().to_string())?;
    resp.insert_header("X-Request-Id", ctx.trace_id.as_str())?;
    resp.insert_header("Cache-Control", "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Sends an error page (HTML or JSON, as the client wants) and records its code for the log.
pub async fn error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    code: &'static str,
    message: &str,
) -> pingora::Result<()> {
    ctx.error_code = Some(code);
    let json = wants_json(&ctx.path, &session.req_header().headers);
    let Page {
        status,
        content_type,
        body,
    } = ErrorPage {
        status,
        code,
        message,
        trace_id: &ctx.trace_id,
    }
    .render(json);
    let ct = (
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    send(session, ctx, status, vec![ct], body).await
}
