use super::*;
use crate::merchants::{DEFAULT_MERCHANT, UNSELECTED_MERCHANT};
use crate::testing::*;
use crate::upstream::UpstreamError;

const ACK: &[u8] = ACK_BODY.as_bytes();

fn policy() -> InboundPolicy {
    InboundPolicy {
        max_request_time_skew: None,
        acknowledge: Acknowledge::App,
        sign_acknowledgements: false,
        mode: InboundMode::Enforce,
        forward_timeout: Duration::from_secs(10),
        body: BodyPolicy {
            max_bytes: 1 << 20,
            limit_key: "[inbound] max_body_bytes",
            timeout: Duration::from_secs(10),
        },
        duplicates: Duplicates::Forward,
        body_budget_bytes: 1 << 20,
        replay_window_entries: 0,
    }
}

fn route(path_map: &[(&str, &str)]) -> AppRoute {
    AppRoute::new(
        &AppUpstream {
            host: "127.0.0.1".into(),
            port: 3000,
            base_path: String::new(),
        },
        path_map
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

fn inbound_with(policy: InboundPolicy, route: AppRoute, app: &Arc<Fake>) -> Inbound<Arc<Fake>> {
    let keys: Arc<dyn KeySource> = Arc::new(keyset("T_111222333"));
    let merchant = InboundMerchant::new(DEFAULT_MERCHANT, "T_111222333", keys, app.clone(), route);
    Inbound::new(policy, merchant)
}

fn inbound(app: &Arc<Fake>) -> Inbound<Arc<Fake>> {
    inbound_with(policy(), route(&[]), app)
}

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

/// An app that answers `status` with `body`.
fn app(status: u16, body: &'static [u8]) -> Arc<Fake> {
    Fake::new(move |_| {
        Ok(answer(
            status,
            &[("Content-Type", "application/json")],
            body,
        ))
    })
}

/// A published notification vector as the request Alipay sends.
fn published(id: &str, extra: &[(&str, &str)]) -> Request {
    let (client, time, sig) = (
        input(id, "client_id"),
        input(id, "time"),
        input(id, "signature_header"),
    );
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("client-id", client.as_str()),
        ("request-time", time.as_str()),
        ("signature", sig.as_str()),
    ];
    headers.extend_from_slice(extra);
    request(&input(id, "uri"), &headers, input(id, "body").as_bytes())
}

/// A notification to `target` signed now by the vectors' Alipay key, with `time`.
fn signed(target: &str, time: &str, body: &[u8]) -> Request {
    let sig = alipay_signature("1", target, "T_111222333", time, body);
    request(
        target,
        &[
            ("client-id", "T_111222333"),
            ("request-time", time),
            ("signature", &sig),
        ],
        body,
    )
}

/// The reply is the SUCCESS acknowledgement signed with the merchant key over the notify
/// target and its exact body.
fn assert_signed_ack(reply: &Reply) {
    let hs = &reply.head.headers;
    let time = header(hs, "response-time").expect("response-time");
    let content =
        crate::protocol::content_to_sign("POST", "/merchant/notify", "T_111222333", time, ACK);
    merchant_public()
        .verify(&content, header(hs, "signature").expect("signature"))
        .expect("the acknowledgement is signed over the notify target and its exact body");
}

fn refused_with(reply: &Reply, error: SidecarError, result: VerificationResult) {
    assert_eq!(reply.head.status.as_u16(), error.http_status(), "{reply:?}");
    assert_eq!(result_code(reply).as_deref(), Some(error.code()));
    assert_eq!(reply.report.error, Some(error));
    assert_eq!(reply.report.verification, Some(result));
}

#[tokio::test]
async fn a_verified_notification_reaches_the_app_byte_exact_and_marked() {
    let app = app(200, ACK);
    let req = published(
        "NTF-01",
        &[("X-Alipay-Sidecar-Verified", "forged"), ("X-Trace", "t1")],
    );
    let (body_ptr, body) = (req.body.as_ptr(), req.body.clone());
    let reply = inbound(&app).handle(req).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], ACK);
    let sent = app.only();
    assert_eq!(sent.body.as_ptr(), body_ptr, "the body was copied");
    assert_eq!(sent.body, body);
    assert_eq!(sent.head.uri.path(), "/merchant/notify");
    let hs = &sent.head.headers;
    let markers: Vec<_> = hs.get_all(VERIFIED_HEADER).iter().collect();
    assert_eq!(markers, ["true"], "a forged marker is dropped");
    assert_eq!(header(hs, KEY_VERSION_HEADER), Some("1"));
    assert_eq!(header(hs, "host"), Some("127.0.0.1:3000"));
    assert_eq!(header(hs, "x-trace"), Some("t1"));
    assert!(
        header(hs, "signature").is_some(),
        "Alipay's headers reach the app"
    );
    let r = &reply.report;
    assert_eq!(r.outcome, Outcome::Verified);
    assert_eq!(r.verification, Some(VerificationResult::Valid));
    assert_eq!(r.key_version.as_deref(), Some("1"));
    assert_eq!(r.api, INBOUND_API_LABEL);
    assert_eq!(&*r.merchant, "default");
    assert!(r.time_skew_ms.is_some() && r.verify_time.is_some());
    assert_eq!(r.upstream.map(|u| u.status), Some(200));
    assert_eq!(
        r.sign_time, None,
        "acknowledgements are not signed by default"
    );
    assert_eq!(
        r.content_sha256.as_deref(),
        vector("NTF-01")["content_sha256_utf8"].as_str()
    );
}

