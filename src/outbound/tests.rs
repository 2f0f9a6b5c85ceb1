use super::*;
use crate::merchants::{DEFAULT_MERCHANT, UNSELECTED_MERCHANT};
use crate::testing::*;
use crate::upstream::UpstreamError;
use std::io::Write;
use std::sync::Mutex;

const CLIENT: &str = "T_111222333";
const PAY: &str = "/ams/api/v1/payments/pay";
const BODY: &[u8] = r#"{"paymentRequestId":"p1","note":"\u73cd 珍珠 🧋"}"#.as_bytes();

fn policy() -> OutboundPolicy {
    OutboundPolicy {
        allowed_path_prefixes: vec!["/ams/api/".into()],
        allowed_hosts: vec!["sidecar.internal".into()],
        loopback_only: true,
        sandbox_path_rewrite: true,
        request_time_format: RequestTimeFormat::EpochMillis,
        verify_responses: true,
        max_response_time_skew: None,
        request_timeout: Duration::from_secs(15),
        body: BodyPolicy {
            max_bytes: 1 << 20,
            limit_key: "[outbound] max_body_bytes",
            timeout: Duration::from_secs(10),
        },
    }
}

fn outbound_with(
    policy: OutboundPolicy,
    client_id: &str,
    agent_token: Option<&str>,
    gateway: &Arc<Fake>,
) -> Outbound<Arc<Fake>> {
    let keys: Arc<dyn KeySource> = Arc::new(keyset(client_id));
    let merchant = OutboundMerchant::new(
        DEFAULT_MERCHANT,
        client_id,
        agent_token.map(str::to_string),
        keys,
        gateway.clone(),
        ("open-sea-global.alipay.com", 443),
    );
    Outbound::new(policy, merchant)
}

fn outbound(gateway: &Arc<Fake>) -> Outbound<Arc<Fake>> {
    outbound_with(policy(), CLIENT, None, gateway)
}

/// A gateway that answers `status` with `body`, signed by Alipay over the path and
/// client id it was sent (keyVersion `version`).
fn alipay(status: u16, version: &'static str, body: &'static [u8]) -> Arc<Fake> {
    signing(status, version, "", body, body)
}

/// A gateway that answers `status` with `sent` (`Content-Encoding: encoding` unless
/// empty), signed by Alipay (keyVersion `version`) over `signed`, the path and the client
/// id it was sent.
fn signing(
    status: u16,
    version: &'static str,
    encoding: &'static str,
    signed: &'static [u8],
    sent: &'static [u8],
) -> Arc<Fake> {
    Fake::new(move |req| {
        let target = req.head.uri.path_and_query().expect("target").as_str();
        let client = header(&req.head.headers, "client-id").expect("client-id");
        let time = "2024-05-01T12:34:57+08:00";
        let sig = alipay_signature(version, target, client, time, signed);
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("response-time", time),
            ("signature", sig.as_str()),
        ];
        if !encoding.is_empty() {
            headers.push(("Content-Encoding", encoding));
        }
        Ok(answer(status, &headers, sent))
    })
}

