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
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Config, OutboundConfig, RequestTimeFormat};
use crate::envelope::SidecarError;
use crate::exchange::{self, Record, KEY_VERSION_HEADER, VERIFIED_HEADER};
use crate::keyset::KeySet;
use crate::metrics::{self, BodyKind, Direction, Outcome, VerificationResult};
use crate::protocol::{content_digest, format_epoch_millis, format_iso8601, sign_digest};
use crate::state::SidecarState;
use crate::upstream::{Upstream, UpstreamError, UpstreamResponse};

/// Responses larger than this are refused (Alipay's answers are a few KiB).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// App headers never forwarded to the gateway besides hop-by-hop ones: the signature headers,
/// which the sidecar always sets itself.
const REPLACED: &[&str] = &["client-id", "request-time", "signature"];

/// App headers the sidecar sets itself besides those: `Accept-Encoding` (the sidecar asks for
/// `identity`, so what it verifies is what was signed) and the Go SDK's `Key-Version`
/// (signing metadata, set to the sidecar's own key version when the app sent one).
const ALSO_REPLACED: &[&str] = &["accept-encoding", "key-version"];

/// The outbound signing proxy.
pub struct Outbound {
    state: Arc<SidecarState>,
    cfg: OutboundConfig,
    client_id: String,
    upstream: Upstream,
    app_signature_replaced: AtomicBool,
    /// App headers the sidecar sets itself (built once: `REPLACED`, plus `agent-token` when
    /// one is configured).
    not_forwarded: Vec<&'static str>,
    body_policy: exchange::BodyPolicy,
    /// Every outbound listener is on loopback: then `Host` must name this sidecar.
    loopback_only: bool,
}

