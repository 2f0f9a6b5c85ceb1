//! The current Python SDK's other transports through the sidecar (issue 24):
//! `meter/createSession` then `meter/uploadEvent` over HTTP/2 (the `[http2]` extra), and the
//! multipart `product/uploadImage` with `set_upload_gateway_url` pointing at the sidecar;
//! every answer passes the SDK's own checks. Port 443, like the other SDK tests.

use std::process::Command;
use std::time::Duration;

use super::{preconditions, PORT_443};
use crate::support::{
    run_bounded, vector_gateway, write_key, write_vector_keys, RigConfig, Sidecar, CLIENT_ID,
};

#[test]
fn the_current_python_sdk_uploads_meter_events_over_http2_and_images_as_multipart() {
    const TEST: &str = "python_sdk::transports::the_current_python_sdk_uploads_meter_events_over_http2_and_images_as_multipart";
    let _port = PORT_443.lock().unwrap_or_else(|p| p.into_inner());
    let Some(python) = preconditions(TEST, "target/sdk-venv-open") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    write_key(
        dir.path(),
        "sdk_merchant.pem",
        "merchant",
        "private_pkcs1_pem",
    );
    write_key(
        dir.path(),
        "sdk_alipay_public.pem",
        "alipay",
        "public_spki_pem",
    );
    let gw = vector_gateway(dir.path(), |cfg| {
        cfg.expected_client_id = Some(CLIENT_ID.into())
    });
    let port = gw.local_addr().port();
    // uploads go to the fake gateway's upload host name (same listener)
    let outbound = format!(
        "tls_listen = \"127.0.0.1:443\"\ntls_trust_out = \"trust.pem\"\nrequest_timeout = \"30s\"\nupload_gateway = \"https://localhost:{port}\"\n"
    );
    let toml = RigConfig {
        outbound: &outbound,
        plain_listener: false,
        ..Default::default()
    }
    .toml(&format!("https://127.0.0.1:{port}"), gw.ca_file());
    let sidecar = Sidecar::start(dir.path(), &toml);
    let trust = dir.path().join("trust.pem");
    assert!(trust.exists(), "tls_trust_out written at start");

    let mut cmd = Command::new(&python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/python/sdk_transports.py"
    ))
    .args(["--gateway", "https://127.0.0.1"])
    .args(["--upload-gateway", "https://127.0.0.1"])
    .args(["--client-id", CLIENT_ID])
    .arg("--merchant-private-key")
    .arg(dir.path().join("sdk_merchant.pem"))
    .arg("--alipay-public-key")
    .arg(dir.path().join("sdk_alipay_public.pem"))
    .env_remove("SSL_CERT_DIR")
    .env_remove("REQUESTS_CA_BUNDLE")
    .env("SSL_CERT_FILE", &trust);
    let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(180));
    assert_eq!(
        code,
        0,
        "the SDK's transports failed:\n{out}\n{err}\n--- sidecar:\n{}",
        sidecar.logs()
    );
    let steps: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        steps,
        ["createSession", "uploadEvent", "uploadImage", "done"],
        "{out}"
    );

    // what reached the gateway: the event unsigned with the session id over HTTP/2, the
    // upload verified over its `body` part on the upload host
    let got = gw.received();
    let event = got
        .iter()
        .find(|r| r.target == "/ams/api/v1/meter/uploadEvent")
        .expect("the gateway got the event");
    assert!(event
        .header("x-session-id")
        .is_some_and(|s| s.starts_with("mock_session_")));
    assert_eq!(event.header("signature"), None);
    let upload = got
        .iter()
        .find(|r| r.target == "/ams/api/v1/billing/product/uploadImage")
        .expect("the gateway got the upload");
    assert!(
        upload.verified,
        "the gateway did not verify the upload's signature"
    );
    assert!(upload
        .header("host")
        .is_some_and(|h| h.starts_with("localhost:")));
}
