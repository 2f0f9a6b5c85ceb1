//! Inbound: Alipay's payment notification → verified → the app → Alipay gets the app's answer.
//!
//! Alipay POSTs notifications (payment result, refund, capture, …) to the merchant's notify
//! URL and re-sends them until it gets a SUCCESS acknowledgement. Only a verified
//! notification proves a payment, so the sidecar verifies it (spec §6) before the app sees a
//! byte, and never acknowledges on the app's behalf.
//!
//! [`Inbound`] is the verifier's policy as a handler over plain values ([`crate::handler`]),
//! with the app behind the small [`App`] trait (pingora's connector in production, an
//! in-memory fake in the unit tests); [`crate::adapter`] is the pingora side.
//!
//! Design. As in [`crate::outbound`], the whole exchange happens before Alipay gets an
//! answer; pingora's upstream phases are never entered:
//! - the body must be read whole and verified before anything is forwarded, and pingora
//!   replays a body read in a hook only through its 64 KiB retry buffer;
//! - the app's answer is read whole before Alipay sees it, so an app failure becomes a clean
//!   503 with a JSON envelope instead of a half-relayed answer.
//!
//! The app is reached through [`crate::upstream::Upstream`] (pingora's pooled connector,
//! plain HTTP: the app runs next to the sidecar). The adapter records the metrics and one
//! info line per notification; refusals are also logged at warn with the reason and the
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

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{Acknowledge, AppUpstream, Config, InboundConfig, InboundMode};
use crate::envelope::SidecarError;
use crate::exchange::{self, echo, header_text, now_millis, KEY_VERSION_HEADER, VERIFIED_HEADER};
use crate::handler::{
    BodyPolicy, Handler, Marker, Refusal, Reply, Report, Request, Stop, UpstreamTiming,
};
use crate::merchant::{KeySource, Selected, DEFAULT_MERCHANT};
use crate::metrics::{Direction, Outcome, VerificationResult, INBOUND_API_LABEL};
use crate::protocol::{
    content_digest, content_to_sign, format_iso8601, parse_request_time, sign_content, PrivateKey,
    SignError, Verified,
};
use crate::state::SidecarState;
use crate::upstream::{Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};

/// The acknowledgement Alipay waits for (spec §6), byte-exact.
pub const ACK_BODY: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

/// Largest app answer relayed to Alipay (an acknowledgement is ~80 bytes).
pub const MAX_APP_RESPONSE_BYTES: usize = 1024 * 1024;

/// The app as the inbound handler needs it: one verified notification delivered, the whole
/// answer back (bounded by `request.max_response`, within `request.timeout`).
pub trait App: Send + Sync + 'static {
    /// Delivers the notification and reads the app's whole answer.
    fn deliver(
        &self,
        request: &UpstreamRequest,
    ) -> impl Future<Output = Result<UpstreamResponse, UpstreamError>> + Send;
}

/// The inbound policy settings (from `[inbound]` and `[server]`), shared by every merchant.
#[derive(Debug, Clone)]
pub struct InboundPolicy {
    /// The replay window on `Request-Time`, when set.
    pub max_request_time_skew: Option<Duration>,
    /// Who writes the acknowledgement of a notification the app took.
    pub acknowledge: Acknowledge,
    /// Sign acknowledgements with the merchant key.
    pub sign_acknowledgements: bool,
    /// Enforce, or shadow (forward unverified notifications, marked).
    pub mode: InboundMode,
    /// Whole-exchange timeout to the app.
    pub forward_timeout: Duration,
    /// How request bodies are read.
    pub body: BodyPolicy,
}

impl InboundPolicy {
    /// The policy of `[inbound]` in `config`.
    pub fn from_config(config: &Config, cfg: &InboundConfig) -> Self {
        Self {
            max_request_time_skew: cfg.max_request_time_skew,
            acknowledge: cfg.acknowledge,
            sign_acknowledgements: cfg.sign_acknowledgements,
            mode: cfg.mode,
            forward_timeout: cfg.forward_timeout,
            body: BodyPolicy {
                max_bytes: cfg.max_body_bytes,
                limit_key: "[inbound] max_body_bytes",
                timeout: config.server.body_read_timeout,
            },
        }
    }
}

