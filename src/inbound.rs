//! Inbound: Alipay's payment notification → verified → the app → Alipay gets the app's answer.
//!
//! Alipay POSTs notifications (payment result, refund, capture, …) to the merchant's notify
//! URL and re-sends them until it gets a SUCCESS acknowledgement. Only a verified
//! notification proves a payment, so the sidecar verifies it (spec §6) before the app sees a
//! byte, and never acknowledges on the app's behalf.
//!
//! Design. As in [`crate::outbound`], the whole exchange runs inside `request_filter`, which
//! answers Alipay itself and returns `Ok(true)`; pingora's upstream phases are never entered:
//! - the body must be read whole and verified before anything is forwarded, and pingora
//!   replays a body read in a hook only through its 64 KiB retry buffer;
//! - the app's answer is read whole before Alipay sees it, so an app failure becomes a clean
//!   503 with a JSON envelope instead of a half-relayed answer.
//!
//! The app is reached through [`crate::upstream::Upstream`] (pingora's pooled connector,
//! plain HTTP: the app runs next to the sidecar). The `logging` hook records the metrics and
//! one info line per notification; refusals are also logged at warn with the reason and the
//! SHA-256 of the checked content (never the body above debug level).
//!
//! Why 503 when the app is down, slow or answers 5xx: Alipay re-sends a notification until it
//! is acknowledged. Answering non-2xx keeps it in Alipay's retry queue, so the next re-send
//! reaches the recovered app and nothing is lost; the sidecar keeps no queue of its own.
//!
//! What shadow mode trades off: notifications that fail verification still reach the app
//! (marked `X-Alipay-Sidecar-Verified: false`), so the sidecar can be put in front of an app
//! that verifies by itself and its verdicts compared with the app's before enforcing — at the
//! price of no protection from the sidecar during that time.
//!
//! Byte-exactness: the body is read once; those bytes are verified and those same bytes are
//! forwarded; the app's answer body is relayed as received.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Acknowledge, Config, InboundConfig, InboundMode};
use crate::envelope::SidecarError;
use crate::exchange::{
    self, echo, header_text, now_millis, Received, Record, KEY_VERSION_HEADER, VERIFIED_HEADER,
};
use crate::keyset::KeySet;
use crate::metrics::{self, BodyKind, Direction, Outcome, VerificationResult, INBOUND_API_LABEL};
use crate::protocol::{
    content_digest, content_to_sign, format_iso8601, parse_request_time, sign_content, PrivateKey,
    SignError, Verified,
};
use crate::state::SidecarState;
use crate::upstream::Upstream;

/// The acknowledgement Alipay waits for (spec §6), byte-exact.
const ACK_BODY: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

/// Largest app answer relayed to Alipay (an acknowledgement is ~80 bytes).
const MAX_APP_RESPONSE_BYTES: usize = 1024 * 1024;

/// The inbound notification verifier (one per `[inbound]` listener).
pub struct Inbound {
    state: Arc<SidecarState>,
    cfg: InboundConfig,
    client_id: String,
    upstream: Upstream,
    body_policy: exchange::BodyPolicy,
}

/// Why a notification was not accepted: the metric label, the error code and what to do.
struct Refusal {
    result: VerificationResult,
    error: SidecarError,
    message: String,
}

impl Refusal {
    fn unverified(result: VerificationResult, message: String) -> Self {
        Self {
            result,
            error: SidecarError::NotificationUnverified,
            message,
        }
    }

    fn stale(result: VerificationResult, message: String) -> Self {
        Self {
            result,
            error: SidecarError::NotificationStale,
            message,
        }
    }
}

/// What the app is told about the notification it receives.
enum Marker {
    Verified(String),
    Unverified,
}

