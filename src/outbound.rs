//! Outbound: the app's plain AMS call → signed → Alipay's gateway → verified → the app.
//!
//! Design. The whole gateway exchange runs inside `request_filter`, which then answers the
//! app itself and returns `Ok(true)`, so pingora's upstream phases are never entered:
//! - pingora replays a body read in a hook to the upstream only through its retry buffer,
//!   fixed at 64 KiB, so a 1 MiB signed body cannot travel the normal proxy pipeline;
//! - by the time pingora's response-body hooks run, the response headers are already on the
//!   wire, so a response that fails verification could only become a cut connection, never a
//!   clean 502 with a JSON error — and the app must not see a byte of an unverified answer.
//!
//! pingora still provides what it is good at: the listener, HTTP/1.1 parsing and downstream
//! keep-alive, the upstream connector with its TLS stack and connection pool (see
//! [`crate::upstream`]), and graceful shutdown. The `logging` hook records one log line and
//! the metrics per request.
//!
//! Byte-exactness: the body is read once into one buffer; those bytes are signed and those
//! same bytes are sent; the response body is verified as received and those same bytes are
//! returned. JSON is never re-serialised (the response body is parsed only to read
//! `result.resultStatus` of an unsigned answer).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Config, OutboundConfig, RequestTimeFormat};
use crate::envelope::SidecarError;
use crate::metrics::{self, BodyKind, Direction, Outcome, VerificationResult};
use crate::protocol::{
    content_to_sign, format_epoch_millis, format_iso8601, sha256_hex, sign_content,
};
use crate::state::SidecarState;
use crate::upstream::{Upstream, UpstreamError};

/// Header the sidecar adds to every answer it hands the app, saying what was checked.
pub const VERIFIED_HEADER: &str = "X-Alipay-Sidecar-Verified";
/// The Alipay key version that verified the response.
pub const KEY_VERSION_HEADER: &str = "X-Alipay-Sidecar-Key-Version";
/// The sidecar's error code, also in the JSON body, for clients that only read headers.
pub const ERROR_HEADER: &str = "X-Alipay-Sidecar-Error";

/// Responses larger than this are refused (Alipay's answers are a few KiB).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Request headers that are never copied from the app to the gateway: hop-by-hop headers,
/// framing (recomputed), `Expect` (answered locally: forwarding it crashes pingora 0.9's
/// client), the signature headers (always replaced) and the sidecar's own markers.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    "content-length",
    "client-id",
    "request-time",
    "signature",
];

/// Response headers not copied to the app: hop-by-hop and framing (recomputed).
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The outbound signing proxy.
pub struct Outbound {
    state: Arc<SidecarState>,
    cfg: OutboundConfig,
    client_id: String,
    upstream: Upstream,
    app_signature_replaced: AtomicBool,
}

/// Per-request facts for the log line and metrics.
pub struct RequestCtx {
    start: Instant,
    api: &'static str,
    outcome: Outcome,
    status: u16,
    error: Option<&'static str>,
    gateway: Option<Duration>,
    key_version: Option<String>,
    request_bytes: usize,
    response_bytes: usize,
    detail: Option<String>,
}

impl Outbound {
    /// `ca_bundle` is the PEM file the connector trusts (system roots plus `ca_file`), built
    /// once at start-up by the server.
    pub fn new(
        state: Arc<SidecarState>,
        config: &Config,
        cfg: OutboundConfig,
        ca_bundle: Option<String>,
    ) -> Self {
        let upstream = Upstream::new(
            &cfg.gateway.host,
            cfg.gateway.port,
            true,
            ca_bundle,
            cfg.connect_timeout,
        );
        Self {
            state,
            client_id: config.client_id.clone(),
            cfg,
            upstream,
            app_signature_replaced: AtomicBool::new(false),
        }
    }

