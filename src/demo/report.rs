//! What the demo prints: each request the fake gateway received and each notification it
//! sent (`[gateway]` lines), and long values shortened to a line.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::sidecar::Listeners;
use crate::mock_gateway::{MockGateway, ReceivedRequest};

/// Where everything listens, once the sidecar is ready.
pub(super) fn print_listening(
    gw: &MockGateway,
    ca: &Path,
    sidecar_pid: u32,
    listeners: &Listeners,
    app: SocketAddr,
    client_id: &str,
) {
    let out = format!("http://{}", listeners.outbound);
    let inbound = format!("http://{}", listeners.inbound);
    println!("   listening:");
    println!(
        "     fake Alipay gateway  {}   (TLS, its CA: {})",
        gw.base_url(),
        ca.display()
    );
    println!(
        "     sidecar outbound     {out}   (pid {sidecar_pid}; point your app's gateway URL here)"
    );
    println!(
        "     sidecar inbound      {inbound}   (register {inbound}/alipay/notify as notify URL)"
    );
    println!(
        "     sidecar admin        http://{}   (/metrics /healthz /readyz)",
        listeners.admin
    );
    println!("     demo app receiver    http://{app}   (gets verified notifications)");
    println!("   client id {client_id}: a sandbox id, so the paths are /ams/sandbox/api/…");
    println!(
        "   lines starting with [gateway], [sidecar] and [app] show each exchange as it happens"
    );
}

/// The requests a user can send next, with the sidecar's real addresses.
pub(super) fn print_try_it(listeners: &Listeners) {
    let out = format!("http://{}", listeners.outbound);
    let inbound = format!("http://{}", listeners.inbound);
    let pay = format!("{out}/ams/sandbox/api/v1/payments/pay");
    let inquiry = format!("{out}/ams/sandbox/api/v1/payments/inquiryPayment");
    println!("   try it yourself (the [gateway]/[sidecar]/[app] lines show what happens):");
    println!("     curl -s {pay} -H 'Content-Type: application/json' \\");
    println!("       -d '{{\"paymentRequestId\":\"curl-1\",\"paymentAmount\":{{\"currency\":\"USD\",\"value\":\"100\"}},\"paymentNotifyUrl\":\"{inbound}/alipay/notify\"}}' -i");
    println!("     curl -s {inquiry} -H 'Content-Type: application/json' \\");
    println!("       -d '{{\"paymentRequestId\":\"curl-1\"}}' -i");
    println!(
        "     curl -s http://{}/metrics | grep alipay_sidecar_requests_total",
        listeners.admin
    );
}

/// Prints each request the fake gateway receives (the headers the sidecar signed onto it and
/// whether the gateway could verify them) and each notification it delivers, once each:
/// polled in the background, and right after each scripted request so the output keeps its
/// order.
///
/// The backfill's `inquireNotificationList` calls (every few seconds, for as long as the demo
/// runs) are shown only while [`GatewayView::show_walks`] is on, one line each.
pub(super) struct GatewayView {
    pub(super) gw: Arc<MockGateway>,
    seen: Mutex<(Option<ReceivedRequest>, usize)>,
    walks: AtomicBool,
}

impl GatewayView {
    pub(super) fn new(gw: Arc<MockGateway>) -> GatewayView {
        GatewayView {
            gw,
            seen: Mutex::default(),
            walks: AtomicBool::new(false),
        }
    }

    /// Shows (or hides) the backfill's walks of the event log.
    pub(super) fn show_walks(&self, on: bool) {
        self.walks.store(on, Ordering::SeqCst);
    }

    pub(super) fn print_new(&self) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let all = self.gw.received();
        let start = match &seen.0 {
            Some(last) => all.iter().rposition(|r| r == last).map_or(0, |i| i + 1),
            None => 0,
        };
        for r in &all[start..] {
            if r.target.ends_with(crate::backfill::walk::LIST_TAIL) {
                if self.walks.load(Ordering::SeqCst) {
                    println!(
                        "   [gateway] received POST {} ({}): the sidecar's backfill reads the notification event log",
                        r.target,
                        if r.verified { "signature valid" } else { "signature INVALID" },
                    );
                }
                continue;
            }
            let signature = r.header("signature").unwrap_or("(none)");
            println!(
                "   [gateway] received {} {} as signed by the sidecar ({}):\n               client-id: {}\n               request-time: {}\n               signature: {}",
                r.method,
                r.target,
                if r.verified { "signature valid" } else { "signature INVALID" },
                r.header("client-id").unwrap_or("(none)"),
                r.header("request-time").unwrap_or("(none)"),
                shorten_to(signature, 72),
            );
        }
        if let Some(last) = all.last() {
            seen.0 = Some(last.clone());
        }
        let sent = self.gw.notifications();
        for n in sent.iter().skip(seen.1) {
            println!(
                "   [gateway] sent the signed PAYMENT_RESULT notification for {} to {} (attempt {}): {}",
                n.payment_request_id,
                n.url,
                n.attempt,
                match (n.status, &n.error) {
                    (Some(status), _) if n.acknowledged => format!("answered {status}, acknowledged"),
                    (Some(status), _) => format!("answered {status}, not acknowledged (it re-sends)"),
                    (None, Some(e)) => format!("no answer: {e}"),
                    (None, None) => "no answer".to_string(),
                }
            );
        }
        seen.1 = seen.1.max(sent.len());
    }

    /// Prints what is new every 100 ms, until aborted.
    pub(super) async fn watch(self: Arc<Self>) {
        loop {
            self.print_new();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `[app]` line for a notification the demo's app received.
pub(super) fn print_delivered(d: &crate::mock_gateway::Delivered) {
    let from = match &d.source {
        Some(s) => format!(", X-Alipay-Sidecar-Source: {s}"),
        None => String::new(),
    };
    println!(
        "   [app] notification delivered to POST {}, X-Alipay-Sidecar-Verified: {}{from}\n         {}",
        d.path,
        d.verified,
        shorten(&d.body)
    );
}

pub(super) fn shorten(s: &str) -> String {
    shorten_to(s, 200)
}

pub(super) fn shorten_to(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}
