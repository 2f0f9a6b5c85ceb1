//! The official Python SDK's `ApiKeyAlipayClient` (`global-open-sdk-python==1.7.1` from
//! PyPI, unmodified) through the REAL binary, with a merchant in API-key mode: the app holds a
//! dummy key, the gateway receives the sidecar's Bearer key only.
//!
//! The virtual environment is `target/sdk-venv-open` (`python3 -m venv target/sdk-venv-open
//! && target/sdk-venv-open/bin/pip install global-open-sdk-python==1.7.1`; scripts/sdk-venv.sh
//! builds it for CI). The API-key client honours the gateway URL's port, so this test uses a
//! port-0 HTTPS listener, not 443. Its TLS check is on (`ssl.create_default_context()`):
//! `SSL_CERT_FILE` is the sidecar's `tls_trust_out` (the system roots plus its generated CA).
//! Under `CI=true` nothing here skips; elsewhere it prints `SKIPPED <test>: <why>`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;

use crate::support::{run_bounded, Rig, RigConfig, CLIENT_ID, PAY};

const TEST: &str = "python_sdk::api_key::the_python_sdk_api_key_client_works_through_the_sidecar";

/// Why the test cannot run here; a failure under CI, a skip elsewhere (`python_sdk::skip`).
fn unavailable(why: &str) -> bool {
    crate::python_sdk::skip(TEST, why);
    true
}

fn key(client_id: &str, secret: &str) -> String {
    let id = base64::engine::general_purpose::STANDARD_NO_PAD.encode(client_id);
    format!("isak_PROD_{id}_{secret}")
}

#[test]
fn the_python_sdk_api_key_client_works_through_the_sidecar() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv-open/bin/python");
    if !python.exists()
        && unavailable(&format!(
            "{} is missing; run scripts/sdk-venv.sh (or python3 -m venv target/sdk-venv-open && \
             target/sdk-venv-open/bin/pip install global-open-sdk-python==1.7.1)",
            python.display()
        ))
    {
        return;
    }

    let sidecar_key = key(CLIENT_ID, "SidecarOwnSecretFromTheVault1");
    let app_key = key(CLIENT_ID, "DummyKeyTheAppCarries0000");
    let gateway_key = sidecar_key.clone();
    let file_key = sidecar_key.clone();
    let rig = Rig::start(
        RigConfig {
            keys: "api_key = \"api_key.txt\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n",
            outbound: "tls_listen = \"127.0.0.1:0\"\ntls_trust_out = \"trust.pem\"\nrequest_timeout = \"30s\"\n",
            plain_listener: false,
            ..Default::default()
        },
        move |gw| gw.api_key = Some(gateway_key),
        move |dir| std::fs::write(dir.join("api_key.txt"), format!("{file_key}\n")).unwrap(),
    );
    let tls = rig.sidecar.addr("outbound_tls");
    let bundle = rig.dir.path().join("trust.pem");
    assert!(bundle.exists(), "the sidecar wrote no tls_trust_out");

    let (code, out, err) = run_bounded(
        Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/sdk/python/api_key_flow.py"
            ))
            .args(["--gateway", &format!("https://127.0.0.1:{}", tls.port())])
            .args(["--app-key", &app_key])
            .args(["--run-id", &std::process::id().to_string()])
            .env("SSL_CERT_FILE", &bundle)
            .env_remove("SSL_CERT_DIR"),
        Duration::from_secs(120),
    );
    assert_eq!(
        code,
        0,
        "the SDK's API-key flow failed:\n{out}\n{err}\n--- sidecar:\n{}",
        rig.sidecar.logs()
    );
    let steps: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(steps.len(), 2, "{out}");
    assert!(steps.iter().all(|s| s["ok"] == true), "{out}");
    assert_eq!(steps[0]["result"]["resultCode"], "SUCCESS", "{out}");

    // the gateway got the sidecar's key, once, and nothing of the app's
    let got = rig.last_received(PAY);
    assert!(got.verified, "the gateway accepted the sidecar's key");
    let auth: Vec<&str> = got
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(auth, [format!("Bearer {sidecar_key}")]);
    let everything = format!("{:?}", rig.gw.received());
    assert!(
        !everything.contains("DummyKeyTheAppCarries"),
        "the app's key reached the gateway"
    );
    assert!(got
        .header("user-agent")
        .is_some_and(|ua| ua.contains("global-open-sdk-python/1.7.1")));
    let logs = rig.sidecar.logs();
    assert!(
        !logs.contains("SidecarOwnSecretFromTheVault1") && !logs.contains("DummyKeyTheAppCarries"),
        "a key reached the log:\n{logs}"
    );
}
