//! A fake Alipay Global (AMS / Antom) gateway — the "stripe-mock" of Alipay.
//!
//! It exists so the demo, the sidecar's integration tests and users testing their
//! integration offline have a gateway that behaves like the real one where it matters for
//! signatures: it verifies every request exactly as Alipay does, answers with signed
//! responses, and sends signed payment notifications that it re-sends until acknowledged.
//! It runs in-process ([`MockGateway::start`] inside a tokio runtime) or as the
//! `alipay-sidecar mock-gateway` subcommand ([`cli_main`]). It signs and verifies with its own
//! code (the `rsa` crate, ring for TLS), never the sidecar's, so a bug in the sidecar's signer
//! is caught here instead of being mirrored.
//!
//! What it checks and answers (requests, routes and state, notifications, the payment-outcome
//! and fault switches) is described in `docs/mock-gateway.md` at the repository root; keep that
//! text in step with this crate.

mod api;
mod control;
mod crypto;
mod notify;
mod server;
mod switches;
mod tls;

pub use switches::{
    ControlError, InquiryAnswer, NotifyMode, PaymentOutcome, PaymentResult, PaymentStatus,
    DEFAULT_FAIL_CODE, MAX_SWITCH_DELAY,
};

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{FixedOffset, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Back-off before each notification attempt when nothing else is configured: a short,
/// bounded imitation of Alipay's schedule (which spans hours).
pub const DEFAULT_NOTIFY_BACKOFF: &[Duration] = &[
    Duration::from_secs(0),
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// Everything needed to start a [`MockGateway`]; fields are public so tests and the demo can
/// set exactly what they need on top of [`MockGatewayConfig::new`].
#[derive(Clone)]
pub struct MockGatewayConfig {
    /// Address to listen on; port 0 picks a free port (see [`MockGateway::local_addr`]).
    pub listen: SocketAddr,
    /// `Some(dir)`: serve HTTPS with a generated CA and server certificate and write the CA
    /// as `dir/ca.pem` (created if missing) for the sidecar's `ca_file`. `None`: plain HTTP.
    pub tls: Option<PathBuf>,
    /// The merchant public key Alipay would hold: SPKI or PKCS#1 PEM, or one-line base64 DER.
    pub merchant_public_key: String,
    /// The gateway's "Alipay" private key (PEM or base64 DER); `None` generates an RSA-2048
    /// key pair at start (published by [`MockGateway::alipay_public_key_pem`]).
    pub alipay_private_key: Option<String>,
    /// `keyVersion` announced in response and notification signatures.
    pub alipay_key_version: String,
    /// When set, requests from any other `Client-Id` are rejected as `INVALID_SIGNATURE`.
    pub expected_client_id: Option<String>,
    /// The API key accepted as `Authorization: Bearer <key>` (for the client id encoded in
    /// it; TEST keys on `/ams/sandbox/` paths only); any other Bearer value, or any at all
    /// when `None`, gets Alipay's unsigned `OAUTH_FAIL`/`F`. Answers to API-key calls carry
    /// no signature.
    pub api_key: Option<String>,
    /// When set, notifications go here instead of the request's `paymentNotifyUrl`.
    pub notify_url_override: Option<String>,
    /// Wait before each notification attempt (its length is the number of attempts); empty
    /// disables notifications.
    pub notify_backoff: Vec<Duration>,
    /// Fault applied to every request (a request's `mockFault` field overrides it).
    pub fault: Option<Fault>,
    /// When each payment's notification is sent once it is final (a pay's `mockNotify`
    /// field overrides it); default [`NotifyMode::Immediate`].
    pub notify: NotifyMode,
    /// How each pay ends (a pay's `mockOutcome` field overrides it); default
    /// [`PaymentOutcome::Success`].
    pub outcome: PaymentOutcome,
}

impl MockGatewayConfig {
    /// Defaults for an in-process gateway: `127.0.0.1:0`, plain HTTP, generated Alipay key,
    /// keyVersion `1`, any client id, the request's notify URL, [`DEFAULT_NOTIFY_BACKOFF`],
    /// no fault, immediate notifications, pays that succeed at once.
    pub fn new(merchant_public_key: impl Into<String>) -> Self {
        MockGatewayConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            merchant_public_key: merchant_public_key.into(),
            alipay_private_key: None,
            alipay_key_version: "1".into(),
            expected_client_id: None,
            api_key: None,
            notify_url_override: None,
            notify_backoff: DEFAULT_NOTIFY_BACKOFF.to_vec(),
            fault: None,
            notify: NotifyMode::Immediate,
            outcome: PaymentOutcome::Success,
        }
    }
}

impl fmt::Debug for MockGatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("MockGatewayConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field(
                "alipay_private_key",
                &self.alipay_private_key.as_ref().map(|_| "<set>"),
            )
            .field("alipay_key_version", &self.alipay_key_version)
            .field("expected_client_id", &self.expected_client_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("notify_url_override", &self.notify_url_override)
            .field("notify_backoff", &self.notify_backoff)
            .field("fault", &self.fault)
            .field("notify", &self.notify)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

/// A misbehaviour to inject, so clients can test their handling of each failure mode; see
/// the table in the module documentation. Parsed from the same strings as `--fault` and
/// `"mockFault"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `delay:<ms>`: answer late.
    Delay(Duration),
    /// `slow_sign:<ms>`: sign the answer, then keep the signing thread <ms> longer, as a slow
    /// CPU signing with a large key would (the answer is otherwise normal).
    SlowSign(Duration),
    /// `drop`: close the connection without answering.
    Drop,
    /// `reset_mid_body`: headers and half the body, then close.
    ResetMidBody,
    /// `http_status:<code>`: a non-200 status (400–599) with an HTML body.
    HttpStatus(u16),
    /// `unsigned`: no signature headers on a valid response.
    Unsigned,
    /// `tampered`: a signature over other bytes than the body.
    Tampered,
    /// `invalid_signature`: Alipay's unsigned INVALID_SIGNATURE rejection.
    InvalidSignature,
    /// `unknown_exception`: signed `UNKNOWN_EXCEPTION`/`U`.
    UnknownException,
    /// `signed_failure`: signed `PROCESS_FAIL`/`F`.
    SignedFailure,
    /// `no_notify`: no notification after the pay.
    NoNotify,
    /// `notify_tampered`: the notification's signature is over other bytes.
    NotifyTampered,
    /// `stale_response_time`: the normal answer, signed over [`STALE_RESPONSE_TIME`] (a
    /// genuine answer from long ago, replayed).
    StaleResponseTime,
    /// `gzip`: the signed answer, gzip-compressed with `Content-Encoding: gzip` (signature over
    /// the uncompressed body), as a front end that compresses whatever the client asked for.
    Gzip,
    /// `status:<code>` / `unsigned_status:<code>`: the normal answer (signed, or without
    /// signature headers) with another HTTP status (200-599), e.g. a 201 or a 302 carrying
    /// `resultStatus: "S"`, for the sidecar's response policy.
    Status {
        /// The HTTP status.
        code: u16,
        /// Whether the answer keeps its signature headers.
        signed: bool,
    },
}

/// The accepted spellings, for error messages and `--help`.
const FAULT_KINDS: &str = "delay:<ms>, slow_sign:<ms>, drop, reset_mid_body, http_status:<400-599>, \
     status:<200-599>, unsigned_status:<200-599>, gzip, unsigned, tampered, invalid_signature, unknown_exception, signed_failure, no_notify, notify_tampered, stale_response_time";

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(ms) = s.strip_prefix("delay:") {
            let ms = ms.trim();
            let d = match ms.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => humantime::parse_duration(ms).map_err(|_| {
                    format!("`{s}`: the delay must be milliseconds (delay:500) or a duration (delay:2s)")
                })?,
            };
            return Ok(Fault::Delay(d));
        }
        if let Some(ms) = s.strip_prefix("slow_sign:") {
            return ms
                .trim()
                .parse::<u64>()
                .map(|ms| Fault::SlowSign(Duration::from_millis(ms)))
                .map_err(|_| format!("`{s}`: the hold must be milliseconds (slow_sign:500)"));
        }
        if let Some(code) = s.strip_prefix("http_status:") {
            return match code.trim().parse::<u16>() {
                Ok(c) if (400..=599).contains(&c) => Ok(Fault::HttpStatus(c)),
                _ => Err(format!(
                    "`{s}`: the status must be a number from 400 to 599"
                )),
            };
        }
        for (prefix, signed) in [("status:", true), ("unsigned_status:", false)] {
            if let Some(code) = s.strip_prefix(prefix) {
                return match code.trim().parse::<u16>() {
                    Ok(c) if (200..=599).contains(&c) && c != 204 && c != 304 => {
                        Ok(Fault::Status { code: c, signed })
                    }
                    _ => Err(format!(
                        "`{s}`: the status must be a number from 200 to 599 that carries a body"
                    )),
                };
            }
        }
        Ok(match s {
            "drop" => Fault::Drop,
            "gzip" => Fault::Gzip,
            "reset_mid_body" => Fault::ResetMidBody,
            "unsigned" => Fault::Unsigned,
            "tampered" => Fault::Tampered,
            "invalid_signature" => Fault::InvalidSignature,
            "unknown_exception" => Fault::UnknownException,
            "signed_failure" => Fault::SignedFailure,
            "no_notify" => Fault::NoNotify,
            "notify_tampered" => Fault::NotifyTampered,
            "stale_response_time" => Fault::StaleResponseTime,
            _ => return Err(format!("unknown fault `{s}`; known: {FAULT_KINDS}")),
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Delay(d) => write!(f, "delay:{}", d.as_millis()),
            Fault::SlowSign(d) => write!(f, "slow_sign:{}", d.as_millis()),
            Fault::Drop => f.write_str("drop"),
            Fault::Gzip => f.write_str("gzip"),
            Fault::ResetMidBody => f.write_str("reset_mid_body"),
            Fault::HttpStatus(c) => write!(f, "http_status:{c}"),
            Fault::Unsigned => f.write_str("unsigned"),
            Fault::Tampered => f.write_str("tampered"),
            Fault::InvalidSignature => f.write_str("invalid_signature"),
            Fault::UnknownException => f.write_str("unknown_exception"),
            Fault::SignedFailure => f.write_str("signed_failure"),
            Fault::NoNotify => f.write_str("no_notify"),
            Fault::NotifyTampered => f.write_str("notify_tampered"),
            Fault::StaleResponseTime => f.write_str("stale_response_time"),
            Fault::Status { code, signed: true } => write!(f, "status:{code}"),
            Fault::Status {
                code,
                signed: false,
            } => write!(f, "unsigned_status:{code}"),
        }
    }
}

