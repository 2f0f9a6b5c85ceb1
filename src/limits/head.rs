//! The request-head limits of one connection: `max_header_bytes`, `header_read_timeout` and
//! `idle_timeout`, enforced on the bytes pingora reads (see [`crate::limits`]' module doc for
//! why a stream wrapper).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{lock, Evict, Shared};
use crate::envelope::SidecarError;
use crate::metrics;

/// Where the connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: bytes are counted and the deadline runs.
    Head,
    /// The head is complete; the body (bounded by the handler) and the answer follow.
    Body,
}

/// A connection's stream that enforces `max_header_bytes` and `header_read_timeout` on the
/// request heads read through it (see the module doc).
pub struct HeadLimited {
    inner: Stream,
    shared: Arc<Shared>,
    phase: Phase,
    /// The current head's bytes so far.
    head: HeadScan,
    /// Whether an answer was written since the head completed (the next read then starts a
    /// new head).
    answered: bool,
    deadline: Option<Pin<Box<Sleep>>>,
    /// A canned error answer still to be written before the connection closes.
    reply: Option<(Vec<u8>, usize)>,
    /// Set once a limit was broken: every later read fails.
    broken: bool,
    /// Waiting for the first byte of a head after an answer (the `idle_timeout` runs).
    idle: bool,
    /// Set when an eviction took this connection's slot.
    evict: Arc<Evict>,
    /// The key in the listener's waiting set, while the connection waits for a request.
    waiting: Option<u64>,
    /// Whether this connection was evicted (its slot already counts as given back).
    evicted: bool,
}

impl fmt::Debug for HeadLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadLimited")
            .field("listener", &self.shared.listener)
            .field("phase", &self.phase)
            .field("head_bytes", &self.head.bytes)
            .finish()
    }
}

/// Which limit a client broke.
#[derive(Debug, Clone, Copy)]
enum Violation {
    TooLarge,
    Timeout,
}

impl HeadLimited {
    pub(super) fn new(inner: Stream, shared: Arc<Shared>) -> Self {
        // the first head's deadline runs from the accept
        let deadline = Some(Box::pin(tokio::time::sleep(
            shared.limits.header_read_timeout,
        )));
        let evict = Arc::new(Evict::default());
        let waiting = Some(shared.wait(&evict));
        Self {
            inner,
            shared,
            phase: Phase::Head,
            head: HeadScan::default(),
            answered: false,
            deadline,
            reply: None,
            broken: false,
            idle: false,
            evict,
            waiting,
            evicted: false,
        }
    }

    /// Ends the wait for a request (head complete, or the connection closing).
    fn stop_waiting(&mut self) {
        if let Some(key) = self.waiting.take() {
            self.shared.unwait(key);
        }
    }

