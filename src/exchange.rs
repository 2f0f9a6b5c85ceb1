//! What the outbound and inbound services share: reading one bounded request, copying
//! headers across a hop, answering with a sidecar error, and the per-request record that
//! becomes one log line and the request metrics.
//!
//! Both services answer every request from `request_filter` (see [`crate::outbound`] for
//! why), so both need the same careful preamble: POST only, an origin-form target, the body
//! limit checked against `Content-Length` before reading and again while reading (chunked),
//! and `Expect: 100-continue` answered locally (forwarding it crashes pingora 0.9's client).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::envelope::{SidecarError, Status};
use crate::logging::Throttle;
use crate::metrics::{self, BodyKind, Direction, Outcome};

/// Header the sidecar adds to what it hands on, saying what was checked.
pub const VERIFIED_HEADER: &str = "X-Alipay-Sidecar-Verified";
/// The Alipay key version that verified the message.
pub const KEY_VERSION_HEADER: &str = "X-Alipay-Sidecar-Key-Version";
/// The sidecar's error code, also in the JSON body, for clients that only read headers.
pub const ERROR_HEADER: &str = "X-Alipay-Sidecar-Error";
/// Prefix of the sidecar's own headers; incoming ones are dropped so none can be forged.
const SIDECAR_PREFIX: &str = "x-alipay-sidecar-";

/// Hop-by-hop headers (RFC 9110 §7.6.1) and framing, which each hop sets for itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// One request as received: what is signed or verified, and what is forwarded.
pub struct Received {
    /// Method, target and headers as received.
    pub header: RequestHeader,
    /// The request target exactly as received (path and query): the signed `<URI>`.
    pub target: String,
    /// The exact body bytes.
    pub body: Bytes,
}

/// The facts of one request, filled in while it is handled; the `logging` hook turns them
/// into the request metrics and one info log line.
pub struct Record {
    direction: Direction,
    start: Instant,
    /// `api` label (closed set, see [`metrics::api_label`]).
    pub api: &'static str,
    /// How the request ended.
    pub outcome: Outcome,
    /// The status the sidecar answered with (0 = no answer was written).
    pub status: u16,
    /// The sidecar error code, when the sidecar refused.
    pub error: Option<&'static str>,
    /// Why a signature check failed (metric label), when one did.
    pub reason: Option<&'static str>,
    /// What went wrong, for the log line (never key material or bodies).
    pub detail: Option<String>,
    /// The key version that verified.
    pub key_version: Option<String>,
    /// SHA-256 of the content that was checked, for comparing with the other side.
    pub content_sha256: Option<String>,
    /// Time spent waiting for the gateway or the app.
    pub upstream: Option<Duration>,
    /// The gateway's or the app's status.
    pub upstream_status: Option<u16>,
    /// Body sizes.
    pub request_bytes: usize,
    /// Body sizes.
    pub response_bytes: usize,
}

impl Record {
    /// A record for a request that starts now.
    pub fn new(direction: Direction, api: &'static str) -> Self {
        Self {
            direction,
            start: Instant::now(),
            api,
            outcome: Outcome::Error,
            status: 0,
            error: None,
            reason: None,
            detail: None,
            key_version: None,
            content_sha256: None,
            upstream: None,
            upstream_status: None,
            request_bytes: 0,
            response_bytes: 0,
        }
    }

