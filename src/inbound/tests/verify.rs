//! Verification: byte-exact delivery of what verifies, the published vectors, wrong client ids,
//! missing, duplicate and invalid signatures, and heads refused before the body is read.

use super::*;

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
