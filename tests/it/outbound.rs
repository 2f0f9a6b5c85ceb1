//! Outbound: the real `alipay-sidecar run` binary between a plain HTTP client and the fake
//! Alipay gateway over verified TLS, on 127.0.0.1 ephemeral ports; a stale gateway answer is
//! refused, not relayed as verified.

use alipay_sidecar::mock_gateway::MockGatewayConfig;

use crate::support::{raw_bytes, raw_request, request, rt, Response, Rig, RigConfig, VECTOR_KEYS};
use crate::support::{vector_gateway, write_vector_keys, Sidecar, CLIENT_ID, PAY};

/// The outbound timeouts these tests run with.
const TIMEOUTS: &str = "request_timeout = \"2s\"\nconnect_timeout = \"1s\"\n";

/// The rig: `extra` adds `[outbound]` lines (after [`TIMEOUTS`]), `gateway` adjusts the
/// gateway, `rig` the rest of the sidecar's config.
fn setup_custom(
    extra: &str,
    trust_ca: bool,
    gateway: impl FnOnce(&mut MockGatewayConfig),
    rig: RigConfig,
) -> Rig {
    let outbound = format!("{TIMEOUTS}{}{extra}", rig.outbound);
    Rig::start(
        RigConfig {
            outbound: &outbound,
            trust_ca,
            ..rig
        },
        gateway,
        |_| {},
    )
}

fn setup_with(extra: &str, trust_ca: bool) -> Rig {
    setup_custom(extra, trust_ca, |_| {}, RigConfig::default())
}

fn setup() -> Rig {
    setup_with("", true)
}

fn pay_body(id: &str, extra: &str) -> String {
    crate::support::pay_body(id, "5800", extra)
}

fn post(s: &Rig, path: &str, body: &[u8]) -> Response {
    request(
        s.outbound,
        "POST",
        path,
        &[("Content-Type", "application/json; charset=UTF-8")],
        body,
    )
    .unwrap()
}

fn result_code(r: &Response) -> (String, String) {
    r.result_code()
}

/// The last request the gateway received on `path`.
fn received_body(s: &Rig, path: &str) -> Vec<u8> {
    s.last_received(path).body
}

#[test]
fn pay_then_inquiry_verified_end_to_end() {
    let s = setup();
    let r = post(&s, PAY, pay_body("pay_e2e_1", "").as_bytes());
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        s.sidecar.logs()
    );
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
    assert_eq!(r.header("x-alipay-sidecar-key-version"), Some("1"));
    assert_eq!(result_code(&r), ("S".into(), "SUCCESS".into()));
    let payment_id = r.json()["paymentId"].as_str().unwrap().to_string();
    // the gateway verified the sidecar's signature independently (rsa crate) and saw our client id
    let got = s.last_pay();
    assert_eq!(got.header("client-id"), Some(CLIENT_ID));
    let sig = got.header("signature").unwrap();
    assert!(
        sig.starts_with("algorithm=RSA256,keyVersion=1,signature="),
        "{sig}"
    );
    assert!(
        got.header("request-time")
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()),
        "epoch millis by default"
    );

    let q = post(
        &s,
        "/ams/api/v1/payments/inquiryPayment",
        format!(r#"{{"paymentId":"{payment_id}"}}"#).as_bytes(),
    );
    assert_eq!(q.status, 200);
    assert_eq!(q.header("x-alipay-sidecar-verified"), Some("true"));
    assert_eq!(q.json()["paymentRequestId"], "pay_e2e_1");
}

