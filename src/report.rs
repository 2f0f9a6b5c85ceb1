//! The facts of one handled request ([`Report`]) and the closed sets it is labelled with:
//! which way the request went ([`Direction`]), how it ended ([`Outcome`]) and what the one
//! signature check found ([`VerificationResult`]).
//!
//! Why together: the handlers build a report, the adapter turns it into the request metrics
//! and one log line, and the metrics pre-create their series from these sets; keeping the
//! record and its label values in one file (below both the handlers and the metrics) means
//! they cannot disagree. The label values are part of the metrics interface and never change.

use std::sync::Arc;
use std::time::Duration;

use crate::envelope::SidecarError;
use crate::protocol::{Reason, VerifyError};

/// What an upstream exchange took (gateway outbound, the app inbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTiming {
    /// Time spent waiting for the upstream, its body included.
    pub elapsed: Duration,
    /// The upstream's HTTP status.
    pub status: u16,
    /// The size of the upstream's body as received.
    pub body_bytes: usize,
}

/// The facts of one handled request: what the adapter turns into the request metrics and
/// one log line. Built by whoever decided the answer (the handler, or the adapter when the
/// request was refused before it reached the handler); read once.
#[derive(Debug, Clone)]
pub struct Report {
    /// The merchant the request was for (`default` with a single-merchant config): a
    /// metric label bounded by the config.
    pub merchant: Arc<str>,
    /// `api` label (closed set, see [`crate::protocol::api_label`]).
    pub api: &'static str,
    /// How the request ended.
    pub outcome: Outcome,
    /// The status the sidecar answered with.
    pub status: u16,
    /// The sidecar error code, when the sidecar refused.
    pub error: Option<SidecarError>,
    /// The result of the one signature check, when one was made.
    pub verification: Option<VerificationResult>,
    /// What went wrong, for the log line (never key material or bodies).
    pub detail: Option<String>,
    /// The key version that verified.
    pub key_version: Option<String>,
    /// SHA-256 of the content that was checked, for comparing with the other side.
    pub content_sha256: Option<String>,
    /// The request body size, once it was read.
    pub request_bytes: Option<usize>,
    /// The upstream exchange, when one completed.
    pub upstream: Option<UpstreamTiming>,
    /// The size of the body the sidecar answered with.
    pub response_bytes: usize,
    /// Time one signing took (the request outbound, the acknowledgement inbound).
    pub sign_time: Option<Duration>,
    /// Time the signature verification took.
    pub verify_time: Option<Duration>,
    /// Outbound: the gateway's `result.resultStatus` of a 200 answer (`S`, `F`, `U`, `none`).
    pub gateway_result_status: Option<&'static str>,
    /// Inbound: the skew between `Request-Time` and the sidecar's clock, when it parsed.
    pub time_skew_ms: Option<i64>,
    /// Inbound: signing the acknowledgement failed (it was sent unsigned).
    pub ack_signing_failed: bool,
}

impl Report {
    /// A report for a request to `merchant` and `api`, not decided yet (`error`, status 0).
    pub fn new(merchant: Arc<str>, api: &'static str) -> Self {
        Self {
            merchant,
            api,
            outcome: Outcome::Error,
            status: 0,
            error: None,
            verification: None,
            detail: None,
            key_version: None,
            content_sha256: None,
            request_bytes: None,
            upstream: None,
            response_bytes: 0,
            sign_time: None,
            verify_time: None,
            gateway_result_status: None,
            time_skew_ms: None,
            ack_signing_failed: false,
        }
    }

    /// Why a signature check failed (log field), when one did.
    pub fn reason(&self) -> Option<&'static str> {
        match self.verification? {
            VerificationResult::Valid | VerificationResult::UnsignedFailure => None,
            other => Some(other.as_str()),
        }
    }
}

/// Which side of the sidecar a request came through; the first label of most metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// App → sidecar → Alipay gateway (signing proxy).
    Outbound,
    /// Alipay → sidecar → app (notification verifier).
    Inbound,
}

