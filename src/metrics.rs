//! Prometheus metrics for the running sidecar.
//!
//! Why this module exists: an operator must be able to see, without reading logs, whether
//! calls are being signed, whether Alipay's answers and notifications verify, how long the
//! gateway and the app take, and which keys are live. Everything is in ONE
//! [`prometheus::Registry`] owned by this module (pingora 0.9 registers nothing of its own),
//! exposed as text by [`render`] for `GET /metrics` on the admin listener.
//!
//! Rules the API enforces so cardinality stays low and nothing from a request leaks into a
//! label:
//! - every label value is either a closed enum ([`Direction`], [`Outcome`], …), a
//!   `&'static str` (API labels from [`api_label`], verification reasons), an HTTP status code,
//!   or key metadata the operator configured (key version, public-key fingerprint);
//! - names are `alipay_sidecar_*` in base units (seconds, bytes).
//!
//! Counters whose first increment an alert must see (`increase(...) > 0` misses a series
//! that is born at 1) are created at zero up front: key reloads and every verification
//! failure reason.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::envelope::SidecarError;

mod fn_counter;
mod series;
pub use fn_counter::FnCounter;

// The AMS domain data behind the labels lives with the protocol (crate `ams-signature`), one
// list each; re-exported here because it is what callers label metrics with.
pub use crate::protocol::{api_label, INBOUND_API_LABEL, OTHER_API_LABEL};
// re-exported: tests/ and the files that label with them name them here
use crate::report::Report;
pub use crate::report::{Direction, Outcome, VerificationResult};

#[cfg(test)]
thread_local! {
    /// `with_label_values` calls made on this thread (tests count them per request).
    static LOOKUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `with_label_values` calls made on this thread so far (test builds only).
#[cfg(test)]
pub(crate) fn label_lookups() -> usize {
    LOOKUPS.with(|n| n.get())
}

/// `vec.with_label_values(labels)`, counted in test builds: every label lookup of this file
/// goes through here, so a test can check how many one request makes.
fn labelled<T: MetricVecBuilder>(vec: &MetricVec<T>, labels: &[&str]) -> T::M {
    #[cfg(test)]
    LOOKUPS.with(|n| n.set(n.get() + 1));
    vec.with_label_values(labels)
}

/// The handle in `slot`, looked up on first use.
fn once<T: MetricVecBuilder>(slot: &OnceLock<T::M>, vec: &MetricVec<T>, labels: &[&str]) -> T::M
where
    T::M: Clone,
{
    slot.get_or_init(|| labelled(vec, labels)).clone()
}

/// A direction's index in the per-direction handle arrays.
fn dir(direction: Direction) -> usize {
    usize::from(direction == Direction::Inbound)
}

/// The index of a result status label in [`series::Series::result_status`].
fn result_status_index(label: &str) -> usize {
    match label {
        "S" => 0,
        "F" => 1,
        "U" => 2,
        _ => 3,
    }
}

/// `status` as decimal text without an allocation.
fn status_text(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // only ASCII digits were written
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// Whole-request and upstream latency buckets (seconds): sub-millisecond sidecar refusals up
/// to the 15 s default gateway timeout and a bit beyond.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0,
];

/// RSA-2048 sign (≈ 1 ms) and verify (≈ 30–50 µs) buckets: 20 µs … 10 ms.
const CRYPTO_BUCKETS: &[f64] = &[
    0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01,
];

/// Body sizes (bytes): 256 B … 4 MiB (the default body limit is 1 MiB).
const BODY_SIZE_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    2_097_152.0,
    4_194_304.0,
];

/// Notification `Request-Time` skew (seconds): 1 s … 1 day, so operators can pick a
/// `max_request_time_skew` from what Alipay's re-sends really look like.
const SKEW_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// Which body a size observation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// The body received from the client (app outbound, Alipay inbound).
    Request,
    /// The body received from the upstream (gateway outbound, app inbound).
    Response,
}

impl BodyKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Request => "request",
            BodyKind::Response => "response",
        }
    }
}

/// The role of a loaded key in `alipay_sidecar_key_info`, so a dashboard can show which
/// merchant key signs and which Alipay key versions verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// The merchant private key that signs outbound requests.
    MerchantPrivate,
    /// One Alipay public key (one per configured keyVersion).
    AlipayPublic,
    /// The merchant's API key (API-key mode; the fingerprint is its SHA-256 prefix).
    ApiKey,
}