    /// Answers with a sidecar error in Alipay's envelope and records it (`U` errors count as
    /// `error`, `F` refusals as `rejected`).
    pub async fn refuse(
        &mut self,
        session: &mut Session,
        error: SidecarError,
        message: String,
    ) -> pingora::Result<()> {
        self.status = error.http_status();
        self.error = Some(error.code());
        self.outcome = match error {
            // the client's own request was unreadable: not a delivery failure
            SidecarError::BadRequest
            | SidecarError::RequestTimeout
            | SidecarError::HeadersTooLarge => Outcome::BadRequest,
            _ if error.status() == Status::U => Outcome::Error,
            _ => Outcome::Rejected,
        };
        metrics::metrics().record_error(error.code());
        let body = error.body(&message);
        // a detail recorded earlier (the real cause) wins over the message sent to the client
        if self.detail.is_none() {
            self.detail = Some(message);
        }
        let mut resp = ResponseHeader::build(error.http_status(), Some(4))?;
        resp.insert_header("Content-Type", "application/json; charset=UTF-8")?;
        resp.insert_header(ERROR_HEADER, error.code())?;
        if error == SidecarError::MethodNotAllowed {
            resp.insert_header("Allow", "POST")?;
        }
        resp.set_content_length(body.len())?;
        self.response_bytes = body.len();
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// Counts the request and writes its log line; called once from the `logging` hook.
    /// `connection_error` is pingora's error when the client connection failed.
    pub fn finish(&self, connection_error: Option<&pingora::Error>) {
        // 499: the client went away before an answer was written
        let status = if self.status == 0 { 499 } else { self.status };
        let elapsed = self.start.elapsed();
        metrics::metrics().record_request(self.direction, self.api, self.outcome, status, elapsed);
        tracing::info!(
            direction = self.direction.as_str(),
            api = self.api,
            status,
            outcome = self.outcome.as_str(),
            error_code = self.error,
            reason = self.reason,
            detail = self.detail.as_deref(),
            key_version = self.key_version.as_deref(),
            content_sha256 = self.content_sha256.as_deref(),
            upstream_status = self.upstream_status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream_ms = self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            request_bytes = self.request_bytes,
            response_bytes = self.response_bytes,
            connection_error = connection_error.map(|e| e.to_string()),
            "request"
        );
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

/// Malformed or slow bodies, logged at most once per second per direction.
static BAD_BODY_LOG: [Throttle; 2] = [Throttle::new(), Throttle::new()];

/// Reads one request: POST only, an origin-form UTF-8 target, then `check` on the head
/// (target and headers, before the body is read), the body whole within `policy` (size and
/// deadline), `Expect: 100-continue` answered here. A malformed, truncated or too slow body
/// is answered `400`/`408` in the envelope and counted as `bad_request`, never as a
/// delivery failure. `None` when it was refused; the answer is then already written.
pub async fn receive(
    session: &mut Session,
    rec: &mut Record,
    policy: BodyPolicy,
    check: impl FnOnce(&RequestHeader, &str) -> Result<(), (SidecarError, String)>,
) -> pingora::Result<Option<Received>> {
    let header = session.req_header().clone();
    if header.method != http::Method::POST {
        let msg = "only POST is accepted: every AMS API call and every notification is a POST"
            .to_string();
        return rec
            .refuse(session, SidecarError::MethodNotAllowed, msg)
            .await
            .map(|_| None);
    }
    if let pingora::protocols::http::ServerSession::H1(h1) = &*session.downstream_session {
        if framing_conflict(&h1.get_headers_raw_bytes()) {
            let msg = "the request has both Content-Length and Transfer-Encoding; one framing \
                       per request (a request that two parsers could read differently is \
                       refused)"
                .to_string();
            return rec
                .refuse(session, SidecarError::BadRequest, msg)
                .await
                .map(|_| None);
        }
    }
    let Some(target) = std::str::from_utf8(header.raw_path())
        .ok()
        .and_then(origin_form)
    else {
        let msg = "the request target is neither an origin-form path (/ams/api/...) nor an \
                   absolute http(s) URL with one"
            .to_string();
        return rec
            .refuse(session, SidecarError::BadRequest, msg)
            .await
            .map(|_| None);
    };
    if let Err((error, msg)) = check(&header, &target) {
        return rec.refuse(session, error, msg).await.map(|_| None);
    }
    let limit = policy.max_bytes;
    let declared = header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        let msg = format!(
            "the body is {n} bytes; the limit is {limit} ({})",
            policy.limit_key
        );
        return rec
            .refuse(session, SidecarError::BodyTooLarge, msg)
            .await
            .map(|_| None);
    }
    if header
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        session.write_continue_response().await?;
    }
    let read = read_body(session, limit, policy.limit_key, declared.unwrap_or(0));
    let body = match tokio::time::timeout(policy.timeout, read).await {
        Ok(Ok(Ok(body))) => body,
        Ok(Ok(Err((error, msg)))) => {
            return rec.refuse(session, error, msg).await.map(|_| None);
        }
        Ok(Err(e)) => {
            let msg = format!(
                "the request body could not be read: {}; send a complete body framed by \
                 Content-Length or valid chunked encoding",
                echo(&e.to_string())
            );
            rec.detail = Some(msg.clone());
            bad_body_log(rec.direction, "malformed or truncated request body");
            return rec
                .refuse(session, SidecarError::BadRequest, msg)
                .await
                .map(|_| None);
        }
        Err(_) => {
            let msg = format!(
                "the request body did not arrive within {} ([server] body_read_timeout); \
                 nothing was forwarded",
                humantime::format_duration(policy.timeout)
            );
            bad_body_log(rec.direction, "request body too slow");
            return rec
                .refuse(session, SidecarError::RequestTimeout, msg)
                .await
                .map(|_| None);
        }
    };
    rec.request_bytes = body.len();
    metrics::metrics().observe_body_size(rec.direction, BodyKind::Request, body.len());
    Ok(Some(Received {
        header,
        target,
        body,
    }))
}

/// The origin-form target (path and query) of a request target: itself when it starts with
/// `/`, or the path and query of an absolute-form `http(s)://host[:port]/path?q` (what the
/// Python SDK writes, RFC 9112 §3.2.2). The authority never chooses the upstream; it is
/// logged once, at info, so an operator sees which clients use the form.
pub fn origin_form(raw: &str) -> Option<String> {
    if raw.starts_with('/') {
        return Some(raw.to_string());
    }
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let uri: http::Uri = raw.parse().ok()?;
    let authority = uri.authority()?;
    let target = uri.path_and_query()?.as_str();
    if !target.starts_with('/') {
        return None;
    }
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            authority = %echo(authority.as_str()),
            "a client sends absolute-form request targets (e.g. the Python SDK); the path and \
             query are signed and sent, the authority is ignored (logged once)"
        );
    }
    Some(target.to_string())
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

