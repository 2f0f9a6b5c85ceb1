//! The request-handling core as data in, data out: what a direction's handler takes
//! ([`Request`]), what it gives back ([`Reply`], carrying a [`Report`] of what happened), and
//! the [`Handler`] contract the one pingora adapter ([`crate::adapter`]) drives. The
//! [`Report`] and its closed label sets are in [`crate::report`].
//!
//! Why: a handler that only turns a value into a value can be unit-tested for every policy
//! branch without sockets, and the side effects (reading the request, writing the reply, the
//! in-flight count, metrics and the log line) live in one place, recorded once from the
//! [`Report`]. The handlers never see a pingora `Session`; they use pingora's plain header
//! types ([`RequestHeader`], [`ResponseHeader`]) because those keep the header-name case the
//! client sent (some SDKs care) and are what the upstream connector sends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::budget::BodyBudget;
use crate::envelope::{SidecarError, Status};
use crate::headers::ERROR_HEADER;
use crate::report::{Direction, Outcome, Report, VerificationResult};

/// One request as received, whole: what is signed or verified, and what is forwarded.
#[derive(Debug)]
pub struct Request {
    /// Method and headers as received (header-name case kept).
    pub head: RequestHeader,
    /// The request target (path and query) in origin form, exactly as received: the signed
    /// or verified `<URI>`.
    pub target: String,
    /// The exact body bytes.
    pub body: Bytes,
    /// The listener address the request came in on, when known (merchant selection by
    /// listener).
    pub local_addr: Option<SocketAddr>,
}

/// What the handler answers: the reply to write, and the record of what happened.
#[derive(Debug)]
pub struct Reply {
    /// Status and headers, `Content-Length` set.
    pub head: ResponseHeader,
    /// The exact body bytes to write.
    pub body: Bytes,
    /// What happened, for the metrics and the log line.
    pub report: Report,
}

/// Why a request is refused: the sidecar error code and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code, status and HTTP status of the answer.
    pub error: SidecarError,
    /// The `resultMessage` sent to the client.
    pub message: String,
    /// The signature check's result, when the refusal is one (a notification refused from
    /// its head alone, before its body was read).
    pub verification: Option<VerificationResult>,
}

impl Refusal {
    /// A refusal with `error` and `message`.
    pub fn new(error: SidecarError, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            verification: None,
        }
    }

    /// The same refusal, recorded as the signature check's `result`.
    pub fn with_verification(mut self, result: VerificationResult) -> Self {
        self.verification = Some(result);
        self
    }
}

impl Reply {
    /// A reply relaying `head` and `body`; sets `Content-Length` and records the status and
    /// size in `report`.
    pub fn new(mut head: ResponseHeader, body: Bytes, mut report: Report) -> Self {
        if let Err(e) = head.set_content_length(body.len()) {
            return Self::internal(report, &e.to_string());
        }
        report.status = head.status.as_u16();
        report.response_bytes = body.len();
        Self { head, body, report }
    }

    /// Answers with a sidecar error in Alipay's envelope (`U` errors count as `error`, `F`
    /// refusals as `rejected`, an unreadable request as `bad_request`). A detail recorded
    /// earlier (the real cause) wins over the message sent to the client.
    pub fn refuse(refusal: Refusal, mut report: Report) -> Self {
        let Refusal {
            error,
            message,
            verification,
        } = refusal;
        report.error = Some(error);
        if report.verification.is_none() {
            report.verification = verification;
        }
        report.outcome = match error {
            // the client's own request was unreadable: not a delivery failure
            SidecarError::BadRequest
            | SidecarError::RequestTimeout
            | SidecarError::HeadersTooLarge => Outcome::BadRequest,
            _ if error.status() == Status::U => Outcome::Error,
            _ => Outcome::Rejected,
        };
        let body = error.body(&message);
        if report.detail.is_none() {
            report.detail = Some(message);
        }
        let head = envelope_head(error);
        match head {
            Ok(head) => Self::new(head, body, report),
            Err(e) => Self::internal(report, &e.to_string()),
        }
    }

