//! [`MockGateway`]: starting the fake gateway in-process, what it lets a test see and do,
//! and stopping it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::events::NotificationEvent;
use crate::config::MockGatewayConfig;
use crate::error::MockGatewayError;
use crate::state::{NotificationAttempt, ReceivedRequest, Shared};
use crate::switches::{ControlError, InquiryAnswer, PaymentResult, PaymentStatus};
use crate::{api, control, crypto, notify, out_dir, server, tls};

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

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), MockGatewayError> {
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
                let tls_error = |reason| MockGatewayError::Tls { reason };
                let ca = if config.keep_ca {
                    out_dir::load_or_create_ca(dir).map_err(tls_error)?
                } else {
                    tls::new_ca().map_err(tls_error)?
                };
                let identity = tls::identity(ca, Some(local_addr.ip())).map_err(tls_error)?;
                let path = dir.join("ca.pem");
                if !config.keep_ca {
                    write_file(&path, &identity.ca_pem)?;
                }
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
            events: Mutex::new(api::events::EventLog::default()),
            event_page_max: config.event_page_max,
            cancel_hold: Default::default(),
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

    /// The last requests received, oldest first (at most [`crate::RECEIVED_LOG_LIMIT`], and fewer
    /// when their bodies exceed 32 MiB together).
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared
            .received
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The notification event log (what `inquireNotificationList` reads), oldest first: every
    /// notification sent or dropped (notify mode `drop`), with its delivery status.
    pub fn events(&self) -> Vec<NotificationEvent> {
        self.shared
            .events
            .lock()
            .map(|log| log.all())
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

    /// While `on`, every `payments/cancel` waits before the gateway reads it (its answer is
    /// held) until this is called with `false`: a cancel kept in flight, so a test can send
    /// the payment's notification meanwhile ([`MockGateway::complete_payment`]) and see what
    /// a client does with a result that arrives during its cancel (issue 22).
    pub fn hold_cancels(&self, on: bool) {
        self.shared.cancel_hold.set(on);
    }

    /// How many `payments/cancel` requests [`MockGateway::hold_cancels`] holds now.
    pub fn cancels_held(&self) -> usize {
        self.shared.cancel_hold.waiting()
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
