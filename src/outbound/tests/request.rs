//! The request: head checks (paths, browsers, hosts), what is signed and sent (exact bytes,
//! replaced app headers, the agent token, `Request-Time`, the sandbox path), and the pure path
//! and `Host` checks.

use super::*;

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
        // "an Origin header", "a Sec-Fetch-Site header": the article fits (issue 20)
        let article = if name == "Origin" { "an" } else { "a" };
        assert!(
            r.message
                .contains(&format!("carries {article} {name} header")),
            "{}",
            r.message
        );
    }
}

/// A path refused because it belongs to the other environment says so, with the exact path
/// to send; other refusals get no such hint (issue 20).
#[test]
fn refused_paths_of_the_other_environment_name_the_path_to_use() {
    let sandbox_only = prefixes(&["/ams/sandbox/api/"]);
    let hint = environment_hint("SANDBOX_1", "/ams/api/v1/payments/pay?x=1", &sandbox_only)
        .expect("a sandbox id on a live path");
    assert!(
        hint.contains("is a sandbox one: use /ams/sandbox/api/v1/payments/pay?x=1 (")
            && !hint.contains("allowed_path_prefixes"),
        "{hint}"
    );
    let live_only = prefixes(&["/ams/api/"]);
    let hint = environment_hint(
        "2188120000000001",
        "/ams/sandbox/api/v1/payments/pay",
        &live_only,
    )
    .expect("a live id on a sandbox path");
    assert!(
        hint.contains("is a live one") && hint.contains("use /ams/api/v1/payments/pay"),
        "{hint}"
    );
    // the suggested path is refused too: say what to allow
    let hint = environment_hint("SANDBOX_1", "/ams/api/v1/payments/pay", &live_only).unwrap();
    assert!(
        hint.contains("allow \"/ams/sandbox/api/\" in [outbound] allowed_path_prefixes"),
        "{hint}"
    );
    assert_eq!(
        environment_hint("SANDBOX_1", "/ams/sandbox/api/v1/x", &live_only),
        None
    );
    assert_eq!(
        environment_hint("2188", "/ams/api/v1/x", &sandbox_only),
        None
    );
    assert_eq!(
        environment_hint("SANDBOX_1", "/ams/api/v1/../x", &sandbox_only),
        None
    );
    assert_eq!(environment_hint("SANDBOX_1", "/other", &sandbox_only), None);
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