    /// An internal failure (a header the sidecar built was invalid): 500, no body, `error`.
    fn internal(mut report: Report, what: &str) -> Self {
        tracing::error!(error = what, "building the answer failed");
        report.outcome = Outcome::Error;
        report.status = 500;
        report.response_bytes = 0;
        report.detail.get_or_insert_with(|| what.to_string());
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::INTERNAL_SERVER_ERROR;
        let mut head = ResponseHeader::from(parts);
        // "0" is always a valid header value
        let _ = head.set_content_length(0);
        Self {
            head,
            body: Bytes::new(),
            report,
        }
    }
}

fn envelope_head(error: SidecarError) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(error.http_status(), Some(4))?;
    resp.insert_header("Content-Type", "application/json; charset=UTF-8")?;
    resp.insert_header(ERROR_HEADER, error.code())?;
    if error == SidecarError::MethodNotAllowed {
        resp.insert_header("Allow", "POST")?;
    }
    Ok(resp)
}

/// What the app is told about the message it receives, in `X-Alipay-Sidecar-Verified`.
/// Shared by both directions so the header values are spelled in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The signature verified (`true`).
    Verified,
    /// Inbound shadow mode: the notification did not verify and was forwarded anyway
    /// (`false`).
    Unverified,
    /// Outbound: response verification is switched off (`disabled`).
    Disabled,
    /// Outbound: an unsigned 4xx/5xx answer, which carries no result to trust
    /// (`unverified-status`).
    UnverifiedStatus,
    /// Outbound: an unsigned 200 whose `resultStatus` is `F` (`unsigned-failure`).
    UnsignedFailure,
    /// Outbound, API-key mode: an unsigned answer, relayed because the API-key protocol has
    /// no response signature (`unsigned-api-key`).
    UnsignedApiKey,
    /// Outbound, an unsigned session route (`meter/uploadEvent`): forwarded unsigned over
    /// HTTP/2 and relayed unverified, as the protocol has it (`unsigned-session`).
    UnsignedSession,
}

impl Marker {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Marker::Verified => "true",
            Marker::Unverified => "false",
            Marker::Disabled => "disabled",
            Marker::UnverifiedStatus => "unverified-status",
            Marker::UnsignedFailure => "unsigned-failure",
            Marker::UnsignedApiKey => "unsigned-api-key",
            Marker::UnsignedSession => "unsigned-session",
        }
    }
}

/// How a listener reads request bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyPolicy {
    /// Largest body accepted.
    pub max_bytes: usize,
    /// The setting that sets `max_bytes`, named in messages (`[inbound] max_body_bytes`).
    pub limit_key: &'static str,
    /// The whole body must arrive within this (`[server] body_read_timeout`).
    pub timeout: Duration,
}

/// One direction's request handler, as the adapter drives it: the head checked (pure)
/// before the body is read, then the whole request handled into a reply.
pub trait Handler: Send + Sync + 'static {
    /// Which side of the sidecar this handler serves (metric label).
    const DIRECTION: Direction;

    /// How request bodies are read (size limit, deadline).
    fn body_policy(&self) -> BodyPolicy;

    /// The budget the bodies of this handler's requests are read against, if any: the
    /// inbound listener's, which bounds what unauthenticated peers can make it buffer.
    fn body_budget(&self) -> Option<&Arc<BodyBudget>> {
        None
    }

    /// The `api` label of a request to `target` (origin form), for the metrics.
    fn api(&self, target: &str) -> &'static str;

    /// The merchant label of a request refused before a merchant was selected (the single
    /// merchant's name when there is one; with several, a fixed placeholder, so the label
    /// stays bounded by the config).
    fn unselected_merchant(&self) -> Arc<str>;

    /// Checks on the request head that must pass before the body is read.
    fn check_head(&self, head: &RequestHeader, target: &str) -> Result<(), Refusal>;

    /// Handles one whole request.
    fn handle(&self, request: Request) -> impl Future<Output = Reply> + Send;
}

/// Why a handler stopped before building its answer: a refusal, or a header the sidecar
/// built was invalid (internal).
#[derive(Debug)]
pub(crate) enum Stop {
    Refuse(Refusal),
    Internal(pingora::BError),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refuse(r)
    }
}

impl From<pingora::BError> for Stop {
    fn from(e: pingora::BError) -> Self {
        Stop::Internal(e)
    }
}