/// What the app is told about the gateway's answer.
struct Verdict {
    marker: &'static str,
    key_version: Option<String>,
    /// The signature verified over the decoded body (the answer came `Content-Encoding`d).
    over_decoded: bool,
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
        let cfg_max_body = cfg.max_body_bytes;
        let loopback_only = cfg.listen_addrs().iter().all(|a| a.ip().is_loopback());
        let mut not_forwarded = REPLACED.to_vec();
        not_forwarded.extend_from_slice(ALSO_REPLACED);
        if cfg.agent_token.is_some() {
            not_forwarded.push("agent-token");
        }
        Self {
            state,
            // merchant routing: lead wires this (the first merchant for now)
            client_id: config.merchants[0].client_id.clone(),
            cfg,
            upstream,
            app_signature_replaced: AtomicBool::new(false),
            not_forwarded,
            body_policy: exchange::BodyPolicy {
                max_bytes: cfg_max_body,
                limit_key: "[outbound] max_body_bytes",
                timeout: config.server.body_read_timeout,
            },
            loopback_only,
        }
    }

    /// The request head before the body is read: not from a browser, addressed to this
    /// sidecar (DNS rebinding), and a target inside the allowed prefixes.
    fn check_head(
        &self,
        header: &RequestHeader,
        target: &str,
    ) -> Result<(), (SidecarError, String)> {
        if let Some(name) = ["origin", "sec-fetch-site", "sec-fetch-mode"]
            .into_iter()
            .find(|h| header.headers.contains_key(*h))
        {
            let msg = format!(
                "the request carries a {name} header, so a web browser sent it; the signing \
                 proxy only takes calls from the app's server-side SDK (a web page must never \
                 get requests signed with the merchant key)"
            );
            return Err((SidecarError::BrowserRequestRefused, msg));
        }
        if self.loopback_only {
            if let Some(host) = header.headers.get(http::header::HOST) {
                let text = String::from_utf8_lossy(host.as_bytes());
                if !host_allowed(&text, &self.cfg.allowed_hosts) {
                    let msg = format!(
                        "Host \"{}\" is neither a loopback address, localhost nor listed in \
                         [outbound] allowed_hosts; a page that re-binds its DNS name to \
                         127.0.0.1 must not reach the signer. Use http://127.0.0.1:<port> as the \
                         gateway URL, or add the name the app uses to allowed_hosts",
                        exchange::echo(&text)
                    );
                    return Err((SidecarError::HostNotAllowed, msg));
                }
            }
        }
        target_allowed(target, &self.cfg.allowed_path_prefixes)
            .map_err(|msg| (SidecarError::PathNotAllowed, msg))
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
        let ms = exchange::now_millis();
        match self.cfg.request_time_format {
            RequestTimeFormat::EpochMillis => format_epoch_millis(ms),
            RequestTimeFormat::Iso8601 => format_iso8601(ms),
        }
    }

    async fn handle(&self, session: &mut Session, rec: &mut Record) -> pingora::Result<()> {
        if let Some(path) = std::str::from_utf8(session.req_header().raw_path())
            .ok()
            .and_then(exchange::origin_form)
        {
            rec.api = metrics::api_label(path.split('?').next().unwrap_or(""));
        }
        let Some(req) =
            exchange::receive(session, rec, self.body_policy, |h, t| self.check_head(h, t)).await?
        else {
            return Ok(());
        };
        if REPLACED.iter().any(|h| req.header.headers.contains_key(*h))
            && !self.app_signature_replaced.swap(true, Ordering::Relaxed)
        {
            tracing::info!("the app sent its own Client-Id/Request-Time/Signature headers; the sidecar replaces them (logged once)");
        }

        // sign exactly those bytes with one snapshot of the keys
        // merchant routing: lead wires this (the first merchant for now)
        let keys = self.state.merchants().only_or_first().keys();
        let signed_target = self.signed_target(&req.target);
        let time = self.request_time();
        // the digest of the content to sign, hashed where the bytes lie (no copy of the body)
        let digest = content_digest("POST", &signed_target, &self.client_id, &time, &req.body);
        let sign_start = Instant::now();
        let signature = match sign_digest(&keys.merchant, &keys.merchant_key_version, &digest) {
            Ok(s) => s,
            Err(e) => {
                return rec
                    .refuse(session, SidecarError::SigningFailed, e.to_string())
                    .await
            }
        };
        metrics::metrics().observe_sign(sign_start.elapsed());
        tracing::debug!(content_sha256 = %digest.to_hex(), path = %signed_target, request_time = %time, "signed request");

        // forward the same bytes, read the whole answer
        let gateway_req = self.gateway_request(
            &req.header,
            &signed_target,
            &time,
            &signature,
            &keys.merchant_key_version,
            req.body.len(),
        )?;
        let response = match self
            .upstream
            .exchange(
                &gateway_req,
                &req.body,
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
                return rec.refuse(session, code, e.to_string()).await;
            }
        };
        rec.upstream = Some(response.elapsed);
        rec.upstream_status = Some(response.header.status.as_u16());
        metrics::metrics().observe_upstream(Direction::Outbound, rec.api, response.elapsed);
        metrics::metrics().observe_body_size(
            Direction::Outbound,
            BodyKind::Response,
            response.body.len(),
        );

        // a compressed answer (a front end that ignored `Accept-Encoding: identity`): the
        // signature may cover the bytes as received or the decoded ones
        let decoded = match exchange::header_text(&response.header.headers, "content-encoding") {
            Some(enc) if !enc.trim().eq_ignore_ascii_case("identity") => {
                crate::encoding::decode(enc, &response.body, MAX_RESPONSE_BYTES)
                    .map_err(|e| tracing::warn!(encoding = %exchange::echo(enc), error = %e, "could not decode the gateway's answer; verifying the bytes as received"))
                    .ok()
            }
            _ => None,
        };

        // verify before the app sees a byte
        let verdict = match self.verify(&keys, &signed_target, &response, decoded.as_ref(), rec) {
            Ok(v) => v,
            Err((error, msg)) => return rec.refuse(session, error, msg).await,
        };

        // hand the exact bytes to the app (decoded when the answer was compressed)
        let mut out = exchange::relayed_response_header(&response.header)?;
        let body = match decoded {
            Some(d) if verdict.marker == "true" => {
                out.remove_header("content-encoding");
                d
            }
            _ => response.body,
        };
        out.insert_header(VERIFIED_HEADER, verdict.marker)?;
        if let Some(v) = verdict.key_version {
            out.insert_header(KEY_VERSION_HEADER, v)?;
        }
        out.set_content_length(body.len())?;
        rec.status = response.header.status.as_u16();
        rec.response_bytes = body.len();
        if verdict.over_decoded {
            tracing::debug!("the gateway's answer verified over its decoded body");
        }
        session.write_response_header(Box::new(out), false).await?;
        session.write_response_body(Some(body), true).await
    }

    /// The response policy (spec §5, fail closed): a signed answer is verified whatever its
    /// status; an unsigned one passes (marked) only when it cannot be mistaken for a success —
    /// a 4xx/5xx status, or a 200 whose `resultStatus` is `F` (Alipay does not sign
    /// rejections of a bad request signature). Every other unsigned answer (1xx-3xx) is
    /// withheld: a 201/302 with `"S"` must not reach the app as if it were Alipay's.
    fn verify(
        &self,
        keys: &KeySet,
        signed_target: &str,
        response: &UpstreamResponse,
        decoded: Option<&bytes::Bytes>,
        rec: &mut Record,
    ) -> Result<Verdict, (SidecarError, String)> {
        let m = metrics::metrics();
        let status = response.header.status.as_u16();
        let result_status = exchange::result_status(decoded.unwrap_or(&response.body));
        if status == 200 {
            m.record_gateway_result_status(rec.api, result_status.as_deref());
        }
        if !self.cfg.verify_responses {
            rec.outcome = Outcome::Forwarded;
            return Ok(Verdict {
                marker: "disabled",
                key_version: None,
                over_decoded: false,
            });
        }
        let sig = exchange::header_text(&response.header.headers, "signature");
        let time = exchange::header_text(&response.header.headers, "response-time");
        let inquire = "Inquire the outcome (e.g. inquiryPayment) before retrying";
        let (sig, time) = match (sig, time) {
            (Some(sig), Some(time)) => (sig, time),
            (None, None) if status >= 400 => {
                // an HTTP error carries no result to trust
                rec.outcome = Outcome::UnverifiedStatus;
                return Ok(Verdict {
                    marker: "unverified-status",
                    key_version: None,
                    over_decoded: false,
                });
            }
            (None, None) if status == 200 && result_status.as_deref() == Some("F") => {
                m.record_verification(Direction::Outbound, VerificationResult::UnsignedFailure);
                rec.outcome = Outcome::UnsignedFailure;
                return Ok(Verdict {
                    marker: "unsigned-failure",
                    key_version: None,
                    over_decoded: false,
                });
            }
            (None, None) => {
                m.record_verification(
                    Direction::Outbound,
                    VerificationResult::Invalid("missing_header"),
                );
                rec.reason = Some("missing_header");
                let msg = format!("Alipay's answer (HTTP {status}) is unsigned and is not a rejection (a 200 with resultStatus F, or a 4xx/5xx status); it was withheld. {inquire}");
                return Err((SidecarError::ResponseUnsigned, msg));
            }
            (s, _) => {
                m.record_verification(
                    Direction::Outbound,
                    VerificationResult::Invalid("malformed"),
                );
                rec.reason = Some("malformed");
                let missing = if s.is_some() {
                    "response-time"
                } else {
                    "signature"
                };
                let msg = format!("Alipay's response carries only one of the signature headers ({missing} is missing); it was withheld. {inquire}");
                return Err((SidecarError::ResponseSignatureInvalid, msg));
            }
        };
        let digest = content_digest("POST", signed_target, &self.client_id, time, &response.body);
        let verify_start = Instant::now();
        let mut verdict = keys.alipay.verify_digest(&digest, sig);
        let mut over_decoded = false;
        if let (Err(_), Some(d)) = (&verdict, decoded) {
            let alt = content_digest("POST", signed_target, &self.client_id, time, d);
            if let Ok(v) = keys.alipay.verify_digest(&alt, sig) {
                verdict = Ok(v);
                over_decoded = true;
            }
        }
        m.observe_verify(Direction::Outbound, verify_start.elapsed());
        match verdict {
            Ok(v) => {
                m.record_verification(Direction::Outbound, VerificationResult::Valid);
                rec.outcome = Outcome::Verified;
                rec.key_version = Some(v.key_version.clone());
                Ok(Verdict {
                    marker: "true",
                    key_version: Some(v.key_version),
                    over_decoded,
                })
            }
            Err(e) => {
                m.record_verification(Direction::Outbound, (&e).into());
                rec.reason = Some(e.reason());
                rec.content_sha256 = Some(digest.to_hex());
                tracing::warn!(reason = e.reason(), error = %e, "gateway response signature did not verify; withheld from the app");
                Err((
                    SidecarError::ResponseSignatureInvalid,
                    format!("Alipay's response did not verify and was withheld: {e}. {inquire}"),
                ))
            }
        }
    }

    fn gateway_request(
        &self,
        app: &RequestHeader,
        target: &str,
        time: &str,
        signature: &str,
        key_version: &str,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", target.as_bytes(), Some(app.headers.len() + 6))?;
        exchange::forward_request_headers(app, &mut req, &self.not_forwarded)?;
        req.insert_header(
            "Host",
            exchange::authority(&self.cfg.gateway.host, self.cfg.gateway.port, 443),
        )?;
        if !app.headers.contains_key("content-type") {
            req.insert_header("Content-Type", "application/json; charset=UTF-8")?;
        }
        req.insert_header("Content-Length", len.to_string())?;
        req.insert_header("Client-Id", self.client_id.as_str())?;
        req.insert_header("Request-Time", time)?;
        req.insert_header("Signature", signature)?;
        // compressed answers would have to be decoded before they can be verified
        req.insert_header("Accept-Encoding", "identity")?;
        if app.headers.contains_key("key-version") {
            req.insert_header("Key-Version", key_version)?;
        }
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
}