    /// Closes the connection without an answer: it was idle too long, or evicted.
    fn close_quietly(&mut self, reason: &'static str) -> Poll<std::io::Result<()>> {
        self.broken = true;
        self.stop_waiting();
        if reason == "idle_timeout" {
            metrics::metrics().record_connection_closed(self.shared.listener, reason);
        }
        if self.head.bytes == 0 {
            Poll::Ready(Ok(())) // end of stream: pingora closes a connection that sent nothing
        } else {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                format!("connection closed ({reason})"),
            )))
        }
    }

    /// Marks the connection broken, queues the client's answer (written on shutdown) and
    /// returns the error pingora sees.
    fn violate(&mut self, v: Violation) -> std::io::Error {
        self.broken = true;
        self.stop_waiting();
        let limits = &self.shared.limits;
        let (error, reason, message) = match v {
            Violation::TooLarge => (
                SidecarError::HeadersTooLarge,
                "header_too_large",
                format!(
                    "the request head (request line and headers) exceeds {} bytes ([server] max_header_bytes)",
                    limits.max_header_bytes
                ),
            ),
            Violation::Timeout => (
                SidecarError::RequestTimeout,
                "header_timeout",
                format!(
                    "the request head did not arrive within {} ([server] header_read_timeout)",
                    humantime::format_duration(limits.header_read_timeout)
                ),
            ),
        };
        // A connection that sent nothing gets no answer (there is no request to answer).
        if self.head.bytes > 0 || matches!(v, Violation::TooLarge) {
            let body = error.body(&message);
            let head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=UTF-8\r\n{}: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                error.http_status(),
                if matches!(v, Violation::TooLarge) { "Request Header Fields Too Large" } else { "Request Timeout" },
                crate::headers::ERROR_HEADER,
                error.code(),
                body.len()
            );
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            self.reply = Some((bytes, 0));
        }
        metrics::metrics().record_connection_closed(self.shared.listener, reason);
        metrics::metrics().record_error(error.code());
        if let Some(count) = self.shared.closed_log.hit() {
            tracing::warn!(
                listener = self.shared.listener,
                reason,
                closed = count,
                "closed connections that broke a request-head limit (logged at most once per second)"
            );
        }
        std::io::Error::new(std::io::ErrorKind::InvalidData, message)
    }

    fn start_head(&mut self) {
        self.phase = Phase::Head;
        self.head = HeadScan::default();
        self.answered = false;
        // the idle wait for the next request's first byte; the head's own deadline is armed
        // at that byte
        self.idle = true;
        self.deadline = Some(Box::pin(tokio::time::sleep(
            self.shared.limits.idle_timeout,
        )));
        if self.waiting.is_none() {
            self.waiting = Some(self.shared.wait(&self.evict));
        }
    }

    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// Writes the queued error answer, if any.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, written)) = self.reply.as_mut() {
            if *written >= bytes.len() {
                self.reply = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.reply = None; // the client is gone; nothing more to say
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for HeadLimited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.broken {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the connection broke a request-head limit",
            )));
        }
        if this.phase == Phase::Body && this.answered {
            this.start_head();
        }
        if this.phase == Phase::Body {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.evict.evicted.load(Ordering::SeqCst) {
            if !this.evicted {
                this.evicted = true;
                this.shared.evicting.fetch_sub(1, Ordering::SeqCst);
            }
            return this.close_quietly("evicted");
        }
        // Head: read at most one byte past the limit, so the buffer never holds more.
        let allowance = this.shared.limits.max_header_bytes + 1 - this.head.bytes;
        let before = buf.filled().len();
        let polled = {
            let mut limited = buf.take(allowance.min(buf.remaining()));
            let r = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
            (r, limited.filled().len())
        };
        match polled {
            (Poll::Pending, _) => {
                if this.deadline_passed(cx) {
                    if this.idle {
                        return this.close_quietly("idle_timeout");
                    }
                    return Poll::Ready(Err(this.violate(Violation::Timeout)));
                }
                *lock(&this.evict.waker) = Some(cx.waker().clone());
                // an eviction between the check above and the waker's registration
                if this.evict.evicted.load(Ordering::SeqCst) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            (Poll::Ready(Err(e)), _) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), n) => {
                // SAFETY: `limited` borrowed buf's unfilled part, and the inner reader
                // initialised and filled its first `n` bytes.
                unsafe { buf.assume_init(before + n - buf.filled().len()) };
                buf.advance(n);
                if n == 0 {
                    return Poll::Ready(Ok(())); // EOF
                }
                if this.head.bytes == 0 && (this.deadline.is_none() || this.idle) {
                    this.idle = false;
                    this.deadline = Some(Box::pin(tokio::time::sleep_until(
                        Instant::now() + this.shared.limits.header_read_timeout,
                    )));
                }
                if this.head.feed(&buf.filled()[before..before + n]) {
                    this.phase = Phase::Body;
                    this.deadline = None;
                    this.stop_waiting();
                } else if this.head.bytes > this.shared.limits.max_header_bytes {
                    return Poll::Ready(Err(this.violate(Violation::TooLarge)));
                } else if this.deadline_passed(cx) {
                    return Poll::Ready(Err(this.violate(Violation::Timeout)));
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for HeadLimited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // an interim `100 Continue` is not the answer; anything else written after the head
        // is, and the next read starts a new head
        if this.phase == Phase::Body && !is_interim(data) {
            this.answered = true;
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_reply(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Counts the bytes of one request head and finds the blank line that ends it, without
/// allocating: the blank line may straddle two reads, so the last three bytes of the
/// previous read are checked together with the first three of the next.
#[derive(Debug, Default)]
struct HeadScan {
    bytes: usize,
    tail: [u8; 3],
}

impl HeadScan {
    /// Counts `data` (just read); true when it completes the head.
    fn feed(&mut self, data: &[u8]) -> bool {
        let take = data.len().min(3);
        let mut edge = [0u8; 6];
        edge[..3].copy_from_slice(&self.tail);
        edge[3..3 + take].copy_from_slice(&data[..take]);
        let done = ends_head(&edge[..3 + take]) || ends_head(data);
        self.bytes += data.len();
        let mut joined = [0u8; 6];
        joined[..3].copy_from_slice(&self.tail);
        joined[3..3 + take].copy_from_slice(&data[data.len() - take..]);
        self.tail.copy_from_slice(&joined[take..take + 3]);
        done
    }
}

/// Whether `b` holds the blank line that ends a request head (`\r\n\r\n`, or the bare-LF
/// form pingora's parser also accepts).
fn ends_head(b: &[u8]) -> bool {
    b.windows(4).any(|w| w == b"\r\n\r\n") || b.windows(2).any(|w| w == b"\n\n")
}

fn is_interim(data: &[u8]) -> bool {
    data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] == b'1'
}

impl Drop for HeadLimited {
    fn drop(&mut self) {
        self.stop_waiting();
        if self.evict.evicted.load(Ordering::SeqCst) && !self.evicted {
            // evicted, but never polled again to notice
            self.shared.evicting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Shutdown for HeadLimited {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for HeadLimited {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadLimited {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadLimited {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for HeadLimited {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadLimited {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeadLimited {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_reads() {
        let mut h = HeadScan::default();
        assert!(!h.feed(b"POST / HTTP/1.1\r\nHost: x\r"));
        assert!(!h.feed(b"\n\r"));
        assert!(h.feed(b"\n{\"body\":1}"));
        assert_eq!(h.bytes, 38);
        let mut h = HeadScan::default();
        assert!(!h.feed(b"GET / HTTP/1.1\n"));
        assert!(h.feed(b"\n"), "bare LF ends a head too");
        let mut h = HeadScan::default();
        for b in b"POST / HTTP/1.1\r\nA: b\r\n" {
            assert!(!h.feed(&[*b]), "one byte at a time, not done yet");
        }
        assert!(!h.feed(b"\r"));
        assert!(h.feed(b"\n"));
    }

    #[test]
    fn interim_answers_are_recognised() {
        assert!(is_interim(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!is_interim(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_interim(b"{\"result\":1}"));
    }
}