impl Direction {
    /// Every direction, for pre-creating series.
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// How a request ended, as one closed set shared by both directions so a dashboard can stack
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The signature was checked and valid, and the answer (outbound) or notification
    /// (inbound) was passed on.
    Verified,
    /// Outbound: an unsigned `resultStatus = "F"` response passed through (Alipay does not sign
    /// rejections of a bad request signature).
    UnsignedFailure,
    /// Outbound: a non-200 gateway answer passed through unverified.
    UnverifiedStatus,
    /// The sidecar refused by policy: method/path not allowed, body too large, bad or missing
    /// signature, wrong client id, stale `Request-Time`.
    Rejected,
    /// Something failed that was not a policy decision: gateway or app unreachable, timed out,
    /// answered 5xx, or an internal error.
    Error,
    /// Passed on without checking a signature (outbound with `verify_responses = false`).
    Forwarded,
    /// Inbound shadow mode: verification failed but the notification was forwarded anyway.
    ShadowForwarded,
    /// The request itself was unreadable (malformed or truncated framing, body too slow): a
    /// client problem, not a delivery failure, so alerts on `error` do not fire for it.
    BadRequest,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::UnsignedFailure => "unsigned_failure",
            Outcome::UnverifiedStatus => "unverified_status",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
            Outcome::Forwarded => "forwarded",
            Outcome::ShadowForwarded => "shadow_forwarded",
            Outcome::BadRequest => "bad_request",
        }
    }
}

/// The result of one signature check, for `alipay_sidecar_signature_verifications_total`.
/// Failure reasons are static strings so request data can never become a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerificationResult {
    /// The signature verified.
    Valid,
    /// The signature did not verify; pass a [`Reason`] label (`VerifyError::reason()`,
    /// `Reason::label()`).
    Invalid(&'static str),
    /// Inbound: the notification's `client-id` is not the configured client id.
    WrongClientId,
    /// Inbound: `Request-Time` is outside `max_request_time_skew`.
    StaleRequestTime,
    /// Inbound: `Request-Time` could not be parsed while `max_request_time_skew` is on.
    UnparseableRequestTime,
    /// Outbound: an unsigned `resultStatus = "F"` response, accepted by policy.
    UnsignedFailure,
    /// Outbound: a signed answer whose `response-time` is outside `max_response_time_skew`.
    StaleResponseTime,
    /// Outbound: `response-time` could not be parsed while `max_response_time_skew` is on.
    UnparseableResponseTime,
}

impl VerificationResult {
    /// Every result with a fixed label, for pre-creating series at zero: every signature
    /// failure [`Reason`] and every policy result.
    pub(crate) fn fixed() -> impl Iterator<Item = VerificationResult> {
        let invalid = Reason::ALL
            .iter()
            .map(|reason| VerificationResult::Invalid(reason.label()));
        std::iter::once(VerificationResult::Valid)
            .chain(invalid)
            .chain([
                VerificationResult::WrongClientId,
                VerificationResult::StaleRequestTime,
                VerificationResult::UnparseableRequestTime,
                VerificationResult::UnsignedFailure,
                VerificationResult::StaleResponseTime,
                VerificationResult::UnparseableResponseTime,
            ])
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationResult::Valid => "valid",
            VerificationResult::Invalid(reason) => reason,
            VerificationResult::WrongClientId => "wrong_client_id",
            VerificationResult::StaleRequestTime => "stale_request_time",
            VerificationResult::UnparseableRequestTime => "unparseable_request_time",
            VerificationResult::UnsignedFailure => "unsigned_failure",
            VerificationResult::StaleResponseTime => "stale_response_time",
            VerificationResult::UnparseableResponseTime => "unparseable_response_time",
        }
    }
}

impl From<&VerifyError> for VerificationResult {
    fn from(error: &VerifyError) -> Self {
        VerificationResult::Invalid(error.reason())
    }
}
