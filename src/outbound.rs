//! Outbound: the app's plain AMS call → signed → Alipay's gateway → verified → the app.
//!
//! [`Outbound`] is the signing proxy's policy as a handler over plain values
//! ([`crate::handler`]): a [`Request`] in, a [`Reply`] out, the gateway behind the small
//! [`UpstreamClient`] trait (pingora's connector in production, [`crate::upstream::Upstream`];
//! an in-memory fake in the unit tests). The pingora side (reading the request, writing the
//! reply, metrics, the log line) is [`crate::adapter`].
//!
//! Why the whole gateway exchange happens before the app sees anything (and not in
//! pingora's proxy phases):
//! - pingora replays a body read in a hook to the upstream only through its retry buffer,
//!   fixed at 64 KiB, so a 1 MiB signed body cannot travel the normal proxy pipeline;
//! - by the time pingora's response-body hooks run, the response headers are already on the
//!   wire, so a response that fails verification could only become a cut connection, never a
//!   clean 502 with a JSON error — and the app must not see a byte of an unverified answer.
//!
//! Byte-exactness: the body is read once into one buffer; those bytes are signed and those
//! same bytes are sent; the response body is verified as received and those same bytes are
//! returned. JSON is never re-serialised (the response body is parsed only to read
//! `result.resultStatus` of an unsigned answer).
//!
//! Layout: this file signs, forwards and judges the answer; `policy.rs` holds the settings and
//! the pure path and `Host` checks; `service.rs` builds the listeners ([`services`]); `tests/`
//! holds the unit tests by concern.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::RequestTimeFormat;
use crate::envelope::SidecarError;
use crate::exchange::{self, echo, now_millis};
use crate::handler::{BodyPolicy, Handler, Marker, Refusal, Reply, Request, Stop};
use crate::headers::{KEY_VERSION_HEADER, VERIFIED_HEADER};
use crate::hooks::PayHook;
use crate::keyset::{Credential, KeySet};
use crate::merchants::{unselected_label, Selected};
use crate::metrics;
use crate::protocol::{
    content_digest, format_epoch_millis, format_iso8601, parse_request_time, ApiKeyEnv, Reason,
};
use crate::report::{Direction, Outcome, Report, UpstreamTiming, VerificationResult};
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};

/// Responses larger than this are refused (Alipay's answers are a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// How one request authenticates to the gateway, from the key snapshot.
enum Auth<'a> {
    /// `Client-Id`, `Request-Time`, `Signature` (and `Key-Version` when the app sent one).
    Signed {
        time: &'a str,
        signature: &'a str,
        key_version: &'a str,
    },
    /// `Authorization: Bearer <key>`.
    Bearer(String),
}

use crate::headers::MERCHANT_HEADER;

/// The outbound signing handler.
pub struct Outbound<G> {
    policy: OutboundPolicy,
    /// Never empty. One: every request is that merchant's (a single-merchant config, or a
    /// merchant's own listener). Several: a shared listener, the request names its merchant
    /// in [`MERCHANT_HEADER`].
    merchants: Vec<OutboundMerchant<G>>,
    /// The merchant label of requests refused before selection.
    unselected: Arc<str>,
    app_signature_replaced: AtomicBool,
    /// `[reconcile]`: records pays whose verified answer is not final (the reconciler's
    /// `PayRecording`, behind [`PayHook`] so that this handler does not import it).
    pay_recording: Option<Arc<dyn PayHook>>,
}

/// What the app is told about the gateway's answer.
struct Verdict {
    marker: Marker,
    key_version: Option<String>,
    /// The signature verified over the decoded body (the answer came `Content-Encoding`d).
    over_decoded: bool,
}

impl Verdict {
    fn unchecked(marker: Marker) -> Self {
        Self {
            marker,
            key_version: None,
            over_decoded: false,
        }
    }
}

impl<G: UpstreamClient> Outbound<G> {
    /// A handler for one merchant.
    pub fn new(policy: OutboundPolicy, merchant: OutboundMerchant<G>) -> Self {
        Self::shared(policy, vec![merchant])
    }

