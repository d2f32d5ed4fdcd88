//! Slow clients (nginx `client_header_timeout`): Pingora 0.9 times each header read on its own
//! (60 s, or the keep-alive timeout on a reused connection), so a client dribbling one byte at a
//! time keeps a connection forever. Every accepted connection is wrapped in a [`ClientStream`]
//! whose reads fail with `TimedOut` once the header phase has lasted `limits.client_header_timeout`.
//!
//! The header phase starts when the connection is accepted, and on a kept-alive connection with
//! the first byte of the next request; it ends when the proxy's `request_filter` sees the parsed
//! header ([`header_done`]). Bodies are timed per read by Pingora (`limits.client_body_timeout`,
//! set in `request_filter`), as nginx's `client_body_timeout` is.
//!
//! The stream also lets a connection wait for its next request without a buffer
//! ([`ClientStream::poll_next_request`]): see [`super::connection`] for why.

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::protocols::{Stream, raw_connect::ProxyDigest, tls::SslDigest};
use pingora::proxy::Session;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Header clock state: no deadline.
const DISARMED: u64 = 0;
/// Header clock state: start the deadline at the next byte read.
const ARM_ON_READ: u64 = u64::MAX;

/// A client connection with a deadline on its request header.
#[derive(Debug)]
pub struct ClientStream {
    inner: Stream,
    timeout: Duration,
    /// Reference point of `deadline`.
    base: Instant,
    /// Milliseconds after `base` (+1, so that 0 means disarmed), or [`ARM_ON_READ`].
    deadline: AtomicU64,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The first bytes of the next request, read while waiting for it; served before the socket.
    received: Option<Bytes>,
    /// A request read whole by the gateway, to be read again by a new session (see
    /// [`super::buffering`]); served after `received`, before the socket.
    replay: Option<Box<Replay>>,
}

/// A buffered request: its header and the start of its body in memory, the rest of the body in a
/// temporary file, then `tail` (the end of a re-chunked body).
#[derive(Debug)]
pub struct Replay {
    pub head: Bytes,
    pub file: Option<tokio::fs::File>,
    pub tail: Bytes,
}

impl Replay {
    /// Fills `buf` from the parts in order; `None` once all of it has been read.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Some(Poll::Ready(Ok(())));
        }
        if let Some(file) = self.file.as_mut() {
            let before = buf.filled().len();
            match Pin::new(file).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => self.file = None,
                other => return Some(other),
            }
        }
        if !self.tail.is_empty() {
            let n = self.tail.len().min(buf.remaining());
            buf.put_slice(&self.tail[..n]);
            self.tail.advance(n);
            return Some(Poll::Ready(Ok(())));
        }
        None
    }
}

/// Stack space for the first read of a request; a longer header is read on by Pingora.
const FIRST_READ: usize = 4096;

impl ClientStream {
    pub fn new(inner: Stream, timeout: Duration) -> ClientStream {
        let s = ClientStream {
            inner,
            timeout,
            base: Instant::now(),
            deadline: AtomicU64::new(DISARMED),
            sleep: None,
            received: None,
            replay: None,
        };
        s.arm_now();
        s
    }

    fn arm_now(&self) {
        let at = self.base.elapsed() + self.timeout;
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX - 1);
        self.deadline
            .store(ms.saturating_add(1).min(u64::MAX - 1), Ordering::Relaxed);
    }

    fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Relaxed) {
            DISARMED | ARM_ON_READ => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }

    /// Serves `replay` to the next reads, before anything more from the client.
    pub fn set_replay(&mut self, replay: Replay) {
        self.replay = Some(Box::new(replay));
    }

    /// Whether part of a replayed request was never read (its answer came first): what follows
    /// on the connection is not a request then.
    pub fn replay_pending(&self) -> bool {
        self.replay.is_some()
    }

    /// The request header has arrived: no deadline until the next request.
    pub fn header_done(&self) {
        self.deadline.store(DISARMED, Ordering::Relaxed);
    }

    /// The request is over: the next request's header is timed from its first byte.
    pub fn await_next_request(&self) {
        self.deadline.store(ARM_ON_READ, Ordering::Relaxed);
    }

    /// Ready with `true` once the client has sent the first bytes of its next request (kept for
    /// the next read), `false` when it closed the connection. The read buffer lives on the stack
    /// for the length of one poll, so a connection waiting here holds no buffer at all.
    pub fn poll_next_request(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.received.is_some() {
            return Poll::Ready(Ok(true));
        }
        let mut scratch = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut *self).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.received = Some(Bytes::copy_from_slice(buf.filled()));
        Poll::Ready(Ok(true))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client_header_timeout: request header not received in time",
    )
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(received) = this.received.as_mut() {
            let n = received.len().min(buf.remaining());
            buf.put_slice(&received[..n]);
            received.advance(n);
            if received.is_empty() {
                this.received = None;
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(replay) = this.replay.as_mut() {
            match replay.poll_read(cx, buf) {
                Some(res) => return res,
                None => this.replay = None,
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got_bytes = matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        if got_bytes
            && this
                .deadline
                .compare_exchange(ARM_ON_READ, DISARMED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            this.arm_now();
        }
        let Some(deadline) = this.deadline() else {
            return res;
        };
        // Data that keeps trickling in does not extend the deadline.
        if Instant::now() >= deadline {
            return Poll::Ready(Err(timed_out()));
        }
        if res.is_pending() {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(timed_out()));
            }
        }
        res
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.replay.is_some() {
            return Ok(false);
        }
        match &self.received {
            // Peeking past what was already read would reorder bytes: say it cannot be done.
            Some(received) if received.len() < buf.len() => Ok(false),
            Some(received) => {
                buf.copy_from_slice(&received[..buf.len()]);
                Ok(true)
            }
            None => self.inner.try_peek(buf).await,
        }
    }
}

fn client_stream(session: &Session) -> Option<&ClientStream> {
    session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<ClientStream>())
}

/// The request header has been parsed: stop its clock.
pub fn header_done(session: &Session) {
    if let Some(s) = client_stream(session) {
        s.header_done();
    }
}

/// The request is finished: time the next one's header from its first byte.
pub fn await_next_request(session: &Session) {
    if let Some(s) = client_stream(session) {
        s.await_next_request();
    }
}
