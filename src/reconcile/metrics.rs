//! The reconciler's metrics (`alipay_sidecar_reconcile_*`), registered in the sidecar's one
//! registry on first use, every series at zero before the first event. The names are a
//! contract (dashboards and alerts use them): docs/notifications.md lists them.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use sidecar_store::PayOutcome;

/// The reconciler's metrics, registered in the sidecar's registry on first use
/// ([`register_metrics`] at start-up, so every series exists at zero before the first event).
pub(super) struct ReconcileMetrics {
    pub(super) open: IntGauge,
    pub(super) outcomes: IntCounterVec,
    pub(super) inquiries: IntCounterVec,
    pub(super) cancels: IntCounterVec,
    pub(super) recorded: IntCounter,
    pub(super) store_errors: IntCounterVec,
    pub(super) conflicts: IntCounterVec,
}

/// `result` label values of `alipay_sidecar_reconcile_inquiries_total`.
const INQUIRY_RESULTS: [&str; 5] = ["success", "fail", "not_final", "error", "refused"];
/// `result` label values of `alipay_sidecar_reconcile_cancels_total`.
const CANCEL_RESULTS: [&str; 3] = ["success", "error", "withheld"];
/// `recorded` label values of `alipay_sidecar_reconcile_conflicts_total`: the recorded
/// outcomes a later PAYMENT_RESULT can contradict.
const CONFLICT_OUTCOMES: [PayOutcome; 3] = [
    PayOutcome::Cancelled,
    PayOutcome::InquiredFail,
    PayOutcome::InquiredSuccess,
];
/// `op` label values of `alipay_sidecar_reconcile_store_errors_total`.
const STORE_OPS: [&str; 4] = ["record_pay", "close_pay", "work", "deliver"];

/// Registers the reconciler's metrics (all series at zero) in the process's set: at start-up
/// when `[reconcile]` is on, and in checks that the dashboards and alerts only use names the
/// code exposes.
pub fn register_metrics() {
    metrics();
}

pub(super) fn metrics() -> &'static ReconcileMetrics {
    static M: OnceLock<ReconcileMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = build_metrics().expect("the reconciler's metric definitions are valid");
        let registry = crate::metrics::metrics();
        for c in [
            Box::new(m.open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.outcomes.clone()),
            Box::new(m.inquiries.clone()),
            Box::new(m.cancels.clone()),
            Box::new(m.recorded.clone()),
            Box::new(m.store_errors.clone()),
            Box::new(m.conflicts.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "registering a reconciler metric failed");
            }
        }
        for o in PayOutcome::ALL {
            m.outcomes.with_label_values(&[o.as_str()]);
        }
        for r in INQUIRY_RESULTS {
            m.inquiries.with_label_values(&[r]);
        }
        for r in CANCEL_RESULTS {
            m.cancels.with_label_values(&[r]);
        }
        for op in STORE_OPS {
            m.store_errors.with_label_values(&[op]);
        }
        for o in CONFLICT_OUTCOMES {
            m.conflicts.with_label_values(&[o.as_str()]);
        }
        m
    })
}

fn build_metrics() -> Result<ReconcileMetrics, prometheus::Error> {
    Ok(ReconcileMetrics {
        open: IntGauge::new(
            "alipay_sidecar_reconcile_open_pays",
            "Pay records waiting for a final result (the store's count, the same on every replica).",
        )?,
        outcomes: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_outcomes_total",
                "Pay records closed, by outcome: notified, inquired_success, inquired_fail, cancelled, expired.",
            ),
            &["outcome"],
        )?,
        inquiries: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_inquiries_total",
                "inquiryPayment calls made by the reconciler, by result: success, fail, not_final, error (no verified answer), refused (a verified answer about another payment, or naming none: not acted on).",
            ),
            &["result"],
        )?,
        cancels: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_cancels_total",
                "payments/cancel at the close time (cancel_on_expiry), by result: success, error, withheld (not called: no verified inquiry answer about the payment yet; it is inquired again).",
            ),
            &["result"],
        )?,
        recorded: IntCounter::new(
            "alipay_sidecar_reconcile_pays_recorded_total",
            "Pays whose verified answer was not final, recorded for reconciliation.",
        )?,
        store_errors: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_store_errors_total",
                "Store failures of the reconciler, by operation (record_pay, close_pay, work, deliver).",
            ),
            &["op"],
        )?,
        conflicts: IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_reconcile_conflicts_total",
                "Verified PAYMENT_RESULT notifications that contradict the outcome the sidecar recorded and delivered for the payment (delivered marked X-Alipay-Sidecar-Conflict), by recorded outcome: cancelled, inquired_fail, inquired_success.",
            ),
            &["recorded"],
        )?,
    })
}

pub(super) fn count_outcome(o: PayOutcome) {
    metrics().outcomes.with_label_values(&[o.as_str()]).inc();
}

pub(super) fn store_error(op: &'static str, error: &dyn std::fmt::Display) {
    metrics().store_errors.with_label_values(&[op]).inc();
    tracing::error!(op, error = %error, "reconciler: the state store failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_names_are_the_documented_ones() {
        let m = build_metrics().expect("definitions");
        let names: Vec<String> = [
            Box::new(m.open) as Box<dyn prometheus::core::Collector>,
            Box::new(m.outcomes),
            Box::new(m.inquiries),
            Box::new(m.cancels),
            Box::new(m.recorded),
            Box::new(m.store_errors),
            Box::new(m.conflicts),
        ]
        .iter()
        .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
        .collect();
        assert_eq!(
            names,
            [
                "alipay_sidecar_reconcile_open_pays",
                "alipay_sidecar_reconcile_outcomes_total",
                "alipay_sidecar_reconcile_inquiries_total",
                "alipay_sidecar_reconcile_cancels_total",
                "alipay_sidecar_reconcile_pays_recorded_total",
                "alipay_sidecar_reconcile_store_errors_total",
                "alipay_sidecar_reconcile_conflicts_total",
            ]
        );
        let doc = include_str!("../../docs/notifications.md");
        for name in &names {
            assert!(
                doc.contains(name.as_str()),
                "docs/notifications.md lacks {name}"
            );
        }
    }
}
