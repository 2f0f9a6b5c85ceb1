//! The scripted traffic: pay and inquiry through the sidecar, the gateway's notification
//! through its inbound verifier, and a missed notification the reconciler makes up for.

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

/// Steps 1 to 5 of the demo; an error says which step failed and how.
pub(super) async fn sample_traffic(
    out: &str,
    inbound: &str,
    view: &GatewayView,
    received: &Mutex<Vec<Delivered>>,
    exchanges: &AtomicUsize,
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
    println!("== done: every answer the app saw was verified, and the missed notification was reconciled");
    Ok(())
}

/// Waits (up to 15 s) until `check` holds, printing what the gateway did meanwhile.
async fn wait_for(view: &GatewayView, what: &str, check: impl Fn() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > Duration::from_secs(15) {
            return Err(format!("{what}: not within 15s"));
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