impl Reply {
    /// The reply for a handler's result: the built answer, or the refusal.
    pub(crate) fn finish(result: Result<(ResponseHeader, Bytes), Stop>, report: Report) -> Self {
        match result {
            Ok((head, body)) => Self::new(head, body, report),
            Err(Stop::Refuse(r)) => Self::refuse(r, report),
            Err(Stop::Internal(e)) => Self::internal(report, &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report::new(Arc::from("default"), "payments/pay")
    }

    #[test]
    fn refusals_are_envelopes_with_the_code_in_a_header_and_the_right_outcome() {
        let reply = Reply::refuse(
            Refusal::new(SidecarError::MethodNotAllowed, "only POST"),
            report(),
        );
        assert_eq!(reply.head.status.as_u16(), 405);
        let h = &reply.head.headers;
        assert_eq!(h.get("allow").unwrap(), "POST");
        assert_eq!(h.get(ERROR_HEADER).unwrap(), "SIDECAR_METHOD_NOT_ALLOWED");
        assert_eq!(
            h.get("content-length").unwrap().to_str().unwrap(),
            reply.body.len().to_string()
        );
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["result"]["resultMessage"], "only POST");
        assert_eq!(reply.report.status, 405);
        assert_eq!(reply.report.response_bytes, reply.body.len());
        assert_eq!(reply.report.outcome, Outcome::Rejected);
        assert_eq!(reply.report.detail.as_deref(), Some("only POST"));

        for (error, outcome) in [
            (SidecarError::BadRequest, Outcome::BadRequest),
            (SidecarError::RequestTimeout, Outcome::BadRequest),
            (SidecarError::AppUnavailable, Outcome::Error),
            (SidecarError::GatewayTimeout, Outcome::Error),
            (SidecarError::PathNotAllowed, Outcome::Rejected),
        ] {
            let reply = Reply::refuse(Refusal::new(error, "x"), report());
            assert_eq!(reply.report.outcome, outcome, "{error:?}");
            assert_eq!(reply.report.error, Some(error));
            assert!(reply.head.headers.get("allow").is_none());
        }
    }

    #[test]
    fn an_earlier_detail_wins_over_the_message() {
        let mut r = report();
        r.detail = Some("connection refused by 10.0.0.5:3000".into());
        let reply = Reply::refuse(
            Refusal::new(SidecarError::AppUnavailable, "the app is unavailable"),
            r,
        );
        assert_eq!(
            reply.report.detail.as_deref(),
            Some("connection refused by 10.0.0.5:3000")
        );
        assert!(!String::from_utf8_lossy(&reply.body).contains("10.0.0.5"));
    }

    #[test]
    fn reasons_are_failures_only() {
        let mut r = report();
        assert_eq!(r.reason(), None);
        r.verification = Some(VerificationResult::Valid);
        assert_eq!(r.reason(), None);
        r.verification = Some(VerificationResult::UnsignedFailure);
        assert_eq!(r.reason(), None);
        r.verification = Some(VerificationResult::Invalid("mismatch"));
        assert_eq!(r.reason(), Some("mismatch"));
        r.verification = Some(VerificationResult::WrongClientId);
        assert_eq!(r.reason(), Some("wrong_client_id"));
    }

    #[test]
    fn markers_are_the_documented_header_values() {
        let all = [
            (Marker::Verified, "true"),
            (Marker::Unverified, "false"),
            (Marker::Disabled, "disabled"),
            (Marker::UnverifiedStatus, "unverified-status"),
            (Marker::UnsignedFailure, "unsigned-failure"),
            (Marker::UnsignedApiKey, "unsigned-api-key"),
            (Marker::UnsignedSession, "unsigned-session"),
        ];
        let readme = [
            include_str!("../docs/outbound.md"),
            include_str!("../docs/notifications.md"),
        ]
        .concat();
        for (marker, value) in all {
            assert_eq!(marker.as_str(), value);
            let documented = format!("`X-Alipay-Sidecar-Verified: {value}`");
            assert!(
                readme.contains(&documented),
                "docs/outbound.md and docs/notifications.md lack {documented}"
            );
        }
    }
}
