//! The real binary's `mock-gateway` subcommand: started as a process, driven over raw HTTP/1.1
//! and its `/mock/...` control paths. (The fake gateway's library is tested in its own crate,
//! `crates/ams-mock-gateway/tests/gateway.rs`.)

use alipay_sidecar::protocol::{content_to_sign, sign_content, PrivateKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{key, pay_body, Response};

const CLIENT_ID: &str = "T_111222333";
const PAY: &str = "/ams/api/v1/payments/pay";

fn merchant() -> PrivateKey {
    PrivateKey::from_text(&key("merchant", "private_pkcs8_pem")).unwrap()
}

/// What the gateway's answers are checked for.
trait Answer {
    /// `(resultCode, resultStatus)`.
    fn code(&self) -> (String, String);
}

impl Answer for Response {
    fn code(&self) -> (String, String) {
        let (status, code) = self.result_code();
        (code, status)
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    crate::support::parse_response(raw).ok()
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

/// Kills the child process when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn cli_switches_reach_the_running_gateway() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("merchant_public_key.pem");
    std::fs::write(&key_file, key("merchant", "public_spki_pem")).unwrap();
    let mut child = std::process::Command::new(crate::support::bin())
        .args([
            "mock-gateway",
            "--listen",
            "127.0.0.1:0",
            "--merchant-public-key",
        ])
        .arg(&key_file)
        .arg("--out-dir")
        .arg(dir.path().join("out"))
        .args(["--notify", "none", "--outcome", "never"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    // The summary, up to the last line.
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let summary = lines.join("\n");
    assert!(
        summary.contains("outcome never, notification none"),
        "{summary}"
    );
    let addr = summary
        .lines()
        .find_map(|l| l.strip_prefix("mock-gateway: listening on http://"))
        .unwrap_or_else(|| panic!("{summary}"))
        .trim()
        .to_string();

    let send = |request: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            parse_response(&exchange(tcp, &request).await).unwrap()
        }
    };
    let body = pay_body(
        "cli-1",
        "100",
        r#","paymentNotifyUrl":"http://127.0.0.1:9/n""#,
    );
    let pay = send(request(
        PAY,
        &signed_headers(PAY, CLIENT_ID, body.as_bytes()),
        body.as_bytes(),
    ))
    .await;
    assert_eq!(pay.code(), ("PAYMENT_IN_PROCESS".into(), "U".into()));
    let succeed = send(request("/mock/succeed/cli-1", &[], b"")).await;
    assert_eq!(succeed.status, 200);
    assert_eq!(succeed.json()["paymentStatus"], "SUCCESS");
    let again = send(request("/mock/succeed/cli-1", &[], b"")).await;
    assert_eq!(again.status, 409);
    drop(child);
}
