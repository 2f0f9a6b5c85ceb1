//! Process-wide state shared by the listeners: the live key set, readiness and the in-flight
//! count that graceful shutdown waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::keyset::KeySet;
use crate::metrics::{self, Direction, InFlightGuard};

/// Shared by the outbound, inbound and admin services and the reload task.
pub struct SidecarState {
    keys: ArcSwap<KeySet>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl SidecarState {
    /// Starts serving with a key set that already passed loading and preflight.
    pub fn new(keys: KeySet) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(keys),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The current key set. A request loads it once (lock-free) and uses that snapshot from
    /// start to end, so a concurrent reload never mixes keys inside one request.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Replaces the key set for all requests that start from now on.
    pub fn swap_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// Readiness: false once shutdown began, so load balancers stop sending traffic.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
    }

    /// Marks the process as draining (readiness 503) — the first step of graceful shutdown.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Requests being handled right now, across listeners.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts one request as in flight — for the shutdown drain and for the
    /// `alipay_sidecar_in_flight_requests{direction}` gauge — until the guard drops.
    pub fn track(self: &Arc<Self>, direction: Direction) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            state: self.clone(),
            _gauge: metrics::metrics().in_flight(direction),
        }
    }
}

/// Decrements the in-flight count (and the gauge) on drop, whatever path the request took.
pub struct InFlight {
    state: Arc<SidecarState>,
    _gauge: InFlightGuard,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