#[test]
fn bodies_reach_the_gateway_byte_exact() {
    let s = setup();
    // non-ASCII, CRLF and JSON escapes inside, pretty-printed: never re-serialised
    let crlf = "{\r\n  \"paymentRequestId\": \"pay_crlf\",\r\n  \"paymentAmount\": {\"currency\": \"EUR\", \"value\": \"1000\"},\r\n  \"note\": \"caf\\u00e9 \\/ déjà 茶\"\r\n}\r\n";
    let r = post(&s, PAY, crlf.as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(received_body(&s, PAY), crlf.as_bytes());

    // 1 KiB and 1 MiB (at the default limit)
    for (i, size) in [1024usize, 1024 * 1024].into_iter().enumerate() {
        let head = pay_body(&format!("pay_big_{i}"), ",\"pad\":\"");
        let mut body = head.as_bytes()[..head.len() - 1].to_vec(); // drop the final '}'
        body.resize(size - 2, b'x');
        body.extend_from_slice(b"\"}");
        assert_eq!(body.len(), size);
        let r = post(&s, PAY, &body);
        assert_eq!(
            r.status,
            200,
            "{size}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
        assert_eq!(received_body(&s, PAY), body, "{size}");
    }

    // chunked from the app, with Expect: 100-continue (what curl sends for large bodies)
    let body = pay_body("pay_chunked", "");
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    let mut raw = format!("POST {PAY} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").into_bytes();
    for part in [a, b] {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(s.outbound, &raw).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(received_body(&s, PAY), body.as_bytes());
    let got = s.last_pay();
    assert_eq!(
        got.header("expect"),
        None,
        "Expect is answered by the sidecar, never forwarded"
    );
}

#[test]
fn app_sent_signature_headers_are_replaced() {
    let s = setup();
    let body = pay_body("pay_replaced", "");
    let r = request(
        s.outbound,
        "POST",
        PAY,
        &[
            ("Signature", "algorithm=RSA256,keyVersion=1,signature=Zm9v"),
            ("Client-Id", "SOMEONE_ELSE"),
            ("Request-Time", "1"),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
    let got = s.last_pay();
    assert_eq!(got.header("client-id"), Some(CLIENT_ID));
    assert_ne!(got.header("request-time"), Some("1"));
    assert!(!got.header("signature").unwrap().ends_with("Zm9v"));
}

#[test]
fn refusals_never_reach_the_gateway() {
    let s = setup_with("max_body_bytes = 1024", true);
    let r = request(s.outbound, "GET", PAY, &[], b"").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(
        result_code(&r),
        ("F".into(), "SIDECAR_METHOD_NOT_ALLOWED".into())
    );
    for path in [
        "/admin/secret",
        "/ams/api/../../etc",
        "/ams/apix/v1/payments/pay",
    ] {
        let r = post(&s, path, b"{}");
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(
            result_code(&r),
            ("F".into(), "SIDECAR_PATH_NOT_ALLOWED".into())
        );
    }
    let r = post(&s, PAY, &vec![b'x'; 1025]);
    assert_eq!(r.status, 413);
    assert_eq!(
        result_code(&r),
        ("F".into(), "SIDECAR_BODY_TOO_LARGE".into())
    );
    // chunked over the limit (no Content-Length to check up front)
    let mut raw = format!(
        "POST {PAY} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..3 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'y'; 0x200]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_request(s.outbound, &raw).unwrap().status, 413);
    assert!(
        s.gw.received().is_empty(),
        "nothing was forwarded: {:?}",
        s.gw.received().len()
    );
}

#[test]
fn response_policy_branches() {
    let s = setup();
    let cases: &[(&str, u16, &str, &str)] = &[
        // (mockFault, sidecar status, X-Alipay-Sidecar-Verified or error code, resultStatus)
        ("tampered", 502, "SIDECAR_RESPONSE_SIGNATURE_INVALID", "F"),
        ("unsigned", 502, "SIDECAR_RESPONSE_UNSIGNED", "F"),
        ("invalid_signature", 200, "unsigned-failure", "F"),
        ("unknown_exception", 200, "true", "U"),
        ("signed_failure", 200, "true", "F"),
        ("http_status:500", 500, "unverified-status", ""),
    ];
    for (i, (fault, status, marker, result_status)) in cases.iter().enumerate() {
        let r = s.pay_fault(&format!("pay_policy_{i}"), fault);
        assert_eq!(
            r.status,
            *status,
            "{fault}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if marker.starts_with("SIDECAR_") {
            assert_eq!(
                result_code(&r),
                ((*result_status).into(), (*marker).into()),
                "{fault}"
            );
            assert_eq!(r.header("x-alipay-sidecar-verified"), None, "{fault}");
            // the unverified body is withheld
            assert!(r.json().get("paymentId").is_none(), "{fault}: body leaked");
        } else {
            assert_eq!(
                r.header("x-alipay-sidecar-verified"),
                Some(*marker),
                "{fault}"
            );
            if !result_status.is_empty() {
                assert_eq!(result_code(&r).0, *result_status, "{fault}");
            }
        }
    }
}

#[test]
fn unknown_response_key_version_is_refused_by_name() {
    // the gateway signs with keyVersion 1; the sidecar only knows version 2
    let keys = VECTOR_KEYS.replace(
        r#""1" = "alipay_public_key.pem""#,
        r#""2" = "alipay_public_key.pem""#,
    );
    let s = setup_custom(
        "",
        true,
        |_| {},
        RigConfig {
            keys: &keys,
            ..Default::default()
        },
    );
    let r = post(&s, PAY, pay_body("pay_kv", "").as_bytes());
    assert_eq!(r.status, 502);
    let msg = r.json()["result"]["resultMessage"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("keyVersion \"1\""), "{msg}");
}

#[test]
fn gateway_failures_become_u_errors() {
    let s = setup();
    for (fault, status, code) in [
        ("delay:5000", 504, "SIDECAR_GATEWAY_TIMEOUT"),
        ("reset_mid_body", 502, "SIDECAR_GATEWAY_PROTOCOL_ERROR"),
        ("drop", 502, "SIDECAR_GATEWAY_PROTOCOL_ERROR"),
    ] {
        let r = s.pay_fault(&format!("pay_{code}"), fault);
        assert_eq!(
            r.status,
            status,
            "{fault}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(result_code(&r), ("U".into(), code.into()), "{fault}");
    }
    // the gateway goes away entirely
    let Rig {
        gw,
        sidecar,
        outbound,
        dir: _dir,
    } = s;
    rt().block_on(gw.shutdown());
    let r = request(
        outbound,
        "POST",
        PAY,
        &[],
        pay_body("pay_down", "").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 502, "{}", sidecar.logs());
    assert_eq!(
        result_code(&r),
        ("U".into(), "SIDECAR_GATEWAY_UNREACHABLE".into())
    );
}

#[test]
fn untrusted_gateway_certificate_is_a_clear_error() {
    let s = setup_with("", false);
    let r = post(&s, PAY, pay_body("pay_tls", "").as_bytes());
    assert_eq!(r.status, 502);
    let (status, code) = result_code(&r);
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("F", "SIDECAR_GATEWAY_TLS_ERROR"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["result"]["resultMessage"]
        .as_str()
        .unwrap()
        .contains("ca_file"));
    assert!(s.gw.received().is_empty());
}

#[test]
fn concurrent_requests_get_their_own_responses() {
    // 64 at once through one sidecar: 64 new gateway connections (TLS handshakes) while the
    // fake gateway signs 64 answers with the `rsa` crate (slow in a debug build). The request
    // timeout is generous for a busy 2-core machine; the connect timeout is the default.
    let s = Rig::with("request_timeout = \"60s\"\n");
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let addr = s.outbound;
            std::thread::spawn(move || {
                let id = format!("pay_conc_{i}");
                let r = request(addr, "POST", PAY, &[], pay_body(&id, "").as_bytes()).unwrap();
                (id, r)
            })
        })
        .collect();
    for h in handles {
        let (id, r) = h.join().unwrap();
        assert_eq!(r.status, 200, "{id}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
        assert_eq!(r.json()["paymentRequestId"], id.as_str());
    }
}

/// Issue 20 item 9: one of 64 concurrent requests came back `504 SIDECAR_GATEWAY_TIMEOUT`.
/// The fake gateway signed its answers on its async workers (two, shared by every gateway in
/// this test binary); while they signed, the TLS handshakes of the sidecar's new connections
/// waited, past the sidecar's `connect_timeout`. Provoked deterministically: four answers
/// whose signing holds its thread 5 s (`slow_sign`, more than the two workers), then one
/// more request with a 1 s connect timeout, which needs a fresh connection (the four
/// pooled ones are busy). It must complete, and before the slow ones.
#[test]
fn a_gateway_busy_signing_does_not_stall_the_handshakes_of_other_requests() {
    let s = Rig::with("request_timeout = \"60s\"\nconnect_timeout = \"1s\"\n");
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let addr = s.outbound;
            std::thread::spawn(move || {
                let id = format!("pay_slow_{i}");
                let body = pay_body(&id, r#","mockFault":"slow_sign:5000""#);
                request(addr, "POST", PAY, &[], body.as_bytes()).unwrap()
            })
        })
        .collect();
    // all four reached the gateway: it records a request before it signs the answer
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while s.gw.received().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow requests never reached the gateway"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = post(&s, PAY, pay_body("pay_while_signing", "").as_bytes());
    let pending = slow.iter().filter(|h| !h.is_finished()).count();
    r.assert_status(200, "a request while the gateway signs slowly");
    assert_eq!(r.json()["paymentRequestId"], "pay_while_signing");
    assert!(
        pending > 0,
        "the check is only meaningful while slow signatures are still being made"
    );
    for h in slow {
        h.join()
            .unwrap()
            .assert_status(200, "a slowly signed answer");
    }
}

#[test]
fn sandbox_rewrite_and_iso_time_when_configured() {
    let extra = "sandbox_path_rewrite = true\nrequest_time_format = \"iso8601\"";
    let s = setup_custom(
        extra,
        true,
        |gw| gw.expected_client_id = None,
        RigConfig {
            client_id: "SANDBOX_5YBZ1A2C3D4E5F01",
            ..Default::default()
        },
    );
    let r = post(&s, PAY, pay_body("pay_sandbox", "").as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
    let got = s.gw.received().into_iter().next().unwrap();
    assert_eq!(got.target, "/ams/sandbox/api/v1/payments/pay");
    assert!(
        alipay_sidecar::protocol::parse_request_time(got.header("request-time").unwrap()).is_some()
    );
    assert!(got.header("request-time").unwrap().contains('T'));
}

// ---------------------------------------------------------------- hardening (issue 8)

#[test]
fn path_tricks_and_partial_segments_are_refused_before_signing() {
    let s = setup_with(
        r#"allowed_path_prefixes = ["/ams/api/v1/payments/inquiryPayment"]"#,
        true,
    );
    let base = "/ams/api/v1/payments/inquiryPayment";
    for bad in [
        format!("{base}/.%2e/refund"),
        format!("{base}/%2e./refund"),
        format!("{base}/%2E%2E/refund"),
        format!("{base}/..%2f..%2frefund"),
        format!("{base}/..;/refund"),
        format!("{base}\\..\\refund"),
        format!("{base}/%5c../refund"),
        format!("{base}/./x"),
        "/ams/api/v1/payments/inquiryPaymentRefund".to_string(),
    ] {
        // raw: a client library would refuse or normalise these targets
        let r = raw_request(
            s.outbound,
            &raw_bytes("POST", &bad, "127.0.0.1", &[], b"{}"),
        )
        .unwrap();
        assert_eq!(r.status, 403, "{bad}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            result_code(&r),
            ("F".into(), "SIDECAR_PATH_NOT_ALLOWED".into()),
            "{bad}"
        );
    }
    assert!(s.gw.received().is_empty(), "nothing was signed or sent");
    // the allowed path itself, with a query, is sent byte-exact
    let target = format!("{base}?trace=1");
    let r = post(&s, &target, br#"{"paymentRequestId":"nope"}"#);
    assert_ne!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.gw.received()[0].target, target);
}

#[test]
fn unsigned_answers_pass_only_as_http_errors_or_f_rejections() {
    let s = setup();
    for code in [201, 202, 206, 299, 302] {
        let r = s.pay_fault(
            &format!("pay_unsigned_{code}"),
            &format!("unsigned_status:{code}"),
        );
        assert_eq!(
            r.status,
            502,
            "{code}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            result_code(&r),
            ("F".into(), "SIDECAR_RESPONSE_UNSIGNED".into()),
            "{code}"
        );
        assert!(
            r.json().get("paymentId").is_none(),
            "{code}: the body leaked"
        );
    }
    // an unsigned 4xx passes, marked
    let body = pay_body("pay_unsigned_404", ",\"mockFault\":\"unsigned_status:404\"");
    let r = post(&s, PAY, body.as_bytes());
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("x-alipay-sidecar-verified"),
        Some("unverified-status")
    );
    // a signed non-200 is verified like a 200
    let body = pay_body("pay_signed_201", ",\"mockFault\":\"status:201\"");
    let r = post(&s, PAY, body.as_bytes());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
}

#[test]
fn browsers_and_rebound_hosts_cannot_drive_the_signer() {
    let s = setup_with(r#"allowed_hosts = ["alipay-sidecar"]"#, true);
    let body = pay_body("pay_browser", "");
    for (name, value) in [
        ("Origin", "https://evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Mode", "no-cors"),
    ] {
        let r = request(
            s.outbound,
            "POST",
            PAY,
            &[("Content-Type", "text/plain"), (name, value)],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 403, "{name}");
        assert_eq!(
            result_code(&r),
            ("F".into(), "SIDECAR_BROWSER_REQUEST_REFUSED".into())
        );
    }
    let with_host = |host: &str| {
        let headers = [("Content-Type", "application/json")];
        raw_request(
            s.outbound,
            &raw_bytes("POST", PAY, host, &headers, body.as_bytes()),
        )
        .unwrap()
    };
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "10.1.2.3",
    ] {
        let r = with_host(host);
        assert_eq!(r.status, 403, "{host}");
        assert_eq!(
            result_code(&r),
            ("F".into(), "SIDECAR_HOST_NOT_ALLOWED".into()),
            "{host}"
        );
    }
    assert!(s.gw.received().is_empty(), "nothing was signed");
    for host in ["localhost:8080", "[::1]", "alipay-sidecar:8080"] {
        assert_eq!(with_host(host).status, 200, "{host}");
    }
}

#[test]
fn a_request_the_gateway_read_is_never_sent_twice() {
    let s = setup();
    // warm the pool: the next request goes out on a reused connection
    assert_eq!(
        post(&s, PAY, pay_body("pay_warm", "").as_bytes()).status,
        200
    );
    let body = pay_body("pay_read_then_closed", ",\"mockFault\":\"drop\"");
    let r = post(&s, PAY, body.as_bytes());
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        result_code(&r),
        ("U".into(), "SIDECAR_GATEWAY_PROTOCOL_ERROR".into())
    );
    let copies =
        s.gw.received()
            .into_iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("pay_read_then_closed"))
            .count();
    assert_eq!(copies, 1, "the gateway got the pay {copies} times");
}

#[test]
fn a_gateway_answer_signed_in_2001_is_refused_not_relayed_as_verified() {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let gw = vector_gateway(dir.path(), |_| {});
    let toml = format!(
        "client_id = \"{CLIENT_ID}\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\nalipay_public_keys = {{ \"1\" = \"alipay_public_key.pem\" }}\n[outbound]\nlisten = \"127.0.0.1:0\"\ngateway = \"https://127.0.0.1:{}\"\nca_file = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        gw.local_addr().port(),
        gw.ca_file().expect("ca").display().to_string()
    );
    let sidecar = Sidecar::start(dir.path(), &toml);
    let out = sidecar.addr("outbound");
    let ok = crate::support::pay(out, "fresh_answer", "");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-alipay-sidecar-verified"), Some("true"));

    let r = crate::support::pay(out, "stale_answer", r#","mockFault":"stale_response_time""#);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let (status, code) = r.result_code();
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("U", "SIDECAR_RESPONSE_STALE")
    );
    assert!(r.header("x-alipay-sidecar-verified").is_none());
    let message = r.json()["result"]["resultMessage"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("max_response_time_skew") && message.contains("inquire"),
        "{message}"
    );
    let m = sidecar.metrics();
    assert_eq!(
        m.sum(
            "alipay_sidecar_signature_verifications_total",
            &[("direction", "outbound"), ("result", "stale_response_time")]
        ),
        1.0
    );
    drop(gw);
}