    fn path_allowed(&self, path: &str) -> bool {
        // reject dot segments: "/ams/api/../x" must not escape the allowed prefixes
        let dot_segment = path.split('/').any(|s| {
            s == "."
                || s == ".."
                || s.eq_ignore_ascii_case("%2e")
                || s.eq_ignore_ascii_case("%2e%2e")
        });
        !dot_segment
            && self
                .cfg
                .allowed_path_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    /// The path that is signed and sent: as received, or with the SDKs' sandbox rewrite.
    fn signed_target(&self, target: &str) -> String {
        if self.cfg.sandbox_path_rewrite
            && self.client_id.starts_with("SANDBOX_")
            && target.starts_with("/ams/api/")
        {
            return target.replacen("/ams/api/", "/ams/sandbox/api/", 1);
        }
        target.to_string()
    }

    fn request_time(&self) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        match self.cfg.request_time_format {
            RequestTimeFormat::EpochMillis => format_epoch_millis(ms),
            RequestTimeFormat::Iso8601 => format_iso8601(ms),
        }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<()> {
        let req = session.req_header();
        if req.method != http::Method::POST {
            return self
                .refuse(
                    session,
                    ctx,
                    SidecarError::MethodNotAllowed,
                    "only POST is forwarded: every AMS API is a POST".into(),
                )
                .await;
        }
        let raw = req.raw_path();
        let Ok(target) = std::str::from_utf8(raw).map(str::to_string) else {
            return self
                .refuse(
                    session,
                    ctx,
                    SidecarError::PathNotAllowed,
                    "the request path is not valid UTF-8".into(),
                )
                .await;
        };
        let path_only = target.split('?').next().unwrap_or("");
        ctx.api = metrics::api_label(path_only);
        if !target.starts_with('/') || !self.path_allowed(path_only) {
            let msg = format!(
                "path {:?} is not allowed; allowed prefixes: {}",
                truncate(&target, 120),
                self.cfg.allowed_path_prefixes.join(", ")
            );
            return self
                .refuse(session, ctx, SidecarError::PathNotAllowed, msg)
                .await;
        }
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.cfg.max_body_bytes) {
            let msg = format!(
                "the body is {} bytes; the limit is {} (max_body_bytes)",
                declared.unwrap_or(0),
                self.cfg.max_body_bytes
            );
            return self
                .refuse(session, ctx, SidecarError::BodyTooLarge, msg)
                .await;
        }
        let expects_continue = req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let app_signed = ["signature", "client-id", "request-time"]
            .iter()
            .any(|h| req.headers.contains_key(*h));
        if expects_continue {
            session.write_continue_response().await?;
        }

        // 1. the body, whole, bounded
        let body = match read_body(session, self.cfg.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                let msg = format!(
                    "the body exceeds {} bytes (max_body_bytes)",
                    self.cfg.max_body_bytes
                );
                return self
                    .refuse(session, ctx, SidecarError::BodyTooLarge, msg)
                    .await;
            }
            Err(BodyError::Read(e)) => return Err(e),
        };
        ctx.request_bytes = body.len();
        metrics::metrics().observe_body_size(Direction::Outbound, BodyKind::Request, body.len());
        if app_signed && !self.app_signature_replaced.swap(true, Ordering::Relaxed) {
            tracing::info!("the app sent its own Client-Id/Request-Time/Signature headers; the sidecar replaces them (logged once)");
        }

