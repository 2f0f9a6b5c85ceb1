//! Legacy SDKs unchanged (issue 9), through the REAL binary and the fake gateway: the HTTPS
//! outbound listener (generated and configured certificates, reload), absolute-form request
//! targets, a gateway that compresses its signed answers, and the Go SDK's header set.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;

use crate::support::{raw_bytes, raw_request, rt, Response, Rig, RigConfig, CLIENT_ID, PAY};

/// The rig with `outbound` added to `[outbound]`, with or without a plain listener.
fn rig(plain_listener: bool, outbound: &str) -> Rig {
    let outbound = format!("request_timeout = \"20s\"\n{outbound}\n");
    Rig::start(
        RigConfig {
            outbound: &outbound,
            tail: "",
            plain_listener,
            ..Default::default()
        },
        |_| {},
        |_| {},
    )
}

pub(crate) fn pay_body(id: &str, extra: &str) -> String {
    crate::support::pay_body(id, "100", extra)
}

/// A pay request as an SDK writes it: `target` may be absolute-form.
pub(crate) fn raw_pay(target: &str, host: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut headers = vec![("Content-Type", "application/json; charset=UTF-8")];
    headers.extend_from_slice(extra);
    raw_bytes("POST", target, host, &headers, body.as_bytes())
}

/// One request over TLS, trusting `ca_pem`; the answer and the leaf certificate served.
pub(crate) fn tls_request(addr: SocketAddr, ca_pem: &str, raw: &[u8]) -> (Response, Vec<u8>) {
    let connector = crate::support::tls_connector(ca_pem.as_bytes());
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let leaf: Vec<u8> = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(raw).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
        let r = crate::support::parse_response(&answer).unwrap();
        (r, leaf)
    })
}

/// A CA and a leaf for 127.0.0.1 it signed: (CA PEM, leaf PEM, leaf key PEM).
pub(crate) fn ca_and_leaf(cn: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

fn fingerprint_in_logs(logs: &str, der: &[u8]) -> bool {
    logs.contains(&alipay_sidecar::tls::fingerprint(der))
}

pub(crate) fn assert_verified(r: &Response) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
}

#[test]
fn https_listener_with_a_generated_certificate_and_absolute_form_targets() {
    let r = rig(
        false,
        "tls_listen = \"127.0.0.1:0\"\ntls_names = [\"alipay-sidecar\"]\ntls_ca_out = \"local-ca.pem\"",
    );
    let tls = r.sidecar.addr("outbound_tls");
    let ca = std::fs::read_to_string(r.dir.path().join("local-ca.pem")).expect("tls_ca_out");
    assert!(ca.contains("BEGIN CERTIFICATE") && !ca.contains("PRIVATE"));
    // what the Python SDK writes: HTTPS to the listener, absolute-form request line
    let body = pay_body("tls_abs", "");
    let (resp, leaf) = tls_request(
        tls,
        &ca,
        &raw_pay(
            "https://127.0.0.1/ams/api/v1/payments/pay",
            "127.0.0.1",
            &body,
            &[],
        ),
    );
    assert_verified(&resp);
    assert!(
        fingerprint_in_logs(&r.sidecar.logs(), &leaf),
        "run logs the served certificate's SHA-256"
    );
    let got = r.gw.received();
    assert_eq!(
        got.last().unwrap().target,
        PAY,
        "the path is signed and sent, not the authority"
    );
    assert!(got.last().unwrap().verified);
    // origin-form works on the TLS listener too
    let (resp, _) = tls_request(
        tls,
        &ca,
        &raw_pay(PAY, "127.0.0.1", &pay_body("tls_origin", ""), &[]),
    );
    assert_verified(&resp);
    // no plain listener when only tls_listen is set
    assert!(!r.sidecar.logs().contains("outbound signing proxy (http)"));
    // a disallowed path in absolute form is refused like any other
    let (resp, _) = tls_request(
        tls,
        &ca,
        &raw_pay(
            "https://127.0.0.1/ams/api/v1/payments/pay/..%2f..%2fx",
            "127.0.0.1",
            &body,
            &[],
        ),
    );
    assert_eq!(resp.status, 403, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(
        resp.header("x-alipay-sidecar-error"),
        Some("SIDECAR_PATH_NOT_ALLOWED")
    );
    // the TLS listener keeps the loopback Host rule
    let (resp, _) = tls_request(tls, &ca, &raw_pay(PAY, "evil.example", &body, &[]));
    assert_eq!(resp.status, 403);
}

#[test]
fn https_listener_with_configured_certificate_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = ca_and_leaf("first");
    let write = |dir: &Path, cert: &str, key: &str| {
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    };
    // the rig writes its own folder; point the certificate paths at ours
    write(dir.path(), &cert1, &key1);
    let r = rig(
        true,
        &format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}",
            dir.path().join("tls.crt").display().to_string(),
            dir.path().join("tls.key").display().to_string()
        ),
    );
    let tls = r.sidecar.addr("outbound_tls");
    let tls_pay = |ca: &str, id: &str| {
        tls_request(tls, ca, &raw_pay(PAY, "127.0.0.1", &pay_body(id, ""), &[]))
    };
    let (resp, leaf) = tls_pay(&ca1, "cfg_1");
    assert_verified(&resp);
    assert!(fingerprint_in_logs(&r.sidecar.logs(), &leaf));
    // both listeners at once, one policy
    let plain = r.outbound;
    assert_verified(
        &raw_request(
            plain,
            &raw_pay(PAY, "127.0.0.1", &pay_body("cfg_plain", ""), &[]),
        )
        .unwrap(),
    );

    // a new certificate on disk: reload serves it to new connections
    let (ca2, cert2, key2) = ca_and_leaf("second");
    write(dir.path(), &cert2, &key2);
    r.reload().assert_status(200, "reload");
    let (resp, leaf2) = tls_pay(&ca2, "cfg_2");
    assert_verified(&resp);
    assert_ne!(leaf, leaf2);
    let pem2 = rustls_pemfile::certs(&mut cert2.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(leaf2, pem2.to_vec());

    // a broken certificate file keeps the good one serving
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let reload = r.reload();
    assert_eq!(reload.status, 500);
    let (resp, leaf3) = tls_pay(&ca2, "cfg_3");
    assert_verified(&resp);
    assert_eq!(leaf3, leaf2);
}

