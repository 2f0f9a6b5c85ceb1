//! Inbound: Alipay's payment notification → verified → the app → Alipay gets the app's answer.
//!
//! Alipay POSTs notifications (payment result, refund, capture, …) to the merchant's notify
//! URL and re-sends them until it gets a SUCCESS acknowledgement. Only a verified
//! notification proves a payment, so the sidecar verifies it (spec §6) before the app sees a
//! byte, and never acknowledges on the app's behalf.
//!
//! [`Inbound`] is the verifier's policy as a handler over plain values ([`crate::handler`]),
//! with the app behind the small [`UpstreamClient`] trait (pingora's connector in production,
//! an in-memory fake in the unit tests); [`crate::adapter`] is the pingora side.
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
//!
//! Layout: this file checks and decides; `deliver.rs` hands a verified notification to the
//! app (through the journal, or in line once); `service.rs` builds the listener
//! ([`service`]); `tests/` holds the unit tests by concern.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::budget::BodyBudget;
use crate::config::{Acknowledge, AppUpstream, Config, Duplicates, InboundConfig, InboundMode};
use crate::envelope::SidecarError;
use crate::exchange::{self, echo, header_text, now_millis};
use crate::handler::{BodyPolicy, Handler, Marker, Refusal, Reply, Request, Stop};
use crate::hooks::NotificationHook;
use crate::journal::Journal;
use crate::merchants::{unselected_label, KeySource, Selected};
use crate::paylock::PaymentLocks;
use crate::protocol::{
    content_digest, content_to_sign, format_iso8601, parse_request_time, ContentDigest, Reason,
    Verified, ACK_BODY, INBOUND_API_LABEL,
};
use crate::replay::{self, InFlight, ReplayWindow};
use crate::report::{Direction, Outcome, Report, UpstreamTiming, VerificationResult};
use crate::upstream::{UpstreamClient, UpstreamRequest};

