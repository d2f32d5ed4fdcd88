//! Dify's `NGINX_ENABLE_CERTBOT_CHALLENGE`: `/.well-known/acme-challenge/<token>` answered from
//! certbot's webroot (nginx's `location /.well-known/acme-challenge/ { root /var/www/html; }`),
//! so that certbot's HTTP-01 renewal works with the gateway in nginx's place.
//!
//! Narrower than nginx's `root`, on purpose: only a token (RFC 8555 tokens are base64url, so no
//! `/`, no `.`: nothing can name a directory or climb out), only a regular file (no symlink out of
//! the webroot), only GET and HEAD.

use crate::proxy::context::RequestCtx;
use crate::proxy::respond;
use bytes::Bytes;
use http::HeaderValue;
use pingora::proxy::Session;
use std::path::Path;

pub const PREFIX: &str = "/.well-known/acme-challenge/";

/// A challenge file is some 90 bytes; anything far larger is not one, and is not read into memory.
const MAX_FILE: u64 = 64 * 1024;

/// Answers the request when it is a challenge and the challenge is on; `false` otherwise.
pub async fn intercept(session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
    let Some(root) = ctx
        .snap
        .config
        .server
        .acme_challenge
        .as_ref()
        .map(|a| a.root.clone())
    else {
        return Ok(false);
    };
    let Some(token) = ctx.path.strip_prefix(PREFIX).map(str::to_string) else {
        return Ok(false);
    };
    ctx.route = "acme_challenge";
    let method = &session.req_header().method;
    if method != http::Method::GET && method != http::Method::HEAD {
        let allow = (http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        ctx.error_code = Some("method_not_allowed");
        respond::send(session, ctx, 405, vec![allow], Bytes::new()).await?;
        return Ok(true);
    }
    match read_token(Path::new(&root), &token).await {
        Some(body) => {
            let ct = (
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
            respond::send(session, ctx, 200, vec![ct], body).await?;
        }
        None => {
            let msg = "No such ACME challenge.";
            respond::error(session, ctx, 404, "not_found", msg).await?;
        }
    }
    Ok(true)
}

fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `<root>/.well-known/acme-challenge/<token>` when it is a regular file of challenge size.
async fn read_token(root: &Path, token: &str) -> Option<Bytes> {
    if !is_token(token) {
        return None;
    }
    let path = root.join(".well-known/acme-challenge").join(token);
    let meta = tokio::fs::symlink_metadata(&path).await.ok()?;
    if !meta.file_type().is_file() || meta.len() > MAX_FILE {
        return None;
    }
    tokio::fs::read(&path).await.ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_base64url_tokens() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "..", "a/b", "a.b", "%2e", "a b"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
