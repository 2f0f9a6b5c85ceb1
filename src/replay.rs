//! What the inbound listener remembers of recent notifications without a store (issue 18,
//! M5 and L4): a bounded window of notifications the app took, and the copies being
//! delivered right now.
//!
//! **The replay window** ([`ReplayWindow`]). Without `[store]` nothing used to stop the same
//! signed notification from reaching the app again and again: a captured notification (or a
//! network duplicate) was verified and forwarded every time. The window remembers the SHA-256
//! of the signed content (`POST <path>\n<client-id>.<Request-Time>.<body>`) of each
//! notification the app answered 2xx; an exact copy is then acknowledged with Alipay's
//! SUCCESS body and counted, not delivered again. Keyed by the signed content rather than by
//! the `Signature` header text, because the same signature can be written several ways
//! (upper- or lower-case `%2B`, spec §2) and all of them verify. A copy Alipay re-signs (a
//! new `Request-Time`) is a different content: without a store it is delivered, as before;
//! the journal (`[store]`) de-duplicates those by business id.
//!
//! Bounded: at most `replay_window_entries` digests (default 16,384), the oldest forgotten
//! first. One entry is a 32-byte digest in a hash set and in a queue, ≈ 80 bytes with the
//! tables' overhead: ≈ 1.3 MiB at the default. Only notifications whose signature verified
//! enter it, so a peer without Alipay's key cannot flush it.
//!
//! **The in-flight gate** ([`InFlight`]). Alipay re-sends a notification that was not
//! acknowledged quickly, and a slow app can still hold the first copy when the second one
//! arrives: both used to be delivered. A copy whose key (the event id with a store, the
//! content digest without) is being delivered waits for that delivery to end, then is
//! handled as usual: a duplicate once the first was taken, a new delivery if it failed.
//! Bounded by the requests in flight (`max_connections`). Per process: replicas sharing a
//! PostgreSQL store do not wait for each other (the app's de-duplication on
//! `X-Alipay-Sidecar-Event-Id` covers that case, as at-least-once delivery requires).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};
use tokio::sync::Notify;

/// The SHA-256 of a notification's signed content.
pub type Digest = [u8; 32];

/// Parses a 64-digit hex SHA-256 (as [`crate::report::Report::content_sha256`] holds it).
pub fn digest_from_hex(hex: &str) -> Option<Digest> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The notifications the app took recently (see the module doc).
#[derive(Debug)]
pub struct ReplayWindow {
    capacity: usize,
    inner: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    set: HashSet<Digest>,
    order: VecDeque<Digest>,
}

impl ReplayWindow {
    /// A window of at most `capacity` digests (> 0).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Window::default()),
        }
    }

    /// Whether the app already took the notification with this signed content.
    pub fn seen(&self, digest: &Digest) -> bool {
        self.lock().set.contains(digest)
    }

    /// The app took it: later exact copies are replays. Forgets the oldest beyond capacity.
    pub fn remember(&self, digest: Digest) {
        let mut w = self.lock();
        if !w.set.insert(digest) {
            return;
        }
        w.order.push_back(digest);
        while w.order.len() > self.capacity {
            if let Some(old) = w.order.pop_front() {
                w.set.remove(&old);
            }
        }
    }

    /// Digests held now (the tests' view of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().order.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // a panic while holding this lock cannot leave the window inconsistent in a way
        // that matters (worst case: one digest in the set and not the queue)
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The notification deliveries in progress, by key (see the module doc).
#[derive(Debug, Default)]
pub struct InFlight {
    inner: Mutex<HashMap<String, Arc<Notify>>>,
}

/// Why [`InFlight::enter`] gave up: the other copy's delivery did not end in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillInFlight;

/// The right to deliver one key; the next copy may go when it is dropped.
#[derive(Debug)]
pub struct Turn {
    gate: Arc<InFlight>,
    key: String,
    /// Whether this copy waited for another one first.
    pub waited: bool,
}