/// The outbound target check (pure): the path (the part before `?`) must not hold a dot
/// segment in any spelling (`.`, `..`, `%2e`, `.%2E`, …), an encoded slash or backslash
/// (`%2f`, `%5c`), a raw backslash, a `;` path parameter or a `#`, and must lie inside one
/// of `prefixes` by whole segments (`/a/b` allows `/a/b` and `/a/b/c`, never `/a/bc`). The
/// bytes that are signed and sent stay exactly those received; this only decides.
pub fn target_allowed(target: &str, prefixes: &[String]) -> Result<(), String> {
    let path = target.split('?').next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    let problem = if path.contains('\\') || lower.contains("%5c") {
        Some("a backslash")
    } else if lower.contains("%2f") {
        Some("an encoded slash (%2F)")
    } else if path.contains(';') {
        Some("a ';' path parameter")
    } else if path.contains('#') {
        Some("a '#'")
    } else if lower
        .split('/')
        .any(|seg| matches!(seg.replace("%2e", ".").as_str(), "." | ".."))
    {
        Some("a dot segment (. or .., also percent-encoded)")
    } else {
        None
    };
    let inside = |p: &String| {
        path.starts_with(p.as_str())
            && (p.ends_with('/') || path.len() == p.len() || path[p.len()..].starts_with('/'))
    };
    match problem {
        None if prefixes.iter().any(inside) => Ok(()),
        None => Err(format!(
            "path \"{}\" is not allowed; allowed prefixes (whole path segments): {}",
            exchange::echo(path),
            prefixes.join(", ")
        )),
        Some(what) => Err(format!(
            "path \"{}\" holds {what}, which the gateway could resolve outside the allowed \
             prefixes; send the plain path",
            exchange::echo(path)
        )),
    }
}