/// One notification delivery attempt, so tests and the demo can see what Alipay would have
/// seen from the merchant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationAttempt {
    /// The notify URL used.
    pub url: String,
    /// The pay this notification reports.
    pub payment_request_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// HTTP status of the answer; `None` when there was none (refused, timeout, not sent).
    pub status: Option<u16>,
    /// The answer was HTTP 200 with `result.resultStatus == "S"`: delivery is finished.
    pub acknowledged: bool,
    /// Why there was no HTTP answer, when there was none.
    pub error: Option<String>,
}

/// One request as the gateway received it, so tests and the demo can check what a client
/// (the sidecar) really put on the wire: headers as sent, body bytes as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// HTTP method.
    pub method: String,
    /// The request-target as received (path and query).
    pub target: String,
    /// All headers in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The request signature verified (client id, time and signature present and valid).
    pub verified: bool,
    /// The fault that applied to this request, if any.
    pub fault: Option<Fault>,
}

impl ReceivedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How many received requests [`MockGateway::received`] keeps (oldest dropped first), so a
/// long-running gateway does not grow without bound.
pub const RECEIVED_LOG_LIMIT: usize = 256;
/// Total body bytes the received-request log keeps (oldest entries dropped first; the
/// newest entry is always kept).
const RECEIVED_LOG_BYTES: usize = 32 * 1024 * 1024;

