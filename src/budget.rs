//! The global budget for unverified request bodies buffered at once (issue 18, H2).
//!
//! Why: the bound on what unauthenticated peers can make the inbound listener buffer was
//! `max_connections × max_body_bytes` (1,024 × 1 MiB ≈ 1 GiB) before any signature was looked
//! at, and 150 clients holding 1 MiB bodies OOM-killed a pod under its 128 MiB limit. The
//! cheap head checks ([`crate::inbound`]) stop peers that do not even claim to be Alipay; a
//! peer that copies a genuine-looking head can still send a body, and this budget bounds the
//! sum of those bodies across every connection, whatever the connection count.
//!
//! How: before a body is read, its announced size (`Content-Length`) is reserved; a chunked
//! body reserves as its chunks arrive. A reservation that does not fit is refused at once,
//! with a retryable `503` (`SIDECAR_INBOUND_BUSY`, resultStatus `U`): Alipay re-sends an
//! unacknowledged notification, so a genuine one refused during an attack arrives again
//! later. The reservation is given back when the request is answered (a [`Reservation`] is a
//! guard: every way a request ends releases it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus::{IntCounter, IntGauge};

/// A byte budget shared by every connection of one listener.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The budget in bytes (`[inbound] unverified_body_budget_bytes`).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes`, or `None` (counted) when they do not fit.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut r = Reservation {
            budget: self.clone(),
            bytes: 0,
        };
        r.grow_to(bytes).then_some(r)
    }

    fn take(&self, bytes: usize) -> bool {
        let fits = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.limit)
            })
            .is_ok();
        if fits {
            metrics().bytes.add(bytes as i64);
        } else {
            metrics().refused.inc();
        }
        fits
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        metrics().bytes.sub(bytes as i64);
    }
}

/// Bytes held against a [`BodyBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Reservation {
    /// Grows the reservation to at least `total` bytes; `false` (counted) when the budget
    /// cannot hold them (the reservation keeps what it had).
    pub fn grow_to(&mut self, total: usize) -> bool {
        let more = total.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        if !self.budget.take(more) {
            return false;
        }
        self.bytes += more;
        true
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

/// The budget's metrics, in the sidecar's one registry.
struct BudgetMetrics {
    bytes: IntGauge,
    refused: IntCounter,
}

fn metrics() -> &'static BudgetMetrics {
    static M: OnceLock<BudgetMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let bytes = IntGauge::new(
            "alipay_sidecar_inbound_unverified_body_bytes",
            "Bytes of notification bodies being read or checked now, held against \
             [inbound] unverified_body_budget_bytes.",
        );
        let refused = IntCounter::new(
            "alipay_sidecar_inbound_body_budget_refused_total",
            "Notifications refused with 503 SIDECAR_INBOUND_BUSY because their body did not \
             fit [inbound] unverified_body_budget_bytes (Alipay re-sends them).",
        );
        // Only a definition bug in this file can fail; the unit tests build them.
        let (bytes, refused) = match (bytes, refused) {
            (Ok(b), Ok(r)) => (b, r),
            (Err(e), _) | (_, Err(e)) => panic!("budget metrics: {e}"),
        };
        for c in [
            Box::new(bytes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
        ] {
            if let Err(e) = crate::metrics::metrics().register(c) {
                tracing::error!(error = %e, "registering a body budget metric failed");
            }
        }
        BudgetMetrics { bytes, refused }
    })
}

/// Creates the series at zero (an alert on `increase(...) > 0` must see the first refusal).
pub fn register_metrics() {
    metrics();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_the_budget_and_are_given_back_on_drop() {
        let b = BodyBudget::new(100);
        let first = b.reserve(60).expect("fits");
        assert!(b.reserve(41).is_none(), "60 + 41 > 100");
        let mut second = b.reserve(40).expect("60 + 40 fits exactly");
        assert_eq!(b.used(), 100);
        assert!(!second.grow_to(41), "no room left");
        assert_eq!(second.bytes(), 40, "a failed growth keeps what it had");
        drop(first);
        assert!(second.grow_to(90));
        assert!(second.grow_to(10), "shrinking is a no-op");
        assert_eq!(b.used(), 90);
        drop(second);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(usize::MAX).is_none(), "no overflow");
        assert_eq!(b.used(), 0);
    }
}
