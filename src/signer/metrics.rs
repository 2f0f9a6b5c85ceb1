//! The signer's metrics, registered in the process-wide set (`crate::metrics`) on first use
//! so they stay next to the code that records them.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use super::{Backend, FailureReason, SignFailure};

/// Signing latency buckets (seconds): the in-process engine (≈ 1 ms) up to a stalled remote
/// key store (the default `sign_timeout` is 2 s).
const SIGN_BUCKETS: &[f64] = &[
    0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0,
];

pub(crate) struct SignerMetrics {
    pub(crate) seconds: HistogramVec,
    pub(crate) in_flight: IntGauge,
    pub(crate) errors: IntCounterVec,
    pub(crate) breaker_open: IntGaugeVec,
}

impl SignerMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(SignerMetrics {
            seconds: HistogramVec::new(
                HistogramOpts::new(
                    "alipay_sidecar_signer_seconds",
                    "Time to sign one request or acknowledgement, by merchant and signer backend (file, pkcs11)",
                )
                .buckets(SIGN_BUCKETS.to_vec()),
                &["merchant", "backend"],
            )?,
            in_flight: IntGauge::new(
                "alipay_sidecar_signer_in_flight",
                "Signs under way in a PKCS#11 token (held sign slots, a stalled sign included)",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "alipay_sidecar_signer_errors_total",
                    "Signs that produced no signature, by reason (token_error, timeout, breaker_open, busy)",
                ),
                &["merchant", "backend", "reason"],
            )?,
            breaker_open: IntGaugeVec::new(
                Opts::new(
                    "alipay_sidecar_signer_breaker_open",
                    "1 while the merchant's signer circuit breaker is open (requests answered SIDECAR_SIGNER_UNAVAILABLE)",
                ),
                &["merchant"],
            )?,
        })
    }
}

/// The process-wide signer metrics.
pub(crate) fn get() -> &'static SignerMetrics {
    static M: OnceLock<SignerMetrics> = OnceLock::new();
    M.get_or_init(|| {
        // Only a definition bug in this file can fail.
        let m = SignerMetrics::new().unwrap_or_else(|e| panic!("signer metrics: {e}"));
        let registry = crate::metrics::metrics();
        let all: [Box<dyn prometheus::core::Collector>; 4] = [
            Box::new(m.seconds.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.breaker_open.clone()),
        ];
        for c in all {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "registering a signer metric failed");
            }
        }
        m
    })
}

/// Creates a merchant's series at zero (an alert's `increase()` must see the first error).
pub(crate) fn announce(merchant: &str, backend: Backend) {
    let m = get();
    for r in FailureReason::ALL {
        m.errors
            .with_label_values(&[merchant, backend.label(), r.label()]);
    }
    m.seconds.with_label_values(&[merchant, backend.label()]);
    if backend == Backend::Pkcs11 {
        m.breaker_open.with_label_values(&[merchant]);
    }
}

/// Records one sign; `seconds` caches the merchant's histogram handle (one label lookup per
/// key, not per sign).
pub(crate) fn observe(
    merchant: &str,
    backend: Backend,
    seconds: &OnceLock<Histogram>,
    elapsed: Duration,
    failure: Option<&SignFailure>,
) {
    let m = get();
    match failure {
        None => seconds
            .get_or_init(|| m.seconds.with_label_values(&[merchant, backend.label()]))
            .observe(elapsed.as_secs_f64()),
        Some(f) => m
            .errors
            .with_label_values(&[merchant, backend.label(), f.reason.label()])
            .inc(),
    }
}
