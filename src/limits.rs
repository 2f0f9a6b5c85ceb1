//! What an unauthenticated peer can make a listener hold: connections, header bytes, time.
//!
//! pingora 0.9 has no such limits of its own: a connection may hold up to 1 MiB of unfinished
//! request head (its `MAX_HEADER_SIZE`), its header read timeout applies per `read()` call
//! (one byte every few seconds keeps a connection forever), and nothing caps the number of
//! connections. The inbound listener faces the internet, so those three are enforced here.
//!
//! The seam. Every listener's app (the two `HttpProxy` services and the admin `HttpServer`)
//! is wrapped in [`Limited`], a pingora [`ServerApp`] that sees each accepted connection
//! before pingora reads a byte of it:
//! - **`max_connections`**: a connection beyond the limit is closed at once, unread, and
//!   counted (`alipay_sidecar_connections_refused_total{listener}`); open connections are a
//!   gauge (`alipay_sidecar_open_connections{listener}`). The slot is held by a guard, so every
//!   way a connection ends gives it back.
//! - **`max_header_bytes`, `header_read_timeout`**: the connection's stream is wrapped in
//!   [`HeadLimited`], which watches the bytes pingora reads while a request head is
//!   incomplete (up to the blank line that ends it). More than `max_header_bytes` → the
//!   client gets `431` in Alipay's envelope and the connection closes; the head not complete
//!   within `header_read_timeout` of its first byte (of the accept, for the first request) →
//!   `408` and close. Capping each read at the remaining allowance bounds what pingora's
//!   buffer holds by the limit, not by its 1 MiB.
//!
//! Why a stream wrapper rather than a patch of pingora or an accept loop of our own: it keeps
//! pingora's listener, HTTP/1.1 parser, keep-alive and graceful shutdown untouched, works for
//! every listener alike, and needs no fork. The body's deadline (`body_read_timeout`) is
//! enforced where the body is read ([`crate::adapter`]), which can answer in the envelope.
//!
//! Idle connections. pingora 0.9 keeps an HTTP/1.1 keep-alive connection without a
//! `Keep-Alive: timeout=` header open forever (`KeepaliveStatus::Infinite` in
//! `respect_keepalive`), so 1,024 clients that each send one request and then nothing would
//! hold every slot. Two bounds, both here, for every listener:
//! - **`idle_timeout`**: after an answer, the wait for the next request's first byte is
//!   bounded; when it passes the connection is closed quietly (nothing to answer) and counted
//!   (`reason="idle_timeout"`).
//! - **eviction at the cap**: a connection that arrives when the listener is at
//!   `max_connections` closes the *oldest waiting* connection (idle between requests, or still
//!   sending its head) and takes its slot (`reason="evicted"`); only when every connection is
//!   busy with a complete request is the newcomer refused. Chosen over a per-IP share because
//!   the sidecar's peers come from few addresses: every app is on loopback (a per-IP share
//!   would cap the one legitimate client of the outbound and admin listeners at a fraction of
//!   the slots) and Alipay notifies from a handful of IPs that a hostile share could not be
//!   told apart from. Eviction needs no knowledge of addresses: an attacker's connections only
//!   ever wait, a genuine client sends its head at once, so the genuine one is never the
//!   oldest waiting connection unless the attacker opens `max_connections` connections within
//!   the few milliseconds its head takes.
//!
//! Closed connections are logged at most once per second per listener, with a count, so an
//! attack cannot flood the logs.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::envelope::SidecarError;
use crate::logging::Throttle;
use crate::metrics;
use crate::tls::ListenerTls;

/// Makes freed connection buffers go back to the system (glibc only; a no-op elsewhere).
///
/// glibc serves allocations above a *dynamic* threshold with `mmap`, and raises the threshold
/// each time such a chunk is freed, so after a burst (1,000 slow clients holding 32 KiB
/// heads, or 64 bodies of 1 MiB) the same sizes come from the heap arenas and stay resident
/// after they are freed. A fixed threshold of 32 KiB keeps every large buffer (head buffers
/// at the limit, bodies) in its own mapping that is returned on free; small allocations are
/// unaffected. Called once at the start of `run`.
pub fn return_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the server starts threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