impl KeyRole {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::MerchantPrivate => "merchant_private",
            KeyRole::AlipayPublic => "alipay_public",
            KeyRole::ApiKey => "api_key",
        }
    }
}

/// Result of a key reload attempt (file change, SIGHUP or `POST /admin/reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// The new key set passed every check and is now serving.
    Success,
    /// Something was wrong; the old key set keeps serving.
    Failure,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// Why the metric set could not be built. Only a programming error in this file (a duplicate
/// or invalid metric definition) gets here; the unit tests build the set.
#[derive(Debug, thiserror::Error)]
#[error("building the Prometheus metric set failed (duplicate or invalid definition in src/metrics.rs; fix the definition): {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Keeps `alipay_sidecar_in_flight_requests{direction}` raised while a request is being
/// handled, and lowers it on drop, so early returns and panics cannot leak the count.
#[must_use = "the in-flight gauge goes back down as soon as the guard is dropped"]
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: IntGauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Every metric of the sidecar, registered in one registry. Use the process-wide instance
/// from [`metrics()`]; [`Metrics::new`] exists for tests that need an isolated set.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    sign_duration: Histogram,
    verify_duration: HistogramVec,
    verifications: IntCounterVec,
    errors: IntCounterVec,
    body_size: HistogramVec,
    key_reloads: IntCounterVec,
    key_info: IntGaugeVec,
    /// Label sets currently present in `key_info`, so a new set can replace it without a
    /// moment where no key is shown.
    key_info_labels: Mutex<Vec<[String; 4]>>,
    key_last_reload: GaugeVec,
    notification_skew: Histogram,
    gateway_result_status: IntCounterVec,
    connections_refused: IntCounterVec,
    open_connections: IntGaugeVec,
    connections_closed: IntCounterVec,
    /// The per-request handles, resolved once (see [`series`]).
    series: series::SeriesTable,
    in_flight_by: [IntGauge; 2],
    verify_by: [OnceLock<Histogram>; 2],
    /// `[direction][request, response]`.
    body_size_by: [[OnceLock<Histogram>; 2]; 2],
    /// Every fixed result's counter per direction (they exist at zero from the start).
    verifications_by: [Vec<(VerificationResult, IntCounter)>; 2],
    /// By the position of the code in [`SidecarError::ALL`].
    errors_by: Box<[OnceLock<IntCounter>]>,
}

fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

/// The git commit baked in at build time (`ALIPAY_SIDECAR_GIT_COMMIT`, set by the Dockerfile
/// or CI), or "unknown".
fn git_commit() -> &'static str {
    match option_env!("ALIPAY_SIDECAR_GIT_COMMIT") {
        Some(commit) if !commit.trim().is_empty() => commit.trim(),
        _ => "unknown",
    }
}

