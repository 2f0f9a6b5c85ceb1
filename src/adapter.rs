//! The one pingora adapter: it turns a connection's request into a [`Request`] for a
//! [`Handler`], writes the handler's [`Reply`], holds the in-flight guard, and records the
//! metrics and the log line once, from the reply's [`Report`].
//!
//! Every request is answered from `request_filter` (see [`crate::outbound`] for why), so
//! pingora's upstream phases are never entered. Reading the request is the careful preamble
//! both directions need: POST only, no conflicting framing, an origin-form target, the
//! handler's head checks (before any body byte is read), the body limit checked against
//! `Content-Length` before reading and again while reading (chunked), `Expect:
//! 100-continue` answered locally (forwarding it crashes pingora 0.9's client), and the whole
//! body within `body_read_timeout`. A malformed, truncated or too slow body is answered
//! `400`/`408` in the envelope and counted as `bad_request`, never as a delivery failure.
//! Every request refused here is answered with `Connection: close` and ends its connection
//! (pingora would otherwise keep it alive after a framing error, reading on from a point
//! that may not be a request boundary).
//!
//! When: the handler's metrics (signature checks, timings, body sizes, error codes) are
//! recorded before the reply is written, so a client that reads `/metrics` after its answer
//! sees them; the request count, its duration and the log line come from the `logging` hook,
//! which also knows whether the client went away (status 499).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::budget::{BodyBudget, Reservation};
use crate::envelope::SidecarError;
use crate::exchange::{echo, origin_form};
use crate::handler::{BodyPolicy, Handler, Refusal, Reply, Request};
use crate::logging::Throttle;
use crate::metrics;
use crate::report::{Direction, Report};
use crate::state::SidecarState;

/// A [`Handler`] served by pingora.
pub struct Adapter<H> {
    handler: H,
    state: Arc<SidecarState>,
}

impl<H: Handler> Adapter<H> {
    /// Serves `handler`; `state` counts the in-flight requests graceful shutdown waits on.
    pub fn new(handler: H, state: Arc<SidecarState>) -> Self {
        Self { handler, state }
    }

    /// The handler's report for a request refused here, before it reached the handler.
    fn refused(&self, api: &'static str, refusal: Refusal) -> Reply {
        Reply::refuse(
            refusal,
            Report::new(self.handler.unselected_merchant(), api),
        )
    }

    /// Reads one request (see the module doc): the request for the handler, or the reply
    /// that refuses it.
    ///
    /// The request comes with its share of the handler's body budget, held until it is
    /// answered.
    #[allow(clippy::type_complexity)]
    async fn receive(
        &self,
        session: &mut Session,
    ) -> pingora::Result<Result<(Request, Option<Reservation>), Reply>> {
        let target = std::str::from_utf8(session.req_header().raw_path())
            .ok()
            .and_then(origin_form);
        let api = self.handler.api(target.as_deref().unwrap_or(""));
        let refuse = |error, msg: &str| Ok(Err(self.refused(api, Refusal::new(error, msg))));
        if session.req_header().method != http::Method::POST {
            let msg = "only POST is accepted: every AMS API call and every notification is a POST";
            return refuse(SidecarError::MethodNotAllowed, msg);
        }
        // pingora keeps Transfer-Encoding and drops a Content-Length beside it, so only a
        // request with Transfer-Encoding (rare: no SDK sends one) needs the raw head scanned
        let chunked = session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING);
        if let pingora::protocols::http::ServerSession::H1(h1) = &*session.downstream_session {
            if chunked && framing_conflict(&h1.get_headers_raw_bytes()) {
                let msg = "the request has both Content-Length and Transfer-Encoding; one framing \
                           per request (a request that two parsers could read differently is \
                           refused)";
                return refuse(SidecarError::BadRequest, msg);
            }
        }
        let Some(target) = target else {
            let msg = "the request target is neither an origin-form path (/ams/api/...) nor an \
                       absolute http(s) URL with one";
            return refuse(SidecarError::BadRequest, msg);
        };
        let head = session.req_header();
        if let Err(refusal) = self.handler.check_head(head, &target) {
            // refused from the head alone: close instead of draining a body nobody reads
            session.set_keepalive(None);
            return Ok(Err(self.refused(api, refusal)));
        }
        let policy = self.handler.body_policy();
        let limit = policy.max_bytes;
        let declared = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(n) = declared.filter(|n| *n > limit) {
            let msg = format!(
                "the body is {n} bytes; the limit is {limit} ({})",
                policy.limit_key
            );
            session.set_keepalive(None);
            return refuse(SidecarError::BodyTooLarge, &msg);
        }
        let mut reservation = match self.handler.body_budget() {
            None => None,
            Some(budget) => match budget.reserve(declared.unwrap_or(0)) {
                Some(r) => Some(r),
                None => {
                    session.set_keepalive(None);
                    return Ok(Err(self.refused(api, over_budget(budget))));
                }
            },
        };
        let expect_continue = head
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let head: RequestHeader = head.clone();
        if expect_continue {
            session.write_continue_response().await?;
        }
        let read = read_body_within(
            session,
            H::DIRECTION,
            policy,
            declared.unwrap_or(0),
            reservation.as_mut(),
        );
        let body = match read.await {
            Ok(body) => body,
            Err(refusal) => return Ok(Err(self.refused(api, refusal))),
        };
        let request = Request {
            head,
            target,
            body,
            local_addr: session.server_addr().and_then(|a| a.as_inet()).copied(),
        };
        Ok(Ok((request, reservation)))
    }
}