/// The body, whole and bounded; the inner `Err` is a refusal (too large), the outer one a
/// framing or connection error.
async fn read_body(
    session: &mut Session,
    limit: usize,
    limit_key: &str,
    declared: usize,
) -> pingora::Result<Result<Bytes, (SidecarError, String)>> {
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
            return Ok(Err((SidecarError::BodyTooLarge, msg)));
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

/// Copies request headers to the next hop: drops hop-by-hop and framing headers, those the
/// `Connection` header names, `Host`, `Expect`, any `X-Alipay-Sidecar-*` (so they cannot be
/// forged) and the names in `also_drop`; keeps the received name case where pingora kept it.
pub fn forward_request_headers(
    from: &RequestHeader,
    to: &mut RequestHeader,
    also_drop: &[&str],
) -> pingora::Result<()> {
    let cased = from.case_header_iter().map(|(n, v)| (n.as_slice(), v));
    for (name, value) in end_to_end_headers(cased, &from.headers, |h| {
        h == "host" || h == "expect" || also_drop.contains(&h)
    }) {
        to.append_header(name, value)?;
    }
    Ok(())
}

/// An upstream answer's status and headers for the client, minus hop-by-hop, framing and any
/// `X-Alipay-Sidecar-*` the upstream sent.
pub fn relayed_response_header(from: &ResponseHeader) -> pingora::Result<ResponseHeader> {
    let mut out = ResponseHeader::build(from.status, Some(from.headers.len() + 3))?;
    let cased = from.case_header_iter().map(|(n, v)| (n.as_slice(), v));
    for (name, value) in end_to_end_headers(cased, &from.headers, |_| false) {
        out.append_header(name, value)?;
    }
    Ok(out)
}

/// The headers that may cross a hop: not hop-by-hop or framing, not named by `Connection`,
/// not the sidecar's own markers, and not `drop(lowercase name)`.
fn end_to_end_headers<'a>(
    case: impl Iterator<Item = (&'a [u8], &'a http::HeaderValue)>,
    map: &http::HeaderMap,
    drop: impl Fn(&str) -> bool,
) -> Vec<(Bytes, http::HeaderValue)> {
    let named_by_connection = connection_tokens(map);
    cased_headers(case, map)
        .into_iter()
        .filter(|(name, _)| {
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            !(HOP_BY_HOP.contains(&lower.as_str())
                || lower.starts_with(SIDECAR_PREFIX)
                || named_by_connection.contains(&lower)
                || drop(&lower))
        })
        .collect()
}

/// Headers with their names as received (case kept) when pingora recorded the case, else
/// with lowercase names.
fn cased_headers<'a>(
    case: impl Iterator<Item = (&'a [u8], &'a http::HeaderValue)>,
    map: &http::HeaderMap,
) -> Vec<(Bytes, http::HeaderValue)> {
    let cased: Vec<(Bytes, http::HeaderValue)> = case
        .map(|(n, v)| (Bytes::copy_from_slice(n), v.clone()))
        .collect();
    if cased.len() == map.len() {
        return cased;
    }
    map.iter()
        .map(|(n, v)| (Bytes::copy_from_slice(n.as_str().as_bytes()), v.clone()))
        .collect()
}

/// Header names listed in `Connection` (hop-by-hop by declaration, RFC 9110 §7.6.1).
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// A header's value by (case-insensitive) name, when it is text.
pub fn header_text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// `host` or `host:port` (bracketed IPv6), for the `Host` header of the next hop.
pub fn authority(host: &str, port: u16, default_port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// `result.resultStatus` of a JSON body, if any (read-only: the body is never re-serialised).
pub fn result_status(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("result")?
        .get("resultStatus")?
        .as_str()
        .map(str::to_string)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use crate::protocol::echo;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(
            origin_form("/ams/api/x?y=1").as_deref(),
            Some("/ams/api/x?y=1")
        );
        assert_eq!(
            origin_form("https://127.0.0.1/ams/api/v1/payments/pay").as_deref(),
            Some("/ams/api/v1/payments/pay")
        );
        assert_eq!(
            origin_form("HTTP://evil.example:8443/ams/api/a?q=%2F").as_deref(),
            Some("/ams/api/a?q=%2F")
        );
        assert_eq!(origin_form("*"), None);
        assert_eq!(origin_form("ftp://x/ams"), None);
        assert_eq!(origin_form("127.0.0.1:443"), None);
    }

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

    #[test]
    fn connection_tokens_are_hop_by_hop() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close, X-Trace"),
        );
        assert_eq!(
            connection_tokens(&h),
            vec!["close".to_string(), "x-trace".to_string()]
        );
    }
}
