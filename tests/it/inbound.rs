//! Inbound listener: Alipay's notifications through the REAL binary to a small app stand-in on
//! a real socket. Valid notifications reach the app byte-identical; forged, tampered,
//! mis-addressed or stale ones never do; app failures become 503 so Alipay re-sends.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alipay_sidecar::protocol::{
    content_to_sign, format_iso8601, sign_content, PrivateKey, PublicKey, Verifier,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::support::{
    input, key, raw_request, request, vector, vectors, write_vector_keys, App, Behaviour, Received,
    Response, Sidecar, APP_ACK,
};

const CLIENT_ID: &str = "T_111222333";
const NOTIFY: &str = "/merchant/notify";
const ACK: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;
// ---------------------------------------------------------------- the sidecar

pub(crate) struct Setup {
    pub(crate) sidecar: Sidecar,
    pub(crate) inbound: SocketAddr,
    _dir: TempDir,
}

/// The published notification vectors are signed in 2019: tests that post them switch the
/// freshness window (48 h by default since issue 18) off.
pub(crate) const OLD_VECTORS: &str = "max_request_time_skew = \"off\"";

const DEFAULT_KEYS: &str = "merchant_private_key = \"merchant_private_key.pem\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";

/// Starts the binary with `[inbound]` forwarding to `forward_to` plus `extra` lines.
pub(crate) fn start(forward_to: &str, extra: &str) -> Setup {
    start_with(DEFAULT_KEYS, forward_to, extra, |_| {})
}

fn start_with(
    keys: &str,
    forward_to: &str,
    extra: &str,
    prepare: impl FnOnce(&std::path::Path),
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    prepare(dir.path());
    let toml = format!(
        "client_id = \"{CLIENT_ID}\"\n[keys]\n{keys}[inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{forward_to}\"\n{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    );
    let sidecar = Sidecar::start(dir.path(), &toml);
    Setup {
        inbound: sidecar.addr("inbound"),
        sidecar,
        _dir: dir,
    }
}

impl Setup {
    pub(crate) fn post(&self, n: &Notification, extra: &[(&str, &str)]) -> Response {
        let mut headers: Vec<(&str, &str)> = n
            .headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        headers.extend_from_slice(extra);
        request(self.inbound, "POST", &n.uri, &headers, &n.body).unwrap()
    }

    /// `sample` (a sample line's name and labels as written, e.g.
    /// `alipay_sidecar_requests_total{…}`) once it reaches `want` (request metrics are
    /// recorded just after the answer is written), or its value after 10 s.
    pub(crate) fn metric_reaching(&self, sample: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.sample(sample) {
                Some(v) if v >= want || Instant::now() > deadline => return v,
                None if Instant::now() > deadline => return self.metric(sample),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub(crate) fn metric(&self, sample: &str) -> f64 {
        self.sample(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{}", self.sidecar.metrics().text))
    }

    fn sample(&self, sample: &str) -> Option<f64> {
        self.sidecar
            .metrics()
            .text
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    }
}

// ---------------------------------------------------------------- notifications

#[derive(Clone)]
pub(crate) struct Notification {
    pub(crate) uri: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn payment_body(id: &str) -> String {
    format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}},"paymentRequestId":"{id}","paymentAmount":{{"value":"5800","currency":"HKD"}},"note":"珍珠奶茶 🧋\r\n"}}"#
    )
}

/// A notification signed like Alipay does (spec §6), over `POST <uri>\n<client>.<time>.<body>`.
pub(crate) fn signed(
    key: &PrivateKey,
    version: &str,
    uri: &str,
    client_id: &str,
    time: &str,
    body: &str,
) -> Notification {
    let content = content_to_sign("POST", uri, client_id, time, body.as_bytes());
    let signature = sign_content(key, version, &content).unwrap();
    Notification {
        uri: uri.to_string(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Request-Time".into(), time.into()),
            ("client-id".into(), client_id.into()),
            ("Signature".into(), signature),
        ],
        body: body.as_bytes().to_vec(),
    }
}

pub(crate) fn alipay_key() -> PrivateKey {
    PrivateKey::from_text(&key("alipay", "private_pkcs8_pem")).unwrap()
}