/// The refusal of a body that does not fit the budget: retryable (`U`, 503), so Alipay
/// re-sends the notification later.
fn over_budget(budget: &BodyBudget) -> Refusal {
    let msg = format!(
        "the sidecar is reading too many notification bodies at once ({} bytes, [inbound] \
         unverified_body_budget_bytes); nothing was forwarded, send it again later",
        budget.limit()
    );
    Refusal::new(SidecarError::InboundBusy, msg)
}

/// What the adapter keeps per request between `request_filter` and `logging`.
pub struct Ctx {
    start: Instant,
    report: Option<Report>,
}

#[async_trait]
impl<H: Handler> ProxyHttp for Adapter<H> {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            report: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let _in_flight = self.state.track(H::DIRECTION);
        let reply = match self.receive(session).await? {
            // the reservation is given back once the handler answered
            Ok((request, _reservation)) => self.handler.handle(request).await,
            Err(refused) => {
                // A request refused before its body was read whole (bad framing, a body too
                // large, too slow, or any check of the head): the rest of the stream cannot be
                // trusted to start at a request boundary, and draining it would keep reading
                // for an unauthenticated peer. The answer says `Connection: close` and the
                // connection ends with it.
                session.set_keepalive(None);
                refused
            }
        };
        let Reply { head, body, report } = reply;
        observe(H::DIRECTION, &report);
        ctx.report = Some(report);
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // never reached: request_filter answers every request itself (see the module doc)
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "requests are answered in request_filter",
        ))
    }

    async fn logging(&self, _session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        let report = ctx.report.take().unwrap_or_else(|| {
            Report::new(self.handler.unselected_merchant(), self.handler.api(""))
        });
        finish(H::DIRECTION, ctx.start, &report, e);
    }
}

/// Records a request the sidecar made itself through a handler (the reconciler's
/// inquiries): the same metrics and log line as a request served on a listener.
pub(crate) fn record(direction: Direction, start: Instant, report: &Report) {
    observe(direction, report);
    finish(direction, start, report, None);
}

/// Records what the handler did (everything but the request count): called once per
/// request, before the reply is written. No label lookup (handles resolved once, see
/// `metrics::Metrics::record_handled`).
fn observe(direction: Direction, r: &Report) {
    metrics::metrics().record_handled(direction, r);
}

/// Counts the request and writes its log line; called once, from the `logging` hook.
/// `connection_error` is pingora's error when the client connection failed.
fn finish(
    direction: Direction,
    start: Instant,
    r: &Report,
    connection_error: Option<&pingora::Error>,
) {
    // 499: the client went away before an answer was written
    let status = if r.status == 0 { 499 } else { r.status };
    let elapsed = start.elapsed();
    // the request's one label lookup (its status label is open)
    metrics::metrics().record_finished(direction, r, status, elapsed);
    tracing::info!(
        direction = direction.as_str(),
        merchant = &*r.merchant,
        api = r.api,
        status,
        outcome = r.outcome.as_str(),
        error_code = r.error.map(SidecarError::code),
        reason = r.reason(),
        detail = r.detail.as_deref(),
        key_version = r.key_version.as_deref(),
        content_sha256 = r.content_sha256.as_deref(),
        upstream_status = r.upstream.map(|u| u.status),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = r.upstream.map(|u| u.elapsed.as_secs_f64() * 1000.0),
        request_bytes = r.request_bytes.unwrap_or(0),
        response_bytes = r.response_bytes,
        connection_error = connection_error.map(|e| e.to_string()),
        "request"
    );
}