fn canned(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> Arc<Fake> {
    Fake::new(move |_| Ok(answer(status, headers, body)))
}

fn pay(headers: &[(&str, &str)]) -> Request {
    request(PAY, headers, BODY)
}

fn marker(reply: &Reply) -> Option<&str> {
    header(&reply.head.headers, VERIFIED_HEADER)
}

fn refused_with(reply: &Reply, error: SidecarError) {
    assert_eq!(reply.head.status.as_u16(), error.http_status(), "{reply:?}");
    assert_eq!(result_code(reply).as_deref(), Some(error.code()));
    assert_eq!(
        header(&reply.head.headers, "x-alipay-sidecar-error"),
        Some(error.code())
    );
    assert_eq!(reply.report.error, Some(error));
    assert_eq!(reply.report.status, error.http_status());
    assert_eq!(
        marker(reply),
        None,
        "a refusal carries no verification marker"
    );
}

/// Withheld as `SIDECAR_RESPONSE_SIGNATURE_INVALID`, counted with `reason`.
fn withheld(reply: &Reply, reason: &'static str) {
    refused_with(reply, SidecarError::ResponseSignatureInvalid);
    assert_eq!(
        reply.report.verification,
        Some(VerificationResult::Invalid(reason))
    );
}

// ---------------------------------------------------------------- API-key mode

const API_KEY: &str = "isak_PROD_VF8xMTEyMjIzMzM_UnitTestSecret";

fn api_key_outbound(key: &str, gateway: &Arc<Fake>) -> Outbound<Arc<Fake>> {
    api_key_outbound_with(policy(), key, gateway)
}

fn api_key_outbound_with(
    policy: OutboundPolicy,
    key: &str,
    gateway: &Arc<Fake>,
) -> Outbound<Arc<Fake>> {
    let mut keys = (*keyset(CLIENT)).clone();
    keys.credential = Credential::ApiKey(crate::protocol::ApiKey::parse(key).unwrap());
    let keys: Arc<dyn KeySource> = Arc::new(Arc::new(keys));
    let merchant = OutboundMerchant::new(
        DEFAULT_MERCHANT,
        CLIENT,
        None,
        keys,
        gateway.clone(),
        ("open-sea-global.alipay.com", 443),
    );
    Outbound::new(policy, merchant)
}

/// Alipay's answer signed for [`CLIENT`] over `signed` (the request carries no client id
/// in API-key mode).
fn signed_for_client(signed: &'static [u8], sent: &'static [u8]) -> Arc<Fake> {
    Fake::new(move |req| {
        let target = req.head.uri.path_and_query().expect("target").as_str();
        let time = "2024-05-01T12:34:57+08:00";
        let sig = alipay_signature("1", target, CLIENT, time, signed);
        Ok(answer(
            200,
            &[("response-time", time), ("signature", sig.as_str())],
            sent,
        ))
    })
}

#[tokio::test]
async fn api_key_mode_sends_the_sidecars_bearer_key_and_marks_unsigned_answers() {
    let gw = canned(
        200,
        &[("Content-Type", "application/json")],
        br#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#,
    );
    let h = api_key_outbound(API_KEY, &gw);
    let reply = h
        .handle(pay(&[
            (
                "Authorization",
                "Bearer isak_PROD_VF8xMTEyMjIzMzM_TheAppsOwn",
            ),
            ("Cookie", "a=b"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Signature", "algorithm=RSA256,keyVersion=1,signature=x"),
        ]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(marker(&reply), Some("unsigned-api-key"));
    assert_eq!(reply.report.outcome, Outcome::Forwarded);
    let sent = gw.only();
    let auth: Vec<_> = sent.head.headers.get_all("authorization").iter().collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].as_bytes(), format!("Bearer {API_KEY}").as_bytes());
    assert!(auth[0].is_sensitive(), "never indexed by HPACK");
    for h in [
        "client-id",
        "request-time",
        "signature",
        "cookie",
        "proxy-authorization",
    ] {
        assert!(!sent.head.headers.contains_key(h), "{h} was sent");
    }
    assert_eq!(&sent.body[..], BODY, "the same bytes");
}

#[tokio::test]
async fn api_key_mode_still_verifies_signed_answers() {
    let body: &[u8] = br#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#;
    let reply = api_key_outbound(API_KEY, &signed_for_client(body, body))
        .handle(pay(&[]))
        .await;
    assert_eq!(marker(&reply), Some("true"));
    let reply = api_key_outbound(API_KEY, &signed_for_client(b"{}", body))
        .handle(pay(&[]))
        .await;
    withheld(&reply, "mismatch");
}

#[tokio::test]
async fn a_test_api_key_never_calls_a_live_path() {
    const TEST_KEY: &str = "isak_TEST_VF8xMTEyMjIzMzM_UnitTestSecret";
    let gw = canned(200, &[], b"{}");
    let no_rewrite = OutboundPolicy {
        sandbox_path_rewrite: false,
        ..policy()
    };
    let reply = api_key_outbound_with(no_rewrite, TEST_KEY, &gw)
        .handle(pay(&[]))
        .await;
    refused_with(&reply, SidecarError::PathNotAllowed);
    assert!(gw.seen().is_empty(), "nothing was sent");
    // with sandbox_path_rewrite, a TEST key's live path goes to the sandbox path
    let reply = api_key_outbound(TEST_KEY, &gw).handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(
        gw.only().head.uri.path(),
        "/ams/sandbox/api/v1/payments/pay"
    );
}

// ---------------------------------------------------------------- head checks

#[test]
fn head_refuses_paths_outside_the_prefixes() {
    let h = outbound(&canned(200, &[], b""));
    let head = pay(&[]).head;
    assert!(h.check_head(&head, PAY).is_ok());
    let r = h
        .check_head(&head, "/ams/apix/v1/payments/pay")
        .unwrap_err();
    assert_eq!(r.error, SidecarError::PathNotAllowed);
    let r = h.check_head(&head, "/ams/api/v1/../admin").unwrap_err();
    assert_eq!(r.error, SidecarError::PathNotAllowed);
    assert!(r.message.contains("dot segment"), "{}", r.message);
}

#[test]
fn head_refuses_browsers() {
    let h = outbound(&canned(200, &[], b""));
    for name in ["Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode"] {
        let req = pay(&[(name, "x")]);
        let r = h.check_head(&req.head, PAY).unwrap_err();
        assert_eq!(r.error, SidecarError::BrowserRequestRefused, "{name}");
    }
}

#[test]
fn head_refuses_foreign_hosts_on_loopback_listeners_only() {
    let h = outbound(&canned(200, &[], b""));
    for ok in ["127.0.0.1:8080", "localhost", "sidecar.internal:8080"] {
        assert!(
            h.check_head(&pay(&[("Host", ok)]).head, PAY).is_ok(),
            "{ok}"
        );
    }
    let r = h
        .check_head(&pay(&[("Host", "evil.example")]).head, PAY)
        .unwrap_err();
    assert_eq!(r.error, SidecarError::HostNotAllowed);
    assert!(r.message.contains("evil.example"));
    let remote = outbound_with(
        OutboundPolicy {
            loopback_only: false,
            ..policy()
        },
        CLIENT,
        None,
        &canned(200, &[], b""),
    );
    assert!(remote
        .check_head(&pay(&[("Host", "evil.example")]).head, PAY)
        .is_ok());
}

// ---------------------------------------------------------------- signing

#[tokio::test]
async fn signs_the_exact_bytes_and_sends_them_without_a_copy() {
    let gw = alipay(200, "1", br#"{"result":{"resultStatus":"S"}}"#);
    let h = outbound(&gw);
    let req = pay(&[("Content-Type", "application/json; charset=UTF-8")]);
    let body_ptr = req.body.as_ptr();
    let reply = h.handle(req).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    let sent = gw.only();
    assert_eq!(sent.body.as_ptr(), body_ptr, "the body was copied");
    assert_eq!(&sent.body[..], BODY);
    assert_eq!(sent.head.uri.path(), PAY);
    assert_eq!(sent.timeout, Duration::from_secs(15));
    assert_eq!(sent.max_response, MAX_RESPONSE_BYTES);
    let hs = &sent.head.headers;
    assert_eq!(header(hs, "client-id"), Some(CLIENT));
    assert_eq!(header(hs, "host"), Some("open-sea-global.alipay.com"));
    assert_eq!(header(hs, "accept-encoding"), Some("identity"));
    assert_eq!(
        header(hs, "content-length"),
        Some(BODY.len().to_string().as_str())
    );
    let time = header(hs, "request-time").unwrap();
    let sig = header(hs, "signature").unwrap();
    assert!(sig.starts_with("algorithm=RSA256,keyVersion=1,signature="));
    let content = crate::protocol::content_to_sign("POST", PAY, CLIENT, time, BODY);
    merchant_public()
        .verify(&content, sig)
        .expect("the signature covers POST <path>, client id, time and the exact body");
    assert!(reply.report.sign_time.is_some());
    assert_eq!(reply.report.request_bytes, Some(BODY.len()));
    assert_eq!(&*reply.report.merchant, "default");
    assert_eq!(reply.report.api, "payments/pay");
}

#[tokio::test]
async fn app_signature_headers_are_replaced_and_agent_token_set() {
    let gw = alipay(200, "1", br#"{"result":{"resultStatus":"S"}}"#);
    let h = outbound_with(policy(), CLIENT, Some("TOKEN-CFG"), &gw);
    let req = pay(&[
        ("Client-Id", "FORGED"),
        ("Request-Time", "1"),
        (
            "Signature",
            "algorithm=RSA256,keyVersion=9,signature=forged",
        ),
        ("Key-Version", "9"),
        ("Accept-Encoding", "gzip"),
        ("Agent-Token", "TOKEN-APP"),
        ("X-Alipay-Sidecar-Verified", "true"),
        ("X-Trace", "kept"),
    ]);
    h.handle(req).await;
    let hs = gw.only().head.headers.clone();
    let all = |n: &str| {
        hs.get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("client-id"), [CLIENT]);
    assert_ne!(all("request-time"), ["1"]);
    assert_eq!(all("request-time").len(), 1);
    assert_eq!(all("signature").len(), 1);
    assert!(!all("signature")[0].contains("forged"));
    assert_eq!(
        all("key-version"),
        ["1"],
        "the app's Key-Version becomes the sidecar's"
    );
    assert_eq!(all("accept-encoding"), ["identity"]);
    assert_eq!(all("agent-token"), ["TOKEN-CFG"]);
    assert!(all("x-alipay-sidecar-verified").is_empty());
    assert_eq!(all("x-trace"), ["kept"]);
    assert!(header(&hs, "user-agent")
        .unwrap()
        .starts_with("alipay-sidecar/"));

    // without a configured token the app's own is forwarded, and no Key-Version is added
    let gw = alipay(200, "1", br#"{"result":{"resultStatus":"S"}}"#);
    outbound(&gw)
        .handle(pay(&[
            ("Agent-Token", "TOKEN-APP"),
            ("User-Agent", "sdk/1"),
        ]))
        .await;
    let hs = gw.only().head.headers.clone();
    assert_eq!(header(&hs, "agent-token"), Some("TOKEN-APP"));
    assert_eq!(header(&hs, "key-version"), None);
    assert_eq!(header(&hs, "user-agent"), Some("sdk/1"));
}

#[tokio::test]
async fn request_time_format_follows_the_policy() {
    let gw = alipay(200, "1", br#"{}"#);
    outbound(&gw).handle(pay(&[])).await;
    let t = header(&gw.only().head.headers, "request-time")
        .unwrap()
        .to_string();
    assert!(
        t.len() >= 13 && t.bytes().all(|b| b.is_ascii_digit()),
        "{t}"
    );

    let gw = alipay(200, "1", br#"{}"#);
    let iso = OutboundPolicy {
        request_time_format: RequestTimeFormat::Iso8601,
        ..policy()
    };
    outbound_with(iso, CLIENT, None, &gw).handle(pay(&[])).await;
    let t = header(&gw.only().head.headers, "request-time")
        .unwrap()
        .to_string();
    assert!(t.starts_with("20") && t.contains('T'), "{t}");
    let ms = crate::protocol::parse_request_time(&t).expect("ISO-8601 parses");
    assert!((exchange::now_millis() - ms).abs() < 60_000);
}

#[tokio::test]
async fn sandbox_client_ids_sign_and_send_the_sandbox_path() {
    // RSP-07: Alipay's answer signed over the rewritten path
    let id = "RSP-07";
    let client = input(id, "client_id");
    let (time, sig) = (input(id, "time"), input(id, "signature_header"));
    let body: &'static str = Box::leak(input(id, "body").into_boxed_str());
    let (time, sig): (&'static str, &'static str) = (
        Box::leak(time.into_boxed_str()),
        Box::leak(sig.into_boxed_str()),
    );
    let gw = Fake::new(move |_| {
        Ok(answer(
            200,
            &[("response-time", time), ("signature", sig)],
            body.as_bytes(),
        ))
    });
    let h = outbound_with(policy(), &client, None, &gw);
    let reply = h.handle(pay(&[])).await;
    let sent = gw.only();
    assert_eq!(sent.head.uri.path(), "/ams/sandbox/api/v1/payments/pay");
    let content = crate::protocol::content_to_sign(
        "POST",
        "/ams/sandbox/api/v1/payments/pay",
        &client,
        header(&sent.head.headers, "request-time").unwrap(),
        BODY,
    );
    merchant_public()
        .verify(&content, header(&sent.head.headers, "signature").unwrap())
        .expect("signed over the sandbox path");
    assert_eq!(marker(&reply), Some("true"), "{reply:?}");
    assert_eq!(&reply.body[..], body.as_bytes());

    // switched off: the path is sent as received
    let gw = alipay(200, "1", b"{}");
    let off = OutboundPolicy {
        sandbox_path_rewrite: false,
        ..policy()
    };
    outbound_with(off, &client, None, &gw)
        .handle(pay(&[]))
        .await;
    assert_eq!(gw.only().head.uri.path(), PAY);
}

// ---------------------------------------------------------------- the gateway fails

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

// ---------------------------------------------------------------- response policy

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

fn prefixes(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

#[test]
fn paths_are_matched_by_segment_and_spelling_tricks_refused() {
    let p = prefixes(&["/ams/api/v1/payments/inquiryPayment"]);
    assert!(target_allowed("/ams/api/v1/payments/inquiryPayment", &p).is_ok());
    assert!(target_allowed("/ams/api/v1/payments/inquiryPayment?x=1", &p).is_ok());
    assert!(target_allowed("/ams/api/v1/payments/inquiryPayment/sub", &p).is_ok());
    for bad in [
        "/ams/api/v1/payments/inquiryPaymentRefund",
        "/ams/api/v1/payments/inquiryPayment/.%2e/refund",
        "/ams/api/v1/payments/inquiryPayment/%2e./refund",
        "/ams/api/v1/payments/inquiryPayment/%2E%2E/refund",
        "/ams/api/v1/payments/inquiryPayment/..%2frefund",
        "/ams/api/v1/payments/inquiryPayment/..;/refund",
        "/ams/api/v1/payments/inquiryPayment\\..\\refund",
        "/ams/api/v1/payments/inquiryPayment/%5c..",
        "/ams/api/v1/payments/inquiryPayment/./x",
        "/ams/api/v1/payments/inquiryPayment/../refund",
    ] {
        assert!(target_allowed(bad, &p).is_err(), "{bad} must be refused");
    }
    let p = prefixes(&["/ams/api/"]);
    assert!(target_allowed("/ams/api/v1/payments/pay", &p).is_ok());
    assert!(target_allowed("/ams/apix/v1", &p).is_err());
}

#[test]
fn hosts_must_be_loopback_localhost_or_listed() {
    let allowed = prefixes(&["alipay-sidecar"]);
    for ok in [
        "127.0.0.1",
        "127.0.0.1:8080",
        "[::1]:8080",
        "localhost:8080",
        "LOCALHOST",
        "alipay-sidecar:8080",
        "127.1.2.3",
    ] {
        assert!(host_allowed(ok, &allowed), "{ok}");
    }
    for bad in [
        "evil.example",
        "evil.example:8080",
        "10.0.0.1",
        "localhost.evil.example",
        "[2001:db8::1]:80",
    ] {
        assert!(!host_allowed(bad, &allowed), "{bad}");
    }
}

/// Two merchants on one shared listener, each with its own gateway client.
fn two_merchants(sg: &Arc<Fake>, eu: &Arc<Fake>) -> Outbound<Arc<Fake>> {
    let merchant = |name: &str, id: &str, gw: &Arc<Fake>, host: &str| {
        let keys: Arc<dyn KeySource> = Arc::new(keyset(id));
        OutboundMerchant::new(name, id, None, keys, gw.clone(), (host, 443))
    };
    Outbound::shared(
        policy(),
        vec![
            merchant("sg", "T_SG", sg, "open-sea-global.alipay.com"),
            merchant("eu", CLIENT, eu, "open-eu-global.alipay.com"),
        ],
    )
}

#[tokio::test]
async fn several_merchants_route_by_header_and_the_header_is_not_forwarded() {
    let (sg, eu) = (alipay(200, "1", br#"{}"#), alipay(200, "1", br#"{}"#));
    let h = two_merchants(&sg, &eu);
    let reply = h.handle(pay(&[("X-Alipay-Sidecar-Merchant", "eu")])).await;
    assert_eq!(reply.head.status.as_u16(), 200, "{reply:?}");
    assert_eq!(marker(&reply), Some("true"));
    assert!(sg.seen().is_empty(), "sg's gateway got eu's request");
    let sent = eu.only();
    let hs = &sent.head.headers;
    assert_eq!(header(hs, "client-id"), Some(CLIENT));
    assert_eq!(header(hs, "host"), Some("open-eu-global.alipay.com"));
    assert!(header(hs, "x-alipay-sidecar-merchant").is_none());
    assert_eq!(&*reply.report.merchant, "eu");

    h.handle(pay(&[("X-Alipay-Sidecar-Merchant", " sg ")]))
        .await;
    assert_eq!(header(&sg.only().head.headers, "client-id"), Some("T_SG"));
}

#[tokio::test]
async fn several_merchants_without_or_with_an_unknown_name_get_400_naming_them() {
    let (sg, eu) = (alipay(200, "1", br#"{}"#), alipay(200, "1", br#"{}"#));
    let h = two_merchants(&sg, &eu);
    for headers in [
        vec![],
        vec![("X-Alipay-Sidecar-Merchant", "us")],
        vec![
            ("X-Alipay-Sidecar-Merchant", "sg"),
            ("X-Alipay-Sidecar-Merchant", "eu"),
        ],
    ] {
        let reply = h.handle(pay(&headers)).await;
        assert_eq!(reply.head.status.as_u16(), 400, "{headers:?}");
        assert_eq!(
            result_code(&reply).as_deref(),
            Some("SIDECAR_MERCHANT_UNKNOWN")
        );
        let body = String::from_utf8_lossy(&reply.body).to_string();
        assert!(body.contains("sg, eu"), "{body}");
        assert_eq!(&*reply.report.merchant, UNSELECTED_MERCHANT);
    }
    assert!(sg.seen().is_empty() && eu.seen().is_empty());
}

#[tokio::test]
async fn one_merchant_ignores_the_merchant_header() {
    let gw = alipay(200, "1", br#"{}"#);
    let reply = outbound(&gw)
        .handle(pay(&[("X-Alipay-Sidecar-Merchant", "nobody")]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert!(header(&gw.only().head.headers, "x-alipay-sidecar-merchant").is_none());
    assert_eq!(&*reply.report.merchant, DEFAULT_MERCHANT);
}

// ---------------------------------------------------------------- [reconcile]

/// Remembers what it was asked to record; fails when told to.
#[derive(Default)]
struct Recorder {
    pays: Mutex<Vec<crate::reconcile::PendingPay>>,
    fail: bool,
}

#[async_trait::async_trait]
impl crate::reconcile::PayRecorder for Recorder {
    async fn record_pay(&self, pay: &crate::reconcile::PendingPay) -> Result<(), String> {
        self.pays.lock().unwrap().push(pay.clone());
        if self.fail {
            return Err("disk full".into());
        }
        Ok(())
    }
}

fn recording(
    policy: OutboundPolicy,
    gw: &Arc<Fake>,
    fail: bool,
) -> (Outbound<Arc<Fake>>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder {
        fail,
        ..Recorder::default()
    });
    let timing = crate::reconcile::PayTiming {
        reconcile_after: Duration::from_secs(60),
        default_close_after: Duration::from_secs(1800),
    };
    let h = outbound_with(policy, CLIENT, None, gw).with_pay_recording(
        crate::reconcile::PayRecording::new(recorder.clone(), timing),
    );
    (h, recorder)
}

const IN_PROCESS: &[u8] =
    br#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U","resultMessage":"payment in process"},"paymentRequestId":"p1"}"#;

#[tokio::test]
async fn a_verified_pay_answer_that_is_not_final_is_recorded_before_the_app_gets_it() {
    let gw = alipay(200, "1", IN_PROCESS);
    let (h, recorder) = recording(policy(), &gw, false);
    let reply = h.handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], IN_PROCESS, "relayed byte-exact");
    let pays = recorder.pays.lock().unwrap().clone();
    assert_eq!(pays.len(), 1, "recorded before the reply was returned");
    assert_eq!(pays[0].merchant, DEFAULT_MERCHANT);
    assert_eq!(pays[0].client_id, CLIENT);
    assert_eq!(pays[0].payment_request_id, "p1");
    assert_eq!(pays[0].reconcile_at - pays[0].now, 60_000);
    assert_eq!(pays[0].close_time - pays[0].now, 1_800_000);
}

#[tokio::test]
async fn final_unverified_or_other_answers_are_not_recorded() {
    // final answer
    let gw = alipay(
        200,
        "1",
        br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"}}"#,
    );
    let (h, recorder) = recording(policy(), &gw, false);
    assert_eq!(h.handle(pay(&[])).await.head.status.as_u16(), 200);
    // another API answering U
    let gw = alipay(200, "1", IN_PROCESS);
    let (h2, recorder2) = recording(policy(), &gw, false);
    let inquiry = request("/ams/api/v1/payments/inquiryPayment", &[], BODY);
    assert_eq!(h2.handle(inquiry).await.head.status.as_u16(), 200);
    // an unsigned U is withheld, never recorded
    let gw = canned(200, &[("Content-Type", "application/json")], IN_PROCESS);
    let (h3, recorder3) = recording(policy(), &gw, false);
    assert_eq!(h3.handle(pay(&[])).await.head.status.as_u16(), 502);
    // verification switched off: the answer is not verified, so not trusted
    let gw = canned(200, &[("Content-Type", "application/json")], IN_PROCESS);
    let mut off = policy();
    off.verify_responses = false;
    let (h4, recorder4) = recording(off, &gw, false);
    assert_eq!(h4.handle(pay(&[])).await.head.status.as_u16(), 200);
    for r in [recorder, recorder2, recorder3, recorder4] {
        assert!(r.pays.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_store_failure_does_not_cost_the_app_its_answer() {
    let gw = alipay(200, "1", IN_PROCESS);
    let (h, recorder) = recording(policy(), &gw, true);
    let reply = h.handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(&reply.body[..], IN_PROCESS);
    assert_eq!(marker(&reply), Some("true"));
    assert_eq!(recorder.pays.lock().unwrap().len(), 1, "it was tried");
}