impl Inbound {
    /// `config` supplies the client id notifications must be addressed to.
    pub fn new(state: Arc<SidecarState>, config: &Config, cfg: InboundConfig) -> Self {
        let app = &cfg.forward_to;
        let upstream = Upstream::new(&app.host, app.port, false, None, cfg.forward_timeout);
        Self {
            state,
            // merchant routing: lead wires this (the first merchant for now)
            client_id: config.merchants[0].client_id.clone(),
            body_policy: exchange::BodyPolicy {
                max_bytes: cfg.max_body_bytes,
                limit_key: "[inbound] max_body_bytes",
                timeout: config.server.body_read_timeout,
            },
            cfg,
            upstream,
        }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut Record) -> pingora::Result<()> {
        let Some(n) = exchange::receive(session, ctx, self.body_policy, |_, _| Ok(())).await?
        else {
            return Ok(());
        };
        // merchant routing: lead wires this (the first merchant for now)
        let keys = self.state.merchants().only_or_first().keys();
        let marker = match self.check(&keys, &n, ctx) {
            Ok(v) => {
                ctx.outcome = Outcome::Verified;
                ctx.key_version = Some(v.key_version.clone());
                Marker::Verified(v.key_version)
            }
            Err(r) => {
                metrics::metrics().record_verification(Direction::Inbound, r.result);
                ctx.reason = Some(r.result.as_str());
                tracing::warn!(reason = r.result.as_str(), content_sha256 = ctx.content_sha256.as_deref(), shadow = self.shadow(), error = %r.message, "notification did not verify");
                if !self.shadow() {
                    return ctx.refuse(session, r.error, r.message).await;
                }
                ctx.outcome = Outcome::ShadowForwarded;
                ctx.detail = Some(r.message);
                Marker::Unverified
            }
        };
        self.forward(session, ctx, &keys, &n, marker).await
    }

    fn shadow(&self) -> bool {
        self.cfg.mode == InboundMode::Shadow
    }

    /// Verifies the notification: headers present, addressed to us, signed by Alipay over
    /// `POST <target>\n<client-id>.<Request-Time>.<body>`, and (when configured) fresh. The
    /// signature is checked before the time, so a stale verdict is only given to a genuine
    /// (signed) time. Records the observed skew whenever the time parses.
    fn check(&self, keys: &KeySet, n: &Received, ctx: &mut Record) -> Result<Verified, Refusal> {
        let (req, target) = (&n.header, n.target.as_str());
        // One value each: a second copy could be read by the app instead of the one verified.
        if let Some(name) = ["client-id", "request-time", "signature"]
            .into_iter()
            .find(|h| req.headers.get_all(*h).iter().count() > 1)
        {
            let msg = format!("the notification has more than one {name} header; Alipay sends each signed header once, so this one was altered on the way and is refused");
            return Err(Refusal::unverified(
                VerificationResult::Invalid("duplicate_header"),
                msg,
            ));
        }
        let client_id = header_text(&req.headers, "client-id");
        let time = header_text(&req.headers, "request-time");
        let signature = header_text(&req.headers, "signature").filter(|s| !s.trim().is_empty());
        let now = now_millis();
        let parsed_time = time.and_then(parse_request_time);
        if let Some(t) = parsed_time {
            metrics::metrics().observe_notification_skew_ms(now.saturating_sub(t));
        }
        let digest = content_digest(
            "POST",
            target,
            client_id.unwrap_or(""),
            time.unwrap_or(""),
            &n.body,
        );
        ctx.content_sha256 = Some(digest.to_hex());

        let missing = [
            ("Signature", signature.is_none()),
            ("client-id", client_id.is_none()),
            ("Request-Time", time.is_none()),
        ];
        if let Some((name, _)) = missing.iter().find(|(_, absent)| *absent) {
            let msg = format!("the notification has no {name} header; Alipay signs every notification, so this one is not from Alipay (or a proxy in front dropped the header)");
            return Err(Refusal::unverified(
                VerificationResult::Invalid("missing_header"),
                msg,
            ));
        }
        let received = client_id.unwrap_or("");
        if received != self.client_id {
            let msg = format!(
                "the notification is addressed to client-id {:?}, not to the configured client_id {:?}; a notification for another merchant is refused",
                echo(received),
                self.client_id
            );
            return Err(Refusal::unverified(VerificationResult::WrongClientId, msg));
        }
        let verify_start = Instant::now();
        let verdict = keys.alipay.verify_digest(&digest, signature.unwrap_or(""));
        metrics::metrics().observe_verify(Direction::Inbound, verify_start.elapsed());
        let verified = verdict.map_err(|e| {
            let msg = format!(
                "the notification's signature did not verify over POST {}: {e}",
                echo(target)
            );
            Refusal::unverified((&e).into(), msg)
        })?;
        self.check_freshness(time.unwrap_or(""), parsed_time, now)?;
        metrics::metrics().record_verification(Direction::Inbound, VerificationResult::Valid);
        Ok(verified)
    }

