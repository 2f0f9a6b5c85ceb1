//! Asynchronous PAYMENT_RESULT notifications, re-sent with back-off until acknowledged, as
//! Alipay does (spec §6).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use tokio::sync::oneshot;

use chrono::Utc;

use super::api::events::DeliveryStatus;
use super::api::NotifyJob;
use super::clock::notification_time;
use super::crypto;
use super::state::{NotificationAttempt, NotifyClient, Shared};
use super::switches::{ControlError, NotifyMode};

/// How long one delivery attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest acknowledgement body read from the merchant.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// The hyper client used for every notification (plain HTTP only, pooled).
pub(crate) fn client() -> NotifyClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Decrements the in-flight counter however the task ends (done, failed, aborted).
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    /// Raises the counter; it goes down when the guard is dropped.
    pub(crate) fn start(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.send_modify(|n| *n += 1);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The payment just became final: sends its notification as its [`NotifyMode`] says (now,
/// later, or not until [`now`] is called).
pub(crate) fn due(shared: &Arc<Shared>, payment_request_id: &str) {
    let found = match shared.store.lock() {
        Ok(store) => store.notification(payment_request_id),
        Err(_) => return,
    };
    match found {
        Ok((NotifyMode::Immediate, job)) => {
            let _ = spawn(shared, job, None);
        }
        Ok((NotifyMode::Late(delay), job)) => {
            let _ = spawn(shared, job, Some(delay));
        }
        Ok((NotifyMode::Drop, job)) => dropped(shared, &job),
        Ok((NotifyMode::Held, _)) => tracing::info!(
            payment_request_id,
            "mock-gateway: notification held (notify mode none); send it with POST /mock/notify/<paymentRequestId>"
        ),
        Err(e) => tracing::debug!(error = %e, "mock-gateway: no notification"),
    }
}

/// Notify mode `drop`: the event log records the notification as FAILED; nothing is sent.
fn dropped(shared: &Shared, job: &NotifyJob) {
    if let Ok(mut log) = shared.events.lock() {
        let id = log.open(
            &job.client_id,
            &job.body,
            DeliveryStatus::Failed,
            Utc::now(),
        );
        tracing::info!(
            payment_request_id = %job.payment_request_id,
            event_id = %id,
            "mock-gateway: notification dropped (notify mode drop); logged FAILED in the event log"
        );
    }
}

/// A refund succeeded: sends its REFUND_RESULT now, or only logs it FAILED (`drop`).
pub(crate) fn refunded(shared: &Arc<Shared>, job: NotifyJob) {
    if job.dropped {
        dropped(shared, &job);
        return;
    }
    if let Err(e) = spawn(shared, job, None) {
        tracing::debug!(error = %e, "mock-gateway: no refund notification");
    }
}

/// Sends the payment's notification now, whatever its notify mode; a late one still waiting
/// is cancelled, so this one takes its place.
pub(crate) fn now(shared: &Arc<Shared>, payment_request_id: &str) -> Result<(), ControlError> {
    if *shared.shutdown_rx.borrow() {
        return Err(ControlError::Stopped);
    }
    let (_, job) = shared
        .store
        .lock()
        .map_err(|_| ControlError::Stopped)?
        .notification(payment_request_id)?;
    if let Ok(mut pending) = shared.pending_late.lock() {
        // Dropping the sender wakes the waiting task, which then ends without sending.
        pending.remove(payment_request_id);
    }
    spawn(shared, job, None)
}

/// Starts delivering `job` in the background (after `late`, when given); returns at once.
///
/// The in-flight counter is raised before this returns, so a caller that got the pay
/// response can rely on [`super::MockGateway::notifications_settled`] waiting for it.
fn spawn(shared: &Arc<Shared>, job: NotifyJob, late: Option<Duration>) -> Result<(), ControlError> {
    let url = match shared
        .notify_url_override
        .clone()
        .or_else(|| job.url_from_request.clone())
    {
        Some(url) => url,
        None => {
            tracing::debug!(
                payment_request_id = %job.payment_request_id,
                "mock-gateway: pay without paymentNotifyUrl and no notify URL configured; no notification"
            );
            return Err(ControlError::NoNotifyUrl(job.payment_request_id));
        }
    };
    if shared.notify_backoff.is_empty() {
        return Err(ControlError::NotificationsDisabled);
    }
    let event_id = shared
        .events
        .lock()
        .map(|mut log| {
            log.open(
                &job.client_id,
                &job.body,
                DeliveryStatus::Pending,
                Utc::now(),
            )
        })
        .unwrap_or_default();
    let guard = InFlight::start(shared);
    let mut cancelled = None;
    if late.is_some() {
        let (tx, rx) = oneshot::channel::<()>();
        if let Ok(mut pending) = shared.pending_late.lock() {
            pending.insert(job.payment_request_id.clone(), tx);
        }
        cancelled = Some(rx);
    }
    let mut shutdown = shared.shutdown_rx.clone();
    let shared = shared.clone();
    shared.runtime.clone().spawn(async move {
        let _guard = guard;
        if let (Some(delay), Some(cancelled)) = (late, cancelled) {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancelled => return,
                _ = super::state::stopped(&mut shutdown) => return,
            }
            // Whoever takes the entry sends: `now` may have taken it just as the delay ended.
            let mine = shared
                .pending_late
                .lock()
                .map(|mut p| p.remove(&job.payment_request_id).is_some())
                .unwrap_or(false);
            if !mine {
                return;
            }
        }
        let status = tokio::select! {
            delivered = deliver(&shared, &job, &url) => delivered,
            _ = super::state::stopped(&mut shutdown) => DeliveryStatus::Pending,
        };
        if let Ok(mut log) = shared.events.lock() {
            log.set_status(&event_id, status);
        }
    });
    Ok(())
}

fn record(shared: &Shared, attempt: NotificationAttempt) {
    if let Ok(mut log) = shared.notifications.lock() {
        log.push(attempt);
    }
}

/// Sends until acknowledged or the back-off is used up; says how it ended for the event log.
async fn deliver(shared: &Arc<Shared>, job: &NotifyJob, url: &str) -> DeliveryStatus {
    let base = NotificationAttempt {
        url: url.to_string(),
        payment_request_id: job.payment_request_id.clone(),
        attempt: 0,
        status: None,
        acknowledged: false,
        error: None,
    };
    let uri: hyper::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            record(
                shared,
                NotificationAttempt {
                    attempt: 1,
                    error: Some(format!("notify URL is not a valid URI ({e}); not sent")),
                    ..base
                },
            );
            return DeliveryStatus::Failed;
        }
    };
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        tracing::warn!(
            url,
            "mock-gateway: only plain http:// notify URLs are supported; notification not sent"
        );
        record(
            shared,
            NotificationAttempt {
                attempt: 1,
                error: Some(
                    "only plain http:// notify URLs are supported by the mock gateway; not sent"
                        .into(),
                ),
                ..base
            },
        );
        return DeliveryStatus::Failed;
    }
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_string();

    for (i, delay) in shared.notify_backoff.iter().enumerate() {
        tokio::time::sleep(*delay).await;
        let attempt = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let result = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            attempt_once(shared, &uri, &path, &job.client_id, &job.body, job.tampered),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")));
        let (status, acknowledged, error) = match result {
            Ok((status, ack)) => (Some(status), ack, None),
            Err(e) => (None, false, Some(e)),
        };
        tracing::info!(
            url,
            attempt,
            status = status.unwrap_or(0),
            acknowledged,
            "mock-gateway: notification attempt"
        );
        record(
            shared,
            NotificationAttempt {
                attempt,
                status,
                acknowledged,
                error,
                ..base.clone()
            },
        );
        if acknowledged {
            return DeliveryStatus::Delivered;
        }
    }
    DeliveryStatus::Failed
}

