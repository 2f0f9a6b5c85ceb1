//! Delivery without a store: replays acknowledged once, the skew window, path maps, an app that
//! fails, acknowledgements (the app's or the sidecar's, signed), shadow mode, several merchants.

use super::*;

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
