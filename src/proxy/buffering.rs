//! Request buffering (nginx `proxy_request_buffering on`): for the upstreams in
//! `limits.request_buffering.upstreams`, a request body is read whole before the upstream request
//! is opened, so a slow upload holds a gateway connection instead of one of Dify's few workers.
//!
//! Pingora sends the request header upstream before it reads the body, and keeps at most 64 KiB of
//! a body it has read. So the body is read here, in `request_filter`: into memory up to
//! `limits.request_buffering.memory`, the rest into an unnamed temporary file. The client's
//! connection ([`ClientStream`]) is then given the request again (its raw header, then the body,
//! re-framed as one chunk when it came chunked) and a fresh Pingora session reads it from there:
//! Pingora proxies it as it would any request, at the speed of memory and disk.

use crate::proxy::context::RequestCtx;
use crate::proxy::respond;
use crate::proxy::slow_client::{ClientStream, Replay};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::protocols::{raw_connect::ProxyDigest, tls::SslDigest};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, OrErr, Result};
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Whether this request's body is to be read whole first: its upstream is listed, it has a body,
/// and it is a plain HTTP/1 request (an upgrade's bytes after the header are not a body).
fn applies(session: &Session, ctx: &RequestCtx) -> bool {
    let Some(upstream) = &ctx.upstream else {
        return false;
    };
    let req = session.req_header();
    let has_body = req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    has_body
        && ctx
            .snap
            .config
            .limits
            .request_buffering
            .upstreams
            .iter()
            .any(|u| *u == upstream.name)
        && !session.is_upgrade_req()
        && session.downstream_session.as_http1().is_some()
        && session
            .stream()
            .is_some_and(|s| s.as_any().downcast_ref::<ClientStream>().is_some())
}

/// Reads the request body whole and hands the request to a new session that reads it from the
/// buffer; `Ok(true)` when the gateway answered instead (the body passed
/// `client_max_body_size`: 413).
pub async fn buffer_request_body(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    if !applies(session, ctx) {
        return Ok(false);
    }
    let req = session.req_header();
    let chunked = req.headers.contains_key(TRANSFER_ENCODING);
    let expects_continue = req
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // The client waits for this before it sends the body; the upstream is not asked yet.
        session
            .downstream_session
            .write_continue_response()
            .await
            .map_err(|e| e.into_down())?;
    }
    let limits = &ctx.snap.config.limits;
    let (limit, memory) = (
        limits.body_limit(),
        limits.request_buffering.memory as usize,
    );
    let mut in_memory = BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut total: u64 = 0;
    // Failures here are the client's (a stalled body is 408), as they are when Pingora reads.
    while let Some(chunk) = session
        .downstream_session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        total += chunk.len() as u64;
        if total > limit {
            session.set_keepalive(None);
            let msg =
                format!("The request body is larger than the {limit} bytes this server accepts.");
            respond::error(session, ctx, 413, "payload_too_large", &msg).await?;
            return Ok(true);
        }
        if file.is_none() && in_memory.len() + chunk.len() <= memory {
            in_memory.extend_from_slice(&chunk);
            continue;
        }
        let f = match file.as_mut() {
            Some(f) => f,
            None => file.insert(temp_file(&limits.request_buffering.temp_dir).await?),
        };
        f.write_all(&chunk).await.or_err(
            ErrorType::InternalError,
            "writing a request body to its temporary file",
        )?;
    }
    if let Some(f) = file.as_mut() {
        f.flush().await.or_err(
            ErrorType::InternalError,
            "writing a request body to its temporary file",
        )?;
        f.rewind().await.or_err(
            ErrorType::InternalError,
            "rewinding a request body's temporary file",
        )?;
    }
    ctx.body_bytes = total;
    ctx.body_buffered = true;

    let raw_header = session
        .downstream_session
        .as_http1()
        .map(|s| s.get_headers_raw_bytes())
        .unwrap_or_default();
    let mut head = BytesMut::with_capacity(raw_header.len() + 16 + in_memory.len());
    head.extend_from_slice(&raw_header);
    let tail: &'static [u8] = match (chunked, total) {
        (false, _) => b"",
        (true, 0) => b"0\r\n\r\n",
        (true, n) => {
            head.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            b"\r\n0\r\n\r\n"
        }
    };
    head.extend_from_slice(&in_memory);
    let replay = Replay {
        head: head.freeze(),
        file,
        tail: Bytes::from_static(tail),
    };
    replay_in_new_session(session, raw_header, replay).await?;
    Ok(false)
}

