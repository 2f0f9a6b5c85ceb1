//! Process-wide state shared by the listeners: the merchants with their live key sets,
//! readiness and the in-flight count that graceful shutdown waits on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::merchants::Merchants;
use crate::metrics::{self, InFlightGuard};
use crate::report::Direction;
use crate::store::StateStore;

/// Shared by the outbound, inbound and admin services and the reload task.
pub struct SidecarState {
    merchants: Merchants,
    store: Option<Arc<StateStore>>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl SidecarState {
    /// Starts serving with key sets that already passed loading and preflight, and the state
    /// store of `[store]` (already open) when there is one.
    pub fn with_store(merchants: Merchants, store: Option<Arc<StateStore>>) -> Arc<Self> {
        Arc::new(Self {
            merchants,
            store,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The merchants, each with its live key set (a request uses one
    /// [`crate::merchants::Merchant::keys`] snapshot).
    pub fn merchants(&self) -> &Merchants {
        &self.merchants
    }

    /// The state store, when `[store]` is configured.
    pub fn store(&self) -> Option<&Arc<StateStore>> {
        self.store.as_ref()
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