/// A fresh notification signed now by the (test) Alipay key under keyVersion 1.
pub(crate) fn fresh(id: &str) -> Notification {
    signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        &format_iso8601(now_ms()),
        &payment_body(id),
    )
}

/// A vector as Alipay would POST it: its `notification_headers`, or headers built from inputs.
pub(crate) fn from_vector(v: &Value) -> Notification {
    let headers = match v["notification_headers"].as_object() {
        Some(h) => h
            .iter()
            .map(|(n, v)| (n.clone(), v.as_str().unwrap().to_string()))
            .collect(),
        None => vec![
            ("Content-Type".into(), "application/json".into()),
            ("Request-Time".into(), input(v, "time").into()),
            ("client-id".into(), input(v, "client_id").into()),
            ("Signature".into(), input(v, "signature_header").into()),
        ],
    };
    Notification {
        uri: input(v, "uri").into(),
        headers,
        body: input(v, "body").as_bytes().to_vec(),
    }
}

pub(crate) fn result(r: &Response) -> (String, String, String) {
    let v = r.json();
    let s = |f: &str| v["result"][f].as_str().unwrap_or("").to_string();
    (s("resultStatus"), s("resultCode"), s("resultMessage"))
}

/// Asserts the app got exactly `n` (body and headers as sent), marked verified by `version`.
fn assert_delivered_verified(got: &Received, n: &Notification, version: &str) {
    assert_eq!(got.method, "POST");
    assert_eq!(got.body, n.body, "the app must get the exact body bytes");
    for (name, value) in &n.headers {
        assert_eq!(
            got.one(name),
            Some(value.as_str()),
            "header {name} must reach the app unchanged"
        );
    }
    assert_eq!(got.one("x-alipay-sidecar-verified"), Some("true"));
    assert_eq!(got.one("x-alipay-sidecar-key-version"), Some(version));
    assert_eq!(
        got.one("content-length"),
        Some(n.body.len().to_string().as_str())
    );
}

/// Waits (generously) until the app has received `n` requests.
pub(crate) fn wait_received(app: &App, n: usize) -> Vec<Received> {
    app.wait_received(n)
}

// ---------------------------------------------------------------- tests

#[test]
fn every_notification_vector_through_the_listener() {
    let app = App::start(Behaviour::Ack);
    // NTF-04 as published carries NTF-01's exact headers and body: the replay window (on by
    // default since issue 18) would acknowledge it instead of delivering it a second time
    let s = start(
        &app.url(),
        &format!("{OLD_VECTORS}\nreplay_window_entries = 0"),
    );
    let alipay = alipay_key();
    let mut posted = 0;
    for v in vectors().iter().filter(|v| v["kind"] == "notify_verify") {
        let id = v["id"].as_str().unwrap();
        let mut n = from_vector(v);
        let uri_less = !v["content_to_verify"]
            .as_str()
            .unwrap()
            .starts_with("POST ");
        if uri_less {
            // NTF-04: the vector's own headers are NTF-01's (signed over the full content),
            // which the sidecar must accept: it always checks with the `POST <path>` line.
            let before = app.received().len();
            assert_eq!(
                s.post(&n, &[]).status,
                200,
                "{id} as published is signed over the full content"
            );
            posted += 1;
            assert_eq!(wait_received(&app, before + 1).len(), before + 1);
            // What it stands for: a signature made over the URI-less content must not verify.
            let content = v["content_to_verify"].as_str().unwrap().as_bytes();
            let sig = sign_content(&alipay, "1", content).unwrap();
            n.headers.retain(|(name, _)| name != "Signature");
            n.headers.push(("Signature".into(), sig));
        }
        let before = app.received().len();
        let r = s.post(&n, &[]);
        posted += 1;
        if v["expected_valid"].as_bool().unwrap() {
            assert_eq!(
                r.status,
                200,
                "{id}: {:?}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(
                r.body,
                APP_ACK.as_bytes(),
                "{id}: the app's answer is relayed unchanged"
            );
            assert_eq!(r.header("x-app"), Some("stand-in"));
            let got = wait_received(&app, before + 1);
            assert_eq!(got.len(), before + 1, "{id}");
            assert_eq!(got[before].target, input(v, "uri"));
            assert_delivered_verified(&got[before], &n, "1");
        } else {
            assert_eq!(r.status, 401, "{id}");
            let (status, code, message) = result(&r);
            assert_eq!(
                (status.as_str(), code.as_str()),
                ("F", "SIDECAR_NOTIFICATION_UNVERIFIED"),
                "{id}"
            );
            assert!(message.contains("mismatch"), "{id}: {message}");
            assert_eq!(
                app.received().len(),
                before,
                "{id} must never reach the app"
            );
        }
    }
    // 401s are counted by reason; the skew is recorded even with the window off
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"mismatch\"}"), 3.0);
    assert_eq!(
        s.metric("alipay_sidecar_notification_time_skew_seconds_count"),
        posted as f64
    );
    let logs = s.sidecar.logs();
    assert!(
        logs.contains("2e0bf9d62e068208d14a3fa2535d1d57c3b10b381e366da96fb55305d08e457c"),
        "the refusal names NTF-02's content SHA-256:\n{logs}"
    );
}