/// Where a merchant's notifications go in the app: `Host`, the base path and the path map.
#[derive(Debug, Clone)]
pub struct AppRoute {
    /// `Host` of the requests to the app.
    pub authority: String,
    /// The app's URL, for log lines.
    pub url: String,
    /// Prefixed to every (mapped) notify path.
    pub base_path: String,
    /// Notify path → the app's path.
    pub path_map: BTreeMap<String, String>,
}

impl AppRoute {
    /// The route of `forward_to` with `path_map`.
    pub fn new(forward_to: &AppUpstream, path_map: BTreeMap<String, String>) -> Self {
        Self {
            authority: exchange::authority(&forward_to.host, forward_to.port, 80),
            url: forward_to.url(),
            base_path: forward_to.base_path.clone(),
            path_map,
        }
    }
}

/// One merchant as the inbound handler needs it.
pub struct InboundMerchant<A> {
    name: Arc<str>,
    client_id: String,
    keys: Arc<dyn KeySource>,
    app: A,
    route: AppRoute,
}

impl<A: App> InboundMerchant<A> {
    /// A merchant called `name` that takes notifications for `client_id`, verified with the
    /// keys of `keys`, delivered to `app` along `route`.
    pub fn new(
        name: &str,
        client_id: &str,
        keys: Arc<dyn KeySource>,
        app: A,
        route: AppRoute,
    ) -> Self {
        Self {
            name: Arc::from(name),
            client_id: client_id.to_string(),
            keys,
            app,
            route,
        }
    }
}

/// The inbound notification verifier (one per `[inbound]` listener).
pub struct Inbound<A> {
    policy: InboundPolicy,
    /// Never empty; today exactly one.
    merchants: Vec<InboundMerchant<A>>,
}

/// Why a notification was not accepted: the metric label, the error code and what to do.
struct Rejection {
    result: VerificationResult,
    refusal: Refusal,
}

impl Rejection {
    fn unverified(result: VerificationResult, message: String) -> Self {
        Self {
            result,
            refusal: Refusal::new(SidecarError::NotificationUnverified, message),
        }
    }

    fn stale(result: VerificationResult, message: String) -> Self {
        Self {
            result,
            refusal: Refusal::new(SidecarError::NotificationStale, message),
        }
    }
}

impl<A: App> Inbound<A> {
    /// A verifier for one merchant.
    pub fn new(policy: InboundPolicy, merchant: InboundMerchant<A>) -> Self {
        Self {
            policy,
            merchants: vec![merchant],
        }
    }