/// Puts `replay` in front of the client's connection and reads the request again from it, with
/// the old session's connection settings.
async fn replay_in_new_session(
    session: &mut Session,
    raw_header: Bytes,
    replay: Replay,
) -> Result<()> {
    // What stands in while the connection moves holds the same request header, so that whatever
    // reads the session on a failure below finds one.
    let mut stand_in = ServerSession::new_http1(Box::new(Vacant(raw_header)));
    if !stand_in.read_request().await? {
        return Error::e_explain(
            ErrorType::InternalError,
            "buffered request header unreadable",
        );
    }
    let old = &mut session.downstream_session;
    let keepalive = old.get_keepalive();
    let reuses = old.get_keepalive_reuses_remaining();
    let read_timeout = old.get_read_timeout();
    let write_timeout = old.get_write_timeout();
    let user_context = old.take_connection_user_context();
    if keepalive.is_some() {
        // With pipelining on for the move, `reuse` also says whether the client sent more past
        // this body (a pipelined next request, which `into_inner` would silently drop).
        old.set_keepalive_reuses_remaining(None);
        old.set_pipelining_enabled(true);
    }
    let ServerSession::H1(old) = std::mem::replace(&mut **old, stand_in) else {
        return Error::e_explain(ErrorType::InternalError, "buffered request is not HTTP/1");
    };
    let mut keepalive = keepalive;
    let stream = if keepalive.is_some() {
        let Some(reusable) = old.reuse().await.map_err(|e| e.into_down())? else {
            return Error::e_explain(
                ErrorType::InternalError,
                "buffered request lost its connection",
            );
        };
        let (stream, after) = reusable.into_parts();
        if after.is_some_and(|a| !a.is_empty()) {
            // Pingora answers a pipelining client's first request and closes; so here.
            keepalive = None;
        }
        stream
    } else {
        old.into_inner()
    };
    let mut client = stream
        .into_any()
        .downcast::<ClientStream>()
        .map_err(|_| Error::explain(ErrorType::InternalError, "client stream of another type"))?;
    client.set_replay(replay);
    let mut new = ServerSession::new_http1(client);
    if !new.read_request().await? {
        return Error::e_explain(
            ErrorType::InternalError,
            "buffered request could not be re-read",
        );
    }
    new.set_keepalive(keepalive);
    new.set_keepalive_reuses_remaining(reuses);
    new.set_read_timeout(read_timeout);
    new.set_write_timeout(write_timeout);
    new.set_connection_user_context(user_context);
    *session.downstream_session = new;
    Ok(())
}

/// An unnamed file for one body: created exclusively (owner only), then unlinked at once, so it
/// disappears with its handle even if the process dies.
async fn temp_file(dir: &str) -> Result<tokio::fs::File> {
    let dir = if dir.is_empty() {
        std::env::temp_dir()
    } else {
        PathBuf::from(dir)
    };
    let path = dir.join(format!("dify-gateway-body-{}", uuid::Uuid::new_v4()));
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(|e| {
            log::error!("limits.request_buffering.temp_dir: cannot create {path:?}: {e}");
            Error::explain(
                ErrorType::InternalError,
                "cannot create a temporary file for a request body",
            )
        })?;
    if let Err(e) = tokio::fs::remove_file(&path).await {
        log::warn!("cannot remove the request body file {path:?}: {e}");
    }
    Ok(file)
}

/// Stands in for the client's connection for the moment it moves from one session to the next:
/// it reads as the request header, then as a closed connection; nothing can be written to it.
#[derive(Debug)]
struct Vacant(Bytes);

impl AsyncRead for Vacant {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.0.len().min(buf.remaining());
        buf.put_slice(&this.0.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Vacant {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Vacant {
    async fn shutdown(&mut self) {}
}

impl UniqueID for Vacant {
    fn id(&self) -> UniqueIDType {
        -1
    }
}

impl Ssl for Vacant {
    fn get_ssl(&self) -> Option<&TlsRef> {
        None
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        None
    }
}

impl GetTimingDigest for Vacant {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for Vacant {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Vacant {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }

    fn set_socket_digest(&mut self, _: SocketDigest) {}
}

#[async_trait]
impl Peek for Vacant {}