#[tokio::test]
async fn every_published_valid_notification_verifies() {
    for id in ["NTF-01", "NTF-05"] {
        let reply = inbound(&app(200, ACK)).handle(published(id, &[])).await;
        assert_eq!(reply.report.outcome, Outcome::Verified, "{id}");
    }
}

#[tokio::test]
async fn a_notification_for_another_client_id_is_refused() {
    let req = signed("/merchant/notify", "2024-05-01T12:35:11+08:00", b"{}");
    let mut req = req;
    req.head.insert_header("client-id", "T_OTHER").unwrap();
    let app = app(200, ACK);
    let reply = inbound(&app).handle(req).await;
    refused_with(
        &reply,
        SidecarError::NotificationUnverified,
        VerificationResult::WrongClientId,
    );
    assert_eq!(reply.report.outcome, Outcome::Rejected);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn missing_duplicate_and_invalid_signatures_are_refused() {
    let app = app(200, ACK);
    let h = inbound(&app);
    let unverified = |reply: Reply, reason| {
        refused_with(
            &reply,
            SidecarError::NotificationUnverified,
            VerificationResult::Invalid(reason),
        )
    };
    for name in ["signature", "client-id", "request-time"] {
        let mut req = published("NTF-01", &[]);
        req.head.remove_header(name);
        unverified(h.handle(req).await, "missing_header");
        // a second copy could be read by the app instead of the one verified
        let mut req = published("NTF-01", &[]);
        let first = header(&req.head.headers, name).unwrap().to_string();
        req.head.append_header(name, first).unwrap();
        unverified(h.handle(req).await, "duplicate_header");
    }
    // an empty signature is a missing one
    let mut req = published("NTF-01", &[]);
    req.head.insert_header("signature", "").unwrap();
    unverified(h.handle(req).await, "missing_header");

    let mut req = published("NTF-01", &[]);
    req.body = Bytes::from(
        req.body
            .iter()
            .copied()
            .map(|b| if b == b'8' { b'9' } else { b })
            .collect::<Vec<_>>(),
    );
    let reply = h.handle(req).await;
    assert_eq!(reply.report.reason(), Some("mismatch"));
    unverified(reply, "mismatch");

    let mut req = published("NTF-01", &[]);
    let sig = header(&req.head.headers, "signature")
        .unwrap()
        .replace("keyVersion=1", "keyVersion=4");
    req.head.insert_header("signature", sig).unwrap();
    unverified(h.handle(req).await, "unknown_key_version");
    assert!(app.seen().is_empty(), "nothing unverified reached the app");
}

/// The head-only refusal of `req` (issue 18, H2), with its recorded result.
fn head_refusal(
    h: &Inbound<Arc<Fake>>,
    req: &Request,
) -> Option<(SidecarError, VerificationResult)> {
    h.check_head(&req.head, &req.target)
        .err()
        .map(|r| (r.error, r.verification.expect("a verification result")))
}

#[test]
fn heads_that_cannot_verify_are_refused_before_the_body() {
    let app = app(200, ACK);
    let h = inbound(&app);
    let time = format_iso8601(now_millis());
    let good = signed("/merchant/notify", &time, b"{}");
    assert_eq!(
        head_refusal(&h, &good),
        None,
        "a genuine-looking head passes"
    );
    let unverified = |r| Some((SidecarError::NotificationUnverified, r));
    let invalid = |label| unverified(VerificationResult::Invalid(label));
    for name in ["signature", "client-id", "request-time"] {
        let mut req = signed("/merchant/notify", &time, b"{}");
        req.head.remove_header(name);
        assert_eq!(head_refusal(&h, &req), invalid("missing_header"), "{name}");
    }
    let with = |name: &str, value: &str| {
        let mut req = signed("/merchant/notify", &time, b"{}");
        req.head
            .insert_header(name.to_string(), value.to_string())
            .unwrap();
        head_refusal(&h, &req)
    };
    assert_eq!(with("signature", "junk"), invalid("malformed"));
    assert_eq!(
        with("signature", "algorithm=RSA256,keyVersion=1,signature=AAAA"),
        invalid("wrong_length")
    );
    assert_eq!(
        with("signature", "algorithm=ECC224,keyVersion=1,signature=AAAA"),
        invalid("unsupported_algorithm")
    );
    let sig = header(&good.head.headers, "signature")
        .unwrap()
        .replace("keyVersion=1", "keyVersion=9");
    assert_eq!(with("signature", &sig), invalid("unknown_key_version"));
    assert_eq!(
        with("client-id", "T_OTHER"),
        unverified(VerificationResult::WrongClientId)
    );
    let mut twice = signed("/merchant/notify", &time, b"{}");
    twice
        .head
        .append_header("client-id", "T_111222333")
        .unwrap();
    assert_eq!(head_refusal(&h, &twice), invalid("duplicate_header"));
    // without a freshness window the time is opaque; with one it must be readable and fresh
    assert_eq!(with("request-time", "yesterday"), None);
    let window = InboundPolicy {
        max_request_time_skew: Some(Duration::from_secs(300)),
        ..policy()
    };
    let h = inbound_with(window, route(&[]), &app);
    let stale = Some((
        SidecarError::NotificationStale,
        VerificationResult::StaleRequestTime,
    ));
    let old = signed("/merchant/notify", "2001-09-09T01:46:40Z", b"{}");
    assert_eq!(head_refusal(&h, &old), stale);
    let odd = signed("/merchant/notify", "yesterday", b"{}");
    assert_eq!(
        head_refusal(&h, &odd),
        Some((
            SidecarError::NotificationStale,
            VerificationResult::UnparseableRequestTime
        ))
    );
    // shadow mode forwards what does not verify, so it refuses nothing from the head
    let shadow = InboundPolicy {
        mode: InboundMode::Shadow,
        ..policy()
    };
    let h = inbound_with(shadow, route(&[]), &app);
    assert_eq!(head_refusal(&h, &old), None);
}

#[tokio::test]
async fn exact_copies_are_acknowledged_once_the_app_took_the_first() {
    let app = app(200, br#"{"from":"app"}"#);
    let remember = InboundPolicy {
        replay_window_entries: 4,
        ..policy()
    };
    let h = inbound_with(remember, route(&[]), &app);
    let time = format_iso8601(now_millis());
    let copy = || signed("/merchant/notify", &time, b"{\"paymentRequestId\":\"r1\"}");
    let first = h.handle(copy()).await;
    assert_eq!(&first.body[..], br#"{"from":"app"}"#);
    for _ in 0..2 {
        let again = h.handle(copy()).await;
        assert_eq!(again.head.status.as_u16(), 200);
        assert_eq!(
            &again.body[..],
            ACK,
            "the sidecar's SUCCESS acknowledgement"
        );
    }
    assert_eq!(app.seen().len(), 1);
    // a re-signed copy is another content: delivered (the journal de-duplicates those)
    let later = format_iso8601(now_millis() + 1000);
    let resigned = signed("/merchant/notify", &later, b"{\"paymentRequestId\":\"r1\"}");
    assert_eq!(&h.handle(resigned).await.body[..], br#"{"from":"app"}"#);
    assert_eq!(app.seen().len(), 2);

    // with the window off every copy is delivered, as before
    let app = self::app(200, ACK);
    let h = inbound(&app);
    h.handle(copy()).await;
    h.handle(copy()).await;
    assert_eq!(app.seen().len(), 2);
}

#[tokio::test]
async fn a_copy_the_app_refused_is_not_a_replay() {
    let app = app(500, b"{}");
    let remember = InboundPolicy {
        replay_window_entries: 4,
        ..policy()
    };
    let h = inbound_with(remember, route(&[]), &app);
    let time = format_iso8601(now_millis());
    let copy = || signed("/merchant/notify", &time, b"{}");
    assert_eq!(h.handle(copy()).await.head.status.as_u16(), 503);
    assert_eq!(h.handle(copy()).await.head.status.as_u16(), 503);
    assert_eq!(
        app.seen().len(),
        2,
        "every re-send after a failure reaches the app"
    );
}

#[tokio::test]
async fn the_skew_window_refuses_stale_and_unreadable_times() {
    let window = InboundPolicy {
        max_request_time_skew: Some(Duration::from_secs(300)),
        ..policy()
    };
    let app = app(200, ACK);
    let h = inbound_with(window, route(&[]), &app);
    // NTF-01 is from 2019: genuine, but stale
    let reply = h.handle(published("NTF-01", &[])).await;
    refused_with(
        &reply,
        SidecarError::NotificationStale,
        VerificationResult::StaleRequestTime,
    );
    let reply = h
        .handle(signed("/merchant/notify", "yesterday", b"{}"))
        .await;
    refused_with(
        &reply,
        SidecarError::NotificationStale,
        VerificationResult::UnparseableRequestTime,
    );
    assert!(app.seen().is_empty());
    // a fresh one passes
    let now = crate::protocol::format_epoch_millis(now_millis() - 60_000);
    let reply = h.handle(signed("/merchant/notify", &now, b"{}")).await;
    assert_eq!(reply.report.outcome, Outcome::Verified);
    let skew = reply.report.time_skew_ms.unwrap();
    assert!((60_000..120_000).contains(&skew), "{skew}");
    // without a window the old one passes
    let reply = inbound(&app).handle(published("NTF-01", &[])).await;
    assert_eq!(reply.report.outcome, Outcome::Verified);
}

#[tokio::test]
async fn path_map_and_base_path_choose_the_apps_path_and_keep_the_query() {
    let app = app(200, ACK);
    let mut r = route(&[("/merchant/notify", "/hooks/alipay")]);
    r.base_path = "/base".into();
    let h = inbound_with(policy(), r, &app);
    let reply = h
        .handle(signed("/merchant/notify?src=ams&v=1", "t", b"{}"))
        .await;
    assert_eq!(reply.report.outcome, Outcome::Verified);
    assert_eq!(
        app.only().head.uri.to_string(),
        "/base/hooks/alipay?src=ams&v=1"
    );
    // an unmapped path keeps its own
    let app2 = self::app(200, ACK);
    let mut r = route(&[("/merchant/notify", "/hooks/alipay")]);
    r.base_path = "/base".into();
    inbound_with(policy(), r, &app2)
        .handle(signed("/other/notify", "t", b"{}"))
        .await;
    assert_eq!(app2.only().head.uri.to_string(), "/base/other/notify");
}

#[tokio::test]
async fn an_app_that_is_down_slow_or_failing_gets_alipay_to_resend() {
    let t = || "127.0.0.1:3000".to_string();
    let errors = [
        UpstreamError::Connect {
            target: t(),
            detail: "connection refused".into(),
        },
        UpstreamError::Timeout {
            target: t(),
            timeout: Duration::from_secs(10),
        },
    ];
    for e in errors {
        let text = e.to_string();
        let cell = std::sync::Mutex::new(Some(e));
        let app = Fake::new(move |_| Err(cell.lock().unwrap().take().expect("one call")));
        let reply = inbound(&app).handle(published("NTF-01", &[])).await;
        assert_eq!(reply.head.status.as_u16(), 503);
        assert_eq!(
            result_code(&reply).as_deref(),
            Some("SIDECAR_APP_UNAVAILABLE")
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("127.0.0.1"),
            "the app's address leaks"
        );
        assert_eq!(reply.report.detail.as_deref(), Some(text.as_str()));
        assert_eq!(reply.report.outcome, Outcome::Error);
        assert_eq!(reply.report.verification, Some(VerificationResult::Valid));
    }
    for status in [500, 502, 503] {
        let reply = inbound(&app(status, b"oops"))
            .handle(published("NTF-01", &[]))
            .await;
        assert_eq!(reply.head.status.as_u16(), 503, "{status}");
        assert_eq!(reply.report.upstream.map(|u| u.status), Some(status));
        assert!(!String::from_utf8_lossy(&reply.body).contains("oops"));
    }
}

#[tokio::test]
async fn acknowledgements_come_from_the_app_or_the_sidecar() {
    // the app's own answer is relayed, whatever it is (4xx included)
    let reply = inbound(&app(200, b"OK from app"))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(&reply.body[..], b"OK from app");
    let reply = inbound(&app(400, b"no"))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(
        (reply.head.status.as_u16(), &reply.body[..]),
        (400, &b"no"[..])
    );

    let sidecar = InboundPolicy {
        acknowledge: Acknowledge::Sidecar,
        ..policy()
    };
    let reply = inbound_with(sidecar.clone(), route(&[]), &app(204, b""))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], ACK);
    assert_eq!(
        header(&reply.head.headers, "content-type"),
        Some("application/json; charset=UTF-8")
    );
    // not a 2xx: the app's answer, never a SUCCESS the app did not give
    let reply = inbound_with(sidecar, route(&[]), &app(409, b"busy"))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(
        (reply.head.status.as_u16(), &reply.body[..]),
        (409, &b"busy"[..])
    );
}

#[tokio::test]
async fn signed_acknowledgements_verify_with_the_merchant_key() {
    let signing = InboundPolicy {
        acknowledge: Acknowledge::Sidecar,
        sign_acknowledgements: true,
        ..policy()
    };
    let reply = inbound_with(signing.clone(), route(&[]), &app(200, b"whatever"))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(
        header(&reply.head.headers, "client-id"),
        Some("T_111222333")
    );
    assert_signed_ack(&reply);
    assert!(reply.report.sign_time.is_some());
    // a refusal by the app is not signed
    let reply = inbound_with(signing, route(&[]), &app(400, b"no"))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(header(&reply.head.headers, "signature"), None);
    assert_eq!(reply.report.sign_time, None);
}

#[tokio::test]
async fn shadow_mode_forwards_what_does_not_verify_marked_false() {
    let shadow = InboundPolicy {
        mode: InboundMode::Shadow,
        ..policy()
    };
    let app = app(200, ACK);
    let mut req = published(
        "NTF-01",
        &[
            ("X-Alipay-Sidecar-Verified", "true"),
            ("X-Alipay-Sidecar-Key-Version", "1"),
        ],
    );
    req.body = Bytes::from_static(b"{\"tampered\":true}");
    let reply = inbound_with(shadow.clone(), route(&[]), &app)
        .handle(req)
        .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], ACK);
    let sent = app.only();
    let markers: Vec<_> = sent.head.headers.get_all(VERIFIED_HEADER).iter().collect();
    assert_eq!(markers, ["false"]);
    assert_eq!(
        header(&sent.head.headers, KEY_VERSION_HEADER),
        None,
        "forged key version dropped"
    );
    let r = &reply.report;
    assert_eq!(r.outcome, Outcome::ShadowForwarded);
    assert_eq!(
        r.verification,
        Some(VerificationResult::Invalid("mismatch"))
    );
    assert!(r.detail.as_deref().unwrap().contains("did not verify"));
    assert_eq!(r.error, None);
    // a valid one in shadow mode is verified as usual
    let reply = inbound_with(shadow, route(&[]), &self::app(200, ACK))
        .handle(published("NTF-01", &[]))
        .await;
    assert_eq!(reply.report.outcome, Outcome::Verified);
}