/// Whether a `Host` header value names this sidecar on a loopback listener: a loopback IP
/// (`127.0.0.1`, `[::1]`, with or without port), `localhost`, or an `allowed_hosts` entry.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || allowed.contains(&name) {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[async_trait]
impl ProxyHttp for Outbound {
    type CTX = Record;

    fn new_ctx(&self) -> Record {
        Record::new(Direction::Outbound, metrics::OTHER_API_LABEL)
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        rec: &mut Record,
    ) -> pingora::Result<bool> {
        let _in_flight = self.state.track(Direction::Outbound);
        self.handle(session, rec).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _rec: &mut Record,
    ) -> pingora::Result<Box<HttpPeer>> {
        // never reached: request_filter answers every request itself (see the module doc)
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "outbound requests are answered in request_filter",
        ))
    }

    async fn logging(&self, _session: &mut Session, e: Option<&pingora::Error>, rec: &mut Record) {
        rec.finish(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_are_matched_by_segment_and_spelling_tricks_refused() {
        let p = prefixes(&["/ams/api/v1/payments/inquiryPayment"]);
        assert!(target_allowed("/ams/api/v1/payments/inquiryPayment", &p).is_ok());
        assert!(target_allowed("/ams/api/v1/payments/inquiryPayment?x=1", &p).is_ok());
        assert!(target_allowed("/ams/api/v1/payments/inquiryPayment/sub", &p).is_ok());
        for bad in [
            "/ams/api/v1/payments/inquiryPaymentRefund",
            "/ams/api/v1/payments/inquiryPayment/.%2e/refund",
            "/ams/api/v1/payments/inquiryPayment/%2e./refund",
            "/ams/api/v1/payments/inquiryPayment/%2E%2E/refund",
            "/ams/api/v1/payments/inquiryPayment/..%2frefund",
            "/ams/api/v1/payments/inquiryPayment/..;/refund",
            "/ams/api/v1/payments/inquiryPayment\\..\\refund",
            "/ams/api/v1/payments/inquiryPayment/%5c..",
            "/ams/api/v1/payments/inquiryPayment/./x",
            "/ams/api/v1/payments/inquiryPayment/../refund",
        ] {
            assert!(target_allowed(bad, &p).is_err(), "{bad} must be refused");
        }
        let p = prefixes(&["/ams/api/"]);
        assert!(target_allowed("/ams/api/v1/payments/pay", &p).is_ok());
        assert!(target_allowed("/ams/apix/v1", &p).is_err());
    }

    #[test]
    fn hosts_must_be_loopback_localhost_or_listed() {
        let allowed = prefixes(&["alipay-sidecar"]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "alipay-sidecar:8080",
            "127.1.2.3",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "10.0.0.1",
            "localhost.evil.example",
            "[2001:db8::1]:80",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }
}