/// Raises the soft limit on open files to the hard limit (Linux and other Unix systems).
///
/// The connection caps of the listeners (1,024 inbound, 256 outbound, 64 admin by default)
/// plus the gateway and app connections and the store need more descriptors than the usual
/// soft limit of 1,024: without this, `accept` fails with EMFILE before the caps are reached.
/// Returns (soft before, soft after) for the start-up log.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            let before = lim.rlim_cur;
            if lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Some((before as u64, before as u64));
                }
            }
            Some((before as u64, lim.rlim_cur as u64))
        }
    }
    #[cfg(not(unix))]
    None
}

/// The limits of one listener (`[server]` values plus the listener's `max_connections`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once; more are closed unread.
    pub max_connections: usize,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// The whole head must arrive within this.
    pub header_read_timeout: Duration,
    /// How long a connection may wait, after an answer, for its next request's first byte.
    pub idle_timeout: Duration,
}

/// A listener's app behind the connection limits (see the module doc).
pub struct Limited<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    /// Set for an HTTPS listener: the handshake happens here, within `header_read_timeout`.
    tls: Option<Arc<ListenerTls>>,
}

/// What the wrapper and every stream of one listener share.
struct Shared {
    listener: &'static str,
    limits: ListenerLimits,
    open: AtomicUsize,
    /// Connections told to close by an eviction that still hold their slot (a few µs).
    evicting: AtomicUsize,
    /// The connections waiting for a request (idle or sending a head), oldest first: the
    /// candidates for eviction.
    waiting: Mutex<BTreeMap<u64, Arc<Evict>>>,
    /// Orders `waiting` by when a connection started to wait.
    seq: AtomicU64,
    gauge: IntGauge,
    refused_log: Throttle,
    closed_log: Throttle,
}

/// How an eviction reaches a waiting connection: the flag, and the waker of its pending read.
#[derive(Default)]
struct Evict {
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Evict {
    fn fire(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<A> Limited<A> {
    /// Wraps `inner`, the app of the listener called `listener` (a metric label).
    pub fn new(inner: A, listener: &'static str, limits: ListenerLimits) -> Self {
        Self::shared(Arc::new(inner), listener, limits, None)
    }

    /// Wraps an app shared with another listener (the plain and the HTTPS outbound listener
    /// serve one proxy); with `tls`, connections are TLS-terminated here first.
    pub fn shared(
        inner: Arc<A>,
        listener: &'static str,
        limits: ListenerLimits,
        tls: Option<Arc<ListenerTls>>,
    ) -> Self {
        metrics::metrics().register_listener(listener);
        Self {
            tls,
            inner,
            shared: Arc::new(Shared {
                listener,
                gauge: metrics::metrics().open_connections(listener),
                limits,
                open: AtomicUsize::new(0),
                evicting: AtomicUsize::new(0),
                waiting: Mutex::new(BTreeMap::new()),
                seq: AtomicU64::new(0),
                refused_log: Throttle::new(),
                closed_log: Throttle::new(),
            }),
        }
    }
}

/// One open connection's slot; released on drop, whatever ended the connection.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        let was = self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.gauge.dec();
        if was == 1 {
            trim_after_burst();
        }
    }
}

/// When a listener's last connection closed, hands the allocator's free pages back to the
/// system (glibc keeps them in its arenas otherwise), at most once a second: after an
/// attack of many slow connections the process shrinks back near its idle size.
fn trim_after_burst() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::AtomicU64;
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = LAST.load(Ordering::Relaxed);
        if now > last
            && LAST
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

impl Shared {
    /// A slot for a new connection: a free one, or the slot of the oldest waiting
    /// connection, which is told to close (see the module doc). `None`: every slot is busy
    /// with a request.
    fn acquire(self: &Arc<Self>) -> Option<Slot> {
        let max = self.limits.max_connections;
        let free = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !free {
            let oldest = {
                let mut waiting = lock(&self.waiting);
                // connections already being evicted do not count against the cap
                if self
                    .open
                    .load(Ordering::SeqCst)
                    .saturating_sub(self.evicting.load(Ordering::SeqCst))
                    > max
                {
                    return None;
                }
                waiting.pop_first().map(|(_, e)| e)
            }?;
            self.evicting.fetch_add(1, Ordering::SeqCst);
            oldest.fire();
            self.open.fetch_add(1, Ordering::SeqCst);
            metrics::metrics().record_connection_closed(self.listener, "evicted");
        }
        self.gauge.inc();
        Some(Slot(self.clone()))
    }

