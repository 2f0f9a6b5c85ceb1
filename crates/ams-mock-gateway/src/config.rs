//! [`MockGatewayConfig`]: what an in-process gateway is started with.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::fault::Fault;
use crate::switches::{NotifyMode, PaymentOutcome};

/// Back-off before each notification attempt when nothing else is configured: a short,
/// bounded imitation of Alipay's schedule (which spans hours).
pub const DEFAULT_NOTIFY_BACKOFF: &[Duration] = &[
    Duration::from_secs(0),
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

/// Everything needed to start a [`crate::MockGateway`]; fields are public so tests and the demo can
/// set exactly what they need on top of [`MockGatewayConfig::new`].
#[derive(Clone)]
pub struct MockGatewayConfig {
    /// Address to listen on; port 0 picks a free port (see [`crate::MockGateway::local_addr`]).
    pub listen: SocketAddr,
    /// `Some(dir)`: serve HTTPS with a generated CA and server certificate and write the CA
    /// as `dir/ca.pem` (created if missing) for the sidecar's `ca_file`. `None`: plain HTTP.
    pub tls: Option<PathBuf>,
    /// With `tls`: keep the CA in `dir` (`ca.pem` and `ca_key.pem`, mode 0600): reused when
    /// both are there, created when neither is, so a sidecar trusting `ca.pem` keeps working
    /// when the gateway restarts. `false`: a new CA at every start.
    pub keep_ca: bool,
    /// The merchant public key Alipay would hold: SPKI or PKCS#1 PEM, or one-line base64 DER.
    pub merchant_public_key: String,
    /// The gateway's "Alipay" private key (PEM or base64 DER); `None` generates an RSA-2048
    /// key pair at start (published by [`crate::MockGateway::alipay_public_key_pem`]).
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
    /// Most events one `inquireNotificationList` page returns, whatever its `limit` asks (at
    /// least 1; default [`crate::MAX_EVENT_LIMIT`]): a small value makes a client page.
    pub event_page_max: usize,
}

impl MockGatewayConfig {
    /// Defaults for an in-process gateway: `127.0.0.1:0`, plain HTTP, generated Alipay key,
    /// keyVersion `1`, any client id, the request's notify URL, [`DEFAULT_NOTIFY_BACKOFF`],
    /// no fault, immediate notifications, pays that succeed at once.
    pub fn new(merchant_public_key: impl Into<String>) -> Self {
        MockGatewayConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            keep_ca: false,
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
            event_page_max: crate::MAX_EVENT_LIMIT as usize,
        }
    }
}

impl fmt::Debug for MockGatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("MockGatewayConfig")
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("keep_ca", &self.keep_ca)
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
            .field("event_page_max", &self.event_page_max)
            .finish_non_exhaustive()
    }
}
