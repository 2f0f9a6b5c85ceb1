//! Asynchronous PAYMENT_RESULT notifications, re-sent with back-off until acknowledged, as
//! Alipay does (spec §6).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::api::NotifyJob;
use super::{crypto, notification_time, NotificationAttempt, Shared};

/// How long one delivery attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest acknowledgement body read from the merchant.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// The hyper client used for every notification (plain HTTP only, pooled).
pub(crate) type NotifyClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client() -> NotifyClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Decrements the in-flight counter however the delivery task ends (done, failed, aborted).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Starts delivering `job` in the background; returns at once.
///
/// The in-flight counter is raised before this returns, so a caller that got the pay
/// response can rely on [`super::MockGateway::notifications_settled`] waiting for it.
pub(crate) fn spawn(shared: Arc<Shared>, job: NotifyJob, client_id: String, tampered: bool) {
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
            return;
        }
    };
    if shared.notify_backoff.is_empty() {
        return;
    }
    shared.in_flight.send_modify(|n| *n += 1);
    let guard = InFlight(shared.clone());
    let mut shutdown = shared.shutdown_rx.clone();
    tokio::spawn(async move {
        let _guard = guard;
        tokio::select! {
            _ = deliver(&shared, &job, &url, &client_id, tampered) => {}
            _ = super::stopped(&mut shutdown) => {}
        }
    });
}

fn record(shared: &Shared, attempt: NotificationAttempt) {
    if let Ok(mut log) = shared.notifications.lock() {
        log.push(attempt);
    }
}

async fn deliver(shared: &Shared, job: &NotifyJob, url: &str, client_id: &str, tampered: bool) {
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
            return;
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
        return;
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
            attempt_once(shared, &uri, &path, client_id, &job.body, tampered),
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
            return;
        }
    }
}

/// One POST; `Ok((status, acknowledged))` when an HTTP answer came back.
async fn attempt_once(
    shared: &Shared,
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
    let signature = shared.signer.signature_header(&content)?;
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