#[test]
fn alipay_key_rotation_accepts_both_versions() {
    let app = App::start(Behaviour::Ack);
    // keyVersion 2 is a stand-in "new Alipay key": the vectors' merchant key pair. The
    // sidecar's own merchant key must then be another key (preflight refuses your own public
    // key configured as Alipay's), so one is generated for this test.
    let keys = "merchant_private_key = \"own_merchant_key.pem\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\", \"2\" = \"new_alipay_public_key.pem\" }\n";
    let s = start_with(keys, &app.url(), OLD_VECTORS, |dir| {
        let pair = alipay_sidecar::protocol::generate_keypair().unwrap();
        std::fs::write(dir.join("own_merchant_key.pem"), pair.private_pkcs8_pem).unwrap();
        std::fs::write(
            dir.join("new_alipay_public_key.pem"),
            key("merchant", "public_spki_pem"),
        )
        .unwrap();
    });
    let new_key = PrivateKey::from_text(&key("merchant", "private_pkcs8_pem")).unwrap();
    let time = format_iso8601(now_ms());

    let v1 = from_vector(&vector("NTF-01"));
    assert_eq!(s.post(&v1, &[]).status, 200);
    let v2 = signed(
        &new_key,
        "2",
        NOTIFY,
        CLIENT_ID,
        &time,
        &payment_body("rot_2"),
    );
    assert_eq!(s.post(&v2, &[]).status, 200);
    let got = wait_received(&app, 2);
    assert_delivered_verified(&got[0], &v1, "1");
    assert_delivered_verified(&got[1], &v2, "2");

    // an unknown version, and the new key claimed under the old version, are refused
    let v3 = signed(
        &new_key,
        "3",
        NOTIFY,
        CLIENT_ID,
        &time,
        &payment_body("rot_3"),
    );
    let r = s.post(&v3, &[]);
    assert_eq!(r.status, 401);
    assert!(
        result(&r).2.contains("keyVersion \"3\""),
        "{:?}",
        result(&r)
    );
    let wrong = signed(
        &new_key,
        "1",
        NOTIFY,
        CLIENT_ID,
        &time,
        &payment_body("rot_1"),
    );
    assert_eq!(s.post(&wrong, &[]).status, 401);
    assert_eq!(app.received().len(), 2);
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"unknown_key_version\"}"), 1.0);
}

#[test]
fn forged_sidecar_headers_are_stripped() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let n = fresh("forged_1");
    let forged = [
        ("x-alipay-sidecar-verified", "forged"),
        ("X-ALIPAY-SIDECAR-KEY-VERSION", "99"),
        ("X-Alipay-Sidecar-Anything", "x"),
    ];
    assert_eq!(s.post(&n, &forged).status, 200);
    let got = wait_received(&app, 1);
    assert_delivered_verified(&got[0], &n, "1");
    assert!(
        got[0].all("x-alipay-sidecar-anything").is_empty(),
        "{:?}",
        got[0].headers
    );

    // a forged marker does not carry an unsigned notification through
    let mut unsigned = fresh("forged_2");
    unsigned.headers.retain(|(n, _)| n != "Signature");
    let r = s.post(&unsigned, &[("X-Alipay-Sidecar-Verified", "true")]);
    assert_eq!(r.status, 401);
    assert!(
        result(&r).2.contains("no Signature header"),
        "{:?}",
        result(&r)
    );
    assert_eq!(app.received().len(), 1);
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"missing_header\"}"), 1.0);
}

