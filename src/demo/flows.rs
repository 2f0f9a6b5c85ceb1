//! The scripted traffic: pay and inquiry through the sidecar, the gateway's notification
//! through its inbound verifier, a missed notification the reconciler makes up for, a
//! dropped one the backfill recovers from Alipay's event log, and the audit that shows nothing
//! is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::report::{shorten, GatewayView};
use crate::mock_gateway::Delivered;

/// Waits (up to 5 s) until the sidecar has logged `n` outbound exchanges, so its `[sidecar]`
/// line is printed before the answer the app got.
async fn wait_exchanges(exchanges: &AtomicUsize, n: usize) {
    let start = Instant::now();
    while exchanges.load(Ordering::SeqCst) < n && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the closing audit reads: the sidecar's config (its store) and its plain outbound
/// listener (the audit's calls are signed and verified by the sidecar).
pub(super) struct AuditTarget {
    pub(super) config: PathBuf,
    pub(super) via: SocketAddr,
}

/// Steps 1 to 7 of the demo; an error says which step failed and how.
pub(super) async fn sample_traffic(
    out: &str,
    inbound: &str,
    view: &GatewayView,
    received: &Mutex<Vec<Delivered>>,
    exchanges: &AtomicUsize,
    audit_target: AuditTarget,
) -> Result<(), String> {
    let id = format!("demo-{}", std::process::id());
    let pay = format!(
        r#"{{"productCode":"CASHIER_PAYMENT","paymentRequestId":"{id}","order":{{"referenceOrderId":"order-{id}","orderDescription":"珍珠奶茶 🧋","orderAmount":{{"currency":"HKD","value":"5800"}}}},"paymentAmount":{{"currency":"HKD","value":"5800"}},"paymentMethod":{{"paymentMethodType":"ALIPAY_HK"}},"paymentNotifyUrl":"{inbound}/alipay/notify"}}"#
    );
    let before = exchanges.load(Ordering::SeqCst);
    println!("== 1. pay: the app sends a plain, unsigned request to the sidecar");
    let (status, verified, body) =
        post(&format!("{out}/ams/sandbox/api/v1/payments/pay"), pay).await?;
    view.print_new();
    wait_exchanges(exchanges, before + 1).await;
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" {
        return Err(format!(
            "pay was not verified (status {status}, verified {verified})"
        ));
    }
    let payment_id = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["paymentId"].as_str().map(str::to_string))
        .ok_or("the pay answer has no paymentId")?;
    println!("== 2. inquiryPayment");
    let (status, verified, body) = post(
        &format!("{out}/ams/sandbox/api/v1/payments/inquiryPayment"),
        format!(r#"{{"paymentRequestId":"{id}"}}"#),
    )
    .await?;
    view.print_new();
    wait_exchanges(exchanges, before + 2).await;
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" {
        return Err(format!(
            "inquiry was not verified (status {status}, verified {verified})"
        ));
    }
    println!("== 3. the gateway's signed PAYMENT_RESULT notification, through the sidecar's inbound verifier");
    let start = Instant::now();
    loop {
        if let Some(Delivered { verified, .. }) =
            received.lock().ok().and_then(|r| r.first().cloned())
        {
            view.print_new();
            if verified != "true" {
                return Err(format!(
                    "the notification reached the app with X-Alipay-Sidecar-Verified: {verified}"
                ));
            }
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "no notification reached the app in 10s; gateway attempts: {:?}",
                view.gw.notifications()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reconciled_payment(out, inbound, view, received).await?;
    recovered_refund(out, inbound, view, received, &payment_id).await?;
    audit(audit_target).await?;
    println!("== done: every answer the app saw was verified, the missed notification was reconciled, and the dropped one was recovered from Alipay's event log");
    Ok(())
}

/// Step 6: Alipay's delivery of a notification fails for good (the gateway's notify mode
/// `drop`: logged FAILED in its event log, never sent). The sidecar's backfill walks the
/// event log (`inquireNotificationList`, signed and verified), finds the REFUND_RESULT missing
/// from its journal and delivers it, marked `Source: inquireNotificationList`.
async fn recovered_refund(
    out: &str,
    inbound: &str,
    view: &GatewayView,
    received: &Mutex<Vec<Delivered>>,
    payment_id: &str,
) -> Result<(), String> {
    let id = format!("demo-refund-{}", std::process::id());
    let refund = format!(
        r#"{{"refundRequestId":"{id}","paymentId":"{payment_id}","refundAmount":{{"currency":"HKD","value":"1000"}},"refundNotifyUrl":"{inbound}/alipay/notify","mockNotify":"drop"}}"#
    );
    println!("== 6. a dropped notification: the first payment is refunded and the gateway's delivery of its REFUND_RESULT fails for good");
    let (status, verified, body) =
        post(&format!("{out}/ams/sandbox/api/v1/payments/refund"), refund).await?;
    view.print_new();
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" {
        return Err(format!(
            "the refund was not verified (status {status}, verified {verified})"
        ));
    }
    println!("   the REFUND_RESULT is only in Alipay's notification event log (deliveryStatus FAILED); the sidecar's backfill walks that log every backfill_interval (3s here)");
    let source = crate::backfill::walk::SOURCE_EVENT_LOG;
    let recovered = |r: &Delivered| {
        r.source.as_deref() == Some(source) && r.body.contains(&id) && r.verified == "true"
    };
    view.show_walks(true);
    let waited = wait_for_long(
        view,
        "the recovered REFUND_RESULT reaching the app",
        Duration::from_secs(60),
        || received.lock().is_ok_and(|r| r.iter().any(recovered)),
    )
    .await;
    view.show_walks(false);
    waited?;
    println!("   the backfill found it missing from the journal and delivered it: the app got the refund's result after all");
    Ok(())
}

