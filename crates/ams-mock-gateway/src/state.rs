//! [`Shared`]: the state the accept loop, the request handlers and the notification tasks
//! share, and what it records for tests and the demo ([`ReceivedRequest`],
//! [`NotificationAttempt`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::watch;

use crate::api;
use crate::crypto;
use crate::fault::Fault;
use crate::switches::{InquiryAnswer, NotifyMode, PaymentOutcome};

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

/// How many received requests [`crate::MockGateway::received`] keeps (oldest dropped first), so a
/// long-running gateway does not grow without bound.
pub const RECEIVED_LOG_LIMIT: usize = 256;
/// Total body bytes the received-request log keeps (oldest entries dropped first; the
/// newest entry is always kept).
const RECEIVED_LOG_BYTES: usize = 32 * 1024 * 1024;

/// The notification client (plain HTTP only, pooled; built by `notify::client`).
pub(crate) type NotifyClient = Client<HttpConnector, Full<Bytes>>;

/// State shared by the accept loop, the request handlers and the notification tasks.
pub(crate) struct Shared {
    pub(crate) verifier: crypto::MerchantVerifier,
    pub(crate) signer: crypto::AlipaySigner,
    pub(crate) expected_client_id: Option<String>,
    pub(crate) api_key: Option<String>,
    pub(crate) notify_url_override: Option<String>,
    pub(crate) notify_backoff: Vec<Duration>,
    pub(crate) fault: Option<Fault>,
    pub(crate) notify_mode: NotifyMode,
    pub(crate) outcome: PaymentOutcome,
    pub(crate) store: Mutex<api::Store>,
    pub(crate) notifications: Mutex<Vec<NotificationAttempt>>,
    pub(crate) received: Mutex<std::collections::VecDeque<ReceivedRequest>>,
    pub(crate) in_flight: watch::Sender<usize>,
    pub(crate) shutdown_rx: watch::Receiver<bool>,
    pub(crate) notify_client: NotifyClient,
    /// The runtime the gateway was started in: timers and notifications are spawned there,
    /// also when a test calls [`crate::MockGateway::notify_now`] from outside it.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Late notifications still waiting, by paymentRequestId; dropping the sender cancels.
    pub(crate) pending_late: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// A lying inquiryPayment, set by the test ([`crate::MockGateway::set_inquiry_answer`]).
    pub(crate) inquiry_answer: Mutex<Option<InquiryAnswer>>,
    /// Every notification sent or dropped, for `inquireNotificationList` (issue 22).
    pub(crate) events: Mutex<api::events::EventLog>,
    /// Most events one `inquireNotificationList` page returns, whatever `limit` asks.
    pub(crate) event_page_max: usize,
    /// Holds `payments/cancel` answers while on ([`crate::MockGateway::hold_cancels`]).
    pub(crate) cancel_hold: crate::switches::CancelHold,
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

/// Resolves once shutdown was requested (or the gateway handle is gone); the watch guard is
/// dropped inside, so callers' futures stay `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
