//! The reconciler's hook: told of verified notifications only; a conflict it reports marks the delivery.

use super::*;

/// The reconciler's hook: remembers the verified notifications it was told of.
#[derive(Default)]
struct Hook(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

#[async_trait::async_trait]
impl NotificationHook for Hook {
    async fn verified(&self, merchant: &str, body: &[u8]) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .push((merchant.into(), body.to_vec()));
        // a payment the fake "cancelled": its result is a conflict
        String::from_utf8_lossy(body)
            .contains("\"p-cancelled\"")
            .then(|| "recorded=cancelled".to_string())
    }
}

#[tokio::test]
async fn a_conflict_the_hook_reports_marks_the_delivery() {
    let app = app(200, ACK);
    let h = inbound(&app).with_reconcile(Arc::new(Hook::default()));
    let time = format_iso8601(now_millis());
    let body = br#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S"},"paymentRequestId":"p-cancelled"}"#;
    assert_eq!(
        h.handle(signed("/merchant/notify", &time, body))
            .await
            .head
            .status
            .as_u16(),
        200
    );
    let sent = app.only();
    let marks: Vec<_> = sent.head.headers.get_all(CONFLICT_HEADER).iter().collect();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].as_bytes(), b"recorded=cancelled");
    // an incoming header of that name never passes (it is the sidecar's)
    let app = self::app(200, ACK);
    let h = inbound(&app).with_reconcile(Arc::new(Hook::default()));
    let body =
        br#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S"},"paymentRequestId":"p1"}"#;
    let mut req = signed("/merchant/notify", &time, body);
    req.head
        .insert_header(CONFLICT_HEADER, "recorded=forged")
        .unwrap();
    assert_eq!(h.handle(req).await.head.status.as_u16(), 200);
    assert!(app.only().head.headers.get(CONFLICT_HEADER).is_none());
}

#[tokio::test]
async fn the_reconcile_hook_hears_verified_notifications_only() {
    let app = app(200, ACK);
    let hook = Arc::new(Hook::default());
    let h = inbound(&app).with_reconcile(hook.clone());
    let body =
        br#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S"},"paymentRequestId":"p1"}"#;
    let time = format_iso8601(now_millis());
    let reply = h.handle(signed("/merchant/notify", &time, body)).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    let mut forged = signed("/merchant/notify", &time, body);
    forged.body = Bytes::from_static(
        br#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"F"},"paymentRequestId":"p1"}"#,
    );
    assert_eq!(h.handle(forged).await.head.status.as_u16(), 401);
    let heard = hook.0.lock().unwrap().clone();
    assert_eq!(heard, vec![(DEFAULT_MERCHANT.to_string(), body.to_vec())]);
}
