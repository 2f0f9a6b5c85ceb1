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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config::{Config, MerchantConfig, OutboundConfig, RequestTimeFormat};
use crate::envelope::SidecarError;
use crate::exchange::{self, echo, now_millis, KEY_VERSION_HEADER, VERIFIED_HEADER};
use crate::handler::{
    BodyPolicy, Handler, Marker, Refusal, Reply, Report, Request, Stop, UpstreamTiming,
};
use crate::hooks::PayHook;
use crate::keyset::{Credential, KeySet};
use crate::merchants::{unselected_label, KeySource, LiveKeys, Selected};
use crate::metrics::{self, Direction, Outcome, VerificationResult};
use crate::protocol::{
    content_digest, format_epoch_millis, format_iso8601, parse_request_time, sign_digest,
    ApiKeyEnv, Reason,
};
use crate::state::SidecarState;
use crate::upstream::{Upstream, UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};

/// Responses larger than this are refused (Alipay's answers are a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// App headers never forwarded to the gateway besides hop-by-hop ones: the signature headers,
/// which the sidecar always sets itself.
const REPLACED: &[&str] = &["client-id", "request-time", "signature"];

/// App headers the sidecar sets itself besides those: `Accept-Encoding` (the sidecar asks for
/// `identity`, so what it verifies is what was signed) and the Go SDK's `Key-Version`
/// (signing metadata, set to the sidecar's own key version when the app sent one).
const ALSO_REPLACED: &[&str] = &["accept-encoding", "key-version"];

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

/// The outbound policy settings (from `[outbound]` and `[server]`), shared by every merchant.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// Request paths the proxy forwards (whole segments).
    pub allowed_path_prefixes: Vec<String>,
    /// Names besides loopback and `localhost` accepted in `Host` on a loopback listener.
    pub allowed_hosts: Vec<String>,
    /// Every outbound listener is on loopback: then `Host` must name this sidecar.
    pub loopback_only: bool,
    /// Rewrite `/ams/api/` to `/ams/sandbox/api/` for `SANDBOX_` client ids.
    pub sandbox_path_rewrite: bool,
    /// Form of the `Request-Time` header the sidecar writes.
    pub request_time_format: RequestTimeFormat,
    /// Verify Alipay's response signatures before the app sees them.
    pub verify_responses: bool,
    /// Refuse a signed answer whose `response-time` is further than this from now.
    pub max_response_time_skew: Option<Duration>,
    /// Whole-exchange timeout to the gateway.
    pub request_timeout: Duration,
    /// How request bodies are read.
    pub body: BodyPolicy,
}

