//! The closed sets the sidecar labels every request with: which way it went ([`Direction`])
//! and how it ended ([`Outcome`]). Shared by both directions so a dashboard can stack them;
//! the label values are part of the metrics interface and never change.

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