    /// A handler for the listener(s) `merchants` share: with more than one, each request
    /// names its merchant in [`MERCHANT_HEADER`].
    ///
    /// # Panics
    /// When `merchants` is empty (a validated config always has one).
    pub fn shared(policy: OutboundPolicy, merchants: Vec<OutboundMerchant<G>>) -> Self {
        let unselected = unselected_label(merchants.iter().map(|m| &m.name));
        Self {
            policy,
            unselected,
            merchants,
            app_signature_replaced: AtomicBool::new(false),
            pay_recording: None,
        }
    }

    /// Records every `payments/pay` whose verified answer is not final with `recording`
    /// (the reconciler, `[reconcile]`), before the answer goes back to the app.
    pub fn with_pay_recording(mut self, recording: impl PayHook) -> Self {
        self.pay_recording = Some(Arc::new(recording));
        self
    }

    /// The merchant a request head is for, when it can be told before the body is read (the
    /// only one, or the one [`MERCHANT_HEADER`] names), for messages; [`Self::select`] decides.
    fn head_merchant(&self, header: &RequestHeader) -> Option<&OutboundMerchant<G>> {
        match self.merchants.as_slice() {
            [only] => Some(only),
            several => {
                let value = header.headers.get(MERCHANT_HEADER)?;
                let name = String::from_utf8_lossy(value.as_bytes());
                several.iter().find(|m| m.name.as_ref() == name.trim())
            }
        }
    }