#[test]
fn notification_for_another_merchant_is_refused() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let other = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        "T_999888777",
        &format_iso8601(now_ms()),
        &payment_body("other"),
    );
    let r = s.post(&other, &[]);
    assert_eq!(r.status, 401);
    let (_, code, message) = result(&r);
    assert_eq!(code, "SIDECAR_NOTIFICATION_UNVERIFIED");
    assert!(
        message.contains("T_999888777") && message.contains(CLIENT_ID),
        "{message}"
    );
    assert!(app.received().is_empty());
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"wrong_client_id\"}"), 1.0);
}

#[test]
fn app_down_then_up_delivers_the_resend_exactly_once() {
    let mut app = App::down(Behaviour::Ack); // its port is held, nothing listens yet
    let s = start(&app.url(), OLD_VECTORS);
    let n = from_vector(&vector("NTF-01"));
    let r = s.post(&n, &[]);
    assert_eq!(r.status, 503);
    assert_eq!(result(&r).0, "U");
    assert_eq!(result(&r).1, "SIDECAR_APP_UNAVAILABLE");

    // the app comes up; Alipay's re-send goes through
    app.up();
    let r = s.post(&n, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, APP_ACK.as_bytes());
    // the app records a request before answering, and the sidecar answers only after the
    // app did: this count is final
    let got = app.received();
    assert_eq!(got.len(), 1, "delivered exactly once: {got:?}");
    assert_delivered_verified(&got[0], &n, "1");
}

#[test]
fn app_5xx_is_not_acknowledged_and_the_resend_goes_through() {
    let app = App::start(Behaviour::Status(500, r#"{"error":"db down"}"#));
    let s = start(&app.url(), "acknowledge = \"sidecar\"");
    let n = fresh("app500");
    let r = s.post(&n, &[]);
    assert_eq!(r.status, 503);
    assert_eq!(result(&r).1, "SIDECAR_APP_UNAVAILABLE");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("db down"),
        "the app's 5xx body stays private"
    );
    app.set(Behaviour::Ack);
    let r = s.post(&n, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ACK.as_bytes());
    assert_eq!(wait_received(&app, 2).len(), 2);
}

#[test]
fn slow_app_times_out_into_503() {
    let app = App::start(Behaviour::Slow(Duration::from_secs(5)));
    let s = start(&app.url(), "forward_timeout = \"1s\"");
    let r = s.post(&fresh("slow"), &[]);
    assert_eq!(r.status, 503);
    let (status, code, message) = result(&r);
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("U", "SIDECAR_APP_UNAVAILABLE")
    );
    // Alipay (and anyone who can reach the port) learns nothing about the app's address
    assert!(message.contains("app is unavailable"), "{message}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains(&app.url()),
        "{message}"
    );
}

#[test]
fn method_size_and_expect_handling() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "max_body_bytes = 1024");
    // only POST
    let r = request(s.inbound, "GET", NOTIFY, &[], b"").unwrap();
    assert_eq!(r.status, 405);
    // a declared oversize body, and a chunked one that grows past the limit
    let big = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        &format_iso8601(now_ms()),
        &"x".repeat(2048),
    );
    assert_eq!(s.post(&big, &[]).status, 413);
    let chunk = "y".repeat(1000);
    // with signed-looking headers: a head that cannot verify is refused (401) before its
    // body is read (issue 18)
    let signed_headers: String = big
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let raw = format!("POST {NOTIFY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n{signed_headers}\r\n3e8\r\n{chunk}\r\n3e8\r\n{chunk}\r\n0\r\n\r\n");
    assert_eq!(raw_request(s.inbound, raw.as_bytes()).unwrap().status, 413);
    assert!(app.received().is_empty(), "nothing oversized is forwarded");

    // Expect: 100-continue is answered here and never forwarded
    let n = fresh("expect");
    let mut raw = format!("POST {NOTIFY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n", n.body.len()).into_bytes();
    for (name, value) in &n.headers {
        raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&n.body);
    let r = raw_request(s.inbound, &raw).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let got = wait_received(&app, 1);
    assert_delivered_verified(&got[0], &n, "1");
    assert!(got[0].all("expect").is_empty());
}