/// Malformed or slow bodies, logged at most once per second per direction.
static BAD_BODY_LOG: [Throttle; 2] = [Throttle::new(), Throttle::new()];

fn bad_body_log(direction: Direction, what: &str) {
    let i = usize::from(direction == Direction::Inbound);
    if let Some(count) = BAD_BODY_LOG[i].hit() {
        tracing::warn!(
            direction = direction.as_str(),
            count,
            "{what}: answered 400/408 (logged at most once per second, with the count since the last line)"
        );
    }
}
/// Whether a raw request head names both `Content-Length` and `Transfer-Encoding`. pingora
/// accepts that (it drops `Content-Length`, as RFC 9112 §6.3 allows); the sidecar refuses it,
/// because such a request is the classic smuggling shape and no SDK sends one.
fn framing_conflict(head: &[u8]) -> bool {
    let has = |name: &[u8]| {
        head.split(|b| *b == b'\n').skip(1).any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..].trim_ascii_start().starts_with(b":")
        })
    };
    has(b"content-length") && has(b"transfer-encoding")
}

/// The body, whole, within the policy's size limit and deadline, or the refusal (too large
/// `413`, malformed or truncated `400`, too slow `408`).
async fn read_body_within(
    session: &mut Session,
    direction: Direction,
    policy: BodyPolicy,
    declared: usize,
    reservation: Option<&mut Reservation>,
) -> Result<Bytes, Refusal> {
    let read = read_body(
        session,
        policy.max_bytes,
        policy.limit_key,
        declared,
        reservation,
    );
    match tokio::time::timeout(policy.timeout, read).await {
        Ok(Ok(Ok(body))) => Ok(body),
        Ok(Ok(Err(refusal))) => Err(refusal),
        Ok(Err(e)) => {
            let msg = format!(
                "the request body could not be read: {}; send a complete body framed by \
                 Content-Length or valid chunked encoding",
                echo(&e.to_string())
            );
            bad_body_log(direction, "malformed or truncated request body");
            Err(Refusal::new(SidecarError::BadRequest, msg))
        }
        Err(_) => {
            let msg = format!(
                "the request body did not arrive within {} ([server] body_read_timeout); \
                 nothing was forwarded",
                humantime::format_duration(policy.timeout)
            );
            bad_body_log(direction, "request body too slow");
            Err(Refusal::new(SidecarError::RequestTimeout, msg))
        }
    }
}

/// The body, whole and bounded; the inner `Err` is a refusal (too large, or over the body
/// budget: a chunked body grows its `reservation` as it arrives), the outer one a framing or
/// connection error.
async fn read_body(
    session: &mut Session,
    limit: usize,
    limit_key: &str,
    declared: usize,
    mut reservation: Option<&mut Reservation>,
) -> pingora::Result<Result<Bytes, Refusal>> {
    // One body usually arrives in one piece: keep that piece without a copy. Otherwise one
    // allocation of the announced size (already checked against the limit): growing by
    // doubling copies the body several times and can leave twice its size reserved.
    let mut first: Option<Bytes> = None;
    let mut body = BytesMut::new();
    let mut reserve = declared;
    while let Some(chunk) = session.read_request_body().await? {
        let so_far = first.as_ref().map_or(0, Bytes::len) + body.len();
        if so_far + chunk.len() > limit {
            let msg = format!("the body exceeds {limit} bytes ({limit_key})");
            return Ok(Err(Refusal::new(SidecarError::BodyTooLarge, msg)));
        }
        if let Some(r) = reservation.as_deref_mut() {
            if !r.grow_to(so_far + chunk.len()) {
                session.set_keepalive(None);
                let msg = "the sidecar is reading too many notification bodies at once \
                           ([inbound] unverified_body_budget_bytes); nothing was forwarded, send \
                           it again later";
                return Ok(Err(Refusal::new(SidecarError::InboundBusy, msg)));
            }
        }
        match first.take() {
            None if body.is_empty() => first = Some(chunk),
            Some(f) => {
                body.reserve(std::mem::take(&mut reserve).max(f.len() + chunk.len()));
                body.extend_from_slice(&f);
                body.extend_from_slice(&chunk);
            }
            None => body.extend_from_slice(&chunk),
        }
    }
    Ok(Ok(first.unwrap_or_else(|| body.freeze())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_framings_are_a_conflict() {
        assert!(framing_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!framing_conflict(
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
    }
}
