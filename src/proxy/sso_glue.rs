//! Between Pingora's session and the protocol-neutral SSO flow: the flow sees an [`SsoRequest`]
//! and answers with an [`SsoResponse`]; this file does the translating.

use crate::proxy::context::{AppForwarding, RequestCtx};
use crate::proxy::respond;
use crate::sso::{AppCheck, AppForward, BodyError, RequestBody, SsoRequest, apps};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
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
    ctx: &mut RequestCtx,
) -> pingora::Result<()> {
    app_answer(response, ctx)?;
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

/// Published apps: the app rules' verdict on this request; true when the gateway answered it.
pub async fn check_app(session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
    let Some(flow) = ctx.snap.sso.clone() else {
        return Ok(false);
    };
    if !flow.apps_protected() || crate::sso::apps::classify(&ctx.path).is_none() {
        return Ok(false);
    }
    let check = {
        let header = session.req_header();
        let host = crate::proxy::forwarding::header_str(header, "host").unwrap_or("");
        let client = ctx.client.as_ref();
        let req = SsoRequest {
            method: &header.method,
            path: &ctx.path,
            query: header.uri.query(),
            headers: &header.headers,
            client_ip: client.and_then(|c| c.client_ip),
            scheme: client.map_or("http", |c| c.scheme),
            host,
            trace_id: &ctx.trace_id,
        };
        flow.check_app(&req).await
    };
    match check {
        AppCheck::Answer(answer) => {
            ctx.route = "sso";
            respond::send(session, ctx, answer.status, answer.headers, answer.body).await?;
            Ok(true)
        }
        AppCheck::Forward(forward) => {
            if forward != AppForward::default() {
                ctx.app = Some(Box::new(AppForwarding {
                    forward,
                    passport_answer: None,
                }));
            }
            Ok(false)
        }
    }
}

/// On the way to Dify while apps are protected: identity headers a client sent are dropped, and a
/// protected app's `/api/passport` gets the person's `user_id`.
pub fn before_upstream(upstream: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if !ctx.snap.sso.as_ref().is_some_and(|f| f.apps_protected()) {
        return Ok(());
    }
    for name in apps::IDENTITY_HEADERS {
        if upstream.headers.contains_key(name) {
            upstream.remove_header(name);
        }
    }
    let Some(call) = ctx.app.as_ref().and_then(|a| a.forward.passport.as_ref()) else {
        return Ok(());
    };
    let query = apps::passport_query(upstream.uri.query(), &call.user_id);
    let uri = format!("{}?{query}", upstream.uri.path())
        .parse::<http::Uri>()
        .map_err(|e| {
            pingora::Error::explain(
                pingora::ErrorType::InternalError,
                format!("passport query: {e}"),
            )
        })?;
    upstream.set_uri(uri);
    // The answer is read to bind its passport: it must come uncompressed.
    upstream.remove_header(&http::header::ACCEPT_ENCODING);
    Ok(())
}

/// A protected app's answers: the refreshed session cookie, and for `/api/passport`, the
/// passport bound to the person (its cookie here, its body in [`passport_body`]).
fn app_answer(response: &mut ResponseHeader, ctx: &mut RequestCtx) -> pingora::Result<()> {
    let secret = ctx
        .snap
        .config
        .dify
        .secret_key()
        .unwrap_or_default()
        .to_string();
    let Some(app) = ctx.app.as_mut() else {
        return Ok(());
    };
    if let Some(c) = app.forward.set_cookie.take() {
        response.append_header(http::header::SET_COOKIE, c)?;
    }
    let Some(call) = &app.forward.passport else {
        return Ok(());
    };
    if response.status.as_u16() != 200 {
        return Ok(());
    }
    let cookies: Vec<String> = response
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            apps::bind_passport_cookie(v, &secret, &call.person_tag)
                .unwrap_or_else(|| v.to_string())
        })
        .collect();
    if !cookies.is_empty() {
        response.remove_header(&http::header::SET_COOKIE);
        for c in cookies {
            response.append_header(http::header::SET_COOKIE, c)?;
        }
    }
    response.remove_header(&http::header::CONTENT_LENGTH);
    app.passport_answer = Some(BytesMut::new());
    Ok(())
}

/// Collects Dify's `/api/passport` answer and sends it on with the passport bound.
pub fn passport_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
    let Some(app) = ctx.app.as_mut() else {
        return;
    };
    let Some(buf) = app.passport_answer.as_mut() else {
        return;
    };
    if let Some(chunk) = body.take() {
        buf.extend_from_slice(&chunk);
    }
    if buf.len() > apps::MAX_PASSPORT_ANSWER {
        log::warn!(trace_id = ctx.trace_id.as_str(); "published app: passport answer too large to bind, passed on as is");
        *body = app.passport_answer.take().map(BytesMut::freeze);
        return;
    }
    if !end_of_stream {
        return;
    }
    let answer = app.passport_answer.take().unwrap_or_default();
    let secret = ctx.snap.config.dify.secret_key().unwrap_or_default();
    let tag = app
        .forward
        .passport
        .as_ref()
        .map_or("", |c| c.person_tag.as_str());
    *body = Some(match apps::bind_passport_answer(&answer, secret, tag) {
        Some(bound) => Bytes::from(bound),
        None => {
            log::warn!(trace_id = ctx.trace_id.as_str();
                "published app: Dify's passport answer could not be bound (not a passport of this dify.secret_key?); passed on as is");
            answer.freeze()
        }
    });
}