#[test]
fn skew_window_refuses_stale_and_unreadable_times() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "max_request_time_skew = \"10m\"");
    // NTF-01 is genuine but from 2019 (accepted with the window off: see the vectors test)
    let r = s.post(&from_vector(&vector("NTF-01")), &[]);
    assert_eq!(r.status, 401);
    let (_, code, message) = result(&r);
    assert_eq!(code, "SIDECAR_NOTIFICATION_STALE");
    assert!(message.contains("max_request_time_skew"), "{message}");
    // a genuine notification with a time the sidecar cannot read
    let odd = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        "yesterday",
        &payment_body("odd"),
    );
    let r = s.post(&odd, &[]);
    assert_eq!(r.status, 401);
    assert!(result(&r).2.contains("not a time"), "{:?}", result(&r));
    assert!(app.received().is_empty());

    // fresh ones pass, in the ISO-8601 and epoch-millis forms
    let iso = fresh("fresh_iso");
    assert_eq!(s.post(&iso, &[]).status, 200);
    let millis = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        &now_ms().to_string(),
        &payment_body("fresh_ms"),
    );
    assert_eq!(s.post(&millis, &[]).status, 200);
    assert_eq!(wait_received(&app, 2).len(), 2);
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"stale_request_time\"}"), 1.0);
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"unparseable_request_time\"}"), 1.0);
}

