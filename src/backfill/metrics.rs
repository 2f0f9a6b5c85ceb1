//! The backfill's metrics, registered in the sidecar's one registry on first use. The names
//! are a contract (issue 22; dashboards and alerts use them): docs/notifications.md lists them.

use std::sync::OnceLock;

use prometheus::{GaugeVec, IntCounterVec, Opts};

/// `outcome` label values of `alipay_sidecar_backfill_events_total`.
pub const OUTCOMES: [&str; 3] = ["journaled", "recovered", "failed"];

pub(super) struct BackfillMetrics {
    /// `alipay_sidecar_backfill_events_total{merchant,notify_type,outcome}`.
    pub(super) events: IntCounterVec,
    /// `alipay_sidecar_backfill_last_complete_timestamp_seconds{merchant}`.
    pub(super) last_complete: GaugeVec,
}

/// Registers the metrics; `merchants` get their gauge at once (0 until a walk completes, or
/// the stored cursor's time).
pub fn register_metrics<'a>(merchants: impl IntoIterator<Item = &'a str>) {
    let m = metrics();
    for name in merchants {
        m.last_complete.with_label_values(&[name]);
        // the two types every merchant has, at zero, so dashboards and alerts see the series
        for t in ["PAYMENT_RESULT", "REFUND_RESULT"] {
            for o in OUTCOMES {
                m.events.with_label_values(&[name, t, o]);
            }
        }
    }
}

pub(super) fn metrics() -> &'static BackfillMetrics {
    static M: OnceLock<BackfillMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = BackfillMetrics {
            events: IntCounterVec::new(
                Opts::new(
                    "alipay_sidecar_backfill_events_total",
                    "Events of Alipay's notification event log seen by the backfill, by outcome: journaled (already in the journal), recovered (missing: recorded and delivered to the app; Alipay's delivery to the sidecar failed), failed (could not be recorded).",
                ),
                &["merchant", "notify_type", "outcome"],
            )
            .expect("valid metric"),
            last_complete: GaugeVec::new(
                Opts::new(
                    "alipay_sidecar_backfill_last_complete_timestamp_seconds",
                    "When the backfill last walked the merchant's event log to its end (Unix seconds; 0: never since start and none stored).",
                ),
                &["merchant"],
            )
            .expect("valid metric"),
        };
        let registry = crate::metrics::metrics();
        for c in [
            Box::new(m.events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.last_complete.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "registering a backfill metric failed");
            }
        }
        m
    })
}

/// Counts one event.
pub(super) fn count(merchant: &str, notify_type: &str, outcome: &str) {
    metrics()
        .events
        .with_label_values(&[merchant, notify_type, outcome])
        .inc();
}

/// A walk of `merchant` completed at `at_ms`.
pub(super) fn completed(merchant: &str, at_ms: i64) {
    metrics()
        .last_complete
        .with_label_values(&[merchant])
        .set(at_ms as f64 / 1000.0);
}