#[tokio::test]
async fn several_merchants_route_by_client_id_to_their_own_app() {
    let (sg_app, eu_app) = (app(200, ACK), app(200, ACK));
    let merchant = |name: &str, id: &str, app: &Arc<Fake>| {
        let keys: Arc<dyn KeySource> = Arc::new(keyset(id));
        InboundMerchant::new(name, id, keys, app.clone(), route(&[]))
    };
    let h = Inbound::shared(
        policy(),
        vec![
            merchant("sg", "T_SG", &sg_app),
            merchant("eu", &input("NTF-01", "client_id"), &eu_app),
        ],
    );
    let reply = h.handle(published("NTF-01", &[])).await;
    assert_eq!(reply.head.status.as_u16(), 200, "{reply:?}");
    assert_eq!(&*reply.report.merchant, "eu");
    assert!(sg_app.seen().is_empty());
    assert_eq!(eu_app.seen().len(), 1);

    let mut other = published("NTF-01", &[]);
    other.head.insert_header("client-id", "T_NOBODY").unwrap();
    let reply = h.handle(other).await;
    refused_with(
        &reply,
        SidecarError::NotificationUnverified,
        VerificationResult::WrongClientId,
    );
    let body = String::from_utf8_lossy(&reply.body).to_string();
    assert!(
        body.contains("T_SG") && body.contains("any configured merchant"),
        "{body}"
    );
    assert_eq!(&*reply.report.merchant, UNSELECTED_MERCHANT);
    assert!(sg_app.seen().is_empty());
    assert_eq!(
        eu_app.seen().len(),
        1,
        "the stranger's notification reached an app"
    );
}