    /// The merchant a notification is for, with its key snapshot: today the single
    /// configured merchant (whose client id [`Inbound::check`] then compares).
    pub fn select(&self, _request: &Request) -> Result<Selected<'_, InboundMerchant<A>>, Refusal> {
        let merchant = &self.merchants[0];
        Ok(Selected {
            merchant,
            keys: merchant.keys.keys(),
        })
    }

    fn shadow(&self) -> bool {
        self.policy.mode == InboundMode::Shadow
    }

    /// Verifies the notification: headers present, addressed to us, signed by Alipay over
    /// `POST <target>\n<client-id>.<Request-Time>.<body>`, and (when configured) fresh. The
    /// signature is checked before the time, so a stale verdict is only given to a genuine
    /// (signed) time. Records the observed skew whenever the time parses.
    fn check(
        &self,
        selected: &Selected<'_, InboundMerchant<A>>,
        n: &Request,
        report: &mut Report,
    ) -> Result<Verified, Rejection> {
        let (req, target) = (&n.head, n.target.as_str());
        // One value each: a second copy could be read by the app instead of the one verified.
        if let Some(name) = ["client-id", "request-time", "signature"]
            .into_iter()
            .find(|h| req.headers.get_all(*h).iter().count() > 1)
        {
            let msg = format!("the notification has more than one {name} header; Alipay sends each signed header once, so this one was altered on the way and is refused");
            return Err(Rejection::unverified(
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
            report.time_skew_ms = Some(now.saturating_sub(t));
        }
        let digest = content_digest(
            "POST",
            target,
            client_id.unwrap_or(""),
            time.unwrap_or(""),
            &n.body,
        );
        report.content_sha256 = Some(digest.to_hex());

        let missing = [
            ("Signature", signature.is_none()),
            ("client-id", client_id.is_none()),
            ("Request-Time", time.is_none()),
        ];
        if let Some((name, _)) = missing.iter().find(|(_, absent)| *absent) {
            let msg = format!("the notification has no {name} header; Alipay signs every notification, so this one is not from Alipay (or a proxy in front dropped the header)");
            return Err(Rejection::unverified(
                VerificationResult::Invalid("missing_header"),
                msg,
            ));
        }
        let received = client_id.unwrap_or("");
        let merchant = selected.merchant;
        if received != merchant.client_id {
            let msg = format!(
                "the notification is addressed to client-id {:?}, not to the configured client_id {:?}; a notification for another merchant is refused",
                echo(received),
                merchant.client_id
            );
            return Err(Rejection::unverified(VerificationResult::WrongClientId, msg));
        }
        let verify_start = Instant::now();
        let verdict = selected.keys.alipay.verify_digest(&digest, signature.unwrap_or(""));
        report.verify_time = Some(verify_start.elapsed());
        let verified = verdict.map_err(|e| {
            let msg = format!(
                "the notification's signature did not verify over POST {}: {e}",
                echo(target)
            );
            Rejection::unverified((&e).into(), msg)
        })?;
        self.check_freshness(time.unwrap_or(""), parsed_time, now)?;
        Ok(verified)
    }

    /// The optional replay window (`max_request_time_skew`).
    fn check_freshness(&self, time: &str, parsed: Option<i64>, now: i64) -> Result<(), Rejection> {
        let Some(window) = self.policy.max_request_time_skew else {
            return Ok(());
        };
        let Some(t) = parsed else {
            let msg = format!(
                "Request-Time {:?} is not a time the sidecar can read (epoch millis or ISO-8601), so its freshness cannot be checked while [inbound] max_request_time_skew is set",
                echo(time)
            );
            return Err(Rejection::stale(
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
            return Err(Rejection::stale(VerificationResult::StaleRequestTime, msg));
        }
        Ok(())
    }

    /// Sends the notification to the app and answers Alipay from the app's answer.
    async fn forward(
        &self,
        selected: &Selected<'_, InboundMerchant<A>>,
        n: Request,
        marker: Marker,
        key_version: Option<&str>,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let merchant = selected.merchant;
        let head = self.app_request(&merchant.route, &n.head, &n.target, marker, key_version, n.body.len())?;
        let app_req = UpstreamRequest {
            head,
            body: n.body,
            max_response: MAX_APP_RESPONSE_BYTES,
            timeout: self.policy.forward_timeout,
        };
        let response = match merchant.app.deliver(&app_req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, app = %merchant.route.url, "the app did not take the notification; answering 503 so that Alipay re-sends it");
                // Alipay (and whoever else reaches this port) learns nothing of the app's
                // address or the connector's error; the log line above has them.
                report.detail = Some(e.to_string());
                let msg = "the app is unavailable; the notification was not acknowledged, so \
                           Alipay will re-send it";
                return Err(Refusal::new(SidecarError::AppUnavailable, msg).into());
            }
        };
        let status = response.header.status.as_u16();
        report.upstream = Some(UpstreamTiming {
            elapsed: response.elapsed,
            status,
            body_bytes: response.body.len(),
        });
        if status >= 500 {
            tracing::debug!(status, body = %String::from_utf8_lossy(&response.body), "the app's 5xx answer");
            let msg = format!("the app answered HTTP {status}; the notification is not acknowledged, so Alipay will re-send it");
            return Err(Refusal::new(SidecarError::AppUnavailable, msg).into());
        }
        let success = (200..300).contains(&status);
        let mut out;
        let answer;
        if success && self.policy.acknowledge == Acknowledge::Sidecar {
            out = ResponseHeader::build(200, Some(5))?;
            out.insert_header("Content-Type", "application/json; charset=UTF-8")?;
            answer = Bytes::from_static(ACK_BODY.as_bytes());
        } else {
            out = exchange::relayed_response_header(&response.header)?;
            answer = response.body;
        }
        if success && self.policy.sign_acknowledgements {
            self.sign_answer(&mut out, selected, &n.target, &answer, report)?;
        }
        Ok((out, answer))
    }

    /// The request to the app: same headers (minus hop-by-hop and any `X-Alipay-Sidecar-*`),
    /// the sidecar's markers, the app's Host, the mapped path with the query kept.
    fn app_request(
        &self,
        route: &AppRoute,
        received: &RequestHeader,
        target: &str,
        marker: Marker,
        key_version: Option<&str>,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mapped = route.path_map.get(path).map(String::as_str).unwrap_or(path);
        let mut app_target = format!("{}{}", route.base_path, mapped);
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
        req.insert_header("Host", route.authority.as_str())?;
        req.insert_header("Content-Length", len.to_string())?;
        req.insert_header(VERIFIED_HEADER, marker.as_str())?;
        if let Some(v) = key_version {
            req.insert_header(KEY_VERSION_HEADER, v)?;
        }
        Ok(req)
    }

    /// Adds `client-id`, `response-time` and `signature` to an acknowledgement. A signing
    /// failure leaves it unsigned (Alipay does not require the signature, spec §6, while an
    /// error would make Alipay re-deliver a notification the app already took).
    fn sign_answer(
        &self,
        out: &mut ResponseHeader,
        selected: &Selected<'_, InboundMerchant<A>>,
        target: &str,
        body: &[u8],
        report: &mut Report,
    ) -> pingora::Result<()> {
        let keys = &selected.keys;
        let sign_start = Instant::now();
        match ack_signature_headers(
            &keys.merchant,
            &keys.merchant_key_version,
            &selected.merchant.client_id,
            target,
            &format_iso8601(now_millis()),
            body,
        ) {
            Ok(headers) => {
                report.sign_time = Some(sign_start.elapsed());
                for (name, value) in headers {
                    out.insert_header(name, value)?;
                }
            }
            Err(e) => {
                report.ack_signing_failed = true;
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


impl Inbound<Upstream> {
    /// The production handler of `[inbound]`: the single merchant of `config` (named
    /// `default`), its keys from `state`, the app through pingora's plain-HTTP connector.
    pub fn from_config(state: Arc<SidecarState>, config: &Config, cfg: &InboundConfig) -> Self {
        let app = &cfg.forward_to;
        let upstream = Upstream::new(&app.host, app.port, false, None, cfg.forward_timeout);
        let merchant = InboundMerchant::new(
            DEFAULT_MERCHANT,
            &config.client_id,
            state,
            upstream,
            AppRoute::new(app, cfg.path_map.clone()),
        );
        Self::new(InboundPolicy::from_config(config, cfg), merchant)
    }
}

impl<A: App> Handler for Inbound<A> {
    const DIRECTION: Direction = Direction::Inbound;

    fn body_policy(&self) -> BodyPolicy {
        self.policy.body
    }

    fn api(&self, _target: &str) -> &'static str {
        INBOUND_API_LABEL
    }

    fn unselected_merchant(&self) -> Arc<str> {
        match self.merchants.as_slice() {
            [only] => only.name.clone(),
            _ => Arc::from(DEFAULT_MERCHANT),
        }
    }

    /// Notifications have no head checks beyond the adapter's own (POST, framing, target).
    fn check_head(&self, _head: &RequestHeader, _target: &str) -> Result<(), Refusal> {
        Ok(())
    }

    async fn handle(&self, request: Request) -> Reply {
        let selected = match self.select(&request) {
            Ok(s) => s,
            Err(r) => {
                let report = Report::new(self.unselected_merchant(), INBOUND_API_LABEL);
                return Reply::refuse(r, report);
            }
        };
        let mut report = Report::new(selected.merchant.name.clone(), INBOUND_API_LABEL);
        report.request_bytes = Some(request.body.len());
        let (marker, key_version) = match self.check(&selected, &request, &mut report) {
            Ok(v) => {
                report.verification = Some(VerificationResult::Valid);
                report.outcome = Outcome::Verified;
                report.key_version = Some(v.key_version);
                (Marker::Verified, report.key_version.clone())
            }
            Err(r) => {
                report.verification = Some(r.result);
                tracing::warn!(reason = r.result.as_str(), content_sha256 = report.content_sha256.as_deref(), shadow = self.shadow(), error = %r.refusal.message, "notification did not verify");
                if !self.shadow() {
                    return Reply::refuse(r.refusal, report);
                }
                report.outcome = Outcome::ShadowForwarded;
                report.detail = Some(r.refusal.message);
                (Marker::Unverified, None)
            }
        };
        let result = self
            .forward(&selected, request, marker, key_version.as_deref(), &mut report)
            .await;
        Reply::finish(result, report)
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
