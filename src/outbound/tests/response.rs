//! The gateway's answer: failures as envelope errors, and the response policy (verified and
//! marked, stale, signed errors, bad or unknown signatures, unsigned answers, verification
//! off, compressed answers).

use super::*;

#[tokio::test]
async fn gateway_failures_become_envelope_errors() {
    let t = || "gw:443".to_string();
    let cases: Vec<(UpstreamError, SidecarError)> = vec![
        (
            UpstreamError::Connect {
                target: t(),
                detail: "refused".into(),
            },
            SidecarError::GatewayUnreachable,
        ),
        (
            UpstreamError::Tls {
                target: t(),
                detail: "unknown issuer".into(),
                private_ca: false,
            },
            SidecarError::GatewayTlsError,
        ),
        (
            UpstreamError::Timeout {
                target: t(),
                timeout: Duration::from_secs(15),
            },
            SidecarError::GatewayTimeout,
        ),
        (
            UpstreamError::Protocol {
                target: t(),
                detail: "reset".into(),
                maybe_delivered: true,
            },
            SidecarError::GatewayProtocolError,
        ),
        (
            UpstreamError::TooLarge {
                target: t(),
                limit: 8,
            },
            SidecarError::GatewayResponseTooLarge,
        ),
    ];
    for (upstream_error, expected) in cases {
        let message = upstream_error.to_string();
        let cell = Mutex::new(Some(upstream_error));
        let gw = Fake::new(move |_| Err(cell.lock().unwrap().take().expect("one call")));
        let reply = outbound(&gw).handle(pay(&[])).await;
        refused_with(&reply, expected);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        // a TLS failure is a configuration problem (F); the others may have reached
        // Alipay (U: inquire)
        let (status, outcome) = match expected {
            SidecarError::GatewayTlsError => ("F", Outcome::Rejected),
            _ => ("U", Outcome::Error),
        };
        assert_eq!(v["result"]["resultStatus"], status, "{expected:?}");
        assert_eq!(v["result"]["resultMessage"], message.as_str());
        assert_eq!(reply.report.outcome, outcome);
        assert!(reply.report.upstream.is_none());
    }
}

#[tokio::test]
async fn a_signed_answer_that_verifies_is_relayed_marked() {
    // RSP-01, the published known-good answer
    let id = "RSP-01";
    let body: &'static str = Box::leak(input(id, "body").into_boxed_str());
    let time: &'static str = Box::leak(input(id, "time").into_boxed_str());
    let sig: &'static str = Box::leak(input(id, "signature_header").into_boxed_str());
    let gw = Fake::new(move |_| {
        Ok(answer(
            200,
            &[
                ("Content-Type", "application/json"),
                ("response-time", time),
                ("signature", sig),
                ("X-Alipay-Sidecar-Verified", "forged"),
                ("Connection", "close"),
            ],
            body.as_bytes(),
        ))
    });
    let reply = outbound(&gw).handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], body.as_bytes());
    let all: Vec<_> = reply.head.headers.get_all(VERIFIED_HEADER).iter().collect();
    assert_eq!(all, ["true"], "the gateway's own marker is dropped");
    assert_eq!(header(&reply.head.headers, KEY_VERSION_HEADER), Some("1"));
    assert_eq!(header(&reply.head.headers, "connection"), None);
    assert_eq!(
        header(&reply.head.headers, "content-length"),
        Some(body.len().to_string().as_str())
    );
    let r = &reply.report;
    assert_eq!(r.outcome, Outcome::Verified);
    assert_eq!(r.verification, Some(VerificationResult::Valid));
    assert_eq!(r.key_version.as_deref(), Some("1"));
    assert_eq!(r.gateway_result_status, Some("U"));
    assert_eq!(r.upstream.map(|u| u.status), Some(200));
    assert!(r.verify_time.is_some());
    assert_eq!(r.response_bytes, body.len());
    assert_eq!(r.error, None);
}

#[tokio::test]
async fn a_genuine_answer_signed_long_ago_is_withheld_when_the_window_is_on() {
    let window = OutboundPolicy {
        max_response_time_skew: Some(Duration::from_secs(600)),
        ..policy()
    };
    let at = |time: &'static str| {
        Fake::new(move |req| {
            let target = req.head.uri.path_and_query().expect("target").as_str();
            let client = header(&req.head.headers, "client-id").expect("client-id");
            let time = if time.is_empty() {
                format_epoch_millis(exchange::now_millis())
            } else {
                time.to_string()
            };
            let body = br#"{"result":{"resultStatus":"S"}}"#;
            let sig = alipay_signature("1", target, client, &time, body);
            Ok(answer(
                200,
                &[
                    ("response-time", time.as_str()),
                    ("signature", sig.as_str()),
                ],
                body,
            ))
        })
    };
    // signed in 2024 (the fake's fixed time): genuine, but not an answer to this call
    let reply = outbound_with(
        window.clone(),
        CLIENT,
        None,
        &at("2024-05-01T12:34:57+08:00"),
    )
    .handle(pay(&[]))
    .await;
    refused_with(&reply, SidecarError::ResponseStale);
    assert_eq!(
        reply.report.verification,
        Some(VerificationResult::StaleResponseTime)
    );
    assert_eq!(marker(&reply), None);
    let unreadable = outbound_with(window.clone(), CLIENT, None, &at("tuesday"))
        .handle(pay(&[]))
        .await;
    refused_with(&unreadable, SidecarError::ResponseStale);
    assert_eq!(
        unreadable.report.verification,
        Some(VerificationResult::UnparseableResponseTime)
    );
    // a fresh answer passes; with the window off the old one passes too (as before)
    let fresh = outbound_with(window, CLIENT, None, &at(""))
        .handle(pay(&[]))
        .await;
    assert_eq!(marker(&fresh), Some("true"));
    let off = outbound(&at("2024-05-01T12:34:57+08:00"))
        .handle(pay(&[]))
        .await;
    assert_eq!(marker(&off), Some("true"));
}