        // 2. sign those exact bytes with one snapshot of the keys
        let keys = self.state.keys();
        let signed_target = self.signed_target(&target);
        let time = self.request_time();
        let content = content_to_sign("POST", &signed_target, &self.client_id, &time, &body);
        let sign_start = Instant::now();
        let signature = match sign_content(&keys.merchant, &keys.merchant_key_version, &content) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .refuse(session, ctx, SidecarError::SigningFailed, e.to_string())
                    .await
            }
        };
        metrics::metrics().observe_sign(sign_start.elapsed());
        tracing::debug!(content_sha256 = %sha256_hex(&content), path = %signed_target, request_time = %time, "signed request");

        let upstream_req = self.upstream_request(
            session.req_header(),
            &signed_target,
            &time,
            &signature,
            body.len(),
        )?;

        // 3. forward the same bytes, read the whole answer
        let response = match self
            .upstream
            .exchange(
                &upstream_req,
                &body,
                MAX_RESPONSE_BYTES,
                self.cfg.request_timeout,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let code = match &e {
                    UpstreamError::Connect { .. } => SidecarError::GatewayUnreachable,
                    UpstreamError::Tls { .. } => SidecarError::GatewayTlsError,
                    UpstreamError::Timeout { .. } => SidecarError::GatewayTimeout,
                    UpstreamError::Protocol { .. } => SidecarError::GatewayProtocolError,
                    UpstreamError::TooLarge { .. } => SidecarError::GatewayResponseTooLarge,
                };
                tracing::warn!(error = %e, code = code.code(), "gateway exchange failed");
                return self.refuse(session, ctx, code, e.to_string()).await;
            }
        };
        ctx.gateway = Some(response.elapsed);
        ctx.response_bytes = response.body.len();
        metrics::metrics().observe_upstream(Direction::Outbound, ctx.api, response.elapsed);
        metrics::metrics().observe_body_size(
            Direction::Outbound,
            BodyKind::Response,
            response.body.len(),
        );

        // 4. verify before the app sees a byte
        let status = response.header.status.as_u16();
        let result_status = result_status(&response.body);
        if status == 200 {
            metrics::metrics().record_gateway_result_status(ctx.api, result_status.as_deref());
        }
        let marker: (&str, Option<String>);
        if status != 200 {
            // nothing signed to check (spec §5): pass through, marked
            ctx.outcome = Outcome::UnverifiedStatus;
            marker = ("unverified-status", None);
        } else if !self.cfg.verify_responses {
            ctx.outcome = Outcome::Forwarded;
            marker = ("disabled", None);
        } else {
            let sig = header_str(&response.header, "signature");
            let rtime = header_str(&response.header, "response-time");
            match (sig, rtime) {
                (Some(sig), Some(rtime)) => {
                    let content = content_to_sign(
                        "POST",
                        &signed_target,
                        &self.client_id,
                        &rtime,
                        &response.body,
                    );
                    let verify_start = Instant::now();
                    let verdict = keys.alipay.verify(&content, &sig);
                    metrics::metrics().observe_verify(Direction::Outbound, verify_start.elapsed());
                    match verdict {
                        Ok(v) => {
                            metrics::metrics().record_verification(
                                Direction::Outbound,
                                VerificationResult::Valid,
                            );
                            ctx.outcome = Outcome::Verified;
                            ctx.key_version = Some(v.key_version.clone());
                            marker = ("true", Some(v.key_version));
                        }
                        Err(e) => {
                            metrics::metrics()
                                .record_verification(Direction::Outbound, (&e).into());
                            tracing::warn!(reason = e.reason(), error = %e, "gateway response signature did not verify; withheld from the app");
                            let msg = format!("Alipay's response did not verify and was withheld: {e}. Inquire the outcome (e.g. inquiryPayment) before retrying");
                            return self
                                .refuse(session, ctx, SidecarError::ResponseSignatureInvalid, msg)
                                .await;
                        }
                    }
                }
                (None, None) if result_status.as_deref() == Some("F") => {
                    // Alipay does not sign rejections of a bad request signature (spec §5)
                    metrics::metrics().record_verification(
                        Direction::Outbound,
                        VerificationResult::UnsignedFailure,
                    );
                    ctx.outcome = Outcome::UnsignedFailure;
                    marker = ("unsigned-failure", None);
                }
                (None, None) => {
                    metrics::metrics().record_verification(
                        Direction::Outbound,
                        VerificationResult::Invalid("missing_header"),
                    );
                    let msg = "Alipay's response is unsigned and is not a rejection (resultStatus F); it was withheld. Inquire the outcome before retrying".to_string();
                    return self
                        .refuse(session, ctx, SidecarError::ResponseUnsigned, msg)
                        .await;
                }
                (s, _) => {
                    metrics::metrics().record_verification(
                        Direction::Outbound,
                        VerificationResult::Invalid("malformed"),
                    );
                    let missing = if s.is_some() {
                        "response-time"
                    } else {
                        "signature"
                    };
                    let msg = format!("Alipay's response carries only one of the signature headers ({missing} is missing); it was withheld. Inquire the outcome before retrying");
                    return self
                        .refuse(session, ctx, SidecarError::ResponseSignatureInvalid, msg)
                        .await;
                }
            }
        }

        // 5. hand the exact bytes to the app
        let mut out = ResponseHeader::build(
            response.header.status,
            Some(response.header.headers.len() + 3),
        )?;
        for (name, value) in response.header.headers.iter() {
            let n = name.as_str();
            if NOT_RETURNED.contains(&n) || n.starts_with("x-alipay-sidecar-") {
                continue;
            }
            out.append_header(name.clone(), value.clone())?;
        }
        out.insert_header(VERIFIED_HEADER, marker.0)?;
        if let Some(v) = marker.1 {
            out.insert_header(KEY_VERSION_HEADER, v)?;
        }
        out.set_content_length(response.body.len())?;
        ctx.status = status;
        session.write_response_header(Box::new(out), false).await?;
        session
            .write_response_body(Some(response.body), true)
            .await?;
        Ok(())
    }

    fn upstream_request(
        &self,
        app: &RequestHeader,
        target: &str,
        time: &str,
        signature: &str,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", target.as_bytes(), Some(app.headers.len() + 6))?;
        let mut has_content_type = false;
        for (name, value) in app.headers.iter() {
            let n = name.as_str();
            if NOT_FORWARDED.contains(&n)
                || n.starts_with("x-alipay-sidecar-")
                || (n == "agent-token" && self.cfg.agent_token.is_some())
            {
                continue;
            }
            has_content_type |= n == "content-type";
            req.append_header(name.clone(), value.clone())?;
        }
        let g = &self.cfg.gateway;
        let authority = if g.port == 443 {
            g.host.clone()
        } else {
            format!("{}:{}", g.host, g.port)
        };
        req.insert_header("Host", authority)?;
        if !has_content_type {
            req.insert_header("Content-Type", "application/json; charset=UTF-8")?;
        }
        req.insert_header("Content-Length", len.to_string())?;
        req.insert_header("Client-Id", self.client_id.as_str())?;
        req.insert_header("Request-Time", time)?;
        req.insert_header("Signature", signature)?;
        if let Some(token) = &self.cfg.agent_token {
            req.insert_header("Agent-Token", token.as_str())?;
        }
        if !app.headers.contains_key("user-agent") {
            req.insert_header(
                "User-Agent",
                concat!("alipay-sidecar/", env!("CARGO_PKG_VERSION")),
            )?;
        }
        Ok(req)
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: SidecarError,
        message: String,
    ) -> pingora::Result<()> {
        ctx.status = error.http_status();
        ctx.error = Some(error.code());
        ctx.outcome = if matches!(error.status(), crate::envelope::Status::U) {
            Outcome::Error
        } else {
            Outcome::Rejected
        };
        ctx.detail = Some(message.clone());
        metrics::metrics().record_error(error.code());
        write_error(session, error, &message).await
    }
}