    /// The optional replay window (`max_request_time_skew`).
    fn check_freshness(&self, time: &str, parsed: Option<i64>, now: i64) -> Result<(), Refusal> {
        let Some(window) = self.cfg.max_request_time_skew else {
            return Ok(());
        };
        let Some(t) = parsed else {
            let msg = format!(
                "Request-Time {:?} is not a time the sidecar can read (epoch millis or ISO-8601), so its freshness cannot be checked while [inbound] max_request_time_skew is set",
                echo(time)
            );
            return Err(Refusal::stale(
                VerificationResult::UnparseableRequestTime,
                msg,
            ));
        };
        let skew = Duration::from_millis(now.abs_diff(t));
        if skew > window {
            let msg = format!(
                "Request-Time \"{}\" is {} away from the sidecar's clock, more than [inbound] max_request_time_skew = {}; refused as a possible replay",
                echo(time),
                humantime::format_duration(Duration::from_secs(skew.as_secs())),
                humantime::format_duration(window)
            );
            return Err(Refusal::stale(VerificationResult::StaleRequestTime, msg));
        }
        Ok(())
    }

    /// Sends the notification to the app and answers Alipay from the app's answer.
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut Record,
        keys: &KeySet,
        n: &Received,
        marker: Marker,
    ) -> pingora::Result<()> {
        let app_req = self.app_request(&n.header, &n.target, &marker, n.body.len())?;
        let response = match self
            .upstream
            .exchange(
                &app_req,
                &n.body,
                MAX_APP_RESPONSE_BYTES,
                self.cfg.forward_timeout,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, app = %self.cfg.forward_to.url(), "the app did not take the notification; answering 503 so that Alipay re-sends it");
                // Alipay (and whoever else reaches this port) learns nothing of the app's
                // address or the connector's error; the log line above has them.
                ctx.detail = Some(e.to_string());
                let msg = "the app is unavailable; the notification was not acknowledged, so \
                           Alipay will re-send it"
                    .to_string();
                return ctx.refuse(session, SidecarError::AppUnavailable, msg).await;
            }
        };
        let status = response.header.status.as_u16();
        ctx.upstream = Some(response.elapsed);
        ctx.upstream_status = Some(status);
        metrics::metrics().observe_upstream(
            Direction::Inbound,
            INBOUND_API_LABEL,
            response.elapsed,
        );
        metrics::metrics().observe_body_size(
            Direction::Inbound,
            BodyKind::Response,
            response.body.len(),
        );
        if status >= 500 {
            tracing::debug!(status, body = %String::from_utf8_lossy(&response.body), "the app's 5xx answer");
            let msg = format!("the app answered HTTP {status}; the notification is not acknowledged, so Alipay will re-send it");
            return ctx.refuse(session, SidecarError::AppUnavailable, msg).await;
        }
        let success = (200..300).contains(&status);
        let mut out;
        let answer;
        if success && self.cfg.acknowledge == Acknowledge::Sidecar {
            out = ResponseHeader::build(200, Some(5))?;
            out.insert_header("Content-Type", "application/json; charset=UTF-8")?;
            answer = Bytes::from_static(ACK_BODY.as_bytes());
        } else {
            out = exchange::relayed_response_header(&response.header)?;
            answer = response.body;
        }
        if success && self.cfg.sign_acknowledgements {
            self.sign_answer(&mut out, keys, &n.target, &answer)?;
        }
        out.set_content_length(answer.len())?;
        ctx.status = out.status.as_u16();
        ctx.response_bytes = answer.len();
        session.write_response_header(Box::new(out), false).await?;
        session.write_response_body(Some(answer), true).await?;
        Ok(())
    }

    /// The request to the app: same headers (minus hop-by-hop and any `X-Alipay-Sidecar-*`),
    /// the sidecar's markers, the app's Host, the mapped path with the query kept.
    fn app_request(
        &self,
        received: &RequestHeader,
        target: &str,
        marker: &Marker,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mapped = self
            .cfg
            .path_map
            .get(path)
            .map(String::as_str)
            .unwrap_or(path);
        let mut app_target = format!("{}{}", self.cfg.forward_to.base_path, mapped);
        if let Some(q) = query {
            app_target.push('?');
            app_target.push_str(q);
        }
        let mut req = RequestHeader::build(
            "POST",
            app_target.as_bytes(),
            Some(received.headers.len() + 4),
        )?;
        exchange::forward_request_headers(received, &mut req, &[])?;
        let app = &self.cfg.forward_to;
        req.insert_header("Host", exchange::authority(&app.host, app.port, 80))?;
        req.insert_header("Content-Length", len.to_string())?;
        match marker {
            Marker::Verified(v) => {
                req.insert_header(VERIFIED_HEADER, "true")?;
                req.insert_header(KEY_VERSION_HEADER, v.as_str())?;
            }
            Marker::Unverified => req.insert_header(VERIFIED_HEADER, "false")?,
        }
        Ok(req)
    }

    /// Adds `client-id`, `response-time` and `signature` to an acknowledgement. A signing
    /// failure leaves it unsigned (Alipay does not require the signature, spec §6, while an
    /// error would make Alipay re-deliver a notification the app already took).
    fn sign_answer(
        &self,
        out: &mut ResponseHeader,
        keys: &KeySet,
        target: &str,
        body: &[u8],
    ) -> pingora::Result<()> {
        let sign_start = Instant::now();
        match ack_signature_headers(
            &keys.merchant,
            &keys.merchant_key_version,
            &self.client_id,
            target,
            &format_iso8601(now_millis()),
            body,
        ) {
            Ok(headers) => {
                metrics::metrics().observe_sign(sign_start.elapsed());
                for (name, value) in headers {
                    out.insert_header(name, value)?;
                }
            }
            Err(e) => {
                metrics::metrics().record_error(SidecarError::SigningFailed.code());
                tracing::error!(error = %e, "signing the acknowledgement failed; sent unsigned");
            }
        }
        Ok(())
    }
}