/// Largest app answer relayed to Alipay (an acknowledgement is ~80 bytes).
pub const MAX_APP_RESPONSE_BYTES: usize = 1024 * 1024;

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
    /// What a re-send of an event the app already took does (with a journal).
    pub duplicates: Duplicates,
    /// Bytes of unverified bodies read at once, across all connections.
    pub body_budget_bytes: usize,
    /// Digests in the in-memory replay window (without a journal); 0 = off.
    pub replay_window_entries: usize,
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
            duplicates: cfg.duplicates,
            body_budget_bytes: cfg.unverified_body_budget_bytes,
            replay_window_entries: cfg.replay_window_entries,
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

    /// The app's request target for a notification posted to `path` (`path_map` applied,
    /// `base_path` in front) with `query` kept.
    pub fn target(&self, path: &str, query: Option<&str>) -> String {
        let mapped = self.path_map.get(path).map(String::as_str).unwrap_or(path);
        let mut target = format!("{}{}", self.base_path, mapped);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        target
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

impl<A: UpstreamClient> InboundMerchant<A> {
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
    /// The merchant label of requests refused before selection.
    unselected: Arc<str>,
    /// `[reconcile]`: told of every verified notification (closes pay records).
    reconcile: Option<Arc<dyn NotificationHook>>,
    /// The notification journal, when `[store]` is configured.
    journal: Option<Arc<dyn Journal>>,
    /// What unverified bodies may hold at once ([`crate::budget`]).
    budget: Arc<BodyBudget>,
    /// Exact copies of delivered notifications, without a journal ([`crate::replay`]).
    replays: Option<ReplayWindow>,
    /// The deliveries in progress, so a second copy waits for the first.
    in_flight: Arc<InFlight>,
    /// One lock per payment (issue 22), with a store: held from the closing hook through the
    /// journal write of a verified PAYMENT_RESULT.
    locks: Option<Arc<dyn PaymentLocks>>,
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

impl<A: UpstreamClient> Inbound<A> {
    /// A verifier for one merchant.
    pub fn new(policy: InboundPolicy, merchant: InboundMerchant<A>) -> Self {
        Self::shared(policy, vec![merchant])
    }

    /// A verifier for every merchant in `merchants`: a notification's `client-id` selects
    /// the merchant (its keys, its app).
    ///
    /// # Panics
    /// When `merchants` is empty (a validated config always has one).
    pub fn shared(policy: InboundPolicy, merchants: Vec<InboundMerchant<A>>) -> Self {
        let unselected = unselected_label(merchants.iter().map(|m| &m.name));
        crate::budget::register_metrics();
        replay::metrics().register_merchants(merchants.iter().map(|m| &*m.name));
        Self {
            budget: BodyBudget::new(policy.body_budget_bytes),
            replays: (policy.replay_window_entries > 0)
                .then(|| ReplayWindow::new(policy.replay_window_entries)),
            in_flight: InFlight::new(),
            policy,
            unselected,
            merchants,
            reconcile: None,
            journal: None,
            locks: None,
        }
    }

    /// Takes the payment's lock ([`crate::paylock`]) before the closing hook and the journal
    /// write of a verified PAYMENT_RESULT.
    pub fn with_payment_locks(mut self, locks: Arc<dyn PaymentLocks>) -> Self {
        self.locks = Some(locks);
        self
    }

    /// Tells `hook` of every notification whose signature verified (the reconciler closes
    /// the pay record of a final PAYMENT_RESULT).
    pub fn with_reconcile(mut self, hook: Arc<dyn NotificationHook>) -> Self {
        self.reconcile = Some(hook);
        self
    }

    /// Records every verified notification in `journal` (de-duplication, store-and-forward).
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The merchant a notification is for, with its key snapshot: the one whose client id
    /// the (first) `client-id` header names. `None` when it names none of them; then the
    /// notification is refused by [`Inbound::check`] in its usual order (duplicate and
    /// missing headers first, then the client id), against the first merchant.
    pub fn select(&self, request: &Request) -> (Selected<'_, InboundMerchant<A>>, bool) {
        let named = header_text(&request.head.headers, "client-id")
            .and_then(|id| self.merchants.iter().find(|m| m.client_id == id));
        let merchant = named.unwrap_or(&self.merchants[0]);
        let selected = Selected {
            merchant,
            keys: merchant.keys.keys(),
        };
        (selected, named.is_some())
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
        duplicate_signed_header(req)?;
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

        missing_signed_header(client_id, time, signature)?;
        let received = client_id.unwrap_or("");
        if received != selected.merchant.client_id {
            return Err(self.wrong_client_id(received));
        }
        let verify_start = Instant::now();
        let verdict = selected
            .keys
            .alipay
            .verify_digest(&digest, signature.unwrap_or(""));
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

    /// The notification refused for a client id no merchant has.
    fn wrong_client_id(&self, received: &str) -> Rejection {
        let configured = if self.merchants.len() == 1 {
            format!("the configured client_id {:?}", self.merchants[0].client_id)
        } else {
            let ids: Vec<&str> = self
                .merchants
                .iter()
                .map(|m| m.client_id.as_str())
                .collect();
            format!("any configured merchant's client_id ({})", ids.join(", "))
        };
        let msg = format!(
            "the notification is addressed to client-id {:?}, not to {configured}; a notification for another merchant is refused",
            echo(received),
        );
        Rejection::unverified(VerificationResult::WrongClientId, msg)
    }

    /// The checks a notification's head alone allows (issue 18, H2), before its body is
    /// read: the three signed headers present once each, a configured client id, a
    /// `Signature` that parses and names a configured key version with a value of the key's
    /// size, and (with the freshness window on) a readable, fresh `Request-Time`. Every
    /// notification that fails one of them would be refused after its body anyway; refusing
    /// here means a peer without Alipay's key cannot make the sidecar buffer a body at all.
    /// The signature itself (over the body) is checked in [`Inbound::check`].
    fn check_signed_head(&self, req: &RequestHeader) -> Result<(), Rejection> {
        duplicate_signed_header(req)?;
        let client_id = header_text(&req.headers, "client-id");
        let time = header_text(&req.headers, "request-time");
        let signature = header_text(&req.headers, "signature").filter(|s| !s.trim().is_empty());
        missing_signed_header(client_id, time, signature)?;
        let (client_id, time, signature) = (
            client_id.unwrap_or(""),
            time.unwrap_or(""),
            signature.unwrap_or(""),
        );
        let Some(merchant) = self.merchants.iter().find(|m| m.client_id == client_id) else {
            return Err(self.wrong_client_id(client_id));
        };
        if let Err(e) = merchant.keys.keys().alipay.precheck(signature) {
            let msg = format!(
                "the notification's Signature header cannot verify: {e}; refused before its body was read"
            );
            return Err(Rejection::unverified((&e).into(), msg));
        }
        self.check_freshness(time, parse_request_time(time), now_millis())
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
        head: RequestHeader,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let merchant = selected.merchant;
        let app_req = UpstreamRequest {
            head,
            body: n.body,
            max_response: MAX_APP_RESPONSE_BYTES,
            timeout: self.policy.forward_timeout,
        };
        let response = match merchant.app.send(&app_req).await {
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
        if success && self.policy.acknowledge != Acknowledge::App {
            return self.acknowledge(selected, &n.target, report).await;
        }
        let mut out = exchange::relayed_response_header(&response.header)?;
        if success && self.policy.sign_acknowledgements {
            self.sign_answer(&mut out, selected, &n.target, &response.body, report)
                .await?;
        }
        Ok((out, response.body))
    }

    /// The sidecar's own SUCCESS acknowledgement (the exact [`ACK_BODY`]), signed when
    /// `sign_acknowledgements` is on.
    async fn acknowledge(
        &self,
        selected: &Selected<'_, InboundMerchant<A>>,
        target: &str,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let mut out = ResponseHeader::build(200, Some(5))?;
        out.insert_header("Content-Type", "application/json; charset=UTF-8")?;
        let answer = Bytes::from_static(ACK_BODY.as_bytes());
        if self.policy.sign_acknowledgements {
            self.sign_answer(&mut out, selected, target, &answer, report)
                .await?;
        }
        Ok((out, answer))
    }

    /// Adds `client-id`, `response-time` and `signature` to an acknowledgement. A signing
    /// failure leaves it unsigned (Alipay does not require the signature, spec §6, while an
    /// error would make Alipay re-deliver a notification the app already took).
    async fn sign_answer(
        &self,
        out: &mut ResponseHeader,
        selected: &Selected<'_, InboundMerchant<A>>,
        target: &str,
        body: &[u8],
        report: &mut Report,
    ) -> pingora::Result<()> {
        let keys = &selected.keys;
        // API-key mode has no merchant private key: the acknowledgement goes unsigned, as
        // Alipay allows (check-config warns when sign_acknowledgements asks for more)
        let Some(private) = keys.credential.signing_key() else {
            return Ok(());
        };
        let sign_start = Instant::now();
        // through the merchant's signer (in process, or a PKCS#11 token): the same headers as
        // `ack_signature_headers`, spec §6
        let client_id = &selected.merchant.client_id;
        let time = format_iso8601(now_millis());
        let digest = ContentDigest::of(&content_to_sign("POST", target, client_id, &time, body));
        match private
            .sign_header(&keys.merchant_key_version, &digest)
            .await
            .map(|signature| {
                [
                    ("client-id", client_id.clone()),
                    ("response-time", time),
                    ("signature", signature),
                ]
            }) {
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

/// One value each of the signed headers: a second copy could be read by the app instead of
/// the one verified.
fn duplicate_signed_header(req: &RequestHeader) -> Result<(), Rejection> {
    if let Some(name) = ["client-id", "request-time", "signature"]
        .into_iter()
        .find(|h| req.headers.get_all(*h).iter().count() > 1)
    {
        let msg = format!("the notification has more than one {name} header; Alipay sends each signed header once, so this one was altered on the way and is refused");
        return Err(Rejection::unverified(
            VerificationResult::Invalid(Reason::DuplicateHeader.label()),
            msg,
        ));
    }
    Ok(())
}

/// All three signed headers present (an empty `Signature` is a missing one).
fn missing_signed_header(
    client_id: Option<&str>,
    time: Option<&str>,
    signature: Option<&str>,
) -> Result<(), Rejection> {
    let missing = [
        ("Signature", signature.is_none()),
        ("client-id", client_id.is_none()),
        ("Request-Time", time.is_none()),
    ];
    if let Some((name, _)) = missing.iter().find(|(_, absent)| *absent) {
        let msg = format!("the notification has no {name} header; Alipay signs every notification, so this one is not from Alipay (or a proxy in front dropped the header)");
        return Err(Rejection::unverified(
            VerificationResult::Invalid(Reason::MissingHeader.label()),
            msg,
        ));
    }
    Ok(())
}

impl<A: UpstreamClient> Handler for Inbound<A> {
    const DIRECTION: Direction = Direction::Inbound;

    fn body_policy(&self) -> BodyPolicy {
        self.policy.body
    }

    fn api(&self, _target: &str) -> &'static str {
        INBOUND_API_LABEL
    }

    fn unselected_merchant(&self) -> Arc<str> {
        self.unselected.clone()
    }

    /// The signed headers, before the body is read ([`Inbound::check_signed_head`]). Not
    /// in shadow mode, which forwards what does not verify.
    fn check_head(&self, head: &RequestHeader, _target: &str) -> Result<(), Refusal> {
        if self.shadow() {
            return Ok(());
        }
        self.check_signed_head(head).map_err(|r| {
            tracing::warn!(reason = r.result.as_str(), error = %r.refusal.message, "notification refused from its head, before its body was read");
            r.refusal.with_verification(r.result)
        })
    }

    fn body_budget(&self) -> Option<&Arc<BodyBudget>> {
        Some(&self.budget)
    }

    async fn handle(&self, request: Request) -> Reply {
        let (selected, named) = self.select(&request);
        let label = if named {
            selected.merchant.name.clone()
        } else {
            self.unselected_merchant()
        };
        let mut report = Report::new(label, INBOUND_API_LABEL);
        report.request_bytes = Some(request.body.len());
        let mut conflict = None;
        let mut lease = None;
        let (marker, key_version) = match self.check(&selected, &request, &mut report) {
            Ok(v) => {
                report.verification = Some(VerificationResult::Valid);
                report.outcome = Outcome::Verified;
                report.key_version = Some(v.key_version);
                match self
                    .lock_payment(&selected.merchant.client_id, &request.body)
                    .await
                {
                    Ok(l) => lease = l,
                    Err(refusal) => return Reply::refuse(refusal, report),
                }
                if let Some(hook) = &self.reconcile {
                    conflict = hook.verified(&selected.merchant.name, &request.body).await;
                }
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
            .deliver(
                &selected,
                request,
                marker,
                key_version.as_deref(),
                deliver::Hooked { conflict, lease },
                &mut report,
            )
            .await;
        Reply::finish(result, report)
    }
}

mod deliver;
mod service;

pub use service::service;

#[cfg(test)]
mod tests;