/// Writes a sidecar error in Alipay's envelope.
pub(crate) async fn write_error(
    session: &mut Session,
    error: SidecarError,
    message: &str,
) -> pingora::Result<()> {
    let body = error.body(message);
    let mut resp = ResponseHeader::build(error.http_status(), Some(4))?;
    resp.insert_header("Content-Type", "application/json; charset=UTF-8")?;
    resp.insert_header(ERROR_HEADER, error.code())?;
    if error == SidecarError::MethodNotAllowed {
        resp.insert_header("Allow", "POST")?;
    }
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

pub(crate) enum BodyError {
    TooLarge,
    Read(Box<pingora::Error>),
}

/// Reads the whole request body (Content-Length or chunked), refusing past `limit`.
pub(crate) async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Read)? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub(crate) fn header_str(h: &ResponseHeader, name: &str) -> Option<String> {
    h.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `result.resultStatus` of a JSON body, if any (read-only: the body is never re-serialised).
pub(crate) fn result_status(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("result")?
        .get("resultStatus")?
        .as_str()
        .map(str::to_string)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[async_trait]
impl ProxyHttp for Outbound {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            api: "other",
            outcome: Outcome::Error,
            status: 0,
            error: None,
            gateway: None,
            key_version: None,
            request_bytes: 0,
            response_bytes: 0,
            detail: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.start = Instant::now();
        let _tracked = self.state.track();
        let _gauge = metrics::metrics().in_flight(Direction::Outbound);
        self.handle(session, ctx).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // never reached: request_filter answers every request itself (see the module doc)
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "outbound requests are answered in request_filter",
        ))
    }

    async fn logging(
        &self,
        _session: &mut Session,
        e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        let status = if ctx.status == 0 { 499 } else { ctx.status };
        metrics::metrics().record_request(
            Direction::Outbound,
            ctx.api,
            ctx.outcome,
            status,
            ctx.start.elapsed(),
        );
        tracing::info!(
            direction = "outbound",
            api = ctx.api,
            status,
            outcome = ctx.outcome.as_str(),
            error_code = ctx.error,
            detail = ctx.detail.as_deref(),
            key_version = ctx.key_version.as_deref(),
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
            gateway_ms = ctx.gateway.map(|d| d.as_secs_f64() * 1000.0),
            request_bytes = ctx.request_bytes,
            response_bytes = ctx.response_bytes,
            connection_error = e.map(|e| e.to_string()),
            "request"
        );
    }
}