/// Why the gateway could not start; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum MockGatewayError {
    /// The merchant public key could not be used.
    #[error("mock-gateway: the merchant public key is unusable: {reason}. Give the merchant's PUBLIC key as SPKI PEM (-----BEGIN PUBLIC KEY-----), PKCS#1 PEM, or one-line base64 DER")]
    MerchantPublicKey {
        /// What was wrong with it.
        reason: String,
    },
    /// The configured Alipay private key could not be used.
    #[error("mock-gateway: the Alipay private key is unusable: {reason}. Give an RSA-2048+ private key as PKCS#8/PKCS#1 PEM or one-line base64 DER, or omit it to generate one")]
    AlipayPrivateKey {
        /// What was wrong with it.
        reason: String,
    },
    /// Generating the Alipay key pair failed.
    #[error("mock-gateway: generating the Alipay key pair failed: {reason}")]
    KeyGeneration {
        /// The underlying error.
        reason: String,
    },
    /// The key version cannot be put into a Signature header.
    #[error("mock-gateway: key version `{0}` is invalid; use letters and digits only, e.g. 1")]
    KeyVersion(String),
    /// The notify URL override is not a plain http URL.
    #[error("mock-gateway: notify URL `{url}` is unusable: {reason}")]
    NotifyUrl {
        /// The URL as given.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("mock-gateway: cannot listen on {addr}: {source}. Pick another address or port (port 0 = any free port)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Generating the TLS certificates failed.
    #[error("mock-gateway: TLS setup failed: {reason}")]
    Tls {
        /// The underlying error.
        reason: String,
    },
    /// A file could not be written.
    #[error("mock-gateway: cannot write {path}: {source}. Check that the directory is writable")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// State shared by the accept loop, the request handlers and the notification tasks.
pub(crate) struct Shared {
    verifier: crypto::MerchantVerifier,
    signer: crypto::AlipaySigner,
    expected_client_id: Option<String>,
    api_key: Option<String>,
    notify_url_override: Option<String>,
    notify_backoff: Vec<Duration>,
    fault: Option<Fault>,
    notify_mode: NotifyMode,
    outcome: PaymentOutcome,
    store: Mutex<api::Store>,
    notifications: Mutex<Vec<NotificationAttempt>>,
    received: Mutex<std::collections::VecDeque<ReceivedRequest>>,
    in_flight: watch::Sender<usize>,
    shutdown_rx: watch::Receiver<bool>,
    notify_client: notify::NotifyClient,
    /// The runtime the gateway was started in: timers and notifications are spawned there,
    /// also when a test calls [`MockGateway::notify_now`] from outside it.
    runtime: tokio::runtime::Handle,
    /// Late notifications still waiting, by paymentRequestId; dropping the sender cancels.
    pending_late: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// A lying inquiryPayment, set by the test ([`MockGateway::set_inquiry_answer`]).
    inquiry_answer: Mutex<Option<InquiryAnswer>>,
}

impl Shared {
    pub(crate) fn record_request(&self, request: ReceivedRequest) {
        if let Ok(mut log) = self.received.lock() {
            log.push_back(request);
            let mut bytes: usize = log.iter().map(|r| r.body.len()).sum();
            while log.len() > 1 && (log.len() > RECEIVED_LOG_LIMIT || bytes > RECEIVED_LOG_BYTES) {
                if let Some(old) = log.pop_front() {
                    bytes -= old.body.len();
                }
            }
        }
    }
}

/// A running fake gateway. Dropping it stops it too (without waiting); prefer
/// [`MockGateway::shutdown`].
pub struct MockGateway {
    local_addr: SocketAddr,
    base_url: String,
    ca_file: Option<PathBuf>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

/// Resolves once shutdown was requested (or the gateway handle is gone); the watch guard is
/// dropped inside, so callers' futures stay `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Alipay's clock: China Standard Time, as its timestamps show.
fn alipay_now() -> chrono::DateTime<FixedOffset> {
    let now = Utc::now();
    match FixedOffset::east_opt(8 * 3600) {
        Some(offset) => now.with_timezone(&offset),
        None => now.fixed_offset(),
    }
}

/// `response-time` header value, e.g. `2024-05-01T12:34:57+08:00`.
/// The `response-time` of fault `stale_response_time`: a moment in 2001.
pub const STALE_RESPONSE_TIME: &str = "2001-09-09T09:46:40+08:00";

pub(crate) fn response_time() -> String {
    alipay_now().format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Notification `Request-Time`, e.g. `2024-05-01T12:35:10.253+08:00`.
pub(crate) fn notification_time() -> String {
    alipay_now().format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

pub(crate) fn stamp() -> api::Stamp {
    let now = alipay_now();
    api::Stamp {
        now: now.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        date: now.format("%Y%m%d").to_string(),
    }
}

fn check_notify_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only plain http:// notify URLs are supported by the mock gateway".into());
    }
    if uri.authority().is_none() {
        return Err("the URL has no host".into());
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str) -> Result<(), MockGatewayError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| MockGatewayError::WriteFile {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, contents).map_err(|source| MockGatewayError::WriteFile {
        path: path.to_path_buf(),
        source,
    })
}

impl MockGateway {
    /// Loads the keys, binds the listener and starts serving in the current tokio runtime.
    /// Returns once the gateway accepts connections.
    pub async fn start(config: MockGatewayConfig) -> Result<MockGateway, MockGatewayError> {
        let merchant = crypto::parse_public_key(&config.merchant_public_key)
            .map_err(|reason| MockGatewayError::MerchantPublicKey { reason })?;
        let kv = &config.alipay_key_version;
        if kv.is_empty() || !kv.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(MockGatewayError::KeyVersion(kv.clone()));
        }
        if let Some(url) = &config.notify_url_override {
            check_notify_url(url).map_err(|reason| MockGatewayError::NotifyUrl {
                url: url.clone(),
                reason,
            })?;
        }
        let alipay_key = match &config.alipay_private_key {
            Some(text) => crypto::parse_private_key(text)
                .map_err(|reason| MockGatewayError::AlipayPrivateKey { reason })?,
            None => tokio::task::spawn_blocking(crypto::generate_private_key)
                .await
                .map_err(|e| MockGatewayError::KeyGeneration {
                    reason: e.to_string(),
                })?
                .map_err(|reason| MockGatewayError::KeyGeneration { reason })?,
        };
        let signer = crypto::AlipaySigner::new(alipay_key, kv.clone())
            .map_err(|reason| MockGatewayError::AlipayPrivateKey { reason })?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| MockGatewayError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MockGatewayError::Bind {
                addr: config.listen,
                source,
            })?;

        let (acceptor, ca_file) = match &config.tls {
            None => (None, None),
            Some(dir) => {
                let identity = tls::generate(Some(local_addr.ip()))
                    .map_err(|reason| MockGatewayError::Tls { reason })?;
                let path = dir.join("ca.pem");
                write_file(&path, &identity.ca_pem)?;
                (Some(identity.acceptor), Some(path))
            }
        };

        let host = match local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{}", SocketAddr::new(host, local_addr.port()));

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (in_flight, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            verifier: crypto::MerchantVerifier::new(merchant),
            signer,
            expected_client_id: config.expected_client_id.clone(),
            api_key: config
                .api_key
                .as_ref()
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
            notify_url_override: config.notify_url_override.clone(),
            notify_backoff: config.notify_backoff.clone(),
            fault: config.fault,
            notify_mode: config.notify,
            outcome: config.outcome.clone(),
            store: Mutex::new(api::Store::default()),
            notifications: Mutex::new(Vec::new()),
            received: Mutex::new(std::collections::VecDeque::new()),
            in_flight,
            shutdown_rx,
            notify_client: notify::client(),
            runtime: tokio::runtime::Handle::current(),
            pending_late: Mutex::new(HashMap::new()),
            inquiry_answer: Mutex::new(None),
        });
        let accept_task = tokio::spawn(server::accept_loop(listener, acceptor, shared.clone()));
        tracing::info!(%base_url, "mock-gateway: listening");
        Ok(MockGateway {
            local_addr,
            base_url,
            ca_file,
            shared,
            shutdown_tx,
            accept_task: Some(accept_task),
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What to put in the sidecar's `[outbound] gateway`: `https://127.0.0.1:PORT` with TLS,
    /// `http://…` without (an unspecified listen address is reported as loopback).
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The CA certificate (PEM) a client must trust to reach the TLS gateway; `None` without
    /// TLS. This is the sidecar's `[outbound] ca_file`.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The gateway's "Alipay" public key as SPKI PEM, for the sidecar's
    /// `[keys] alipay_public_keys` under [`MockGatewayConfig::alipay_key_version`].
    pub fn alipay_public_key_pem(&self) -> String {
        self.shared.signer.public_pem().to_string()
    }

    /// Every notification attempt so far, in order.
    pub fn notifications(&self) -> Vec<NotificationAttempt> {
        self.shared
            .notifications
            .lock()
            .map(|log| log.clone())
            .unwrap_or_default()
    }

    /// The last requests received, oldest first (at most [`RECEIVED_LOG_LIMIT`], and fewer
    /// when their bodies exceed 32 MiB together).
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared
            .received
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The state `inquiryPayment` would report for the pay with this `paymentRequestId`;
    /// `None` when no such pay reached the gateway.
    pub fn payment_status(&self, payment_request_id: &str) -> Option<PaymentStatus> {
        self.shared
            .store
            .lock()
            .ok()
            .and_then(|store| store.status(payment_request_id))
    }

    /// From now on, every `inquiryPayment` (signed request, whatever it asks about) gets this
    /// signed answer instead of the truth; `None` restores the truth. For testing that a
    /// client checks which payment an answer is about.
    pub fn set_inquiry_answer(&self, answer: Option<InquiryAnswer>) {
        if let Ok(mut a) = self.shared.inquiry_answer.lock() {
            *a = answer;
        }
    }

    /// Sends the payment's PAYMENT_RESULT notification now (re-sent with the back-off until
    /// acknowledged, like any other), whatever its notify mode: "Alipay's late notification"
    /// arriving at the moment a test chooses. A `late:` notification still waiting is
    /// cancelled, so it is not sent twice; calling this again sends it again, as Alipay's
    /// re-sends do. Works from inside or outside the gateway's runtime.
    ///
    /// Fails when the payment is unknown, still processing, or was cancelled before it had a
    /// result (Alipay sends no PAYMENT_RESULT then), or when it has nowhere to go.
    pub fn notify_now(&self, payment_request_id: &str) -> Result<(), ControlError> {
        notify::now(&self.shared, payment_request_id)
    }

    /// Makes a PROCESSING payment final now (e.g. one paid with `mockOutcome` `never`), and
    /// sends its notification as its notify mode says. Fails when the payment is unknown or
    /// already final (including cancelled). Returns the new status.
    pub fn complete_payment(
        &self,
        payment_request_id: &str,
        result: PaymentResult,
    ) -> Result<PaymentStatus, ControlError> {
        if *self.shared.shutdown_rx.borrow() {
            return Err(ControlError::Stopped);
        }
        control::complete(&self.shared, payment_request_id, &result)
    }

    /// Waits until every notification delivery started so far has finished (acknowledged or
    /// back-off used up), so tests and the demo can check [`MockGateway::notifications`]
    /// without polling. A delivery starts before the pay response is sent; a `late:`
    /// notification and a payment with an outcome delay count from the pay, so this waits
    /// for them too; a held notification (`none`, `never`) does not count until it is sent.
    pub async fn notifications_settled(&self) {
        let mut rx = self.shared.in_flight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Stops accepting, lets open connections finish (up to 5 s), cancels pending
    /// notification re-sends, and returns when the listener is closed.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockGateway {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// Options of `alipay-sidecar mock-gateway`: a fake Alipay gateway for offline testing.
#[derive(clap::Args, Debug, Clone)]
pub struct MockGatewayArgs {
    /// Address to listen on (port 0 = any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a generated CA + server certificate; the CA is written to
    /// OUT_DIR/ca.pem for the sidecar's `ca_file`.
    #[arg(long)]
    pub tls: bool,
    /// Directory for the files the gateway writes (ca.pem, alipay_public_key.pem).
    #[arg(
        long = "out-dir",
        visible_alias = "tls-dir",
        value_name = "DIR",
        default_value = "mock-gateway"
    )]
    pub out_dir: PathBuf,
    /// Merchant public key file (SPKI/PKCS#1 PEM or one-line base64 DER) used to verify
    /// request signatures.
    #[arg(long, value_name = "FILE")]
    pub merchant_public_key: PathBuf,
    /// The gateway's "Alipay" private key file; when absent a key pair is generated. The
    /// public half is always written to OUT_DIR/alipay_public_key.pem.
    #[arg(long, value_name = "FILE")]
    pub alipay_private_key: Option<PathBuf>,
    /// keyVersion announced in response and notification signatures.
    #[arg(long, value_name = "N", default_value = "1")]
    pub key_version: String,
    /// Accept only this Client-Id (others get INVALID_SIGNATURE); default: any.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Accept the API key in this file (one line, `{isak|irak}_{TEST|PROD}_…`) as
    /// `Authorization: Bearer`; other keys get an unsigned OAUTH_FAIL. Default: no API key.
    #[arg(long, value_name = "FILE")]
    pub api_key: Option<PathBuf>,
    /// Send notifications here instead of the request's paymentNotifyUrl (http:// only).
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
    /// Wait before each notification attempt, comma-separated (the count is the number of
    /// attempts).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = humantime::parse_duration,
        default_value = "0s,2s,10s,60s,300s"
    )]
    pub notify_backoff: Vec<Duration>,
    /// Fault for every request: delay:<ms>, slow_sign:<ms>, drop, reset_mid_body, http_status:<code>,
    /// unsigned, tampered, invalid_signature, unknown_exception, signed_failure, no_notify,
    /// notify_tampered, stale_response_time.
    #[arg(long, value_name = "KIND", value_parser = Fault::from_str)]
    pub fault: Option<Fault>,
    /// When each payment's notification is sent once it is final: immediate, none (only when
    /// triggered with POST /mock/notify/PAYMENT_REQUEST_ID), late:DURATION. A pay's
    /// "mockNotify" field overrides it.
    #[arg(long, value_name = "MODE", value_parser = NotifyMode::from_str, default_value = "immediate")]
    pub notify: NotifyMode,
    /// How each pay ends: success, success_after:DURATION, fail_after:DURATION (or
    /// fail_after:DURATION:CODE), never; all but success answer PAYMENT_IN_PROCESS/U. A pay's
    /// "mockOutcome" field overrides it.
    #[arg(long, value_name = "OUTCOME", value_parser = PaymentOutcome::from_str, default_value = "success")]
    pub outcome: PaymentOutcome,
}