fn journaled(
    policy: InboundPolicy,
    app: &Arc<Fake>,
    journal: &Arc<FakeJournal>,
) -> Inbound<Arc<Fake>> {
    let j: Arc<dyn Journal> = journal.clone();
    inbound_with(policy, route(&[]), app).with_journal(j)
}

fn suppress() -> InboundPolicy {
    InboundPolicy {
        duplicates: Duplicates::Suppress,
        ..policy()
    }
}

fn result_body(status: &str) -> Vec<u8> {
    format!(r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"X","resultStatus":"{status}"}},"paymentRequestId":"PR-1"}}"#).into_bytes()
}

fn event_id_of(req: &UpstreamRequest) -> String {
    header(&req.head.headers, EVENT_ID_HEADER)
        .expect("every journaled delivery carries the event id")
        .to_string()
}

#[tokio::test]
async fn re_sends_of_a_delivered_event_are_acknowledged_without_the_app() {
    let (app, journal) = (app(200, b"app ack"), FakeJournal::new());
    let h = journaled(suppress(), &app, &journal);
    let body = result_body("S");
    let first = h.handle(signed("/merchant/notify", "t1", &body)).await;
    assert_eq!(
        &first.body[..],
        b"app ack",
        "the app's own answer, as without a journal"
    );
    for time in ["t1", "t1", "t2-re-signed-later"] {
        let reply = h.handle(signed("/merchant/notify", time, &body)).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(&reply.body[..], ACK, "the exact SUCCESS acknowledgement");
        assert_eq!(reply.report.outcome, Outcome::Verified);
    }
    let sent = app.only();
    let events = journal.events();
    assert_eq!(events.len(), 1);
    let (id, e) = events.iter().next().unwrap();
    assert_eq!(&event_id_of(&sent), id);
    assert!(id.starts_with("evt_"));
    assert_eq!(e.status, sidecar_store::NotificationStatus::Delivered);
    assert_eq!(e.copies, 4);
    assert_eq!(e.entry.merchant, DEFAULT_MERCHANT);
    assert_eq!(e.entry.key.path, "/merchant/notify");
    assert_eq!(e.entry.deliver_at, None, "delivered in line, not queued");
    assert_eq!(&e.entry.body[..], &body[..]);

    // another result for the same payment is another event
    h.handle(signed("/merchant/notify", "t3", &result_body("F")))
        .await;
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(event_id_of(&seen[1]), *id);
    assert_eq!(journal.events().len(), 2);
}

