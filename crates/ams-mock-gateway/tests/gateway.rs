//! The fake Alipay gateway, in-process on 127.0.0.1 ephemeral ports, driven by a raw HTTP/1.1
//! client (plain and TLS). Requests are signed with the sidecar's engine (`ams-signature`) and
//! the published vectors; the gateway verifies with its own, independent code. (The
//! `mock-gateway` subcommand of the sidecar's binary is tested in the sidecar's `tests/it/`.)

use std::time::Duration;

use ams_mock_gateway::{
    ControlError, Fault, MockGateway, MockGatewayConfig, MockGatewayError, NotifyMode,
    PaymentOutcome, PaymentResult, PaymentStatus,
};
use ams_signature::{content_to_sign, sign_content, PrivateKey, PublicKey, Verifier};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use test_support::{input, key, pay_body, vectors, App, Behaviour, Received, Response};

const CLIENT_ID: &str = "T_111222333";
const PAY: &str = "/ams/api/v1/payments/pay";

fn config() -> MockGatewayConfig {
    let mut cfg = MockGatewayConfig::new(key("merchant", "public_spki_pem"));
    // The vectors' test-only "alipay" key, so responses verify with the published key too.
    cfg.alipay_private_key = Some(key("alipay", "private_pkcs8_pem"));
    cfg.notify_backoff = vec![Duration::ZERO, Duration::from_millis(10)];
    cfg
}

fn merchant() -> PrivateKey {
    PrivateKey::from_text(&key("merchant", "private_pkcs8_pem")).unwrap()
}

/// What the gateway's answers are checked for.
trait Answer {
    /// `(resultCode, resultStatus)`.
    fn code(&self) -> (String, String);
    fn assert_unsigned(&self);
}

impl Answer for Response {
    fn code(&self) -> (String, String) {
        let (status, code) = self.result_code();
        (code, status)
    }

    fn assert_unsigned(&self) {
        for h in ["signature", "response-time", "client-id"] {
            assert!(self.header(h).is_none(), "unexpected {h} header: {self:?}");
        }
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    test_support::parse_response(raw).ok()
}

/// Sends raw bytes, reads until the server closes (or fails), returns everything read.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> Vec<u8> {
    stream.write_all(request).await.unwrap();
    stream.flush().await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Raw HTTP/1.1 client, plain or TLS (trusting the gateway's ca.pem).
struct Client {
    gateway: MockGateway,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    async fn start(cfg: MockGatewayConfig) -> Client {
        let gateway = MockGateway::start(cfg).await.unwrap();
        let tls = gateway.ca_file().map(|ca| connector(Some(ca)));
        Client { gateway, tls }
    }

    async fn raw(&self, request: &[u8]) -> Vec<u8> {
        let tcp = TcpStream::connect(self.gateway.local_addr()).await.unwrap();
        match &self.tls {
            None => exchange(tcp, request).await,
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                exchange(tls, request).await
            }
        }
    }

    async fn send(&self, target: &str, headers: &[(String, String)], body: &[u8]) -> Response {
        let raw = self.raw(&request(target, headers, body)).await;
        parse_response(&raw)
            .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)))
    }

    /// A request signed with the merchant test key.
    async fn call(&self, target: &str, body: &str) -> Response {
        self.send(
            target,
            &signed_headers(target, CLIENT_ID, body.as_bytes()),
            body.as_bytes(),
        )
        .await
    }

    /// Asserts the response is signed and verifies with the gateway's Alipay public key (and
    /// with the vectors' alipay public key, which the gateway was given).
    fn assert_signed(&self, target: &str, resp: &Response) {
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        assert_eq!(resp.header("client-id"), Some(CLIENT_ID));
        let time = resp.header("response-time").expect("response-time");
        assert!(time.ends_with("+08:00"), "{time}");
        let sig = resp.header("signature").expect("signature header");
        assert!(
            sig.starts_with("algorithm=RSA256,keyVersion=1,signature="),
            "{sig}"
        );
        let content = content_to_sign("POST", target, CLIENT_ID, time, &resp.body);
        for pem in [
            self.gateway.alipay_public_key_pem(),
            key("alipay", "public_spki_pem"),
        ] {
            let verifier = Verifier::new([("1".to_string(), PublicKey::from_text(&pem).unwrap())]);
            verifier
                .verify(&content, sig)
                .unwrap_or_else(|e| panic!("response signature does not verify: {e}"));
        }
    }
}

fn connector(ca: Option<&std::path::Path>) -> tokio_rustls::TlsConnector {
    let pem = ca.map(|ca| std::fs::read(ca).unwrap()).unwrap_or_default();
    test_support::tls_connector(&pem)
}