/// The headers that sign an acknowledgement the legacy Java SDK way (spec §6, vector ACK-01):
/// `client-id`, `response-time` and `signature` over
/// `POST <notify target>\n<client_id>.<response_time>.<body>` with the merchant key.
pub(crate) fn ack_signature_headers(
    merchant: &PrivateKey,
    key_version: &str,
    client_id: &str,
    notify_target: &str,
    response_time: &str,
    body: &[u8],
) -> Result<[(&'static str, String); 3], SignError> {
    let content = content_to_sign("POST", notify_target, client_id, response_time, body);
    let signature = sign_content(merchant, key_version, &content)?;
    Ok([
        ("client-id", client_id.to_string()),
        ("response-time", response_time.to_string()),
        ("signature", signature),
    ])
}

#[async_trait]
impl ProxyHttp for Inbound {
    type CTX = Record;

    fn new_ctx(&self) -> Record {
        Record::new(Direction::Inbound, INBOUND_API_LABEL)
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        rec: &mut Record,
    ) -> pingora::Result<bool> {
        let _in_flight = self.state.track(Direction::Inbound);
        self.handle(session, rec).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _rec: &mut Record,
    ) -> pingora::Result<Box<HttpPeer>> {
        // never reached: request_filter answers every notification itself (see the module doc)
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "inbound notifications are answered in request_filter",
        ))
    }

    async fn logging(&self, _session: &mut Session, e: Option<&pingora::Error>, rec: &mut Record) {
        rec.finish(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ams-public.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file"))
            .expect("vectors json")
    }

    #[test]
    fn ack_signature_reproduces_ack_01() {
        let all = vectors();
        let v = all["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == "ACK-01")
            .expect("ACK-01");
        let input = |f: &str| v["inputs"][f].as_str().unwrap().to_string();
        assert_eq!(input("body"), ACK_BODY);
        let merchant = PrivateKey::from_text(
            all["keys"]["merchant"]["private_pkcs8_pem"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let headers = ack_signature_headers(
            &merchant,
            &input("key_version"),
            &input("client_id"),
            &input("uri"),
            &input("time"),
            ACK_BODY.as_bytes(),
        )
        .unwrap();
        let expected = &v["expected_response_headers"];
        for (name, value) in &headers {
            assert_eq!(
                expected[*name].as_str(),
                Some(value.as_str()),
                "header {name}"
            );
        }
        assert_eq!(
            headers[2].1,
            v["expected_signature_header"].as_str().unwrap()
        );
    }
}