#[test]
fn sidecar_acknowledges_once_the_app_took_it() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "acknowledge = \"sidecar\"");
    let r = s.post(&fresh("ack"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ACK.as_bytes());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        r.header("x-app"),
        None,
        "the sidecar answers instead of the app"
    );
    // no acknowledgement when the app refused (4xx is relayed so Alipay re-sends)
    app.set(Behaviour::Status(400, r#"{"error":"unknown order"}"#));
    let r = s.post(&fresh("ack_refused"), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.body, br#"{"error":"unknown order"}"#);
}

#[test]
fn signed_acknowledgement_verifies_with_the_merchant_key() {
    let app = App::start(Behaviour::Ack);
    let s = start(
        &app.url(),
        "acknowledge = \"sidecar\"\nsign_acknowledgements = true",
    );
    let r = s.post(&fresh("signed_ack"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ACK.as_bytes());
    assert_eq!(r.header("client-id"), Some(CLIENT_ID));
    let time = r.header("response-time").expect("response-time header");
    assert!(
        alipay_sidecar::protocol::parse_request_time(time).is_some(),
        "{time}"
    );
    let merchant = Verifier::new([(
        "1".to_string(),
        PublicKey::from_text(&key("merchant", "public_spki_pem")).unwrap(),
    )]);
    let content = content_to_sign("POST", NOTIFY, CLIENT_ID, time, &r.body);
    let ok = merchant
        .verify(&content, r.header("signature").expect("signature header"))
        .expect("the ack verifies");
    assert_eq!(ok.key_version, "1");
}

#[test]
fn shadow_mode_forwards_tampered_notifications_marked_unverified() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), &format!("mode = \"shadow\"\n{OLD_VECTORS}"));
    let tampered = from_vector(&vector("NTF-02"));
    let r = s.post(&tampered, &[("X-Alipay-Sidecar-Verified", "true")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, APP_ACK.as_bytes());
    let valid = from_vector(&vector("NTF-01"));
    assert_eq!(s.post(&valid, &[]).status, 200);
    let got = wait_received(&app, 2);
    assert_eq!(got[0].body, tampered.body);
    assert_eq!(got[0].one("x-alipay-sidecar-verified"), Some("false"));
    assert_eq!(got[0].one("x-alipay-sidecar-key-version"), None);
    assert_delivered_verified(&got[1], &valid, "1");
    assert_eq!(s.metric("alipay_sidecar_requests_total{api=\"notify\",direction=\"inbound\",merchant=\"default\",outcome=\"shadow_forwarded\",status=\"200\"}"), 1.0);
    assert_eq!(s.metric("alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"mismatch\"}"), 1.0);
}

#[test]
fn path_map_base_path_and_query_reach_the_app() {
    let app = App::start(Behaviour::Ack);
    let s = start(
        &format!("{}/app", app.url()),
        "path_map = { \"/merchant/notify\" = \"/payments/alipay\" }",
    );
    // the query is part of the verified content (spec §1.1) and is kept
    let n = signed(
        &alipay_key(),
        "1",
        "/merchant/notify?shop=7",
        CLIENT_ID,
        &format_iso8601(now_ms()),
        &payment_body("mapped"),
    );
    assert_eq!(s.post(&n, &[]).status, 200);
    let unmapped = signed(
        &alipay_key(),
        "1",
        "/other/notify",
        CLIENT_ID,
        &format_iso8601(now_ms()),
        &payment_body("unmapped"),
    );
    assert_eq!(s.post(&unmapped, &[]).status, 200);
    let got = wait_received(&app, 2);
    assert_eq!(got[0].target, "/app/payments/alipay?shop=7");
    assert_eq!(got[1].target, "/app/other/notify");
    assert_delivered_verified(&got[0], &n, "1");
    // the signature covers the query: dropping it breaks verification
    let mut stripped = n.clone();
    stripped.uri = NOTIFY.into();
    assert_eq!(s.post(&stripped, &[]).status, 401);
    assert_eq!(app.received().len(), 2);
}

/// The whole loop with real parts: a pay through the sidecar's outbound proxy to the fake
/// gateway (TLS), whose signed PAYMENT_RESULT notification comes back through the sidecar's
/// inbound verifier to the app. The app is failing at first: the gateway must see a non-2xx
/// and re-send, and the re-send must reach the app byte-identical and verified.
#[test]
fn gateway_notification_end_to_end_with_a_resend() {
    let app = App::start(Behaviour::Status(500, "app not ready"));
    let tail = crate::support::inbound_section(&app.url());
    let rig = crate::support::Rig::start(
        crate::support::RigConfig {
            tail: &tail,
            ..Default::default()
        },
        |cfg| {
            cfg.notify_backoff = vec![
                Duration::from_millis(0),
                Duration::from_millis(300),
                Duration::from_millis(300),
                Duration::from_millis(300),
            ]
        },
        |_| {},
    );
    let (gw, sidecar) = (&rig.gw, &rig.sidecar);
    let in_addr = sidecar.addr("inbound");
    let pay = format!(
        r#"{{"paymentRequestId":"pay_e2e_notify","paymentAmount":{{"currency":"HKD","value":"100"}},"paymentNotifyUrl":"http://{in_addr}/alipay/notify?src=ams"}}"#
    );
    let r = crate::support::request(
        rig.outbound,
        "POST",
        "/ams/api/v1/payments/pay",
        &[],
        pay.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", sidecar.logs());
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));

    // the first attempt hits the failing app: Alipay (the gateway) gets a non-2xx
    let first = wait_received(&app, 1);
    assert_eq!(first[0].target, "/alipay/notify?src=ams");
    app.set(Behaviour::Ack);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !gw.notifications().iter().any(|a| a.acknowledged) {
        assert!(
            std::time::Instant::now() < deadline,
            "never acknowledged: {:?}\n{}",
            gw.notifications(),
            sidecar.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let attempts = gw.notifications();
    assert!(
        attempts[0].status == Some(503),
        "first attempt must be refused with 503: {attempts:?}"
    );
    assert_eq!(attempts.iter().filter(|a| a.acknowledged).count(), 1);
    let got = app.received();
    // every delivery the app saw was verified, and they are all the same bytes
    assert!(got.len() >= 2);
    for g in &got {
        assert_eq!(g.one("x-alipay-sidecar-verified"), Some("true"));
        assert_eq!(g.body, got[0].body);
    }
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["notifyType"], "PAYMENT_RESULT");
    assert_eq!(body["paymentRequestId"], "pay_e2e_notify");
}

// ---------------------------------------------------------------- hardening (issue 8)

#[test]
fn duplicate_signed_headers_are_refused_and_never_reach_the_app() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let n = fresh("dup_headers");
    let header = |name: &str| {
        n.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    for name in ["client-id", "Request-Time", "Signature"] {
        // a second copy of the same name, with the same or another value
        for second in [header(name), "other".to_string()] {
            let r = s.post(&n, &[(name, &second)]);
            assert_eq!(
                r.status,
                401,
                "{name}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let (status, code, message) = result(&r);
            assert_eq!(
                (status.as_str(), code.as_str()),
                ("F", "SIDECAR_NOTIFICATION_UNVERIFIED")
            );
            assert!(message.contains("more than one"), "{message}");
        }
    }
    assert!(app.received().is_empty(), "nothing reached the app");
    assert_eq!(
        s.metric(r#"alipay_sidecar_signature_verifications_total{direction="inbound",result="duplicate_header"}"#),
        6.0
    );
    // the single verified value of each is what the app gets
    let r = s.post(&n, &[]);
    assert_eq!(r.status, 200, "{}", s.sidecar.logs());
    let got = wait_received(&app, 1);
    for name in ["client-id", "request-time", "signature"] {
        let copies = got[0]
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count();
        assert_eq!(copies, 1, "{name} forwarded once");
    }
}

#[test]
fn echoed_values_are_truncated_and_escaped() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let mut n = fresh("echo");
    let huge = "9".repeat(12_000); // under max_header_bytes (16 KiB)
    for (k, v) in n.headers.iter_mut() {
        if k == "Signature" {
            *v = format!("algorithm=RSA256,keyVersion={huge},signature=AAAA");
        }
    }
    let r = s.post(&n, &[]);
    assert_eq!(r.status, 401);
    assert!(
        r.body.len() < 1024,
        "the 401 body is {} bytes",
        r.body.len()
    );
    let (_, code, message) = result(&r);
    assert_eq!(code, "SIDECAR_NOTIFICATION_UNVERIFIED");
    assert!(
        message.contains(&"9".repeat(64)) && !message.contains(&"9".repeat(65)),
        "{message}"
    );
    let logs = s.sidecar.logs();
    assert!(
        !logs.contains(&"9".repeat(65)),
        "an untruncated keyVersion was logged"
    );
    assert!(logs.len() < 64 * 1024, "logs are {} bytes", logs.len());
}

#[test]
fn malformed_chunked_bodies_are_bad_requests_not_delivery_failures() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let n = fresh("bad_chunks");
    let mut head = format!(
        "POST {NOTIFY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    );
    for (k, v) in &n.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    for bad in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "ffffffffffffffffffff\r\n",
    ] {
        let r = raw_request(s.inbound, format!("{head}{bad}").as_bytes()).unwrap();
        assert_eq!(
            r.status,
            400,
            "{bad:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let (status, code, _) = result(&r);
        assert_eq!(
            (status.as_str(), code.as_str()),
            ("F", "SIDECAR_BAD_REQUEST")
        );
    }
    // truncated: the client sends half a chunk and closes its side
    {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(s.inbound).unwrap();
        c.write_all(format!("{head}10\r\nhalf").as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let r = crate::support::read_response(&mut c).unwrap();
        assert_eq!(r.status, 400);
    }
    assert!(app.received().is_empty());
    assert_eq!(
        s.metric_reaching(r#"alipay_sidecar_requests_total{api="notify",direction="inbound",merchant="default",outcome="bad_request",status="400"}"#, 4.0),
        4.0
    );
    let text = s.sidecar.metrics().text;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("alipay_sidecar_requests_total")
                && l.contains("outcome=\"error\"")),
        "bad input counted as an error:\n{text}"
    );
    let logs = s.sidecar.logs();
    let warn_lines = logs
        .lines()
        .filter(|l| l.contains("malformed or truncated request body"))
        .count();
    assert!(
        warn_lines <= 2,
        "throttled to once per second, got {warn_lines}:\n{logs}"
    );
    assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");
}