/// Step 7: `alipay-sidecar notifications audit --merchant default --since 1h`, the same code:
/// Alipay's event log against the journal, by notify type; nothing may be missing. Asked
/// again (for up to 15 s) while a journaled event's delivery is still being recorded.
async fn audit(target: AuditTarget) -> Result<(), String> {
    println!("== 7. the audit: Alipay's event log against the sidecar's journal (alipay-sidecar notifications audit --merchant default --since 1h)");
    let args = crate::backfill::cli::BackfillArgs {
        config: crate::tools::ConfigArgs {
            config: target.config,
        },
        merchant: crate::config::DEFAULT_MERCHANT.to_string(),
        since: Duration::from_secs(3600),
        dry_run: false,
        via: Some(target.via),
        deliver_path: None,
    };
    let args = std::sync::Arc::new(args);
    let start = Instant::now();
    let outcome = loop {
        let a = args.clone();
        let run = tokio::task::spawn_blocking(move || {
            let mut err = Vec::new();
            let outcome = crate::backfill::cli::execute(&a, true, &mut err);
            (outcome, String::from_utf8_lossy(&err).to_string())
        })
        .await
        .map_err(|e| format!("the audit: {e}"))?;
        let outcome = match run {
            (Ok(o), _) => o,
            (Err(code), err) => return Err(format!("the audit failed (exit {code}): {err}")),
        };
        let settled = outcome.code == crate::cli::exit::EXIT_OK
            && outcome
                .walk
                .by_type
                .values()
                .all(|c| c.delivered == c.journaled);
        if settled || start.elapsed() > Duration::from_secs(15) {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for line in outcome.table.lines() {
        println!("   {line}");
    }
    if outcome.code != crate::cli::exit::EXIT_OK {
        return Err(format!(
            "the audit found events missing from the journal (exit {}){}",
            outcome.code,
            outcome
                .incomplete
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    let refunds = outcome.walk.by_type.get("REFUND_RESULT");
    if !refunds.is_some_and(|c| c.at_alipay == 1 && c.journaled == 1) {
        return Err(format!(
            "the audit does not show the dropped REFUND_RESULT journaled: {refunds:?}"
        ));
    }
    println!("   every notification in Alipay's event log is in the journal, the dropped REFUND_RESULT included: nothing missing");
    Ok(())
}

/// Waits (up to 15 s) until `check` holds, printing what the gateway did meanwhile.
async fn wait_for(view: &GatewayView, what: &str, check: impl Fn() -> bool) -> Result<(), String> {
    wait_for_long(view, what, Duration::from_secs(15), check).await
}

/// [`wait_for`], up to `limit`.
async fn wait_for_long(
    view: &GatewayView,
    what: &str,
    limit: Duration,
    check: impl Fn() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {}s", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        view.print_new();
    }
    view.print_new();
    Ok(())
}

/// Step 4, the failure Alipay's own guide ends with: the gateway answers the pay "in
/// process" and never sends the result notification. The sidecar's reconciler inquires
/// (signed, verified) and delivers the result to the app, marked `Source: inquiryPayment`;
/// the gateway's late notification of the same result is acknowledged without reaching the
/// app again.
async fn reconciled_payment(
    out: &str,
    inbound: &str,
    view: &GatewayView,
    received: &Mutex<Vec<Delivered>>,
) -> Result<(), String> {
    let id = format!("demo-missed-{}", std::process::id());
    let pay = format!(
        r#"{{"productCode":"IN_STORE_PAYMENT","paymentRequestId":"{id}","order":{{"referenceOrderId":"order-{id}","orderDescription":"Entry Code 🧋","orderAmount":{{"currency":"HKD","value":"3200"}}}},"paymentAmount":{{"currency":"HKD","value":"3200"}},"paymentMethod":{{"paymentMethodType":"CONNECT_WALLET"}},"paymentNotifyUrl":"{inbound}/alipay/notify","mockOutcome":"success_after:300ms","mockNotify":"none"}}"#
    );
    println!("== 4. a missed notification: the gateway answers the pay \"in process\" and drops its PAYMENT_RESULT");
    let (status, verified, body) =
        post(&format!("{out}/ams/sandbox/api/v1/payments/pay"), pay).await?;
    view.print_new();
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" || !body.contains("PAYMENT_IN_PROCESS") {
        return Err(format!(
            "the pay was not answered in process (status {status}, verified {verified})"
        ));
    }
    println!("   the sidecar recorded the pay; with no notification after reconcile_after (1s) it calls inquiryPayment itself");
    let reconciled = |r: &Delivered| {
        r.source.as_deref() == Some(crate::reconcile::SOURCE_INQUIRY) && r.body.contains(&id)
    };
    let count = || {
        received
            .lock()
            .map(|r| r.iter().filter(|d| d.body.contains(&id)).count())
            .unwrap_or(0)
    };
    wait_for(
        view,
        "the reconciled PAYMENT_RESULT reaching the app",
        || {
            received
                .lock()
                .is_ok_and(|r| r.iter().any(|d| reconciled(d) && d.verified == "true"))
        },
    )
    .await?;
    println!("== 5. the gateway's late notification of the same result arrives");
    view.gw
        .notify_now(&id)
        .map_err(|e| format!("late notification: {e}"))?;
    wait_for(view, "the late notification acknowledged", || {
        view.gw
            .notifications()
            .iter()
            .any(|n| n.payment_request_id == id && n.acknowledged)
    })
    .await?;
    if count() != 1 {
        return Err(format!(
            "the app received {} notifications for {id}; expected exactly one",
            count()
        ));
    }
    println!("   the sidecar acknowledged it without delivering it again: the app saw this payment's result exactly once");
    Ok(())
}

async fn post(url: &str, body: String) -> Result<(u16, String, String), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(url)
        .header("Content-Type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let verified = resp
        .headers()
        .get("x-alipay-sidecar-verified")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(absent)")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, verified, String::from_utf8_lossy(&body).to_string()))
}