    /// The merchant a request is for, with its key snapshot: the only one, or the one the
    /// request names in [`MERCHANT_HEADER`] (400 `SIDECAR_MERCHANT_UNKNOWN` naming the
    /// configured merchants when it names none or an unknown one).
    pub fn select(&self, request: &Request) -> Result<Selected<'_, OutboundMerchant<G>>, Refusal> {
        let merchant = match self.merchants.as_slice() {
            [only] => only,
            several => {
                let names = || {
                    several
                        .iter()
                        .map(|m| m.name.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let values = request.head.headers.get_all(MERCHANT_HEADER);
                let mut values = values.iter();
                let (Some(value), None) = (values.next(), values.next()) else {
                    let msg = format!(
                        "several merchants share this listener: name one in the {MERCHANT_HEADER} \
                         header, once (configured: {})",
                        names()
                    );
                    return Err(Refusal::new(SidecarError::MerchantUnknown, msg));
                };
                let name = String::from_utf8_lossy(value.as_bytes());
                let name = name.trim();
                let Some(m) = several.iter().find(|m| m.name.as_ref() == name) else {
                    let msg = format!(
                        "{MERCHANT_HEADER} names \"{}\", which is not a configured merchant \
                         (configured: {})",
                        exchange::echo(name),
                        names()
                    );
                    return Err(Refusal::new(SidecarError::MerchantUnknown, msg));
                };
                m
            }
        };
        Ok(Selected {
            merchant,
            keys: merchant.keys.keys(),
        })
    }

    /// The path that is signed and sent: as received, or with the SDKs' sandbox rewrite (for
    /// `SANDBOX_` client ids and TEST API keys).
    fn signed_target(&self, client_id: &str, keys: &KeySet, target: &str) -> String {
        let test_key = keys
            .credential
            .api_key()
            .is_some_and(|k| k.env() == ApiKeyEnv::Test);
        if self.policy.sandbox_path_rewrite
            && (client_id.starts_with("SANDBOX_") || test_key)
            && target.starts_with("/ams/api/")
        {
            return target.replacen("/ams/api/", "/ams/sandbox/api/", 1);
        }
        target.to_string()
    }

    fn request_time(&self) -> String {
        let ms = exchange::now_millis();
        match self.policy.request_time_format {
            RequestTimeFormat::EpochMillis => format_epoch_millis(ms),
            RequestTimeFormat::Iso8601 => format_iso8601(ms),
        }
    }

    async fn exchange(
        &self,
        req: Request,
        selected: Selected<'_, OutboundMerchant<G>>,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let Selected { merchant, keys } = selected;
        if session_routes::is_session_route(&req.target) {
            return merchant
                .session_exchange(req, self.policy.request_timeout, report)
                .await;
        }
        if REPLACED.iter().any(|h| req.head.headers.contains_key(*h))
            && !self.app_signature_replaced.swap(true, Ordering::Relaxed)
        {
            tracing::info!("the app sent its own Client-Id/Request-Time/Signature headers; the sidecar replaces them (logged once)");
        }

        // the app's own credentials never reach the gateway (counted; dropped with
        // `not_forwarded`)
        crate::credentials::record_dropped(&merchant.name, &req.head.headers);

        // sign exactly those bytes with one snapshot of the keys (or, in API-key mode, send
        // the merchant's key instead of a signature)
        let signed_target = self.signed_target(&merchant.client_id, &keys, &req.target);
        // product/uploadImage: the signature covers the multipart `body` part (checked
        // against the file), and the call goes to the upload gateway
        let upload = crate::upload::is_upload_route(&signed_target);
        let signed_body = upload::signed_body(&req, upload).await?;
        let (gateway, gateway_authority) = merchant.gateway_for(upload);
        let time;
        let signature;
        let auth = match &keys.credential {
            Credential::Signing(private) => {
                time = self.request_time();
                // the digest of the content to sign, hashed where the bytes lie (no copy of
                // the body)
                let digest = content_digest(
                    "POST",
                    &signed_target,
                    &merchant.client_id,
                    &time,
                    &signed_body,
                );
                let sign_start = Instant::now();
                signature = private
                    .sign_header(&keys.merchant_key_version, &digest)
                    .await
                    .map_err(|e| Refusal::new(crate::signer::refusal_code(private), e.message))?;
                report.sign_time = Some(sign_start.elapsed());
                tracing::debug!(content_sha256 = %digest.to_hex(), path = %signed_target, request_time = %time, "signed request");
                Auth::Signed {
                    time: &time,
                    signature: &signature,
                    key_version: &keys.merchant_key_version,
                }
            }
            Credential::ApiKey(api_key) => {
                let path = signed_target.split('?').next().unwrap_or("");
                if !api_key.env().owns_path(path) {
                    let (env, wanted) = match api_key.env() {
                        ApiKeyEnv::Test => ("TEST", "/ams/sandbox/api/…"),
                        ApiKeyEnv::Prod => ("PROD", "/ams/api/…"),
                    };
                    let msg = format!(
                        "merchant \"{}\" authenticates with a {env} API key, which Alipay \
                         accepts only on {wanted}; \"{}\" is not such a path (the official \
                         SDKs send {env}-key calls there themselves)",
                        merchant.name,
                        exchange::echo(path)
                    );
                    return Err(Refusal::new(SidecarError::PathNotAllowed, msg).into());
                }
                tracing::debug!(path = %signed_target, api_key = %api_key.fingerprint(), "request authenticated with the merchant's API key");
                Auth::Bearer(api_key.authorization())
            }
        };

        // forward the same bytes, read the whole answer
        let head = self.gateway_request(
            merchant,
            gateway_authority,
            &req.head,
            &signed_target,
            auth,
            req.body.len(),
        )?;
        let gateway_req = UpstreamRequest {
            head,
            body: req.body,
            max_response: MAX_RESPONSE_BYTES,
            timeout: self.policy.request_timeout,
        };
        let response = gateway
            .send(&gateway_req)
            .await
            .map_err(|e| gateway_refusal(e, "gateway exchange failed"))?;
        report.upstream = Some(UpstreamTiming {
            elapsed: response.elapsed,
            status: response.header.status.as_u16(),
            body_bytes: response.body.len(),
        });

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
        let verdict = self.verify(
            &merchant.client_id,
            &keys,
            &signed_target,
            &response,
            decoded.as_ref(),
            report,
        )?;

        // the gateway refusing the merchant's credentials: counted, and a (throttled) WARN
        let answer = decoded.as_ref().unwrap_or(&response.body);
        // (an unsigned F means "not authenticated" only in signing mode: in API-key mode
        // every answer may come unsigned, business failures included)
        let unsigned = verdict.marker == Marker::UnsignedFailure;
        let fields = exchange::result_fields(answer);
        if let Some(rejection) =
            crate::credentials::classify(fields.code.as_deref(), fields.status.as_deref(), unsigned)
        {
            crate::credentials::record_rejection(
                &merchant.name,
                &merchant.client_id,
                report.api,
                &keys,
                rejection,
            );
        }

        // hand the exact bytes to the app (decoded when the answer was compressed)
        let mut out = exchange::relayed_response_header(&response.header)?;
        let body = match decoded {
            Some(d) if verdict.marker == Marker::Verified => {
                out.remove_header("content-encoding");
                d
            }
            _ => response.body,
        };
        out.insert_header(VERIFIED_HEADER, verdict.marker.as_str())?;
        if let Some(v) = verdict.key_version {
            out.insert_header(KEY_VERSION_HEADER, v)?;
        }
        if verdict.over_decoded {
            tracing::debug!("the gateway's answer verified over its decoded body");
        }
        Ok((out, body))
    }

    /// The response policy (spec §5, fail closed): a signed answer is verified whatever its
    /// status; an unsigned one passes (marked) only when it cannot be mistaken for a success —
    /// a 4xx/5xx status, or a 200 whose `resultStatus` is `F` (Alipay does not sign
    /// rejections of a bad request signature). Every other unsigned answer (1xx-3xx) is
    /// withheld: a 201/302 with `"S"` must not reach the app as if it were Alipay's.
    fn verify(
        &self,
        client_id: &str,
        keys: &KeySet,
        signed_target: &str,
        response: &UpstreamResponse,
        decoded: Option<&Bytes>,
        report: &mut Report,
    ) -> Result<Verdict, Refusal> {
        let status = response.header.status.as_u16();
        let result_status = exchange::result_status(decoded.unwrap_or(&response.body));
        if status == 200 {
            report.gateway_result_status =
                Some(metrics::result_status_label(result_status.as_deref()));
        }
        if !self.policy.verify_responses {
            report.outcome = Outcome::Forwarded;
            return Ok(Verdict::unchecked(Marker::Disabled));
        }
        let sig = exchange::header_text(&response.header.headers, "signature");
        let time = exchange::header_text(&response.header.headers, "response-time");
        let inquire = "Inquire the outcome (e.g. inquiryPayment) before retrying";
        let (sig, time) = match (sig, time) {
            (Some(sig), Some(time)) => (sig, time),
            (None, None) if keys.credential.api_key().is_some() => {
                // the API-key protocol has no response signature: relayed, and marked so
                report.outcome = Outcome::Forwarded;
                return Ok(Verdict::unchecked(Marker::UnsignedApiKey));
            }
            (None, None) if status >= 400 => {
                // an HTTP error carries no result to trust
                report.outcome = Outcome::UnverifiedStatus;
                return Ok(Verdict::unchecked(Marker::UnverifiedStatus));
            }
            (None, None) if status == 200 && result_status.as_deref() == Some("F") => {
                report.verification = Some(VerificationResult::UnsignedFailure);
                report.outcome = Outcome::UnsignedFailure;
                return Ok(Verdict::unchecked(Marker::UnsignedFailure));
            }
            (None, None) => {
                report.verification =
                    Some(VerificationResult::Invalid(Reason::MissingHeader.label()));
                let msg = format!("Alipay's answer (HTTP {status}) is unsigned and is not a rejection (a 200 with resultStatus F, or a 4xx/5xx status); it was withheld. {inquire}");
                return Err(Refusal::new(SidecarError::ResponseUnsigned, msg));
            }
            (s, _) => {
                report.verification = Some(VerificationResult::Invalid(Reason::Malformed.label()));
                let missing = if s.is_some() {
                    "response-time"
                } else {
                    "signature"
                };
                let msg = format!("Alipay's response carries only one of the signature headers ({missing} is missing); it was withheld. {inquire}");
                return Err(Refusal::new(SidecarError::ResponseSignatureInvalid, msg));
            }
        };
        let digest = content_digest("POST", signed_target, client_id, time, &response.body);
        let verify_start = Instant::now();
        let mut verdict = keys.alipay.verify_digest(&digest, sig);
        let mut over_decoded = false;
        if let (Err(_), Some(d)) = (&verdict, decoded) {
            let alt = content_digest("POST", signed_target, client_id, time, d);
            if let Ok(v) = keys.alipay.verify_digest(&alt, sig) {
                verdict = Ok(v);
                over_decoded = true;
            }
        }
        report.verify_time = Some(verify_start.elapsed());
        match verdict {
            Ok(v) => {
                report.key_version = Some(v.key_version.clone());
                self.check_response_time(time, report)?;
                report.verification = Some(VerificationResult::Valid);
                report.outcome = Outcome::Verified;
                Ok(Verdict {
                    marker: Marker::Verified,
                    key_version: Some(v.key_version),
                    over_decoded,
                })
            }
            Err(e) => {
                report.verification = Some((&e).into());
                report.content_sha256 = Some(digest.to_hex());
                tracing::warn!(reason = e.reason(), error = %e, "gateway response signature did not verify; withheld from the app");
                Err(Refusal::new(
                    SidecarError::ResponseSignatureInvalid,
                    format!("Alipay's response did not verify and was withheld: {e}. {inquire}"),
                ))
            }
        }
    }

    /// The skew window on a verified answer's `response-time` (issue 18, L1): an answer
    /// is synchronous, so its time is now on any clock within the window; one signed long
    /// ago is a replayed answer (a genuine one, captured) and is not relayed as verified. The
    /// reconciler's inquiries go through this same check. Checked after the signature, so
    /// a stale verdict is only given to a genuine time.
    fn check_response_time(&self, time: &str, report: &mut Report) -> Result<(), Refusal> {
        let Some(window) = self.policy.max_response_time_skew else {
            return Ok(());
        };
        let inquire = "The call may have been processed: inquire the outcome (e.g. \
                       inquiryPayment) before retrying";
        let Some(t) = parse_request_time(time) else {
            report.verification = Some(VerificationResult::UnparseableResponseTime);
            let msg = format!(
                "Alipay's answer has a response-time {:?} the sidecar cannot read (epoch millis or ISO-8601), so its freshness cannot be checked while [outbound] max_response_time_skew is set; it was withheld. {inquire}",
                echo(time)
            );
            tracing::warn!(response_time = %echo(time), "gateway answer with an unreadable response-time; withheld from the app");
            return Err(Refusal::new(SidecarError::ResponseStale, msg));
        };
        let skew = Duration::from_millis(now_millis().abs_diff(t));
        if skew > window {
            report.verification = Some(VerificationResult::StaleResponseTime);
            let msg = format!(
                "Alipay's answer is signed with response-time \"{}\", {} away from the sidecar's clock, more than [outbound] max_response_time_skew = {}; a replayed answer is not relayed as verified and it was withheld. {inquire}",
                echo(time),
                humantime::format_duration(Duration::from_secs(skew.as_secs())),
                humantime::format_duration(window)
            );
            tracing::warn!(response_time = %echo(time), skew_s = skew.as_secs(), "gateway answer outside max_response_time_skew; withheld from the app");
            return Err(Refusal::new(SidecarError::ResponseStale, msg));
        }
        Ok(())
    }

    fn gateway_request(
        &self,
        merchant: &OutboundMerchant<G>,
        gateway_authority: &str,
        app: &RequestHeader,
        target: &str,
        auth: Auth<'_>,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", target.as_bytes(), Some(app.headers.len() + 6))?;
        exchange::forward_request_headers(app, &mut req, &merchant.not_forwarded)?;
        req.insert_header("Host", gateway_authority)?;
        if !app.headers.contains_key("content-type") {
            req.insert_header("Content-Type", "application/json; charset=UTF-8")?;
        }
        req.insert_header("Content-Length", len.to_string())?;
        match auth {
            Auth::Signed {
                time,
                signature,
                key_version,
            } => {
                req.insert_header("Client-Id", merchant.client_id.as_str())?;
                req.insert_header("Request-Time", time)?;
                req.insert_header("Signature", signature)?;
                if app.headers.contains_key("key-version") {
                    req.insert_header("Key-Version", key_version)?;
                }
            }
            Auth::Bearer(value) => {
                let mut value = http::HeaderValue::from_str(&value).map_err(|_| {
                    pingora::Error::explain(
                        pingora::ErrorType::InternalError,
                        "the API key is not a valid header value",
                    )
                })?;
                // HTTP/2 HPACK: never index the secret
                value.set_sensitive(true);
                req.insert_header("Authorization", value)?;
            }
        }
        // compressed answers would have to be decoded before they can be verified
        req.insert_header("Accept-Encoding", "identity")?;
        if let Some(token) = &merchant.agent_token {
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

/// The refusal for a gateway exchange that failed (one mapping for every outbound route: the
/// signed JSON calls, uploads and the HTTP/2 session routes), logged with `what`.
pub(super) fn gateway_refusal(e: UpstreamError, what: &'static str) -> Refusal {
    let code = match &e {
        UpstreamError::Connect { .. } => SidecarError::GatewayUnreachable,
        UpstreamError::Tls { .. } => SidecarError::GatewayTlsError,
        UpstreamError::Timeout { .. } | UpstreamError::ConnectTimeout { .. } => {
            SidecarError::GatewayTimeout
        }
        UpstreamError::Protocol { .. } => SidecarError::GatewayProtocolError,
        UpstreamError::TooLarge { .. } => SidecarError::GatewayResponseTooLarge,
    };
    tracing::warn!(error = %e, code = code.code(), "{what}");
    Refusal::new(code, e.to_string())
}

impl<G: UpstreamClient> Handler for Outbound<G> {
    const DIRECTION: Direction = Direction::Outbound;

    fn body_policy(&self) -> BodyPolicy {
        self.policy.body
    }

    fn api(&self, target: &str) -> &'static str {
        metrics::api_label(target.split('?').next().unwrap_or(""))
    }

    fn unselected_merchant(&self) -> Arc<str> {
        self.unselected.clone()
    }

    /// The request head before the body is read: not from a browser, addressed to this
    /// sidecar (DNS rebinding), and a target inside the allowed prefixes.
    fn check_head(&self, header: &RequestHeader, target: &str) -> Result<(), Refusal> {
        if let Some(name) = [
            ("origin", "an Origin"),
            ("sec-fetch-site", "a Sec-Fetch-Site"),
            ("sec-fetch-mode", "a Sec-Fetch-Mode"),
        ]
        .into_iter()
        .find_map(|(h, name)| header.headers.contains_key(h).then_some(name))
        {
            let msg = format!(
                "the request carries {name} header, so a web browser sent it; the signing \
                 proxy only takes calls from the app's server-side SDK (a web page must never \
                 get requests signed with the merchant key)"
            );
            return Err(Refusal::new(SidecarError::BrowserRequestRefused, msg));
        }
        if self.policy.loopback_only {
            if let Some(host) = header.headers.get(http::header::HOST) {
                let text = String::from_utf8_lossy(host.as_bytes());
                if !host_allowed(&text, &self.policy.allowed_hosts) {
                    let msg = format!(
                        "Host \"{}\" is neither a loopback address, localhost nor listed in \
                         [outbound] allowed_hosts; a page that re-binds its DNS name to \
                         127.0.0.1 must not reach the signer. Use http://127.0.0.1:<port> as the \
                         gateway URL, or add the name the app uses to allowed_hosts",
                        exchange::echo(&text)
                    );
                    return Err(Refusal::new(SidecarError::HostNotAllowed, msg));
                }
            }
        }
        target_allowed(target, &self.policy.allowed_path_prefixes).map_err(|msg| {
            let hint = self.head_merchant(header).and_then(|m| {
                environment_hint(&m.client_id, target, &self.policy.allowed_path_prefixes)
            });
            let msg = match hint {
                Some(hint) => format!("{msg}. {hint}"),
                None => msg,
            };
            Refusal::new(SidecarError::PathNotAllowed, msg)
        })
    }

    async fn handle(&self, request: Request) -> Reply {
        let api = self.api(&request.target);
        let selected = match self.select(&request) {
            Ok(s) => s,
            Err(r) => return Reply::refuse(r, Report::new(self.unselected_merchant(), api)),
        };
        let mut report = Report::new(selected.merchant.name.clone(), api);
        report.request_bytes = Some(request.body.len());
        // a pay to reconcile: what the recorder reads, kept before the exchange takes it
        let pay = match &self.pay_recording {
            Some(recording) if api == "payments/pay" => Some((
                recording,
                selected.merchant.name.clone(),
                selected.merchant.client_id.clone(),
                request.target.clone(),
                request.body.clone(),
            )),
            _ => None,
        };
        let result = self.exchange(request, selected, &mut report).await;
        if let (Some((recording, merchant, client_id, target, body)), Ok((head, answer))) =
            (pay, &result)
        {
            if head.status.as_u16() == 200 && report.outcome == Outcome::Verified {
                recording
                    .after_verified_answer(&merchant, &client_id, &target, &body, answer)
                    .await;
            }
        }
        Reply::finish(result, report)
    }
}

mod merchant;
mod policy;
mod service;

pub use merchant::OutboundMerchant;
use merchant::REPLACED;

pub use policy::{environment_hint, host_allowed, host_name, target_allowed, OutboundPolicy};
pub use service::{listeners, services, OutboundServices};

mod session_routes;
#[cfg(test)]
mod tests;
mod upload;

pub use session_routes::{is_session_route, SESSION_HEADER, SESSION_ROUTES};