#[test]
fn compressed_signed_answers_are_verified_and_relayed_decoded() {
    let r = rig(true, "");
    let plain = r.outbound;
    let body = pay_body("gzip_1", ",\"mockFault\":\"gzip\"");
    let resp = raw_request(
        plain,
        &raw_pay(PAY, "127.0.0.1", &body, &[("Accept-Encoding", "gzip")]),
    )
    .unwrap();
    assert_verified(&resp);
    assert_eq!(resp.header("content-encoding"), None, "relayed decoded");
    assert_eq!(resp.json()["paymentRequestId"], "gzip_1");
    // the app's Accept-Encoding never reaches the gateway
    let sent = r.gw.received().into_iter().last().unwrap();
    let ae: Vec<_> = sent
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("accept-encoding"))
        .collect();
    assert_eq!(ae.len(), 1);
    assert_eq!(ae[0].1, "identity");
}

#[test]
fn the_go_sdk_header_set_goes_through() {
    let r = rig(true, "");
    let plain = r.outbound;
    // what global-open-sdk-go's transport writes (its own signature headers included)
    let body = pay_body("go_sdk", "");
    let raw = format!(
        "POST {PAY} HTTP/1.1\r\nHost: {plain}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nAccept-Encoding: gzip\r\nAgent-Token: \r\nClient-Id: SDK_CLIENT\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Type: application/json\r\nKey-Version: 7\r\nRequest-Time: 1714538096000\r\nSignature: algorithm=RSA256,keyVersion=7,signature=c2RrJ3Mgb3du\r\n\r\n{body}",
        body.len()
    );
    let resp = raw_request(plain, raw.as_bytes()).unwrap();
    assert_verified(&resp);
    let sent = r.gw.received().into_iter().last().unwrap();
    assert!(
        sent.verified,
        "the gateway verified the sidecar's signature"
    );
    let get = |name: &str| -> Vec<String> {
        sent.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        get("key-version"),
        ["1"],
        "Key-Version matches the sidecar's own signature"
    );
    assert_eq!(get("accept-encoding"), ["identity"]);
    assert_eq!(get("client-id"), [CLIENT_ID]);
    assert!(get("signature")[0].contains("keyVersion=1,"));
}