#[tokio::test]
async fn suppressed_duplicates_are_signed_when_acknowledgements_are() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let policy = InboundPolicy {
        sign_acknowledgements: true,
        ..suppress()
    };
    let h = journaled(policy, &app, &journal);
    let body = result_body("S");
    h.handle(signed("/merchant/notify", "t1", &body)).await;
    let reply = h.handle(signed("/merchant/notify", "t2", &body)).await;
    assert_signed_ack(&reply);
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn forward_mode_delivers_every_copy_with_the_same_event_id() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let h = journaled(policy(), &app, &journal);
    let body = result_body("S");
    for time in ["t1", "t2", "t3"] {
        h.handle(signed("/merchant/notify", time, &body)).await;
    }
    let ids: Vec<String> = app.seen().iter().map(event_id_of).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(journal.events()[&ids[0]].copies, 3);
}

#[tokio::test]
async fn a_failed_delivery_is_recorded_and_the_resend_reaches_the_app() {
    let journal = FakeJournal::new();
    let app = Fake::new({
        let n = std::sync::atomic::AtomicUsize::new(0);
        move |_| {
            let status = if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                503
            } else {
                200
            };
            Ok(answer(status, &[], ACK))
        }
    });
    let h = journaled(suppress(), &app, &journal);
    let body = result_body("S");
    let reply = h.handle(signed("/merchant/notify", "t1", &body)).await;
    assert_eq!(reply.head.status.as_u16(), 503);
    let e = journal.events().into_values().next().unwrap();
    assert_eq!(e.status, sidecar_store::NotificationStatus::Pending);
    assert_eq!(e.failures, ["the app answered HTTP 503"]);
    let reply = h.handle(signed("/merchant/notify", "t2", &body)).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(app.seen().len(), 2, "a pending event is delivered again");
    let e = journal.events().into_values().next().unwrap();
    assert_eq!(e.status, sidecar_store::NotificationStatus::Delivered);
}