/// One POST; `Ok((status, acknowledged))` when an HTTP answer came back.
async fn attempt_once(
    shared: &Arc<Shared>,
    uri: &hyper::Uri,
    path: &str,
    client_id: &str,
    body: &[u8],
    tampered: bool,
) -> Result<(u16, bool), String> {
    let time = notification_time();
    let signed_body: Vec<u8> = if tampered {
        let mut other = body.to_vec();
        other.extend_from_slice(b" ");
        other
    } else {
        body.to_vec()
    };
    let content = crypto::content("POST", path, client_id, &time, &signed_body);
    let signature = shared
        .signer
        .signature_header_off_runtime(content, None)
        .await?;
    let request = Request::post(uri.clone())
        .header("Content-Type", "application/json")
        .header("client-id", client_id)
        .header("Request-Time", &time)
        .header("Signature", signature)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| format!("cannot build the notification request ({e})"))?;
    let response = shared
        .notify_client
        .request(request)
        .await
        .map_err(|e| format!("POST failed ({e})"))?;
    let status = response.status().as_u16();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_ACK_BYTES);
    let ack = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Err(format!(
                "HTTP {status}, but reading the answer failed ({e})"
            ))
        }
    };
    Ok((status, status == 200 && is_success_ack(&ack)))
}

/// Alipay stops re-sending only on a body whose `result.resultStatus` is `S` (spec §6).
fn is_success_ack(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("result")
                .and_then(|r| r.get("resultStatus"))
                .and_then(|s| s.as_str())
                .map(|s| s == "S")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_s_acknowledges() {
        assert!(super::is_success_ack(
            br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#
        ));
        assert!(!super::is_success_ack(
            br#"{"result":{"resultCode":"X","resultStatus":"U","resultMessage":"x"}}"#
        ));
        assert!(!super::is_success_ack(b"OK"));
    }
}