fn read_key_file(what: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "mock-gateway: cannot read the {what} file {}: {e}",
            path.display()
        )
    })
}

/// Entry point of `alipay-sidecar mock-gateway`; runs until Ctrl-C (or SIGTERM) and returns
/// the process exit code (0 stopped cleanly, 1 could not start, 2 bad input).
pub fn cli_main(args: MockGatewayArgs) -> i32 {
    use std::io::IsTerminal as _;
    // Logs go to stderr so stdout carries only the start-up summary.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();

    let merchant_public_key = match read_key_file("merchant public key", &args.merchant_public_key)
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let alipay_private_key = match &args.alipay_private_key {
        None => None,
        Some(path) => match read_key_file("Alipay private key", path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    let api_key = match &args.api_key {
        None => None,
        Some(path) => match read_key_file("API key", path) {
            Ok(k) => Some(k.trim().to_string()),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    let config = MockGatewayConfig {
        listen: args.listen,
        api_key,
        tls: args.tls.then(|| args.out_dir.clone()),
        merchant_public_key,
        alipay_private_key,
        alipay_key_version: args.key_version.clone(),
        expected_client_id: args.client_id.clone(),
        notify_url_override: args.notify_url.clone(),
        notify_backoff: args.notify_backoff.clone(),
        fault: args.fault,
        notify: args.notify,
        outcome: args.outcome.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-gateway: cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run_cli(config, args))
}

async fn run_cli(config: MockGatewayConfig, args: MockGatewayArgs) -> i32 {
    let generated = config.alipay_private_key.is_none();
    let gateway = match MockGateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return match e {
                MockGatewayError::Bind { .. }
                | MockGatewayError::Tls { .. }
                | MockGatewayError::WriteFile { .. }
                | MockGatewayError::KeyGeneration { .. } => 1,
                _ => 2,
            };
        }
    };
    let public_key_path = args.out_dir.join("alipay_public_key.pem");
    if let Err(e) = write_file(&public_key_path, &gateway.alipay_public_key_pem()) {
        eprintln!("{e}");
        gateway.shutdown().await;
        return 1;
    }

    println!("mock-gateway: listening on {}", gateway.base_url());
    if let Some(ca) = gateway.ca_file() {
        println!("mock-gateway: wrote {} (the CA to trust)", ca.display());
    }
    println!(
        "mock-gateway: wrote {} (Alipay public key, keyVersion {}{})",
        public_key_path.display(),
        args.key_version,
        if generated {
            "; generated for this run — pass --alipay-private-key for a stable key"
        } else {
            ""
        }
    );
    println!(
        "mock-gateway: verifying requests with {} (client id: {})",
        args.merchant_public_key.display(),
        args.client_id.as_deref().unwrap_or("any")
    );
    println!(
        "mock-gateway: notifications to {} with back-off {}",
        args.notify_url
            .as_deref()
            .unwrap_or("the request's paymentNotifyUrl"),
        args.notify_backoff
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    if let Some(f) = args.fault {
        println!("mock-gateway: fault for every request: {f}");
    }
    if args.notify != NotifyMode::Immediate || args.outcome != PaymentOutcome::Success {
        println!(
            "mock-gateway: every pay: outcome {}, notification {} (POST {}/mock/notify/<paymentRequestId> sends one now)",
            args.outcome,
            args.notify,
            gateway.base_url()
        );
    }
    println!("mock-gateway: sidecar settings:");
    println!("    [outbound] gateway = \"{}\"", gateway.base_url());
    if let Some(ca) = gateway.ca_file() {
        println!("    [outbound] ca_file = \"{}\"", ca.display());
    }
    println!(
        "    [keys] alipay_public_keys = {{ \"{}\" = \"{}\" }}",
        args.key_version,
        public_key_path.display()
    );
    println!("mock-gateway: press Ctrl-C to stop");

    wait_for_stop_signal().await;
    println!("mock-gateway: stopping");
    gateway.shutdown().await;
    0
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip() {
        for s in [
            "delay:250",
            "slow_sign:250",
            "drop",
            "reset_mid_body",
            "http_status:503",
            "unsigned",
            "tampered",
            "invalid_signature",
            "unknown_exception",
            "signed_failure",
            "no_notify",
            "notify_tampered",
            "stale_response_time",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert_eq!(
            "delay:2s".parse::<Fault>().unwrap(),
            Fault::Delay(Duration::from_secs(2))
        );
        assert!("http_status:200".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
    }

    #[test]
    fn times_look_like_alipay() {
        let t = response_time();
        assert!(t.ends_with("+08:00") && t.len() == 25, "{t}");
        let n = notification_time();
        assert!(n.ends_with("+08:00") && n.len() == 29, "{n}");
    }
}