#[tokio::test]
async fn a_broken_store_never_stops_an_in_line_delivery() {
    let (app, journal) = (app(200, ACK), FakeJournal::broken());
    let h = journaled(suppress(), &app, &journal);
    let body = result_body("S");
    for time in ["t1", "t2"] {
        let reply = h.handle(signed("/merchant/notify", time, &body)).await;
        assert_eq!(reply.head.status.as_u16(), 200, "{reply:?}");
    }
    let seen = app.seen();
    assert_eq!(
        seen.len(),
        2,
        "without the store, re-sends cannot be recognised"
    );
    let want = EventKey::from_notification("T_111222333", "/merchant/notify", &body).event_id();
    assert_eq!(
        event_id_of(&seen[0]),
        want,
        "the event id is computed from the key"
    );
}

#[tokio::test]
async fn store_and_forward_acknowledges_once_stored_and_never_delivers_in_line() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let policy = InboundPolicy {
        acknowledge: Acknowledge::AfterStore,
        ..suppress()
    };
    let h = journaled(policy.clone(), &app, &journal);
    let body = result_body("S");
    for time in ["t1", "t2"] {
        let reply = h
            .handle(signed("/merchant/notify?src=ams", time, &body))
            .await;
        assert_eq!((reply.head.status.as_u16(), &reply.body[..]), (200, ACK));
    }
    assert!(app.seen().is_empty(), "the delivery worker delivers");
    let events = journal.events();
    assert_eq!(events.len(), 1, "a re-send is not queued twice");
    let e = events.into_values().next().unwrap();
    assert_eq!(e.copies, 2);
    assert_eq!(e.entry.deliver_at, Some(e.entry.now));
    let stored = |name: &str| {
        e.entry
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(stored(VERIFIED_HEADER), Some("true"));
    assert_eq!(stored(KEY_VERSION_HEADER), Some("1"));
    assert_eq!(
        stored("request-time"),
        Some("t1"),
        "the first copy's headers"
    );
    assert!(stored("signature").is_some());
    assert_eq!(stored(DELIVER_QUERY_HEADER), Some("src=ams"));
    assert_eq!(stored("host"), None);
    assert_eq!(stored("content-length"), None);
    assert_eq!(e.entry.key.path, "/merchant/notify", "the key has no query");

    // store down: 503, so that Alipay re-sends; the app never sees it
    let broken = FakeJournal::broken();
    let reply = journaled(policy, &app, &broken)
        .handle(signed("/merchant/notify", "t1", &body))
        .await;
    assert_eq!(reply.head.status.as_u16(), 503);
    assert_eq!(
        result_code(&reply).as_deref(),
        Some("SIDECAR_STORE_UNAVAILABLE")
    );
    assert_eq!(reply.report.outcome, Outcome::Error);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn unverified_notifications_are_never_journaled() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let shadow = InboundPolicy {
        mode: InboundMode::Shadow,
        ..suppress()
    };
    let mut req = signed("/merchant/notify", "t1", &result_body("S"));
    req.body = Bytes::from(result_body("F"));
    journaled(shadow, &app, &journal).handle(req).await;
    assert_eq!(app.seen().len(), 1);
    assert_eq!(header(&app.only().head.headers, EVENT_ID_HEADER), None);
    assert!(journal.events().is_empty());
    // nor refused ones
    let mut req = signed("/merchant/notify", "t1", &result_body("S"));
    req.body = Bytes::from(result_body("F"));
    journaled(suppress(), &app, &journal).handle(req).await;
    assert!(journal.events().is_empty());
}