impl Metrics {
    /// Builds and registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_requests_total",
                "Requests handled, by direction, merchant, API, outcome and the HTTP status the sidecar answered with.",
            ),
            &["direction", "merchant", "api", "outcome", "status"],
        )?;
        let request_duration = HistogramVec::new(
            histogram_opts(
                "alipay_sidecar_request_duration_seconds",
                "Time from receiving a request to finishing the answer, in the sidecar.",
                LATENCY_BUCKETS,
            ),
            &["direction", "merchant", "api"],
        )?;
        let upstream_duration = HistogramVec::new(
            histogram_opts(
                "alipay_sidecar_upstream_duration_seconds",
                "Time spent waiting for the upstream (Alipay gateway outbound, the app inbound), including reading its body.",
                LATENCY_BUCKETS,
            ),
            &["direction", "merchant", "api"],
        )?;
        let sign_duration = Histogram::with_opts(histogram_opts(
            "alipay_sidecar_sign_duration_seconds",
            "Time to sign one request (RSA-SHA256 with the merchant key).",
            CRYPTO_BUCKETS,
        ))?;
        let verify_duration = HistogramVec::new(
            histogram_opts(
                "alipay_sidecar_verify_duration_seconds",
                "Time to verify one Alipay signature (response outbound, notification inbound).",
                CRYPTO_BUCKETS,
            ),
            &["direction"],
        )?;
        let verifications = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_signature_verifications_total",
                "Alipay signature checks by direction and result (valid or the failure reason).",
            ),
            &["direction", "result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_errors_total",
                "Errors the sidecar answered itself, by the resultCode it put in the envelope.",
            ),
            &["code"],
        )?;
        let body_size = HistogramVec::new(
            histogram_opts(
                "alipay_sidecar_body_size_bytes",
                "Size of request and response bodies passing through the sidecar.",
                BODY_SIZE_BUCKETS,
            ),
            &["direction", "kind"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "alipay_sidecar_in_flight_requests",
                "Requests currently being handled.",
            ),
            &["direction"],
        )?;
        let key_reloads = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_key_reloads_total",
                "Key reload attempts by result; on failure the previous keys keep serving.",
            ),
            &["result"],
        )?;
        let key_info = IntGaugeVec::new(
            Opts::new(
                "alipay_sidecar_key_info",
                "Keys currently serving (value 1), by merchant, role, key version and public-key fingerprint.",
            ),
            &["merchant", "role", "key_version", "fingerprint"],
        )?;
        let key_last_reload = GaugeVec::new(
            Opts::new(
                "alipay_sidecar_key_last_reload_timestamp_seconds",
                "Unix time at which the merchant's serving key set was loaded (start-up or last successful reload).",
            ),
            &["merchant"],
        )?;
        let notification_skew = Histogram::with_opts(histogram_opts(
            "alipay_sidecar_notification_time_skew_seconds",
            "Absolute difference between a notification's Request-Time and the sidecar's clock.",
            SKEW_BUCKETS,
        ))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "alipay_sidecar_build_info",
                "Always 1; labels carry the version and git commit of the running binary.",
            ),
            &["version", "git_commit"],
        )?;
        let gateway_result_status = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_gateway_result_status_total",
                "Gateway answers by merchant, API and result.resultStatus (S, F, U, or none when absent or unrecognised).",
            ),
            &["merchant", "api", "result_status"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_connections_refused_total",
                "Connections closed at once, unread, because the listener already had max_connections open.",
            ),
            &["listener"],
        )?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "alipay_sidecar_open_connections",
                "Client connections currently open, by listener.",
            ),
            &["listener"],
        )?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "alipay_sidecar_connections_closed_total",
                "Connections the sidecar closed: header_too_large (max_header_bytes), header_timeout (header_read_timeout), idle_timeout (idle_timeout between requests), evicted (the oldest waiting connection, to admit a new one at max_connections).",
            ),
            &["listener", "reason"],
        )?;

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(sign_duration.clone()))?;
        registry.register(Box::new(verify_duration.clone()))?;
        registry.register(Box::new(verifications.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(body_size.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(key_reloads.clone()))?;
        registry.register(Box::new(key_info.clone()))?;
        registry.register(Box::new(key_last_reload.clone()))?;
        registry.register(Box::new(notification_skew.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(gateway_result_status.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        #[cfg(feature = "count-allocs")]
        {
            registry.register(Box::new(FnCounter::new(
                "alipay_sidecar_allocations_total",
                "Heap allocation calls since start (count-allocs builds only, for the benchmark harness).",
                crate::alloc_count::allocations,
            )?))?;
            registry.register(Box::new(FnCounter::new(
                "alipay_sidecar_allocated_bytes_total",
                "Bytes asked for by those allocation calls (count-allocs builds only).",
                crate::alloc_count::allocated_bytes,
            )?))?;
        }

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), git_commit()])
            .set(1);
        for result in [ReloadResult::Success, ReloadResult::Failure] {
            key_reloads.with_label_values(&[result.as_str()]);
        }
        let in_flight_by = Direction::ALL.map(|d| in_flight.with_label_values(&[d.as_str()]));
        let verifications_by = Direction::ALL.map(|d| {
            VerificationResult::fixed()
                .map(|r| {
                    (
                        r,
                        verifications.with_label_values(&[d.as_str(), r.as_str()]),
                    )
                })
                .collect()
        });

        Ok(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            sign_duration,
            verify_duration,
            verifications,
            errors,
            body_size,
            key_reloads,
            key_info,
            key_info_labels: Mutex::new(Vec::new()),
            key_last_reload,
            notification_skew,
            gateway_result_status,
            connections_refused,
            open_connections,
            connections_closed,
            series: series::SeriesTable::default(),
            in_flight_by,
            verify_by: Default::default(),
            body_size_by: Default::default(),
            verifications_by,
            errors_by: SidecarError::ALL.iter().map(|_| OnceLock::new()).collect(),
        })
    }

    /// Registers a feature's own metrics (the notification journal, the delivery worker) in
    /// this set, so a feature keeps its metric definitions next to its code.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), MetricsError> {
        self.registry.register(collector)?;
        Ok(())
    }

    /// The Prometheus text exposition of this set (what `GET /metrics` serves).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics failed; serving what was encoded");
        }
        out
    }

    /// Creates the connection series of `listener` at zero, so dashboards show them before
    /// the first refusal.
    pub fn register_listener(&self, listener: &str) {
        self.connections_refused.with_label_values(&[listener]);
        self.open_connections.with_label_values(&[listener]);
        for reason in [
            "header_too_large",
            "header_timeout",
            "idle_timeout",
            "evicted",
        ] {
            self.connections_closed
                .with_label_values(&[listener, reason]);
        }
    }

    /// A connection closed unread because `listener` is at `max_connections`.
    pub fn record_connection_refused(&self, listener: &str) {
        self.connections_refused
            .with_label_values(&[listener])
            .inc();
    }

    /// The gauge of open connections on `listener`.
    pub fn open_connections(&self, listener: &str) -> IntGauge {
        self.open_connections.with_label_values(&[listener])
    }

    /// A connection closed because its client broke a limit (`reason` is a fixed label).
    pub fn record_connection_closed(&self, listener: &str, reason: &'static str) {
        self.connections_closed
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Records one finished request: counts it and observes its whole duration in the
    /// sidecar. `status` is the HTTP status the sidecar answered with; `merchant` is a
    /// configured merchant name (bounded by the config); `api` comes from [`api_label`]
    /// (outbound) or is [`INBOUND_API_LABEL`].
    pub fn record_request(
        &self,
        direction: Direction,
        merchant: &str,
        api: &'static str,
        outcome: Outcome,
        status: u16,
        duration: Duration,
    ) {
        self.record_request_of(
            direction,
            merchant,
            || merchant.into(),
            api,
            outcome,
            status,
            duration,
        );
    }

    /// [`Metrics::record_request`] for a handled request's report (`status` is the one
    /// answered, `duration` the whole request's).
    pub fn record_finished(
        &self,
        direction: Direction,
        r: &Report,
        status: u16,
        duration: Duration,
    ) {
        self.record_request_of(
            direction,
            &r.merchant,
            || r.merchant.clone(),
            r.api,
            r.outcome,
            status,
            duration,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn record_request_of(
        &self,
        direction: Direction,
        merchant: &str,
        owned: impl FnOnce() -> Arc<str>,
        api: &'static str,
        outcome: Outcome,
        status: u16,
        duration: Duration,
    ) {
        let mut buf = [0; 5];
        // the one lookup per request: `status` is an open label
        labelled(
            &self.requests,
            &[
                direction.as_str(),
                merchant,
                api,
                outcome.as_str(),
                status_text(status, &mut buf),
            ],
        )
        .inc();
        let labels = [direction.as_str(), merchant, api];
        let duration = duration.as_secs_f64();
        match self.series.merchant(merchant, owned) {
            Some(row) => match row.get(direction, api) {
                Some(s) => once(&s.request_duration, &self.request_duration, &labels),
                None => labelled(&self.request_duration, &labels),
            },
            None => labelled(&self.request_duration, &labels),
        }
        .observe(duration);
    }

    /// Records what a handler did for one request (everything but the request count and its
    /// duration, see [`Metrics::record_finished`]): body sizes, sign and verify times, the
    /// verification result, the upstream exchange, the gateway's result status, the skew of
    /// a notification's time and the error code. Through handles resolved once: no label
    /// lookup once the request's (direction, merchant, API) has been seen.
    pub fn record_handled(&self, direction: Direction, r: &Report) {
        let d = dir(direction);
        if let Some(n) = r.request_bytes {
            self.body_size(d, BodyKind::Request).observe(n as f64);
        }
        if let Some(t) = r.sign_time {
            self.observe_sign(t);
        }
        if let Some(t) = r.verify_time {
            self.observe_verify(direction, t);
        }
        if let Some(v) = r.verification {
            self.record_verification(direction, v);
        }
        if r.upstream.is_some() || r.gateway_result_status.is_some() {
            let row = self.series.merchant(&r.merchant, || r.merchant.clone());
            let series = row.as_deref().and_then(|row| row.get(direction, r.api));
            let labels = [direction.as_str(), &*r.merchant, r.api];
            if let Some(u) = r.upstream {
                match series {
                    Some(s) => once(&s.upstream_duration, &self.upstream_duration, &labels),
                    None => labelled(&self.upstream_duration, &labels),
                }
                .observe(u.elapsed.as_secs_f64());
                self.body_size(d, BodyKind::Response)
                    .observe(u.body_bytes as f64);
            }
            if let Some(status) = r.gateway_result_status {
                self.count_result_status(series, &r.merchant, r.api, Some(status));
            }
        }
        if let Some(ms) = r.time_skew_ms {
            self.observe_notification_skew_ms(ms);
        }
        if let Some(e) = r.error {
            self.record_sidecar_error(e);
        }
        if r.ack_signing_failed {
            self.record_sidecar_error(SidecarError::SigningFailed);
        }
    }

    /// Counts one error the sidecar answered itself, through its resolved handle.
    pub fn record_sidecar_error(&self, error: SidecarError) {
        match SidecarError::ALL.iter().position(|e| *e == error) {
            Some(i) => once(&self.errors_by[i], &self.errors, &[error.code()]).inc(),
            None => self.record_error(error.code()),
        }
    }

    fn body_size(&self, d: usize, kind: BodyKind) -> Histogram {
        let k = usize::from(kind == BodyKind::Response);
        once(
            &self.body_size_by[d][k],
            &self.body_size,
            &[Direction::ALL[d].as_str(), kind.as_str()],
        )
    }

    /// Observes how long the upstream (gateway outbound, app inbound) took for one exchange.
    pub fn observe_upstream(
        &self,
        direction: Direction,
        merchant: &str,
        api: &'static str,
        duration: Duration,
    ) {
        let labels = [direction.as_str(), merchant, api];
        let row = self.series.merchant(merchant, || merchant.into());
        match row.as_deref().and_then(|row| row.get(direction, api)) {
            Some(s) => once(&s.upstream_duration, &self.upstream_duration, &labels),
            None => labelled(&self.upstream_duration, &labels),
        }
        .observe(duration.as_secs_f64());
    }

    /// Observes the time one signing operation took (requests outbound, acknowledgements
    /// inbound).
    pub fn observe_sign(&self, duration: Duration) {
        self.sign_duration.observe(duration.as_secs_f64());
    }

    /// Observes the time one signature verification took.
    pub fn observe_verify(&self, direction: Direction, duration: Duration) {
        once(
            &self.verify_by[dir(direction)],
            &self.verify_duration,
            &[direction.as_str()],
        )
        .observe(duration.as_secs_f64());
    }

    /// Counts one signature check by its result.
    pub fn record_verification(&self, direction: Direction, result: VerificationResult) {
        match self.verifications_by[dir(direction)]
            .iter()
            .find(|(r, _)| *r == result)
        {
            Some((_, counter)) => counter.inc(),
            None => labelled(&self.verifications, &[direction.as_str(), result.as_str()]).inc(),
        }
    }

    /// Counts one error the sidecar answered itself. `code` is the `SIDECAR_…` resultCode from
    /// the caller's closed set — never text from a request.
    pub fn record_error(&self, code: &str) {
        labelled(&self.errors, &[code]).inc();
    }

    /// Observes the size of one body.
    pub fn observe_body_size(&self, direction: Direction, kind: BodyKind, bytes: usize) {
        // Precision loss only above 2^53 bytes.
        self.body_size(dir(direction), kind).observe(bytes as f64);
    }

    /// Raises the in-flight gauge until the returned guard is dropped.
    pub fn in_flight(&self, direction: Direction) -> InFlightGuard {
        let gauge = self.in_flight_by[dir(direction)].clone();
        gauge.inc();
        InFlightGuard { gauge }
    }

    /// Counts one key reload attempt. Call [`Metrics::set_loaded_keys`] as well on success.
    pub fn record_key_reload(&self, result: ReloadResult) {
        self.key_reloads.with_label_values(&[result.as_str()]).inc();
    }

    /// Replaces `merchant`'s series of `alipay_sidecar_key_info` with the keys now serving and
    /// sets its last-reload timestamp. Call it at start-up and after every successful reload of
    /// that merchant. Items are `(role, key_version, fingerprint)`; new series are set before
    /// stale ones are removed, so a scrape never sees an empty key set; other merchants'
    /// series are left alone.
    pub fn set_loaded_keys<'a>(
        &self,
        merchant: &str,
        keys: impl IntoIterator<Item = (KeyRole, &'a str, &'a str)>,
        loaded_at: SystemTime,
    ) {
        let new: Vec<[String; 4]> = keys
            .into_iter()
            .map(|(role, version, fingerprint)| {
                [
                    merchant.to_owned(),
                    role.as_str().to_owned(),
                    version.to_owned(),
                    fingerprint.to_owned(),
                ]
            })
            .collect();
        // A poisoned lock only means another thread panicked mid-update; the label list is
        // still usable (worst case a stale series lingers until the next reload).
        let mut current = self
            .key_info_labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for labels in &new {
            self.key_info
                .with_label_values(&[&labels[0], &labels[1], &labels[2], &labels[3]])
                .set(1);
        }
        let stale = |old: &[String; 4]| old[0] == merchant && !new.contains(old);
        for old in current.iter().filter(|old| stale(old)) {
            // Err only means the series is already gone.
            let _ = self
                .key_info
                .remove_label_values(&[&old[0], &old[1], &old[2], &old[3]]);
        }
        current.retain(|old| old[0] != merchant);
        current.extend(new);
        let seconds = loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        self.key_last_reload
            .with_label_values(&[merchant])
            .set(seconds);
    }

    /// Observes the skew between a notification's `Request-Time` and now, in milliseconds
    /// (sign ignored), whether or not a skew limit is configured.
    pub fn observe_notification_skew_ms(&self, skew_ms: i64) {
        // Precision loss only for skews above 2^53 ms (≈ 285,000 years).
        self.notification_skew
            .observe(skew_ms.unsigned_abs() as f64 / 1000.0);
    }

    /// Counts one gateway answer by its `result.resultStatus` (pass `None` when the body has
    /// none or is not JSON); anything but `S`, `F`, `U` is recorded as `none`.
    pub fn record_gateway_result_status(
        &self,
        merchant: &str,
        api: &'static str,
        result_status: Option<&str>,
    ) {
        let row = self.series.merchant(merchant, || merchant.into());
        let series = row
            .as_deref()
            .and_then(|row| row.get(Direction::Outbound, api));
        self.count_result_status(series, merchant, api, result_status);
    }

    /// One gateway answer counted by its result status, through the request's resolved
    /// handles when there are any.
    fn count_result_status(
        &self,
        series: Option<&series::Series>,
        merchant: &str,
        api: &str,
        result_status: Option<&str>,
    ) {
        let label = result_status_label(result_status);
        let labels = [merchant, api, label];
        match series {
            Some(s) => once(
                &s.result_status[result_status_index(label)],
                &self.gateway_result_status,
                &labels,
            ),
            None => labelled(&self.gateway_result_status, &labels),
        }
        .inc();
    }
}

/// The label of a gateway answer's `result.resultStatus`: `S`, `F`, `U`, or `none` for
/// anything else (absent, not JSON, unrecognised), so answer text never becomes a label.
pub fn result_status_label(result_status: Option<&str>) -> &'static str {
    match result_status {
        Some("S") => "S",
        Some("F") => "F",
        Some("U") => "U",
        _ => "none",
    }
}

/// The process-wide metric set the proxy code records into and `GET /metrics` renders.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        // Only a definition bug in this file can fail; the unit tests build the set.
        Metrics::new().unwrap_or_else(|error| panic!("{error}"))
    })
}

/// Text exposition of the process-wide metric set, for `GET /metrics`.
pub fn render() -> String {
    metrics().render()
}

#[cfg(test)]
mod tests;