impl InFlight {
    /// An empty gate.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Takes the turn for `key`, waiting up to `wait` for a copy already being delivered.
    pub async fn enter(self: &Arc<Self>, key: &str, wait: Duration) -> Result<Turn, StillInFlight> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waited = false;
        loop {
            let notified = {
                let mut map = self.lock();
                match map.get(key) {
                    None => {
                        map.insert(key.to_string(), Arc::new(Notify::new()));
                        return Ok(Turn {
                            gate: self.clone(),
                            key: key.to_string(),
                            waited,
                        });
                    }
                    Some(n) => n.clone(),
                }
            };
            waited = true;
            let wake = notified.notified();
            tokio::pin!(wake);
            // registered before the lock is taken again: a turn ending in between still
            // wakes this waiter (it removes the entry and notifies under the same lock)
            wake.as_mut().enable();
            let same = self
                .lock()
                .get(key)
                .is_some_and(|now| Arc::ptr_eq(now, &notified));
            if !same {
                // that turn ended (and maybe another began) before this waiter registered
                continue;
            }
            if tokio::time::timeout_at(deadline, wake).await.is_err() {
                return Err(StillInFlight);
            }
        }
    }

    /// Whether nothing is being delivered (the tests' view of the gate).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(n) = self.gate.lock().remove(&self.key) {
            n.notify_waiters();
        }
    }
}

/// The metrics of the window and the gate, in the sidecar's one registry.
pub struct ReplayMetrics {
    replayed: IntCounterVec,
    waited: IntCounterVec,
}

impl ReplayMetrics {
    /// One exact copy acknowledged from the replay window.
    pub fn replayed(&self, merchant: &str) {
        self.replayed.with_label_values(&[merchant]).inc();
    }

    /// One copy that waited for another copy's delivery.
    pub fn waited(&self, merchant: &str) {
        self.waited.with_label_values(&[merchant]).inc();
    }

    /// Creates the series of `merchants` at zero.
    pub fn register_merchants<'a>(&self, merchants: impl IntoIterator<Item = &'a str>) {
        for m in merchants {
            self.replayed.with_label_values(&[m]);
            self.waited.with_label_values(&[m]);
        }
    }
}

/// The process-wide metrics of this file.
pub fn metrics() -> &'static ReplayMetrics {
    static M: OnceLock<ReplayMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["merchant"])
                // only a definition bug in this file can fail; the unit tests build them
                .unwrap_or_else(|e| panic!("replay metrics: {e}"))
        };
        let m = ReplayMetrics {
            replayed: counter(
                "alipay_sidecar_notifications_replayed_total",
                "Exact copies of a notification the app already took, acknowledged with \
                 Alipay's SUCCESS body from the in-memory replay window (no [store]) instead \
                 of being delivered again.",
            ),
            waited: counter(
                "alipay_sidecar_notifications_waited_total",
                "Copies of a notification that arrived while another copy was being \
                 delivered, and waited for that delivery to end.",
            ),
        };
        for c in [&m.replayed, &m.waited] {
            if let Err(e) = crate::metrics::metrics().register(Box::new(c.clone())) {
                tracing::error!(error = %e, "registering a replay metric failed");
            }
        }
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        [n; 32]
    }

    #[test]
    fn the_window_remembers_up_to_its_capacity_oldest_forgotten_first() {
        let w = ReplayWindow::new(2);
        assert!(!w.seen(&d(1)));
        w.remember(d(1));
        w.remember(d(1));
        assert_eq!(w.len(), 1, "a digest is held once");
        w.remember(d(2));
        assert!(w.seen(&d(1)) && w.seen(&d(2)));
        w.remember(d(3));
        assert_eq!(w.len(), 2);
        assert!(!w.seen(&d(1)), "the oldest is forgotten");
        assert!(w.seen(&d(2)) && w.seen(&d(3)));
    }

    #[test]
    fn hex_digests_parse_strictly() {
        let hex = "00ff".repeat(16);
        let got = digest_from_hex(&hex).unwrap();
        assert_eq!(got[0], 0);
        assert_eq!(got[1], 255);
        assert!(digest_from_hex("00").is_none());
        assert!(digest_from_hex(&"zz".repeat(32)).is_none());
        assert!(digest_from_hex(&"é".repeat(32)).is_none());
    }

    #[tokio::test]
    async fn a_second_copy_waits_for_the_first_and_gives_up_after_the_deadline() {
        let gate = InFlight::new();
        let first = gate.enter("evt_1", Duration::from_secs(1)).await.unwrap();
        assert!(!first.waited);
        let other = gate.enter("evt_2", Duration::from_secs(1)).await.unwrap();
        assert!(!other.waited, "another key does not wait");
        let g = gate.clone();
        let second = tokio::spawn(async move {
            g.enter("evt_1", Duration::from_secs(30))
                .await
                .map(|t| t.waited)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second copy waits");
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(true));
        let held = gate.enter("evt_2", Duration::from_millis(20)).await;
        assert_eq!(held.err(), Some(StillInFlight));
        drop(other);
        assert!(gate.is_empty());
    }
}