impl OutboundPolicy {
    /// The policy of `[outbound]` in `config` for a handler serving on `listeners`.
    pub fn from_config(config: &Config, cfg: &OutboundConfig, listeners: &[SocketAddr]) -> Self {
        Self {
            allowed_path_prefixes: cfg.allowed_path_prefixes.clone(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            loopback_only: listeners.iter().all(|a| a.ip().is_loopback()),
            sandbox_path_rewrite: cfg.sandbox_path_rewrite,
            request_time_format: cfg.request_time_format,
            verify_responses: cfg.verify_responses,
            max_response_time_skew: cfg.max_response_time_skew,
            request_timeout: cfg.request_timeout,
            body: BodyPolicy {
                max_bytes: cfg.max_body_bytes,
                limit_key: "[outbound] max_body_bytes",
                timeout: config.server.body_read_timeout,
            },
        }
    }
}

/// One merchant as the outbound handler needs it.
pub struct OutboundMerchant<G> {
    name: Arc<str>,
    client_id: String,
    agent_token: Option<String>,
    keys: Arc<dyn KeySource>,
    gateway: G,
    /// `Host` of the gateway requests.
    gateway_authority: String,
    /// App headers the sidecar sets itself (built once: `REPLACED`, `ALSO_REPLACED`, plus
    /// `agent-token` when one is configured).
    not_forwarded: Vec<&'static str>,
}

impl<G: UpstreamClient> OutboundMerchant<G> {
    /// A merchant called `name` signing as `client_id` with the keys of `keys`, through
    /// `gateway` at `gateway_host:gateway_port`.
    pub fn new(
        name: &str,
        client_id: &str,
        agent_token: Option<String>,
        keys: Arc<dyn KeySource>,
        gateway: G,
        (gateway_host, gateway_port): (&str, u16),
    ) -> Self {
        let mut not_forwarded = REPLACED.to_vec();
        not_forwarded.extend_from_slice(ALSO_REPLACED);
        not_forwarded.extend_from_slice(&crate::credentials::APP_CREDENTIAL_HEADERS);
        if agent_token.is_some() {
            not_forwarded.push("agent-token");
        }
        Self {
            name: Arc::from(name),
            client_id: client_id.to_string(),
            agent_token,
            keys,
            gateway,
            gateway_authority: exchange::authority(gateway_host, gateway_port, 443),
            not_forwarded,
        }
    }
}

/// Names the merchant of a request on a shared outbound listener with several merchants.
/// Stripped before forwarding (like every `X-Alipay-Sidecar-*` header), ignored where the
/// listener already decides the merchant.
pub const MERCHANT_HEADER: &str = "X-Alipay-Sidecar-Merchant";

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
                    &req.body,
                );
                let sign_start = Instant::now();
                signature = sign_digest(private, &keys.merchant_key_version, &digest)
                    .map_err(|e| Refusal::new(SidecarError::SigningFailed, e.to_string()))?;
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
        let head =
            self.gateway_request(merchant, &req.head, &signed_target, auth, req.body.len())?;
        let gateway_req = UpstreamRequest {
            head,
            body: req.body,
            max_response: MAX_RESPONSE_BYTES,
            timeout: self.policy.request_timeout,
        };
        let response = merchant.gateway.send(&gateway_req).await.map_err(|e| {
            let code = match &e {
                UpstreamError::Connect { .. } => SidecarError::GatewayUnreachable,
                UpstreamError::Tls { .. } => SidecarError::GatewayTlsError,
                UpstreamError::Timeout { .. } => SidecarError::GatewayTimeout,
                UpstreamError::Protocol { .. } => SidecarError::GatewayProtocolError,
                UpstreamError::TooLarge { .. } => SidecarError::GatewayResponseTooLarge,
            };
            tracing::warn!(error = %e, code = code.code(), "gateway exchange failed");
            Refusal::new(code, e.to_string())
        })?;
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
        if let Some(rejection) = crate::credentials::classify(
            exchange::result_code(answer).as_deref(),
            exchange::result_status(answer).as_deref(),
            unsigned,
        ) {
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
        app: &RequestHeader,
        target: &str,
        auth: Auth<'_>,
        len: usize,
    ) -> pingora::Result<RequestHeader> {
        let mut req = RequestHeader::build("POST", target.as_bytes(), Some(app.headers.len() + 6))?;
        exchange::forward_request_headers(app, &mut req, &merchant.not_forwarded)?;
        req.insert_header("Host", merchant.gateway_authority.as_str())?;
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

impl OutboundMerchant<Arc<Upstream>> {
    /// The production form of the `index`-th merchant of the config: its live keys from
    /// `state`, its gateway through `upstream` (pingora's connector, shared by every listener
    /// that serves this merchant, so they share one connection pool).
    pub fn from_config(
        state: &Arc<SidecarState>,
        index: usize,
        merchant: &MerchantConfig,
        gateway: &crate::config::Gateway,
        upstream: Arc<Upstream>,
    ) -> Self {
        OutboundMerchant::new(
            &merchant.name,
            &merchant.client_id,
            merchant.agent_token.clone(),
            LiveKeys::new(state.merchants(), index),
            upstream,
            (&gateway.host, gateway.port),
        )
    }
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
        if let Some(name) = ["origin", "sec-fetch-site", "sec-fetch-mode"]
            .into_iter()
            .find(|h| header.headers.contains_key(*h))
        {
            let msg = format!(
                "the request carries a {name} header, so a web browser sent it; the signing \
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
        target_allowed(target, &self.policy.allowed_path_prefixes)
            .map_err(|msg| Refusal::new(SidecarError::PathNotAllowed, msg))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merchants::{DEFAULT_MERCHANT, UNSELECTED_MERCHANT};
    use crate::testing::*;
    use crate::upstream::UpstreamError;
    use std::io::Write;
    use std::sync::Mutex;

    const CLIENT: &str = "T_111222333";
    const PAY: &str = "/ams/api/v1/payments/pay";
    const BODY: &[u8] = r#"{"paymentRequestId":"p1","note":"\u73cd 珍珠 🧋"}"#.as_bytes();

    fn policy() -> OutboundPolicy {
        OutboundPolicy {
            allowed_path_prefixes: vec!["/ams/api/".into()],
            allowed_hosts: vec!["sidecar.internal".into()],
            loopback_only: true,
            sandbox_path_rewrite: true,
            request_time_format: RequestTimeFormat::EpochMillis,
            verify_responses: true,
            max_response_time_skew: None,
            request_timeout: Duration::from_secs(15),
            body: BodyPolicy {
                max_bytes: 1 << 20,
                limit_key: "[outbound] max_body_bytes",
                timeout: Duration::from_secs(10),
            },
        }
    }

    fn outbound_with(
        policy: OutboundPolicy,
        client_id: &str,
        agent_token: Option<&str>,
        gateway: &Arc<Fake>,
    ) -> Outbound<Arc<Fake>> {
        let keys: Arc<dyn KeySource> = Arc::new(keyset(client_id));
        let merchant = OutboundMerchant::new(
            DEFAULT_MERCHANT,
            client_id,
            agent_token.map(str::to_string),
            keys,
            gateway.clone(),
            ("open-sea-global.alipay.com", 443),
        );
        Outbound::new(policy, merchant)
    }

    fn outbound(gateway: &Arc<Fake>) -> Outbound<Arc<Fake>> {
        outbound_with(policy(), CLIENT, None, gateway)
    }

    /// A gateway that answers `status` with `body`, signed by Alipay over the path and
    /// client id it was sent (keyVersion `version`).
    fn alipay(status: u16, version: &'static str, body: &'static [u8]) -> Arc<Fake> {
        signing(status, version, "", body, body)
    }

    /// A gateway that answers `status` with `sent` (`Content-Encoding: encoding` unless
    /// empty), signed by Alipay (keyVersion `version`) over `signed`, the path and the client
    /// id it was sent.
    fn signing(
        status: u16,
        version: &'static str,
        encoding: &'static str,
        signed: &'static [u8],
        sent: &'static [u8],
    ) -> Arc<Fake> {
        Fake::new(move |req| {
            let target = req.head.uri.path_and_query().expect("target").as_str();
            let client = header(&req.head.headers, "client-id").expect("client-id");
            let time = "2024-05-01T12:34:57+08:00";
            let sig = alipay_signature(version, target, client, time, signed);
            let mut headers = vec![
                ("Content-Type", "application/json"),
                ("response-time", time),
                ("signature", sig.as_str()),
            ];
            if !encoding.is_empty() {
                headers.push(("Content-Encoding", encoding));
            }
            Ok(answer(status, &headers, sent))
        })
    }

    fn canned(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static [u8],
    ) -> Arc<Fake> {
        Fake::new(move |_| Ok(answer(status, headers, body)))
    }

    fn pay(headers: &[(&str, &str)]) -> Request {
        request(PAY, headers, BODY)
    }

    fn marker(reply: &Reply) -> Option<&str> {
        header(&reply.head.headers, VERIFIED_HEADER)
    }

    fn refused_with(reply: &Reply, error: SidecarError) {
        assert_eq!(reply.head.status.as_u16(), error.http_status(), "{reply:?}");
        assert_eq!(result_code(reply).as_deref(), Some(error.code()));
        assert_eq!(
            header(&reply.head.headers, "x-alipay-sidecar-error"),
            Some(error.code())
        );
        assert_eq!(reply.report.error, Some(error));
        assert_eq!(reply.report.status, error.http_status());
        assert_eq!(
            marker(reply),
            None,
            "a refusal carries no verification marker"
        );
    }

    /// Withheld as `SIDECAR_RESPONSE_SIGNATURE_INVALID`, counted with `reason`.
    fn withheld(reply: &Reply, reason: &'static str) {
        refused_with(reply, SidecarError::ResponseSignatureInvalid);
        assert_eq!(
            reply.report.verification,
            Some(VerificationResult::Invalid(reason))
        );
    }

    // ---------------------------------------------------------------- API-key mode

    const API_KEY: &str = "isak_PROD_VF8xMTEyMjIzMzM_UnitTestSecret";

    fn api_key_outbound(key: &str, gateway: &Arc<Fake>) -> Outbound<Arc<Fake>> {
        api_key_outbound_with(policy(), key, gateway)
    }

    fn api_key_outbound_with(
        policy: OutboundPolicy,
        key: &str,
        gateway: &Arc<Fake>,
    ) -> Outbound<Arc<Fake>> {
        let mut keys = (*keyset(CLIENT)).clone();
        keys.credential = Credential::ApiKey(crate::protocol::ApiKey::parse(key).unwrap());
        let keys: Arc<dyn KeySource> = Arc::new(Arc::new(keys));
        let merchant = OutboundMerchant::new(
            DEFAULT_MERCHANT,
            CLIENT,
            None,
            keys,
            gateway.clone(),
            ("open-sea-global.alipay.com", 443),
        );
        Outbound::new(policy, merchant)
    }

    /// Alipay's answer signed for [`CLIENT`] over `signed` (the request carries no client id
    /// in API-key mode).
    fn signed_for_client(signed: &'static [u8], sent: &'static [u8]) -> Arc<Fake> {
        Fake::new(move |req| {
            let target = req.head.uri.path_and_query().expect("target").as_str();
            let time = "2024-05-01T12:34:57+08:00";
            let sig = alipay_signature("1", target, CLIENT, time, signed);
            Ok(answer(
                200,
                &[("response-time", time), ("signature", sig.as_str())],
                sent,
            ))
        })
    }

    #[tokio::test]
    async fn api_key_mode_sends_the_sidecars_bearer_key_and_marks_unsigned_answers() {
        let gw = canned(
            200,
            &[("Content-Type", "application/json")],
            br#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#,
        );
        let h = api_key_outbound(API_KEY, &gw);
        let reply = h
            .handle(pay(&[
                (
                    "Authorization",
                    "Bearer isak_PROD_VF8xMTEyMjIzMzM_TheAppsOwn",
                ),
                ("Cookie", "a=b"),
                ("Proxy-Authorization", "Basic eDp5"),
                ("Signature", "algorithm=RSA256,keyVersion=1,signature=x"),
            ]))
            .await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(marker(&reply), Some("unsigned-api-key"));
        assert_eq!(reply.report.outcome, Outcome::Forwarded);
        let sent = gw.only();
        let auth: Vec<_> = sent.head.headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1);
        assert_eq!(auth[0].as_bytes(), format!("Bearer {API_KEY}").as_bytes());
        assert!(auth[0].is_sensitive(), "never indexed by HPACK");
        for h in [
            "client-id",
            "request-time",
            "signature",
            "cookie",
            "proxy-authorization",
        ] {
            assert!(!sent.head.headers.contains_key(h), "{h} was sent");
        }
        assert_eq!(&sent.body[..], BODY, "the same bytes");
    }

    #[tokio::test]
    async fn api_key_mode_still_verifies_signed_answers() {
        let body: &[u8] = br#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#;
        let reply = api_key_outbound(API_KEY, &signed_for_client(body, body))
            .handle(pay(&[]))
            .await;
        assert_eq!(marker(&reply), Some("true"));
        let reply = api_key_outbound(API_KEY, &signed_for_client(b"{}", body))
            .handle(pay(&[]))
            .await;
        withheld(&reply, "mismatch");
    }

    #[tokio::test]
    async fn a_test_api_key_never_calls_a_live_path() {
        const TEST_KEY: &str = "isak_TEST_VF8xMTEyMjIzMzM_UnitTestSecret";
        let gw = canned(200, &[], b"{}");
        let no_rewrite = OutboundPolicy {
            sandbox_path_rewrite: false,
            ..policy()
        };
        let reply = api_key_outbound_with(no_rewrite, TEST_KEY, &gw)
            .handle(pay(&[]))
            .await;
        refused_with(&reply, SidecarError::PathNotAllowed);
        assert!(gw.seen().is_empty(), "nothing was sent");
        // with sandbox_path_rewrite, a TEST key's live path goes to the sandbox path
        let reply = api_key_outbound(TEST_KEY, &gw).handle(pay(&[])).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(
            gw.only().head.uri.path(),
            "/ams/sandbox/api/v1/payments/pay"
        );
    }

    // ---------------------------------------------------------------- head checks

    #[test]
    fn head_refuses_paths_outside_the_prefixes() {
        let h = outbound(&canned(200, &[], b""));
        let head = pay(&[]).head;
        assert!(h.check_head(&head, PAY).is_ok());
        let r = h
            .check_head(&head, "/ams/apix/v1/payments/pay")
            .unwrap_err();
        assert_eq!(r.error, SidecarError::PathNotAllowed);
        let r = h.check_head(&head, "/ams/api/v1/../admin").unwrap_err();
        assert_eq!(r.error, SidecarError::PathNotAllowed);
        assert!(r.message.contains("dot segment"), "{}", r.message);
    }

    #[test]
    fn head_refuses_browsers() {
        let h = outbound(&canned(200, &[], b""));
        for name in ["Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode"] {
            let req = pay(&[(name, "x")]);
            let r = h.check_head(&req.head, PAY).unwrap_err();
            assert_eq!(r.error, SidecarError::BrowserRequestRefused, "{name}");
        }
    }

    #[test]
    fn head_refuses_foreign_hosts_on_loopback_listeners_only() {
        let h = outbound(&canned(200, &[], b""));
        for ok in ["127.0.0.1:8080", "localhost", "sidecar.internal:8080"] {
            assert!(
                h.check_head(&pay(&[("Host", ok)]).head, PAY).is_ok(),
                "{ok}"
            );
        }
        let r = h
            .check_head(&pay(&[("Host", "evil.example")]).head, PAY)
            .unwrap_err();
        assert_eq!(r.error, SidecarError::HostNotAllowed);
        assert!(r.message.contains("evil.example"));
        let remote = outbound_with(
            OutboundPolicy {
                loopback_only: false,
                ..policy()
            },
            CLIENT,
            None,
            &canned(200, &[], b""),
        );
        assert!(remote
            .check_head(&pay(&[("Host", "evil.example")]).head, PAY)
            .is_ok());
    }

    // ---------------------------------------------------------------- signing

    #[tokio::test]
    async fn signs_the_exact_bytes_and_sends_them_without_a_copy() {
        let gw = alipay(200, "1", br#"{"result":{"resultStatus":"S"}}"#);
        let h = outbound(&gw);
        let req = pay(&[("Content-Type", "application/json; charset=UTF-8")]);
        let body_ptr = req.body.as_ptr();
        let reply = h.handle(req).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        let sent = gw.only();
        assert_eq!(sent.body.as_ptr(), body_ptr, "the body was copied");
        assert_eq!(&sent.body[..], BODY);
        assert_eq!(sent.head.uri.path(), PAY);
        assert_eq!(sent.timeout, Duration::from_secs(15));
        assert_eq!(sent.max_response, MAX_RESPONSE_BYTES);
        let hs = &sent.head.headers;
        assert_eq!(header(hs, "client-id"), Some(CLIENT));
        assert_eq!(header(hs, "host"), Some("open-sea-global.alipay.com"));
        assert_eq!(header(hs, "accept-encoding"), Some("identity"));
        assert_eq!(
            header(hs, "content-length"),
            Some(BODY.len().to_string().as_str())
        );
        let time = header(hs, "request-time").unwrap();
        let sig = header(hs, "signature").unwrap();
        assert!(sig.starts_with("algorithm=RSA256,keyVersion=1,signature="));
        let content = crate::protocol::content_to_sign("POST", PAY, CLIENT, time, BODY);
        merchant_public()
            .verify(&content, sig)
            .expect("the signature covers POST <path>, client id, time and the exact body");
        assert!(reply.report.sign_time.is_some());
        assert_eq!(reply.report.request_bytes, Some(BODY.len()));
        assert_eq!(&*reply.report.merchant, "default");
        assert_eq!(reply.report.api, "payments/pay");
    }

    #[tokio::test]
    async fn app_signature_headers_are_replaced_and_agent_token_set() {
        let gw = alipay(200, "1", br#"{"result":{"resultStatus":"S"}}"#);
        let h = outbound_with(policy(), CLIENT, Some("TOKEN-CFG"), &gw);
        let req = pay(&[
            ("Client-Id", "FORGED"),
            ("Request-Time", "1"),
            (
                "Signature",
                "algorithm=RSA256,keyVersion=9,signature=forged",
            ),
            ("Key-Version", "9"),
            ("Accept-Encoding", "gzip"),
            ("Agent-Token", "TOKEN-APP"),
            ("X-Alipay-Sidecar-Verified", "true"),
            ("X-Trace", "kept"),
        ]);
        h.handle(req).await;
        let hs = gw.only().head.headers.clone();
        let all = |n: &str| {
            hs.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("client-id"), [CLIENT]);
        assert_ne!(all("request-time"), ["1"]);
        assert_eq!(all("request-time").len(), 1);
        assert_eq!(all("signature").len(), 1);
        assert!(!all("signature")[0].contains("forged"));
        assert_eq!(
            all("key-version"),
            ["1"],
            "the app's Key-Version becomes the sidecar's"
        );
        assert_eq!(all("accept-encoding"), ["identity"]);
        assert_eq!(all("agent-token"), ["TOKEN-CFG"]);
        assert!(all("x-alipay-sidecar-verified").is_empty());
        assert_eq!(all("x-trace"), ["kept"]);
        assert!(header(&hs, "user-agent")
            .unwrap()
            .starts_with("alipay-sidecar/"));

        // without a configured token the app's own is forwarded, and no Key-Version is added
        let gw = alipay(200, "1", br#"{"result":{"resultStatus":"S"}}"#);
        outbound(&gw)
            .handle(pay(&[
                ("Agent-Token", "TOKEN-APP"),
                ("User-Agent", "sdk/1"),
            ]))
            .await;
        let hs = gw.only().head.headers.clone();
        assert_eq!(header(&hs, "agent-token"), Some("TOKEN-APP"));
        assert_eq!(header(&hs, "key-version"), None);
        assert_eq!(header(&hs, "user-agent"), Some("sdk/1"));
    }

    #[tokio::test]
    async fn request_time_format_follows_the_policy() {
        let gw = alipay(200, "1", br#"{}"#);
        outbound(&gw).handle(pay(&[])).await;
        let t = header(&gw.only().head.headers, "request-time")
            .unwrap()
            .to_string();
        assert!(
            t.len() >= 13 && t.bytes().all(|b| b.is_ascii_digit()),
            "{t}"
        );

        let gw = alipay(200, "1", br#"{}"#);
        let iso = OutboundPolicy {
            request_time_format: RequestTimeFormat::Iso8601,
            ..policy()
        };
        outbound_with(iso, CLIENT, None, &gw).handle(pay(&[])).await;
        let t = header(&gw.only().head.headers, "request-time")
            .unwrap()
            .to_string();
        assert!(t.starts_with("20") && t.contains('T'), "{t}");
        let ms = crate::protocol::parse_request_time(&t).expect("ISO-8601 parses");
        assert!((exchange::now_millis() - ms).abs() < 60_000);
    }

    #[tokio::test]
    async fn sandbox_client_ids_sign_and_send_the_sandbox_path() {
        // RSP-07: Alipay's answer signed over the rewritten path
        let id = "RSP-07";
        let client = input(id, "client_id");
        let (time, sig) = (input(id, "time"), input(id, "signature_header"));
        let body: &'static str = Box::leak(input(id, "body").into_boxed_str());
        let (time, sig): (&'static str, &'static str) = (
            Box::leak(time.into_boxed_str()),
            Box::leak(sig.into_boxed_str()),
        );
        let gw = Fake::new(move |_| {
            Ok(answer(
                200,
                &[("response-time", time), ("signature", sig)],
                body.as_bytes(),
            ))
        });
        let h = outbound_with(policy(), &client, None, &gw);
        let reply = h.handle(pay(&[])).await;
        let sent = gw.only();
        assert_eq!(sent.head.uri.path(), "/ams/sandbox/api/v1/payments/pay");
        let content = crate::protocol::content_to_sign(
            "POST",
            "/ams/sandbox/api/v1/payments/pay",
            &client,
            header(&sent.head.headers, "request-time").unwrap(),
            BODY,
        );
        merchant_public()
            .verify(&content, header(&sent.head.headers, "signature").unwrap())
            .expect("signed over the sandbox path");
        assert_eq!(marker(&reply), Some("true"), "{reply:?}");
        assert_eq!(&reply.body[..], body.as_bytes());

        // switched off: the path is sent as received
        let gw = alipay(200, "1", b"{}");
        let off = OutboundPolicy {
            sandbox_path_rewrite: false,
            ..policy()
        };
        outbound_with(off, &client, None, &gw)
            .handle(pay(&[]))
            .await;
        assert_eq!(gw.only().head.uri.path(), PAY);
    }

    // ---------------------------------------------------------------- the gateway fails

    #[tokio::test]
    async fn gateway_failures_become_envelope_errors() {
        let t = || "gw:443".to_string();
        let cases: Vec<(UpstreamError, SidecarError)> = vec![
            (
                UpstreamError::Connect {
                    target: t(),
                    detail: "refused".into(),
                },
                SidecarError::GatewayUnreachable,
            ),
            (
                UpstreamError::Tls {
                    target: t(),
                    detail: "unknown issuer".into(),
                },
                SidecarError::GatewayTlsError,
            ),
            (
                UpstreamError::Timeout {
                    target: t(),
                    timeout: Duration::from_secs(15),
                },
                SidecarError::GatewayTimeout,
            ),
            (
                UpstreamError::Protocol {
                    target: t(),
                    detail: "reset".into(),
                    maybe_delivered: true,
                },
                SidecarError::GatewayProtocolError,
            ),
            (
                UpstreamError::TooLarge {
                    target: t(),
                    limit: 8,
                },
                SidecarError::GatewayResponseTooLarge,
            ),
        ];
        for (upstream_error, expected) in cases {
            let message = upstream_error.to_string();
            let cell = Mutex::new(Some(upstream_error));
            let gw = Fake::new(move |_| Err(cell.lock().unwrap().take().expect("one call")));
            let reply = outbound(&gw).handle(pay(&[])).await;
            refused_with(&reply, expected);
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            // a TLS failure is a configuration problem (F); the others may have reached
            // Alipay (U: inquire)
            let (status, outcome) = match expected {
                SidecarError::GatewayTlsError => ("F", Outcome::Rejected),
                _ => ("U", Outcome::Error),
            };
            assert_eq!(v["result"]["resultStatus"], status, "{expected:?}");
            assert_eq!(v["result"]["resultMessage"], message.as_str());
            assert_eq!(reply.report.outcome, outcome);
            assert!(reply.report.upstream.is_none());
        }
    }

    // ---------------------------------------------------------------- response policy

    #[tokio::test]
    async fn a_signed_answer_that_verifies_is_relayed_marked() {
        // RSP-01, the published known-good answer
        let id = "RSP-01";
        let body: &'static str = Box::leak(input(id, "body").into_boxed_str());
        let time: &'static str = Box::leak(input(id, "time").into_boxed_str());
        let sig: &'static str = Box::leak(input(id, "signature_header").into_boxed_str());
        let gw = Fake::new(move |_| {
            Ok(answer(
                200,
                &[
                    ("Content-Type", "application/json"),
                    ("response-time", time),
                    ("signature", sig),
                    ("X-Alipay-Sidecar-Verified", "forged"),
                    ("Connection", "close"),
                ],
                body.as_bytes(),
            ))
        });
        let reply = outbound(&gw).handle(pay(&[])).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(&reply.body[..], body.as_bytes());
        let all: Vec<_> = reply.head.headers.get_all(VERIFIED_HEADER).iter().collect();
        assert_eq!(all, ["true"], "the gateway's own marker is dropped");
        assert_eq!(header(&reply.head.headers, KEY_VERSION_HEADER), Some("1"));
        assert_eq!(header(&reply.head.headers, "connection"), None);
        assert_eq!(
            header(&reply.head.headers, "content-length"),
            Some(body.len().to_string().as_str())
        );
        let r = &reply.report;
        assert_eq!(r.outcome, Outcome::Verified);
        assert_eq!(r.verification, Some(VerificationResult::Valid));
        assert_eq!(r.key_version.as_deref(), Some("1"));
        assert_eq!(r.gateway_result_status, Some("U"));
        assert_eq!(r.upstream.map(|u| u.status), Some(200));
        assert!(r.verify_time.is_some());
        assert_eq!(r.response_bytes, body.len());
        assert_eq!(r.error, None);
    }

    #[tokio::test]
    async fn a_genuine_answer_signed_long_ago_is_withheld_when_the_window_is_on() {
        let window = OutboundPolicy {
            max_response_time_skew: Some(Duration::from_secs(600)),
            ..policy()
        };
        let at = |time: &'static str| {
            Fake::new(move |req| {
                let target = req.head.uri.path_and_query().expect("target").as_str();
                let client = header(&req.head.headers, "client-id").expect("client-id");
                let time = if time.is_empty() {
                    format_epoch_millis(exchange::now_millis())
                } else {
                    time.to_string()
                };
                let body = br#"{"result":{"resultStatus":"S"}}"#;
                let sig = alipay_signature("1", target, client, &time, body);
                Ok(answer(
                    200,
                    &[
                        ("response-time", time.as_str()),
                        ("signature", sig.as_str()),
                    ],
                    body,
                ))
            })
        };
        // signed in 2024 (the fake's fixed time): genuine, but not an answer to this call
        let reply = outbound_with(
            window.clone(),
            CLIENT,
            None,
            &at("2024-05-01T12:34:57+08:00"),
        )
        .handle(pay(&[]))
        .await;
        refused_with(&reply, SidecarError::ResponseStale);
        assert_eq!(
            reply.report.verification,
            Some(VerificationResult::StaleResponseTime)
        );
        assert_eq!(marker(&reply), None);
        let unreadable = outbound_with(window.clone(), CLIENT, None, &at("tuesday"))
            .handle(pay(&[]))
            .await;
        refused_with(&unreadable, SidecarError::ResponseStale);
        assert_eq!(
            unreadable.report.verification,
            Some(VerificationResult::UnparseableResponseTime)
        );
        // a fresh answer passes; with the window off the old one passes too (as before)
        let fresh = outbound_with(window, CLIENT, None, &at(""))
            .handle(pay(&[]))
            .await;
        assert_eq!(marker(&fresh), Some("true"));
        let off = outbound(&at("2024-05-01T12:34:57+08:00"))
            .handle(pay(&[]))
            .await;
        assert_eq!(marker(&off), Some("true"));
    }

    #[tokio::test]
    async fn a_signed_error_status_is_verified_too() {
        let reply = outbound(&alipay(500, "1", br#"{"result":{"resultStatus":"U"}}"#))
            .handle(pay(&[]))
            .await;
        assert_eq!(reply.head.status.as_u16(), 500);
        assert_eq!(marker(&reply), Some("true"));
        assert_eq!(
            reply.report.gateway_result_status, None,
            "only 200 answers are counted"
        );
    }

    #[tokio::test]
    async fn a_signature_that_does_not_verify_is_withheld() {
        let (s, f) = (
            br#"{"result":{"resultStatus":"S"}}"#,
            br#"{"result":{"resultStatus":"F"}}"#,
        );
        let gw = signing(200, "1", "", s, f);
        let reply = outbound(&gw).handle(pay(&[])).await;
        withheld(&reply, "mismatch");
        assert_eq!(reply.report.reason(), Some("mismatch"));
        assert_eq!(reply.report.outcome, Outcome::Rejected);
        assert_eq!(
            reply.report.content_sha256.as_ref().map(String::len),
            Some(64)
        );
        assert!(
            !reply.body.windows(6).any(|w| w == b"\"F\"}}"),
            "nothing of the answer leaks"
        );
    }

    #[tokio::test]
    async fn an_unknown_key_version_is_refused_by_name() {
        let reply = outbound(&alipay(200, "7", br#"{"result":{"resultStatus":"S"}}"#))
            .handle(pay(&[]))
            .await;
        withheld(&reply, "unknown_key_version");
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(v["result"]["resultMessage"].as_str().unwrap().contains('7'));
    }

    #[tokio::test]
    async fn only_one_signature_header_is_malformed() {
        for headers in [
            &[("signature", "algorithm=RSA256,keyVersion=1,signature=x")][..],
            &[("response-time", "t")][..],
        ] {
            let headers: &'static [(&'static str, &'static str)] =
                Box::leak(headers.to_vec().into_boxed_slice());
            let reply = outbound(&canned(200, headers, br#"{"result":{"resultStatus":"S"}}"#))
                .handle(pay(&[]))
                .await;
            withheld(&reply, "malformed");
        }
    }

    #[tokio::test]
    async fn unsigned_successes_are_withheld() {
        for status in [200, 201, 302] {
            let reply = outbound(&canned(status, &[], br#"{"result":{"resultStatus":"S"}}"#))
                .handle(pay(&[]))
                .await;
            refused_with(&reply, SidecarError::ResponseUnsigned);
            assert_eq!(
                reply.report.verification,
                Some(VerificationResult::Invalid("missing_header")),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn unsigned_http_errors_and_f_rejections_pass_marked() {
        let reply = outbound(&canned(400, &[], b"bad request"))
            .handle(pay(&[]))
            .await;
        assert_eq!(reply.head.status.as_u16(), 400);
        assert_eq!(marker(&reply), Some("unverified-status"));
        assert_eq!(&reply.body[..], b"bad request");
        assert_eq!(reply.report.outcome, Outcome::UnverifiedStatus);
        assert_eq!(reply.report.verification, None);

        let f = br#"{"result":{"resultCode":"INVALID_SIGNATURE","resultStatus":"F"}}"#;
        let reply = outbound(&canned(200, &[], f)).handle(pay(&[])).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(marker(&reply), Some("unsigned-failure"));
        assert_eq!(&reply.body[..], f);
        assert_eq!(reply.report.outcome, Outcome::UnsignedFailure);
        assert_eq!(
            reply.report.verification,
            Some(VerificationResult::UnsignedFailure)
        );
        assert_eq!(reply.report.reason(), None);
        assert_eq!(reply.report.gateway_result_status, Some("F"));
    }

    #[tokio::test]
    async fn verification_switched_off_forwards_marked_disabled() {
        let off = OutboundPolicy {
            verify_responses: false,
            ..policy()
        };
        let reply = outbound_with(
            off,
            CLIENT,
            None,
            &canned(200, &[], br#"{"result":{"resultStatus":"S"}}"#),
        )
        .handle(pay(&[]))
        .await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(marker(&reply), Some("disabled"));
        assert_eq!(reply.report.outcome, Outcome::Forwarded);
        assert_eq!(reply.report.gateway_result_status, Some("S"));
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test]
    async fn a_compressed_answer_is_verified_and_handed_over_decoded() {
        let plain: &'static [u8] =
            br#"{"result":{"resultStatus":"S"},"x":"zzzzzzzzzzzzzzzzzzzzzzzz"}"#;
        let zipped: &'static [u8] = Box::leak(gzip(plain).into_boxed_slice());
        // the signature over the decoded bytes, and over the bytes as received
        for signed in [plain, zipped] {
            let gw = signing(200, "1", "gzip", signed, zipped);
            let reply = outbound(&gw).handle(pay(&[])).await;
            assert_eq!(marker(&reply), Some("true"), "{reply:?}");
            assert_eq!(&reply.body[..], plain);
            assert_eq!(header(&reply.head.headers, "content-encoding"), None);
            assert_eq!(reply.report.gateway_result_status, Some("S"));
            assert_eq!(
                reply.report.upstream.map(|u| u.body_bytes),
                Some(zipped.len())
            );
        }
        // not decodable: verified over the bytes as received, relayed as received
        let junk: &'static [u8] = b"not gzip at all";
        let gw = signing(200, "1", "gzip", junk, junk);
        let reply = outbound(&gw).handle(pay(&[])).await;
        assert_eq!(marker(&reply), Some("true"));
        assert_eq!(&reply.body[..], junk);
        assert_eq!(
            header(&reply.head.headers, "content-encoding"),
            Some("gzip")
        );
    }

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

    /// Two merchants on one shared listener, each with its own gateway client.
    fn two_merchants(sg: &Arc<Fake>, eu: &Arc<Fake>) -> Outbound<Arc<Fake>> {
        let merchant = |name: &str, id: &str, gw: &Arc<Fake>, host: &str| {
            let keys: Arc<dyn KeySource> = Arc::new(keyset(id));
            OutboundMerchant::new(name, id, None, keys, gw.clone(), (host, 443))
        };
        Outbound::shared(
            policy(),
            vec![
                merchant("sg", "T_SG", sg, "open-sea-global.alipay.com"),
                merchant("eu", CLIENT, eu, "open-eu-global.alipay.com"),
            ],
        )
    }

    #[tokio::test]
    async fn several_merchants_route_by_header_and_the_header_is_not_forwarded() {
        let (sg, eu) = (alipay(200, "1", br#"{}"#), alipay(200, "1", br#"{}"#));
        let h = two_merchants(&sg, &eu);
        let reply = h.handle(pay(&[("X-Alipay-Sidecar-Merchant", "eu")])).await;
        assert_eq!(reply.head.status.as_u16(), 200, "{reply:?}");
        assert_eq!(marker(&reply), Some("true"));
        assert!(sg.seen().is_empty(), "sg's gateway got eu's request");
        let sent = eu.only();
        let hs = &sent.head.headers;
        assert_eq!(header(hs, "client-id"), Some(CLIENT));
        assert_eq!(header(hs, "host"), Some("open-eu-global.alipay.com"));
        assert!(header(hs, "x-alipay-sidecar-merchant").is_none());
        assert_eq!(&*reply.report.merchant, "eu");

        h.handle(pay(&[("X-Alipay-Sidecar-Merchant", " sg ")]))
            .await;
        assert_eq!(header(&sg.only().head.headers, "client-id"), Some("T_SG"));
    }

    #[tokio::test]
    async fn several_merchants_without_or_with_an_unknown_name_get_400_naming_them() {
        let (sg, eu) = (alipay(200, "1", br#"{}"#), alipay(200, "1", br#"{}"#));
        let h = two_merchants(&sg, &eu);
        for headers in [
            vec![],
            vec![("X-Alipay-Sidecar-Merchant", "us")],
            vec![
                ("X-Alipay-Sidecar-Merchant", "sg"),
                ("X-Alipay-Sidecar-Merchant", "eu"),
            ],
        ] {
            let reply = h.handle(pay(&headers)).await;
            assert_eq!(reply.head.status.as_u16(), 400, "{headers:?}");
            assert_eq!(
                result_code(&reply).as_deref(),
                Some("SIDECAR_MERCHANT_UNKNOWN")
            );
            let body = String::from_utf8_lossy(&reply.body).to_string();
            assert!(body.contains("sg, eu"), "{body}");
            assert_eq!(&*reply.report.merchant, UNSELECTED_MERCHANT);
        }
        assert!(sg.seen().is_empty() && eu.seen().is_empty());
    }

    #[tokio::test]
    async fn one_merchant_ignores_the_merchant_header() {
        let gw = alipay(200, "1", br#"{}"#);
        let reply = outbound(&gw)
            .handle(pay(&[("X-Alipay-Sidecar-Merchant", "nobody")]))
            .await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert!(header(&gw.only().head.headers, "x-alipay-sidecar-merchant").is_none());
        assert_eq!(&*reply.report.merchant, DEFAULT_MERCHANT);
    }

    // ---------------------------------------------------------------- [reconcile]

    /// Remembers what it was asked to record; fails when told to.
    #[derive(Default)]
    struct Recorder {
        pays: Mutex<Vec<crate::reconcile::PendingPay>>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl crate::reconcile::PayRecorder for Recorder {
        async fn record_pay(&self, pay: &crate::reconcile::PendingPay) -> Result<(), String> {
            self.pays.lock().unwrap().push(pay.clone());
            if self.fail {
                return Err("disk full".into());
            }
            Ok(())
        }
    }

    fn recording(
        policy: OutboundPolicy,
        gw: &Arc<Fake>,
        fail: bool,
    ) -> (Outbound<Arc<Fake>>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder {
            fail,
            ..Recorder::default()
        });
        let timing = crate::reconcile::PayTiming {
            reconcile_after: Duration::from_secs(60),
            default_close_after: Duration::from_secs(1800),
        };
        let h = outbound_with(policy, CLIENT, None, gw).with_pay_recording(
            crate::reconcile::PayRecording::new(recorder.clone(), timing),
        );
        (h, recorder)
    }

    const IN_PROCESS: &[u8] =
        br#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U","resultMessage":"payment in process"},"paymentRequestId":"p1"}"#;

    #[tokio::test]
    async fn a_verified_pay_answer_that_is_not_final_is_recorded_before_the_app_gets_it() {
        let gw = alipay(200, "1", IN_PROCESS);
        let (h, recorder) = recording(policy(), &gw, false);
        let reply = h.handle(pay(&[])).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(&reply.body[..], IN_PROCESS, "relayed byte-exact");
        let pays = recorder.pays.lock().unwrap().clone();
        assert_eq!(pays.len(), 1, "recorded before the reply was returned");
        assert_eq!(pays[0].merchant, DEFAULT_MERCHANT);
        assert_eq!(pays[0].client_id, CLIENT);
        assert_eq!(pays[0].payment_request_id, "p1");
        assert_eq!(pays[0].reconcile_at - pays[0].now, 60_000);
        assert_eq!(pays[0].close_time - pays[0].now, 1_800_000);
    }

    #[tokio::test]
    async fn final_unverified_or_other_answers_are_not_recorded() {
        // final answer
        let gw = alipay(
            200,
            "1",
            br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"}}"#,
        );
        let (h, recorder) = recording(policy(), &gw, false);
        assert_eq!(h.handle(pay(&[])).await.head.status.as_u16(), 200);
        // another API answering U
        let gw = alipay(200, "1", IN_PROCESS);
        let (h2, recorder2) = recording(policy(), &gw, false);
        let inquiry = request("/ams/api/v1/payments/inquiryPayment", &[], BODY);
        assert_eq!(h2.handle(inquiry).await.head.status.as_u16(), 200);
        // an unsigned U is withheld, never recorded
        let gw = canned(200, &[("Content-Type", "application/json")], IN_PROCESS);
        let (h3, recorder3) = recording(policy(), &gw, false);
        assert_eq!(h3.handle(pay(&[])).await.head.status.as_u16(), 502);
        // verification switched off: the answer is not verified, so not trusted
        let gw = canned(200, &[("Content-Type", "application/json")], IN_PROCESS);
        let mut off = policy();
        off.verify_responses = false;
        let (h4, recorder4) = recording(off, &gw, false);
        assert_eq!(h4.handle(pay(&[])).await.head.status.as_u16(), 200);
        for r in [recorder, recorder2, recorder3, recorder4] {
            assert!(r.pays.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_store_failure_does_not_cost_the_app_its_answer() {
        let gw = alipay(200, "1", IN_PROCESS);
        let (h, recorder) = recording(policy(), &gw, true);
        let reply = h.handle(pay(&[])).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(&reply.body[..], IN_PROCESS);
        assert_eq!(marker(&reply), Some("true"));
        assert_eq!(recorder.pays.lock().unwrap().len(), 1, "it was tried");
    }
}
