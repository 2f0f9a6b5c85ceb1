//! The crypto engine: the sidecar's gateway TLS really runs on aws-lc-rs (the provider it
//! installs before pingora builds its connector), and the benchmark harness stays valid shell.
//!
//! How the TLS test tells the engines apart: the fake gateway here accepts only the
//! X25519MLKEM768 key exchange, which rustls' aws-lc-rs provider offers and its ring
//! provider does not. A sidecar whose TLS fell back to ring (pingora's own choice) could not
//! complete a handshake with it; the test also shows that a ring client indeed cannot.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use alipay_sidecar::protocol::{content_to_sign, sign_content, PrivateKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::support::{key, request, rt, write_vector_keys, RigConfig, Sidecar};

const CLIENT_ID: &str = "T_111222333";
const PAY: &str = "/ams/api/v1/payments/pay";
const RESPONSE_TIME: &str = "1714538096000";
const BODY: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

/// A TLS gateway stand-in that only speaks X25519MLKEM768 and answers every request with a
/// response signed by the vectors' "alipay" key. Returns its address, the CA file and the
/// count of completed handshakes.
fn mlkem_only_gateway(dir: &Path) -> (SocketAddr, std::path::PathBuf, Arc<AtomicUsize>) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca = dir.join("gateway-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key_der)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let alipay = PrivateKey::from_text(&key("alipay", "private_pkcs8_pem")).unwrap();
    let content = content_to_sign("POST", PAY, CLIENT_ID, RESPONSE_TIME, BODY.as_bytes());
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nclient-id: {CLIENT_ID}\r\nresponse-time: {RESPONSE_TIME}\r\nsignature: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len(),
        sign_content(&alipay, "1", &content).unwrap()
    );
    let handshakes = Arc::new(AtomicUsize::new(0));
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = handshakes.clone();
    rt().spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, answer) = (acceptor.clone(), seen.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.fetch_add(1, Ordering::SeqCst);
                // Read the head and a Content-Length body, then answer and close.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if crate::support::parse_request(&buf).is_some() {
                        break;
                    }
                }
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, ca, handshakes)
}

#[test]
fn gateway_tls_runs_on_aws_lc() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, ca, handshakes) = mlkem_only_gateway(dir.path());

    // The control: rustls with ring (what pingora 0.9 would install) cannot connect.
    let ring_client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let refused = rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(ring_client))
            .connect(name, tcp)
            .await
            .err()
    });
    let refused = refused.expect("a ring client must not complete a handshake here");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0, "{refused}");

    write_vector_keys(dir.path());
    // the stand-in answers with a fixed response-time from 2024: the freshness window on
    // answers (on by default since issue 18) is not what this test is about
    let toml = RigConfig {
        outbound: "max_response_time_skew = \"off\"",
        ..RigConfig::default()
    }
    .toml(&format!("https://{gateway}"), Some(&ca));
    let sidecar = Sidecar::start(dir.path(), &toml);
    let r = request(
        sidecar.addr("outbound"),
        "POST",
        PAY,
        &[("Content-Type", "application/json; charset=UTF-8")],
        br#"{"paymentRequestId":"pay_engine_1"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{:?}\n{}", r, sidecar.logs());
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
    assert_eq!(String::from_utf8_lossy(&r.body), BODY);
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
}

#[test]
fn benchmark_scripts_parse_with_bash_n() {
    // CI does not run the harness (it needs nginx, wrk and two quiet CPUs); this keeps it
    // (benches/sidecar.sh) and every script in scripts/ at least valid shell.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = Vec::new();
    for dir in ["benches", "scripts"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
                assert!(
                    out.status.success(),
                    "{} does not parse: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked.push(format!(
                    "{dir}/{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        checked.iter().any(|n| n == "benches/sidecar.sh"),
        "checked {checked:?}"
    );
}
