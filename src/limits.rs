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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntGauge;

use crate::logging::Throttle;
use crate::metrics;
use crate::tls::{Handshake, ListenerTls};

mod head;

pub use head::HeadLimited;

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
            crate::memory::trim_after_burst();
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
                match tls
                    .accept(stream, self.shared.limits.header_read_timeout)
                    .await
                {
                    Ok(tls_stream) => tls_stream,
                    Err(Handshake::Closed) => {
                        // a TCP probe (readiness, a load balancer) that never spoke TLS
                        tracing::debug!(
                            listener = self.shared.listener,
                            "connection closed before the TLS handshake"
                        );
                        return None;
                    }
                    Err(Handshake::Failed(e)) => {
                        if let Some(count) = self.shared.closed_log.hit() {
                            tracing::warn!(listener = self.shared.listener, error = %e, failed = count, "TLS handshakes failed (logged at most once per second)");
                        }
                        return None;
                    }
                    Err(Handshake::TimedOut) => {
                        metrics::metrics()
                            .record_connection_closed(self.shared.listener, "header_timeout");
                        return None;
                    }
                }
            }
        };
        if matches!(
            stream.selected_alpn_proto(),
            Some(pingora::protocols::ALPN::H2)
        ) {
            // HTTP/2: frames, not a text head; the h2 settings bound it (crate::h2)
            let stream = crate::h2::Preface::new(
                stream,
                self.shared.listener,
                self.shared.limits.header_read_timeout,
            );
            let _ = self.inner.process_new(Box::new(stream), shutdown).await;
            drop(slot);
            return None;
        }
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
}