#[tokio::test]
async fn a_signed_error_status_is_verified_too() {
    let reply = outbound(&alipay(500, "1", br#"{"result":{"resultStatus":"U"}}"#))
        .handle(pay(&[]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 500);
    assert_eq!(marker(&reply), Some("true"));
    assert_eq!(
        reply.report.gateway_result_status, None,
        "only 200 answers are counted"
    );
}

#[tokio::test]
async fn a_signature_that_does_not_verify_is_withheld() {
    let (s, f) = (
        br#"{"result":{"resultStatus":"S"}}"#,
        br#"{"result":{"resultStatus":"F"}}"#,
    );
    let gw = signing(200, "1", "", s, f);
    let reply = outbound(&gw).handle(pay(&[])).await;
    withheld(&reply, "mismatch");
    assert_eq!(reply.report.reason(), Some("mismatch"));
    assert_eq!(reply.report.outcome, Outcome::Rejected);
    assert_eq!(
        reply.report.content_sha256.as_ref().map(String::len),
        Some(64)
    );
    assert!(
        !reply.body.windows(6).any(|w| w == b"\"F\"}}"),
        "nothing of the answer leaks"
    );
}

#[tokio::test]
async fn an_unknown_key_version_is_refused_by_name() {
    let reply = outbound(&alipay(200, "7", br#"{"result":{"resultStatus":"S"}}"#))
        .handle(pay(&[]))
        .await;
    withheld(&reply, "unknown_key_version");
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(v["result"]["resultMessage"].as_str().unwrap().contains('7'));
}

#[tokio::test]
async fn only_one_signature_header_is_malformed() {
    for headers in [
        &[("signature", "algorithm=RSA256,keyVersion=1,signature=x")][..],
        &[("response-time", "t")][..],
    ] {
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(headers.to_vec().into_boxed_slice());
        let reply = outbound(&canned(200, headers, br#"{"result":{"resultStatus":"S"}}"#))
            .handle(pay(&[]))
            .await;
        withheld(&reply, "malformed");
    }
}

#[tokio::test]
async fn unsigned_successes_are_withheld() {
    for status in [200, 201, 302] {
        let reply = outbound(&canned(status, &[], br#"{"result":{"resultStatus":"S"}}"#))
            .handle(pay(&[]))
            .await;
        refused_with(&reply, SidecarError::ResponseUnsigned);
        assert_eq!(
            reply.report.verification,
            Some(VerificationResult::Invalid("missing_header")),
            "{status}"
        );
    }
}

#[tokio::test]
async fn unsigned_http_errors_and_f_rejections_pass_marked() {
    let reply = outbound(&canned(400, &[], b"bad request"))
        .handle(pay(&[]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 400);
    assert_eq!(marker(&reply), Some("unverified-status"));
    assert_eq!(&reply.body[..], b"bad request");
    assert_eq!(reply.report.outcome, Outcome::UnverifiedStatus);
    assert_eq!(reply.report.verification, None);

    let f = br#"{"result":{"resultCode":"INVALID_SIGNATURE","resultStatus":"F"}}"#;
    let reply = outbound(&canned(200, &[], f)).handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(marker(&reply), Some("unsigned-failure"));
    assert_eq!(&reply.body[..], f);
    assert_eq!(reply.report.outcome, Outcome::UnsignedFailure);
    assert_eq!(
        reply.report.verification,
        Some(VerificationResult::UnsignedFailure)
    );
    assert_eq!(reply.report.reason(), None);
    assert_eq!(reply.report.gateway_result_status, Some("F"));
}

#[tokio::test]
async fn verification_switched_off_forwards_marked_disabled() {
    let off = OutboundPolicy {
        verify_responses: false,
        ..policy()
    };
    let reply = outbound_with(
        off,
        CLIENT,
        None,
        &canned(200, &[], br#"{"result":{"resultStatus":"S"}}"#),
    )
    .handle(pay(&[]))
    .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(marker(&reply), Some("disabled"));
    assert_eq!(reply.report.outcome, Outcome::Forwarded);
    assert_eq!(reply.report.gateway_result_status, Some("S"));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn a_compressed_answer_is_verified_and_handed_over_decoded() {
    let plain: &'static [u8] = br#"{"result":{"resultStatus":"S"},"x":"zzzzzzzzzzzzzzzzzzzzzzzz"}"#;
    let zipped: &'static [u8] = Box::leak(gzip(plain).into_boxed_slice());
    // the signature over the decoded bytes, and over the bytes as received
    for signed in [plain, zipped] {
        let gw = signing(200, "1", "gzip", signed, zipped);
        let reply = outbound(&gw).handle(pay(&[])).await;
        assert_eq!(marker(&reply), Some("true"), "{reply:?}");
        assert_eq!(&reply.body[..], plain);
        assert_eq!(header(&reply.head.headers, "content-encoding"), None);
        assert_eq!(reply.report.gateway_result_status, Some("S"));
        assert_eq!(
            reply.report.upstream.map(|u| u.body_bytes),
            Some(zipped.len())
        );
    }
    // not decodable: verified over the bytes as received, relayed as received
    let junk: &'static [u8] = b"not gzip at all";
    let gw = signing(200, "1", "gzip", junk, junk);
    let reply = outbound(&gw).handle(pay(&[])).await;
    assert_eq!(marker(&reply), Some("true"));
    assert_eq!(&reply.body[..], junk);
    assert_eq!(
        header(&reply.head.headers, "content-encoding"),
        Some("gzip")
    );
}