fn request(target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn signed_headers(target: &str, client_id: &str, body: &[u8]) -> Vec<(String, String)> {
    let time = "1714538096000";
    let content = content_to_sign("POST", target, client_id, time, body);
    let sig = sign_content(&merchant(), "1", &content).unwrap();
    vec![
        ("Client-Id".into(), client_id.into()),
        ("Request-Time".into(), time.into()),
        ("Signature".into(), sig),
    ]
}

#[tokio::test]
async fn pay_is_signed_and_idempotent_on_payment_request_id() {
    let c = Client::start(config()).await;
    assert!(c.gateway.base_url().starts_with("http://127.0.0.1:"));
    assert!(c.gateway.ca_file().is_none());

    let first = c.call(PAY, &pay_body("p-1", "5800", "")).await;
    c.assert_signed(PAY, &first);
    assert_eq!(first.code(), ("SUCCESS".into(), "S".into()));
    let j = first.json();
    assert_eq!(j["paymentRequestId"], "p-1");
    assert_eq!(j["paymentAmount"], json!({"currency":"HKD","value":"5800"}));
    let payment_id = j["paymentId"].as_str().unwrap().to_string();
    assert_eq!(payment_id.len(), 32);
    assert!(j["paymentCreateTime"].as_str().unwrap().ends_with("+08:00"));
    assert!(j["paymentTime"].is_string());
    // Alipay's field order: the result envelope first.
    assert!(first
        .body
        .starts_with(br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S""#));

    // The request log shows what was on the wire.
    let seen = c.gateway.received();
    let last = seen.last().unwrap();
    assert_eq!((last.method.as_str(), last.target.as_str()), ("POST", PAY));
    assert_eq!(last.body, pay_body("p-1", "5800", "").into_bytes());
    assert_eq!(last.header("CLIENT-ID"), Some(CLIENT_ID));
    assert!(last.verified);
    assert_eq!(last.fault, None);

    let again = c.call(PAY, &pay_body("p-1", "5800", "")).await;
    c.assert_signed(PAY, &again);
    assert_eq!(again.json()["paymentId"], payment_id.as_str());

    let other_amount = c.call(PAY, &pay_body("p-1", "5801", "")).await;
    c.assert_signed(PAY, &other_amount);
    assert_eq!(
        other_amount.code(),
        ("REPEAT_REQ_INCONSISTENT".into(), "F".into())
    );

    let other_id = c.call(PAY, &pay_body("p-2", "5800", "")).await;
    assert_ne!(other_id.json()["paymentId"], payment_id.as_str());

    // The sandbox path is served too, and the response is signed over that path.
    let sandbox = "/ams/sandbox/api/v1/payments/pay";
    let resp = c.call(sandbox, &pay_body("p-3", "100", "")).await;
    c.assert_signed(sandbox, &resp);
    assert_eq!(resp.code().1, "S");

    // Missing fields: a signed PARAM_ILLEGAL.
    let resp = c.call(PAY, r#"{"paymentRequestId":"p-4"}"#).await;
    c.assert_signed(PAY, &resp);
    assert_eq!(resp.code(), ("PARAM_ILLEGAL".into(), "F".into()));
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn tls_gateway_is_trusted_through_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.tls = Some(dir.path().join("certs"));
    let c = Client::start(cfg).await;
    assert!(c.gateway.base_url().starts_with("https://127.0.0.1:"));
    let ca = c.gateway.ca_file().unwrap().to_path_buf();
    assert_eq!(ca, dir.path().join("certs").join("ca.pem"));
    assert!(std::fs::read_to_string(&ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    let resp = c.call(PAY, &pay_body("tls-1", "5800", "")).await;
    c.assert_signed(PAY, &resp);
    assert_eq!(resp.code(), ("SUCCESS".into(), "S".into()));

    // Also reachable as `localhost`.
    let tcp = TcpStream::connect(c.gateway.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector(Some(&ca)).connect(name, tcp).await.is_ok());

    // Without the CA the certificate is not trusted.
    let tcp = TcpStream::connect(c.gateway.local_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    assert!(connector(None).connect(name, tcp).await.is_err());

    // Faults that cut the connection work over TLS as well.
    let body = pay_body("tls-2", "1", r#","mockFault":"drop""#);
    let raw = c
        .raw(&request(
            PAY,
            &signed_headers(PAY, CLIENT_ID, body.as_bytes()),
            body.as_bytes(),
        ))
        .await;
    assert!(raw.is_empty(), "{}", String::from_utf8_lossy(&raw));
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn published_request_vectors_are_accepted_verbatim() {
    let c = Client::start(config()).await;
    let mut seen = 0;
    for v in vectors().iter().filter(|v| v["kind"] == "request_sign") {
        let target = input(v, "uri");
        let client_id = input(v, "client_id");
        let body = input(v, "body").as_bytes();
        let mut headers_variants = vec![v["expected_signature_header"].as_str().unwrap()];
        if let Some(dotnet) = v["dotnet_style_signature_header"].as_str() {
            headers_variants.push(dotnet);
        }
        for sig in headers_variants {
            let headers = vec![
                ("Client-Id".to_string(), client_id.to_string()),
                ("Request-Time".to_string(), input(v, "time").to_string()),
                ("Signature".to_string(), sig.to_string()),
            ];
            let resp = c.send(target, &headers, body).await;
            assert_eq!(resp.status, 200, "{}", v["id"]);
            let (code, _) = resp.code();
            assert_ne!(code, "INVALID_SIGNATURE", "{}: {:?}", v["id"], resp.json());
            // signed for the vector's client id over the target as sent (query included)
            let time = resp.header("response-time").unwrap();
            let content = content_to_sign("POST", target, client_id, time, &resp.body);
            let verifier = Verifier::new([(
                "1".to_string(),
                PublicKey::from_text(&key("alipay", "public_spki_pem")).unwrap(),
            )]);
            verifier
                .verify(&content, resp.header("signature").unwrap())
                .unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, 9);
    // REQ-01's notify URL is https: recorded as not sent.
    c.gateway.notifications_settled().await;
    let attempts = c.gateway.notifications();
    assert!(!attempts.is_empty());
    assert!(attempts.iter().all(|a| a.status.is_none()
        && !a.acknowledged
        && a.url.starts_with("https://")
        && a.error.as_deref().unwrap().contains("http://")));
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_alipays_unsigned_invalid_signature() {
    let mut cfg = config();
    cfg.expected_client_id = Some(CLIENT_ID.into());
    let c = Client::start(cfg).await;
    let body = pay_body("bad-1", "100", "");
    let good = signed_headers(PAY, CLIENT_ID, body.as_bytes());
    let without = |name: &str| -> Vec<(String, String)> {
        good.iter().filter(|(n, _)| n != name).cloned().collect()
    };
    let replace = |name: &str, value: String| -> Vec<(String, String)> {
        good.iter()
            .map(|(n, v)| {
                if n == name {
                    (n.clone(), value.clone())
                } else {
                    (n.clone(), v.clone())
                }
            })
            .collect()
    };
    let other_key_sig = {
        let alipay = PrivateKey::from_text(&key("alipay", "private_pkcs8_pem")).unwrap();
        let content = content_to_sign("POST", PAY, CLIENT_ID, "1714538096000", body.as_bytes());
        sign_content(&alipay, "1", &content).unwrap()
    };
    let other_client = signed_headers(PAY, "T_999", body.as_bytes());
    type Case<'a> = (&'a str, &'a str, Vec<(String, String)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "tampered body",
            PAY,
            good.clone(),
            pay_body("bad-1", "101", "").into_bytes(),
        ),
        (
            "signed for another path",
            "/ams/sandbox/api/v1/payments/pay",
            good.clone(),
            body.clone().into_bytes(),
        ),
        (
            "missing Signature",
            PAY,
            without("Signature"),
            body.clone().into_bytes(),
        ),
        (
            "missing Client-Id",
            PAY,
            without("Client-Id"),
            body.clone().into_bytes(),
        ),
        (
            "missing Request-Time",
            PAY,
            without("Request-Time"),
            body.clone().into_bytes(),
        ),
        (
            "other Request-Time",
            PAY,
            replace("Request-Time", "1714538096001".into()),
            body.clone().into_bytes(),
        ),
        (
            "wrong key",
            PAY,
            replace("Signature", other_key_sig),
            body.clone().into_bytes(),
        ),
        (
            "other client id",
            PAY,
            other_client,
            body.clone().into_bytes(),
        ),
        (
            "garbage signature",
            PAY,
            replace(
                "Signature",
                "algorithm=RSA256,keyVersion=1,signature=abc".into(),
            ),
            body.clone().into_bytes(),
        ),
        (
            "ECC algorithm",
            PAY,
            replace("Signature", good[2].1.replace("RSA256", "ECC224")),
            body.clone().into_bytes(),
        ),
    ];
    for (what, target, headers, body) in cases {
        let resp = c.send(target, &headers, &body).await;
        assert_eq!(resp.status, 200, "{what}");
        resp.assert_unsigned();
        assert_eq!(
            resp.code(),
            ("INVALID_SIGNATURE".into(), "F".into()),
            "{what}"
        );
        assert!(!c.gateway.received().last().unwrap().verified, "{what}");
        // the message says why and what content was verified
        let message = resp.json()["result"]["resultMessage"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.starts_with("The signature is invalid."),
            "{message}"
        );
    }

    // A raw (not URL-encoded) base64 signature containing '+' fails as it does at Alipay
    // (Java URLDecoder turns '+' into a space); find a body whose signature has a '+'.
    let mut checked = false;
    for i in 0..200 {
        let body = pay_body(&format!("raw-{i}"), "100", "");
        let headers = signed_headers(PAY, CLIENT_ID, body.as_bytes());
        let sig = &headers[2].1;
        let raw_b64 = sig
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        if !raw_b64.contains('+') {
            continue;
        }
        let mut headers = headers.clone();
        headers[2].1 = raw_b64;
        let resp = c.send(PAY, &headers, body.as_bytes()).await;
        resp.assert_unsigned();
        assert_eq!(resp.code().0, "INVALID_SIGNATURE");
        // ... while lowercase escapes are fine.
        let mut headers = signed_headers(PAY, CLIENT_ID, body.as_bytes());
        headers[2].1 = headers[2].1.replace("%2B", "%2b").replace("%2F", "%2f");
        let resp = c.send(PAY, &headers, body.as_bytes()).await;
        c.assert_signed(PAY, &resp);
        checked = true;
        break;
    }
    assert!(checked);
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn inquiry_refund_and_cancel_see_earlier_calls() {
    let c = Client::start(config()).await;
    let call = |target: &'static str, body: String| {
        let c = &c;
        async move {
            let target = format!("/ams/api/v1/payments/{target}");
            let resp = c.call(&target, &body).await;
            c.assert_signed(&target, &resp);
            resp
        }
    };
    let unknown = call("inquiryPayment", r#"{"paymentRequestId":"nope"}"#.into()).await;
    assert_eq!(unknown.code(), ("ORDER_NOT_EXIST".into(), "F".into()));

    let pay = call("pay", pay_body("r-1", "1000", "")).await;
    let payment_id = pay.json()["paymentId"].as_str().unwrap().to_string();
    let inq = call("inquiryPayment", r#"{"paymentRequestId":"r-1"}"#.into()).await;
    assert_eq!(inq.code(), ("SUCCESS".into(), "S".into()));
    assert_eq!(inq.json()["paymentStatus"], "SUCCESS");
    assert_eq!(inq.json()["paymentId"], payment_id.as_str());
    let inq = call(
        "inquiryPayment",
        format!(r#"{{"paymentId":"{payment_id}"}}"#),
    )
    .await;
    assert_eq!(inq.json()["paymentRequestId"], "r-1");

    let refund = |id: &str, value: &str| {
        format!(
            r#"{{"refundRequestId":"{id}","paymentId":"{payment_id}","refundAmount":{{"currency":"HKD","value":"{value}"}},"refundReason":"顾客退货"}}"#
        )
    };
    let r1 = call("refund", refund("rf-1", "600")).await;
    assert_eq!(r1.code(), ("SUCCESS".into(), "S".into()));
    let refund_id = r1.json()["refundId"].as_str().unwrap().to_string();
    assert_eq!(
        r1.json()["refundAmount"],
        json!({"currency":"HKD","value":"600"})
    );
    let too_much = call("refund", refund("rf-2", "401")).await;
    assert_eq!(too_much.code(), ("REFUND_AMOUNT_EXCEED".into(), "F".into()));
    let rest = call("refund", refund("rf-2", "400")).await;
    assert_eq!(rest.code().1, "S");
    let replay = call("refund", refund("rf-1", "600")).await;
    assert_eq!(replay.json()["refundId"], refund_id.as_str());
    let nothing_left = call("refund", refund("rf-3", "1")).await;
    assert_eq!(nothing_left.code().0, "REFUND_AMOUNT_EXCEED");

    let inq = call("inquiryRefund", r#"{"refundRequestId":"rf-1"}"#.into()).await;
    assert_eq!(inq.code().1, "S");
    assert_eq!(inq.json()["refundStatus"], "SUCCESS");
    assert_eq!(inq.json()["refundId"], refund_id.as_str());
    let inq = call("inquiryRefund", format!(r#"{{"refundId":"{refund_id}"}}"#)).await;
    assert_eq!(inq.json()["refundRequestId"], "rf-1");
    let inq = call("inquiryRefund", r#"{"refundRequestId":"nope"}"#.into()).await;
    assert_eq!(inq.code(), ("REFUND_NOT_EXIST".into(), "F".into()));

    let cancel = call("cancel", r#"{"paymentRequestId":"r-1"}"#.into()).await;
    assert_eq!(cancel.code(), ("PROCESS_FAIL".into(), "F".into()));

    call("pay", pay_body("r-2", "500", "")).await;
    let cancel = call("cancel", r#"{"paymentRequestId":"r-2"}"#.into()).await;
    assert_eq!(cancel.code(), ("SUCCESS".into(), "S".into()));
    assert!(cancel.json()["cancelTime"].is_string());
    let inq = call("inquiryPayment", r#"{"paymentRequestId":"r-2"}"#.into()).await;
    assert_eq!(inq.json()["paymentStatus"], "CANCELLED");
    let pid2 = inq.json()["paymentId"].as_str().unwrap().to_string();
    let refund_cancelled = call(
        "refund",
        format!(r#"{{"refundRequestId":"rf-9","paymentId":"{pid2}","refundAmount":{{"currency":"HKD","value":"1"}}}}"#),
    )
    .await;
    assert_eq!(
        refund_cancelled.code(),
        ("ORDER_IS_CANCELED".into(), "F".into())
    );
    let unknown_refund = call(
        "refund",
        r#"{"refundRequestId":"rf-10","paymentId":"000","refundAmount":{"currency":"HKD","value":"1"}}"#.into(),
    )
    .await;
    assert_eq!(unknown_refund.code().0, "ORDER_NOT_EXIST");

    let consult = call(
        "consult",
        r#"{"paymentAmount":{"currency":"HKD","value":"100"}}"#.into(),
    )
    .await;
    assert_eq!(consult.code().1, "S");
    assert!(!consult.json()["paymentOptions"]
        .as_array()
        .unwrap()
        .is_empty());

    // Unknown API: a signed NO_INTERFACE_DEF with HTTP 200.
    let target = "/ams/api/v1/payments/teleport";
    let resp = c.call(target, "{}").await;
    c.assert_signed(target, &resp);
    assert_eq!(resp.code(), ("NO_INTERFACE_DEF".into(), "F".into()));
    c.gateway.shutdown().await;
}

/// A notification as the merchant's endpoint saw it.
trait Notification {
    fn header(&self, name: &str) -> &str;
    fn verifies(&self) -> bool;
}

impl Notification for Received {
    fn header(&self, name: &str) -> &str {
        self.one(name).unwrap_or_else(|| panic!("no {name} header"))
    }

    fn verifies(&self) -> bool {
        let content = content_to_sign(
            "POST",
            &self.target,
            self.header("client-id"),
            self.header("request-time"),
            &self.body,
        );
        let verifier = Verifier::new([(
            "1".to_string(),
            PublicKey::from_text(&key("alipay", "public_spki_pem")).unwrap(),
        )]);
        verifier.verify(&content, self.header("signature")).is_ok()
    }
}

/// The merchant's notify endpoint (the shared app stand-in): records each request and
/// answers with the next `(status, body)` from `answers` (the last one repeats).
async fn receiver(answers: Vec<(u16, &'static str)>) -> (String, App) {
    let app = App::start(Behaviour::Answers(answers));
    (app.url(), app)
}

const ACK: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

#[tokio::test]
async fn notification_is_resent_until_acknowledged_and_verifies() {
    let (base, log) = receiver(vec![(500, "oops"), (200, ACK)]).await;
    let mut cfg = config();
    cfg.notify_backoff = vec![
        Duration::ZERO,
        Duration::from_millis(10),
        Duration::from_millis(10),
    ];
    let c = Client::start(cfg).await;
    let url = format!("{base}/merchant/notify?src=ams");
    let pay = c
        .call(
            PAY,
            &pay_body("n-1", "5800", &format!(r#","paymentNotifyUrl":"{url}""#)),
        )
        .await;
    c.assert_signed(PAY, &pay);
    c.gateway.notifications_settled().await;

    let attempts = c.gateway.notifications();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        (
            attempts[0].attempt,
            attempts[0].status,
            attempts[0].acknowledged
        ),
        (1, Some(500), false)
    );
    assert_eq!(
        (
            attempts[1].attempt,
            attempts[1].status,
            attempts[1].acknowledged
        ),
        (2, Some(200), true)
    );
    assert!(attempts
        .iter()
        .all(|a| a.url == url && a.payment_request_id == "n-1"));

    let received = log.received();
    assert_eq!(received.len(), 2);
    for n in &received {
        assert_eq!(n.target, "/merchant/notify?src=ams");
        assert_eq!(n.header("content-type"), "application/json");
        assert_eq!(n.header("client-id"), CLIENT_ID);
        let time = n.header("request-time");
        assert!(time.ends_with("+08:00") && time.len() == 29, "{time}");
        assert!(n
            .header("signature")
            .starts_with("algorithm=RSA256,keyVersion=1,signature="));
        assert!(n.verifies(), "notification signature must verify");
        let body: Value = serde_json::from_slice(&n.body).unwrap();
        assert_eq!(body["notifyType"], "PAYMENT_RESULT");
        assert_eq!(body["result"]["resultStatus"], "S");
        assert_eq!(body["paymentId"], pay.json()["paymentId"]);
        assert_eq!(
            body["paymentAmount"],
            json!({"currency":"HKD","value":"5800"})
        );
    }
    // The idempotent replay of the same pay sends no second notification.
    c.call(
        PAY,
        &pay_body("n-1", "5800", &format!(r#","paymentNotifyUrl":"{url}""#)),
    )
    .await;
    c.gateway.notifications_settled().await;
    assert_eq!(c.gateway.notifications().len(), 2);
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn notification_faults_override_and_exhausted_backoff() {
    // Never acknowledged: exactly as many attempts as back-off entries.
    let (base, log) = receiver(vec![(200, r#"{"result":{"resultStatus":"U"}}"#)]).await;
    let mut cfg = config();
    cfg.notify_url_override = Some(format!("{base}/override"));
    cfg.notify_backoff = vec![
        Duration::ZERO,
        Duration::from_millis(5),
        Duration::from_millis(5),
    ];
    let c = Client::start(cfg).await;
    c.call(
        PAY,
        &pay_body(
            "f-1",
            "1",
            r#","paymentNotifyUrl":"http://127.0.0.1:9/elsewhere""#,
        ),
    )
    .await;
    c.gateway.notifications_settled().await;
    let attempts = c.gateway.notifications();
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a.status == Some(200) && !a.acknowledged));
    assert!(log
        .received()
        .iter()
        .all(|n| n.target == "/override" && n.verifies()));
    c.gateway.shutdown().await;

    let (base, log) = receiver(vec![(200, ACK)]).await;
    let c = Client::start(config()).await;
    let notify = format!(r#","paymentNotifyUrl":"{base}/n""#);
    c.call(
        PAY,
        &pay_body(
            "f-2",
            "1",
            &format!(r#"{notify},"mockFault":"notify_tampered""#),
        ),
    )
    .await;
    c.gateway.notifications_settled().await;
    {
        let received = log.received();
        assert_eq!(received.len(), 1);
        assert!(!received[0].verifies(), "notify_tampered must not verify");
    }
    c.call(
        PAY,
        &pay_body("f-3", "1", &format!(r#"{notify},"mockFault":"no_notify""#)),
    )
    .await;
    c.call(PAY, &pay_body("f-4", "1", &notify)).await;
    c.gateway.notifications_settled().await;
    let received = log.received();
    assert_eq!(
        received.len(),
        2,
        "no_notify sends nothing, the normal pay one"
    );
    assert!(received[1].verifies());
    assert!(String::from_utf8_lossy(&received[1].body).contains("\"f-4\""));

    // A notify receiver that is down: recorded attempts with an error, none acknowledged.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/n", dead.local_addr().unwrap());
    drop(dead);
    let before = c.gateway.notifications().len();
    c.call(
        PAY,
        &pay_body("f-5", "1", &format!(r#","paymentNotifyUrl":"{dead_url}""#)),
    )
    .await;
    c.gateway.notifications_settled().await;
    let after = c.gateway.notifications();
    assert_eq!(after.len(), before + 2);
    assert!(after[before..]
        .iter()
        .all(|a| a.status.is_none() && a.error.is_some()));
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn fault_switches_behave_as_documented() {
    let c = Client::start(config()).await;
    let with_fault =
        |id: &str, fault: &str| pay_body(id, "100", &format!(r#","mockFault":"{fault}""#));
    let inquiry = |id: &str| format!(r#"{{"paymentRequestId":"{id}"}}"#);
    let inq_target = "/ams/api/v1/payments/inquiryPayment";

    let resp = c.call(PAY, &with_fault("x-delay", "delay:20")).await;
    c.assert_signed(PAY, &resp);
    assert_eq!(resp.code().1, "S");

    let resp = c.call(PAY, &with_fault("x-unsigned", "unsigned")).await;
    assert_eq!(resp.status, 200);
    resp.assert_unsigned();
    assert_eq!(resp.code(), ("SUCCESS".into(), "S".into()));

    let resp = c.call(PAY, &with_fault("x-tampered", "tampered")).await;
    let time = resp.header("response-time").unwrap();
    let content = content_to_sign("POST", PAY, CLIENT_ID, time, &resp.body);
    let verifier = Verifier::new([(
        "1".to_string(),
        PublicKey::from_text(&c.gateway.alipay_public_key_pem()).unwrap(),
    )]);
    assert!(verifier
        .verify(&content, resp.header("signature").unwrap())
        .is_err());
    assert_eq!(resp.code().1, "S");

    let resp = c
        .call(PAY, &with_fault("x-unknown", "unknown_exception"))
        .await;
    c.assert_signed(PAY, &resp);
    assert_eq!(resp.code(), ("UNKNOWN_EXCEPTION".into(), "U".into()));
    let inq = c.call(inq_target, &inquiry("x-unknown")).await;
    assert_eq!(
        inq.code().0,
        "ORDER_NOT_EXIST",
        "unknown_exception does not process"
    );

    let resp = c.call(PAY, &with_fault("x-fail", "signed_failure")).await;
    c.assert_signed(PAY, &resp);
    assert_eq!(resp.code(), ("PROCESS_FAIL".into(), "F".into()));

    let resp = c
        .call(PAY, &with_fault("x-invalid", "invalid_signature"))
        .await;
    resp.assert_unsigned();
    assert_eq!(resp.code(), ("INVALID_SIGNATURE".into(), "F".into()));

    let resp = c.call(PAY, &with_fault("x-503", "http_status:503")).await;
    assert_eq!(resp.status, 503);
    resp.assert_unsigned();

    let body = with_fault("x-drop", "drop");
    let raw = c
        .raw(&request(
            PAY,
            &signed_headers(PAY, CLIENT_ID, body.as_bytes()),
            body.as_bytes(),
        ))
        .await;
    assert!(
        raw.is_empty(),
        "drop answers nothing: {}",
        String::from_utf8_lossy(&raw)
    );
    let inq = c.call(inq_target, &inquiry("x-drop")).await;
    assert_eq!(inq.code().0, "ORDER_NOT_EXIST", "drop does not process");

    let body = with_fault("x-reset", "reset_mid_body");
    let raw = c
        .raw(&request(
            PAY,
            &signed_headers(PAY, CLIENT_ID, body.as_bytes()),
            body.as_bytes(),
        ))
        .await;
    let resp = parse_response(&raw).expect("headers arrive");
    assert_eq!(resp.status, 200);
    assert!(resp.header("signature").is_some());
    assert!(!resp.complete, "body must be cut short: {resp:?}");
    assert!(!resp.body.is_empty(), "part of the body arrives");
    let inq = c.call(inq_target, &inquiry("x-reset")).await;
    assert_eq!(inq.code().1, "S", "reset_mid_body processed the pay");

    let resp = c.call(PAY, &with_fault("x-bogus", "explode")).await;
    c.assert_signed(PAY, &resp);
    assert_eq!(resp.code().0, "PARAM_ILLEGAL");
    assert!(resp.json()["result"]["resultMessage"]
        .as_str()
        .unwrap()
        .contains("explode"));

    // A bad signature is still refused whatever the (post-verification) fault.
    let body = with_fault("x-bad", "unknown_exception");
    let headers = signed_headers(PAY, CLIENT_ID, b"other bytes");
    let resp = c.send(PAY, &headers, body.as_bytes()).await;
    assert_eq!(resp.code().0, "INVALID_SIGNATURE");
    c.gateway.shutdown().await;

    // Configured fault for every request; a request's mockFault wins.
    let mut cfg = config();
    cfg.fault = Some(Fault::Unsigned);
    let c = Client::start(cfg).await;
    let resp = c.call(PAY, &pay_body("g-1", "1", "")).await;
    resp.assert_unsigned();
    let resp = c.call(PAY, &with_fault("g-2", "signed_failure")).await;
    c.assert_signed(PAY, &resp);
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn start_refuses_unusable_configuration() {
    let mut cfg = config();
    cfg.merchant_public_key = key("merchant", "private_pkcs8_pem");
    let err = MockGateway::start(cfg).await.err().unwrap();
    assert!(
        matches!(err, MockGatewayError::MerchantPublicKey { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("private key"), "{err}");

    let mut cfg = config();
    cfg.notify_url_override = Some("https://merchant.example.com/notify".into());
    let err = MockGateway::start(cfg).await.err().unwrap();
    assert!(matches!(err, MockGatewayError::NotifyUrl { .. }), "{err}");

    let mut cfg = config();
    cfg.alipay_key_version = "1,2".into();
    assert!(matches!(
        MockGateway::start(cfg).await.err().unwrap(),
        MockGatewayError::KeyVersion(_)
    ));

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config();
    cfg.listen = taken.local_addr().unwrap();
    assert!(matches!(
        MockGateway::start(cfg).await.err().unwrap(),
        MockGatewayError::Bind { .. }
    ));
}

#[test]
fn cli_flags_parse() {
    use ams_mock_gateway::MockGatewayArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MockGatewayArgs,
    }
    let cli = Cli::try_parse_from(["x", "--merchant-public-key", "m.pem"]).unwrap();
    assert_eq!(cli.args.listen.to_string(), "127.0.0.1:8443");
    assert!(!cli.args.tls);
    assert_eq!(cli.args.key_version, "1");
    assert_eq!(cli.args.notify_backoff.len(), 5);
    // no --out-dir: today's throw-away files in ./mock-gateway; the walkthrough defaults
    assert_eq!(cli.args.out_dir, None);
    assert_eq!(cli.args.receiver.to_string(), "127.0.0.1:3000");
    assert_eq!(cli.args.sidecar_ports, vec![8080, 8081, 9090]);
    assert!(!cli.args.no_receiver);
    assert_eq!(cli.args.notify, NotifyMode::Immediate);
    assert_eq!(cli.args.outcome, PaymentOutcome::Success);

    let cli = Cli::try_parse_from([
        "x",
        "--listen",
        "127.0.0.1:0",
        "--tls",
        "--tls-dir",
        "/tmp/x",
        "--merchant-public-key",
        "m.pem",
        "--alipay-private-key",
        "a.pem",
        "--key-version",
        "2",
        "--client-id",
        "SANDBOX_1",
        "--notify-url",
        "http://127.0.0.1:3000/n",
        "--notify-backoff",
        "1s,250ms",
        "--fault",
        "delay:100",
        "--notify",
        "late:30s",
        "--outcome",
        "fail_after:2s:ORDER_IS_CLOSED",
    ])
    .unwrap();
    assert_eq!(cli.args.notify, NotifyMode::Late(Duration::from_secs(30)));
    assert_eq!(
        cli.args.outcome,
        PaymentOutcome::FailAfter {
            after: Duration::from_secs(2),
            code: "ORDER_IS_CLOSED".into()
        }
    );
    for (flag, bad) in [
        ("--notify", "sometimes"),
        ("--outcome", "fail_after:2s:oops"),
    ] {
        assert!(Cli::try_parse_from(["x", "--merchant-public-key", "m", flag, bad]).is_err());
    }
    assert!(cli.args.tls);
    assert_eq!(cli.args.out_dir, Some(std::path::PathBuf::from("/tmp/x")));
    assert_eq!(
        cli.args.notify_backoff,
        vec![Duration::from_secs(1), Duration::from_millis(250)]
    );
    assert_eq!(
        cli.args.fault,
        Some(Fault::Delay(Duration::from_millis(100)))
    );
    assert!(Cli::try_parse_from(["x", "--merchant-public-key", "m", "--fault", "nope"]).is_err());
    assert!(
        Cli::try_parse_from(["x"]).is_err(),
        "--merchant-public-key is required"
    );
    assert!(
        Cli::try_parse_from(["x", "--out-dir", "d"]).is_ok(),
        "--out-dir keeps a merchant key pair in DIR"
    );
}

#[tokio::test]
async fn generated_alipay_key_signs_responses() {
    let mut cfg = config();
    cfg.alipay_private_key = None;
    cfg.alipay_key_version = "7".into();
    let gateway = MockGateway::start(cfg).await.unwrap();
    let pem = gateway.alipay_public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_ne!(pem.trim(), key("alipay", "public_spki_pem").trim());
    let c = Client { gateway, tls: None };
    let resp = c.call(PAY, &pay_body("k-1", "1", "")).await;
    let sig = resp.header("signature").unwrap();
    assert!(
        sig.starts_with("algorithm=RSA256,keyVersion=7,signature="),
        "{sig}"
    );
    let content = content_to_sign(
        "POST",
        PAY,
        CLIENT_ID,
        resp.header("response-time").unwrap(),
        &resp.body,
    );
    let verifier = Verifier::new([("7".to_string(), PublicKey::from_text(&pem).unwrap())]);
    verifier.verify(&content, sig).unwrap();
    c.gateway.shutdown().await;
}

const INQUIRY: &str = "/ams/api/v1/payments/inquiryPayment";
const CANCEL: &str = "/ams/api/v1/payments/cancel";

/// A TLS gateway (the switches are exercised over HTTPS, as the sidecar talks to it).
async fn tls_client(edit: impl FnOnce(&mut MockGatewayConfig)) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.tls = Some(dir.path().to_path_buf());
    edit(&mut cfg);
    (Client::start(cfg).await, dir)
}

/// Waits for every scheduled notification, bounded so a bug cannot hang the suite.
async fn settled(c: &Client) {
    tokio::time::timeout(Duration::from_secs(30), c.gateway.notifications_settled())
        .await
        .expect("notifications settle within 30 s");
}

impl Client {
    async fn inquiry(&self, id: &str) -> Value {
        let resp = self
            .call(INQUIRY, &format!(r#"{{"paymentRequestId":"{id}"}}"#))
            .await;
        self.assert_signed(INQUIRY, &resp);
        assert_eq!(
            resp.code(),
            ("SUCCESS".into(), "S".into()),
            "the inquiry itself works"
        );
        resp.json()
    }

    /// An unsigned POST to a `/mock/` control endpoint.
    async fn control(&self, target: &str) -> (u16, Value) {
        let resp = self.send(target, &[], b"").await;
        resp.assert_unsigned();
        (resp.status, resp.json())
    }
}

fn notify_url(base: &str) -> String {
    format!(r#","paymentNotifyUrl":"{base}/alipay/notify""#)
}

#[tokio::test]
async fn held_notification_is_sent_only_when_triggered() {
    let (base, log) = receiver(vec![(200, ACK)]).await;
    // "Do not notify" for every payment, from the configuration.
    let (c, _dir) = tls_client(|cfg| cfg.notify = NotifyMode::Held).await;
    let pay = c
        .call(PAY, &pay_body("h-1", "5800", &notify_url(&base)))
        .await;
    c.assert_signed(PAY, &pay);
    assert_eq!(pay.code(), ("SUCCESS".into(), "S".into()));
    // A pay's own mockNotify wins over the configuration.
    c.call(
        PAY,
        &pay_body(
            "h-2",
            "1",
            &format!(r#"{},"mockNotify":"immediate""#, notify_url(&base)),
        ),
    )
    .await;
    settled(&c).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let received = log.received();
        assert_eq!(received.len(), 1, "only the immediate one: {received:?}");
        assert!(String::from_utf8_lossy(&received[0].body).contains("\"h-2\""));
    }
    assert!(c
        .gateway
        .notifications()
        .iter()
        .all(|a| a.payment_request_id == "h-2"));
    // The payment is final all the same: inquiry knows, only the notification is missing.
    let inq = c.inquiry("h-1").await;
    assert_eq!(inq["paymentStatus"], "SUCCESS");
    assert_eq!(
        c.gateway.payment_status("h-1"),
        Some(PaymentStatus::Success)
    );

    // The test decides when "Alipay's late notification" arrives: over HTTP ...
    let (status, answer) = c.control("/mock/notify/h-1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["paymentStatus"], "SUCCESS");
    settled(&c).await;
    {
        let received = log.received();
        assert_eq!(received.len(), 2);
        let n = &received[1];
        assert!(n.verifies());
        assert_eq!(n.target, "/alipay/notify");
        let body: Value = serde_json::from_slice(&n.body).unwrap();
        assert_eq!(body["paymentRequestId"], "h-1");
        assert_eq!(body["paymentId"], pay.json()["paymentId"]);
        assert_eq!(body["result"]["resultStatus"], "S");
    }
    // ... or through the API (again: a re-send, as Alipay's are).
    c.gateway.notify_now("h-1").unwrap();
    settled(&c).await;
    {
        let received = log.received();
        assert_eq!(received.len(), 3);
        assert_eq!(received[1].body, received[2].body, "same event");
    }

    // Controls on what cannot be notified.
    assert_eq!(
        c.gateway.notify_now("nope"),
        Err(ControlError::UnknownPayment("nope".into()))
    );
    let (status, answer) = c.control("/mock/notify/nope").await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("nope"));
    let resp = c
        .raw(b"GET /mock/notify/h-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(parse_response(&resp).unwrap().status, 405);
    let (status, _) = c.control("/mock/teleport/h-1").await;
    assert_eq!(status, 404);
    // Without a notify URL there is nowhere to send.
    c.call(PAY, &pay_body("h-3", "1", "")).await;
    assert_eq!(
        c.gateway.notify_now("h-3"),
        Err(ControlError::NoNotifyUrl("h-3".into()))
    );
    // Control requests are not API traffic.
    assert!(c
        .gateway
        .received()
        .iter()
        .all(|r| !r.target.starts_with("/mock/")));
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn late_notification_arrives_after_the_delay_and_not_before() {
    let (base, log) = receiver(vec![(200, ACK)]).await;
    let (c, _dir) = tls_client(|_| {}).await;
    let paid = std::time::Instant::now();
    let pay = c
        .call(
            PAY,
            &pay_body(
                "l-1",
                "100",
                &format!(r#"{},"mockNotify":"late:1500ms""#, notify_url(&base)),
            ),
        )
        .await;
    assert_eq!(pay.code().1, "S");
    // Ordering, not timing: an immediate notification would be here long before this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.received().is_empty(), "not before the delay");
    assert!(c.gateway.notifications().is_empty());
    assert_eq!(c.inquiry("l-1").await["paymentStatus"], "SUCCESS");
    settled(&c).await;
    assert!(paid.elapsed() >= Duration::from_millis(1500));
    let received = log.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].verifies());
    assert_eq!(c.gateway.notifications()[0].payment_request_id, "l-1");

    // notify_now replaces a late notification still waiting: one delivery, and nothing is
    // left pending (settled would otherwise wait ten minutes).
    c.call(
        PAY,
        &pay_body(
            "l-2",
            "100",
            &format!(r#"{},"mockNotify":"late:10m""#, notify_url(&base)),
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.received().len(), 1);
    c.gateway.notify_now("l-2").unwrap();
    settled(&c).await;
    let received = log.received();
    assert_eq!(received.len(), 2);
    assert!(String::from_utf8_lossy(&received[1].body).contains("\"l-2\""));
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn processing_payments_become_final_and_inquiry_follows() {
    let (base, log) = receiver(vec![(200, ACK)]).await;
    let (c, _dir) = tls_client(|_| {}).await;

    // Entry Code style: the pay answer is not final.
    let never = |id: &str| {
        pay_body(
            id,
            "2500",
            &format!(r#"{},"mockOutcome":"never""#, notify_url(&base)),
        )
    };
    let pay = c.call(PAY, &never("o-1")).await;
    c.assert_signed(PAY, &pay);
    assert_eq!(pay.code(), ("PAYMENT_IN_PROCESS".into(), "U".into()));
    let pay = pay.json();
    assert_eq!(pay["paymentRequestId"], "o-1");
    assert!(pay["paymentId"].is_string() && pay["paymentCreateTime"].is_string());
    assert!(pay.get("paymentTime").is_none());
    let inq = c.inquiry("o-1").await;
    assert_eq!(inq["paymentStatus"], "PROCESSING");
    assert_eq!(inq["paymentResultCode"], "PAYMENT_IN_PROCESS");
    assert!(inq.get("paymentTime").is_none());
    assert_eq!(
        c.gateway.notify_now("o-1"),
        Err(ControlError::NotFinal("o-1".into()))
    );
    let (status, _) = c.control("/mock/notify/o-1").await;
    assert_eq!(status, 409);
    // The replayed pay still answers U.
    assert_eq!(c.call(PAY, &never("o-1")).await.code().1, "U");

    // Completed on demand: inquiry follows, the notification goes out.
    assert_eq!(
        c.gateway.complete_payment("o-1", PaymentResult::Success),
        Ok(PaymentStatus::Success)
    );
    let inq = c.inquiry("o-1").await;
    assert_eq!(inq["paymentStatus"], "SUCCESS");
    assert_eq!(inq["paymentResultCode"], "SUCCESS");
    assert_eq!(inq["paymentId"], pay["paymentId"]);
    assert_eq!(
        inq["paymentAmount"],
        json!({"currency":"HKD","value":"2500"})
    );
    assert_eq!(inq["paymentCreateTime"], pay["paymentCreateTime"]);
    assert!(inq["paymentTime"].as_str().unwrap().ends_with("+08:00"));
    assert!(matches!(
        c.gateway.complete_payment("o-1", PaymentResult::Success),
        Err(ControlError::AlreadyFinal { .. })
    ));
    // Over HTTP, with a failure code.
    c.call(PAY, &never("o-2")).await;
    let (status, answer) = c.control("/mock/fail/o-2?code=ORDER_IS_CLOSED").await;
    assert_eq!(
        (status, answer["paymentStatus"].as_str()),
        (200, Some("FAIL"))
    );
    let (status, _) = c.control("/mock/succeed/o-2").await;
    assert_eq!(status, 409, "final states do not change");
    let inq = c.inquiry("o-2").await;
    assert_eq!(inq["paymentStatus"], "FAIL");
    assert_eq!(inq["paymentResultCode"], "ORDER_IS_CLOSED");
    assert!(inq["paymentResultMessage"].is_string());
    assert!(inq.get("paymentTime").is_none());

    // After a delay, on their own.
    let s = c
        .call(
            PAY,
            &pay_body(
                "o-3",
                "100",
                &format!(
                    r#"{},"mockOutcome":"success_after:300ms""#,
                    notify_url(&base)
                ),
            ),
        )
        .await;
    assert_eq!(s.code().1, "U");
    let f = c
        .call(
            PAY,
            &pay_body(
                "o-4",
                "100",
                &format!(r#"{},"mockOutcome":"fail_after:300ms""#, notify_url(&base)),
            ),
        )
        .await;
    assert_eq!(f.code().1, "U");
    settled(&c).await;
    assert_eq!(c.inquiry("o-3").await["paymentStatus"], "SUCCESS");
    let inq = c.inquiry("o-4").await;
    assert_eq!(inq["paymentStatus"], "FAIL");
    assert_eq!(inq["paymentResultCode"], "USER_BALANCE_NOT_ENOUGH");

    // The notifications reflect the final states.
    let received = log.received();
    let by_id = |id: &str| -> (Received, Value) {
        let n = received
            .iter()
            .find(|n| String::from_utf8_lossy(&n.body).contains(&format!("\"{id}\"")))
            .unwrap_or_else(|| panic!("no notification for {id}"))
            .clone();
        let body = serde_json::from_slice(&n.body).unwrap();
        (n, body)
    };
    assert_eq!(received.len(), 4, "one each for o-1..o-4");
    let (n, body) = by_id("o-1");
    assert!(n.verifies());
    assert_eq!(body["notifyType"], "PAYMENT_RESULT");
    assert_eq!(
        body["result"],
        json!({"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"})
    );
    assert_eq!(body["paymentId"], pay["paymentId"]);
    assert_eq!(
        body["paymentAmount"],
        json!({"currency":"HKD","value":"2500"})
    );
    assert_eq!(body["paymentCreateTime"], pay["paymentCreateTime"]);
    assert_eq!(body["paymentTime"], c.inquiry("o-1").await["paymentTime"]);
    let (n, body) = by_id("o-2");
    assert!(n.verifies());
    assert_eq!(body["result"]["resultStatus"], "F");
    assert_eq!(body["result"]["resultCode"], "ORDER_IS_CLOSED");
    assert!(body.get("paymentTime").is_none());
    assert_eq!(by_id("o-3").1["result"]["resultStatus"], "S");
    assert_eq!(
        by_id("o-4").1["result"]["resultCode"],
        "USER_BALANCE_NOT_ENOUGH"
    );
    c.gateway.shutdown().await;

    // The outcome for every pay, from the configuration.
    let (c, _dir) = tls_client(|cfg| cfg.outcome = PaymentOutcome::Never).await;
    assert_eq!(c.call(PAY, &pay_body("o-5", "1", "")).await.code().1, "U");
    assert_eq!(
        c.gateway.payment_status("o-5"),
        Some(PaymentStatus::Processing)
    );
    c.gateway.shutdown().await;
}

#[tokio::test]
async fn cancel_changes_the_payment() {
    let (base, log) = receiver(vec![(200, ACK)]).await;
    let (c, _dir) = tls_client(|_| {}).await;
    let cancel = |id: &str| {
        let c = &c;
        let body = format!(r#"{{"paymentRequestId":"{id}"}}"#);
        async move {
            let resp = c.call(CANCEL, &body).await;
            c.assert_signed(CANCEL, &resp);
            resp
        }
    };

    // A processing payment that is cancelled never becomes final and is never notified.
    c.call(
        PAY,
        &pay_body(
            "c-1",
            "100",
            &format!(r#"{},"mockOutcome":"never""#, notify_url(&base)),
        ),
    )
    .await;
    let resp = cancel("c-1").await;
    assert_eq!(resp.code(), ("SUCCESS".into(), "S".into()));
    assert_eq!(resp.json()["paymentRequestId"], "c-1");
    let cancel_time = resp.json()["cancelTime"].clone();
    assert!(cancel_time.is_string());
    assert_eq!(
        cancel("c-1").await.json()["cancelTime"],
        cancel_time,
        "idempotent"
    );
    assert_eq!(c.inquiry("c-1").await["paymentStatus"], "CANCELLED");
    assert_eq!(
        c.gateway.notify_now("c-1"),
        Err(ControlError::Cancelled("c-1".into()))
    );
    assert!(matches!(
        c.gateway.complete_payment("c-1", PaymentResult::Success),
        Err(ControlError::AlreadyFinal {
            status: PaymentStatus::Cancelled,
            ..
        })
    ));

    // Cancelled before its outcome delay ran out: stays cancelled, no success notification.
    c.call(
        PAY,
        &pay_body(
            "c-2",
            "100",
            &format!(r#"{},"mockOutcome":"success_after:3s""#, notify_url(&base)),
        ),
    )
    .await;
    assert_eq!(cancel("c-2").await.code().1, "S");
    settled(&c).await;
    assert_eq!(c.inquiry("c-2").await["paymentStatus"], "CANCELLED");
    assert!(log.received().is_empty(), "no notification after cancel");
    assert!(c.gateway.notifications().is_empty());

    // A paid payment is cancelled too (Antom: full refund); its late notification still
    // reports the payment, the status stays CANCELLED.
    c.call(
        PAY,
        &pay_body(
            "c-3",
            "100",
            &format!(r#"{},"mockNotify":"none""#, notify_url(&base)),
        ),
    )
    .await;
    assert_eq!(cancel("c-3").await.code().1, "S");
    let inq = c.inquiry("c-3").await;
    assert_eq!(inq["paymentStatus"], "CANCELLED");
    c.gateway.notify_now("c-3").unwrap();
    settled(&c).await;
    assert_eq!(log.received().len(), 1);
    assert_eq!(
        c.gateway.payment_status("c-3"),
        Some(PaymentStatus::Cancelled)
    );
    c.gateway.shutdown().await;
}