    /// Registers a connection that starts waiting for a request; returns its key.
    fn wait(&self, evict: &Arc<Evict>) -> u64 {
        let key = self.seq.fetch_add(1, Ordering::SeqCst);
        lock(&self.waiting).insert(key, evict.clone());
        key
    }

    /// A connection stopped waiting (its head is complete, or it closed).
    fn unwait(&self, key: u64) {
        lock(&self.waiting).remove(&key);
    }
}

#[async_trait]
impl<A> ServerApp for Limited<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(slot) = self.shared.acquire() else {
            metrics::metrics().record_connection_refused(self.shared.listener);
            if let Some(count) = self.shared.refused_log.hit() {
                tracing::warn!(
                    listener = self.shared.listener,
                    refused = count,
                    max_connections = self.shared.limits.max_connections,
                    "connections refused: the listener is at max_connections (logged at most once per second)"
                );
            }
            drop(stream); // closed at once, unread
            return None;
        };
        let stream = match &self.tls {
            None => stream,
            Some(tls) => {
                let handshake = tls.acceptor().accept(stream);
                match tokio::time::timeout(self.shared.limits.header_read_timeout, handshake).await
                {
                    Ok(Ok(tls_stream)) => Box::new(TlsConn(tls_stream)) as Stream,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        // a TCP probe (readiness, a load balancer) that never spoke TLS
                        tracing::debug!(
                            listener = self.shared.listener,
                            "connection closed before the TLS handshake"
                        );
                        return None;
                    }
                    Ok(Err(e)) => {
                        if let Some(count) = self.shared.closed_log.hit() {
                            tracing::warn!(listener = self.shared.listener, error = %e, failed = count, "TLS handshakes failed (logged at most once per second)");
                        }
                        return None;
                    }
                    Err(_) => {
                        metrics::metrics()
                            .record_connection_closed(self.shared.listener, "header_timeout");
                        return None;
                    }
                }
            }
        };
        let limited = HeadLimited::new(stream, self.shared.clone());
        // The connection is not handed back for reuse: pingora's HTTP/1 loop keeps it for
        // keep-alive itself and returns None when it is done.
        let _ = self.inner.process_new(Box::new(limited), shutdown).await;
        drop(slot);
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

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
    fn new(inner: Stream, shared: Arc<Shared>) -> Self {
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
                crate::exchange::ERROR_HEADER,
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

/// A TLS-terminated connection as pingora's stream type (HTTP/1.1 only: no ALPN `h2`).
struct TlsConn(tokio_rustls::server::TlsStream<Stream>);

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConn")
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.0.get_ref().0.id()
    }
}

impl Ssl for TlsConn {}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.0.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.0.get_ref().0.get_socket_digest()
    }
}

#[async_trait]
impl Peek for TlsConn {}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max: usize) -> Arc<Shared> {
        Arc::new(Shared {
            listener: "test",
            limits: ListenerLimits {
                max_connections: max,
                max_header_bytes: 64,
                header_read_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            },
            open: AtomicUsize::new(0),
            evicting: AtomicUsize::new(0),
            waiting: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            gauge: IntGauge::new("t", "t").unwrap(),
            refused_log: Throttle::new(),
            closed_log: Throttle::new(),
        })
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let s = shared(2);
        let a = s.acquire().expect("first");
        let _b = s.acquire().expect("second");
        assert!(s.acquire().is_none(), "a third connection must be refused");
        drop(a);
        assert!(s.acquire().is_some(), "a closed connection frees its slot");
    }

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_is_evicted() {
        let s = shared(2);
        let _a = s.acquire().expect("first");
        let _b = s.acquire().expect("second");
        let (old, new) = (Arc::new(Evict::default()), Arc::new(Evict::default()));
        let old_key = s.wait(&old);
        let _new_key = s.wait(&new);
        let c = s.acquire().expect("a waiting connection gives up its slot");
        assert!(old.evicted.load(Ordering::SeqCst), "the oldest waiter goes");
        assert!(!new.evicted.load(Ordering::SeqCst), "the newer one stays");
        // already removed by the eviction: a no-op
        s.unwait(old_key);
        // the evicted connection still holds its slot until it notices; it does not count
        assert!(
            s.acquire().is_some(),
            "the second waiter is evicted in turn"
        );
        assert!(new.evicted.load(Ordering::SeqCst));
        assert!(
            s.acquire().is_none(),
            "no connection waits: every slot is busy with a request, the newcomer is refused"
        );
        drop(c);
    }

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
