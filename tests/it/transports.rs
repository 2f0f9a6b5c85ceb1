//! The SDKs' other transports through the real binary (issue 24): the multipart
//! `product/uploadImage` (signed over its `body` part, sent to the upload host) and its
//! refusals; the upload gateway at check-config.

use alipay_sidecar::mock_gateway::MockGateway;
use sha2::{Digest, Sha256};

use crate::support::{request, vector_gateway, write_vector_keys, Response, RigConfig, Sidecar};
use crate::support::{run_bounded, CLIENT_ID};

const UPLOAD: &str = "/ams/api/v1/billing/product/uploadImage";
const BOUNDARY: &str = "----AntomBoundary0123456789abcdef";

/// The fake gateway and a sidecar in front of it; `upload_host` (e.g. `localhost`) is the
/// upload gateway's host name on the same listener, or `None` to leave it derived.
struct Upload {
    gw: MockGateway,
    sidecar: Sidecar,
    _dir: tempfile::TempDir,
}

fn start(upload_host: Option<&str>) -> Upload {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let gw = vector_gateway(dir.path(), |cfg| {
        cfg.expected_client_id = Some(CLIENT_ID.into())
    });
    let port = gw.local_addr().port();
    let outbound = upload_host
        .map(|h| format!("upload_gateway = \"https://{h}:{port}\"\nrequest_timeout = \"10s\"\n"))
        .unwrap_or_default();
    let toml = RigConfig {
        outbound: &outbound,
        ..Default::default()
    }
    .toml(&format!("https://127.0.0.1:{port}"), gw.ca_file());
    let sidecar = Sidecar::start(dir.path(), &toml);
    Upload {
        gw,
        sidecar,
        _dir: dir,
    }
}

fn sha(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The multipart body the Python SDK 1.7.1 builds (`net/multipart_http_rpc.py`).
fn sdk_multipart(json: &str, file: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"body\"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n").as_bytes());
    for n in parts {
        p.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"shoe.png\"\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n").as_bytes());
        p.extend_from_slice(file);
        p.extend_from_slice(b"\r\n");
    }
    p.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    p
}

fn body_json(file: &[u8]) -> String {
    format!(
        "{{\"productId\":\"prod_1\",\"fileSha256\":\"{}\"}}",
        sha(file)
    )
}

fn post(u: &Upload, content_type: &str, body: &[u8]) -> Response {
    request(
        u.sidecar.addr("outbound"),
        "POST",
        UPLOAD,
        &[("Content-Type", content_type)],
        body,
    )
    .unwrap()
}

fn multipart_ct() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A PNG-ish file with bytes that look like multipart framing inside.
fn image() -> Vec<u8> {
    let mut f = b"\x89PNG\r\n\x1a\n\r\n--fake\r\n\x00".to_vec();
    f.extend((0..70_000u32).map(|i| (i * 7 % 251) as u8));
    f
}

#[test]
fn an_upload_is_signed_over_its_body_part_and_sent_unchanged_to_the_upload_host() {
    let u = start(Some("localhost"));
    let file = image();
    let json = body_json(&file);
    let body = sdk_multipart(&json, &file, &["file", "imageFile"]);
    let r = post(&u, &multipart_ct(), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["result"]["resultStatus"], "S");
    assert_eq!(v["productId"], "prod_1");
    let got =
        u.gw.received()
            .into_iter()
            .find(|r| r.target == UPLOAD)
            .expect("the gateway got the upload");
    // the gateway verified the signature over the `body` part (its own reader), the bytes
    // are the app's, and it went to the upload host name
    assert!(
        got.verified,
        "the fake gateway did not verify the upload signature"
    );
    assert_eq!(got.body, body, "the multipart bytes changed on the way");
    let host = got.header("host").unwrap();
    assert!(host.starts_with("localhost:"), "sent to {host}");
    assert_eq!(got.header("content-type"), Some(multipart_ct().as_str()));
}

#[test]
fn an_upload_to_the_api_host_is_not_served_there() {
    // gateway 127.0.0.1 is not Alipay's: the upload gateway defaults to the gateway itself,
    // and the fake gateway serves uploads only on its upload host name
    let u = start(None);
    let file = image();
    let body = sdk_multipart(&body_json(&file), &file, &["file"]);
    let r = post(&u, &multipart_ct(), &body);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-alipay-sidecar-verified"),
        Some("unsigned-failure")
    );
    assert_eq!(r.result_code().1, "NO_INTERFACE_DEF");
}

#[test]
fn malformed_uploads_are_refused_and_nothing_is_sent() {
    let u = start(Some("localhost"));
    let file = image();
    let good = body_json(&file);
    let wrong = body_json(b"another file");
    let cut = {
        let mut b = sdk_multipart(&good, &file, &["file"]);
        b.truncate(b.len() - 20);
        b
    };
    let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "fileSha256 of another file",
            multipart_ct(),
            sdk_multipart(&wrong, &file, &["file", "imageFile"]),
            "SIDECAR_UPLOAD_DIGEST_MISMATCH",
        ),
        (
            "no file part",
            multipart_ct(),
            sdk_multipart(&good, &file, &[]),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "no body part",
            multipart_ct(),
            sdk_multipart(&good, &file, &["file"])
                .split(|_| false)
                .next()
                .map(|b| {
                    let s = String::from_utf8_lossy(b).replace("name=\"body\"", "name=\"meta\"");
                    s.into_bytes()
                })
                .unwrap(),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "a JSON body, not multipart",
            "application/json; charset=UTF-8".into(),
            good.clone().into_bytes(),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "no boundary",
            "multipart/form-data".into(),
            sdk_multipart(&good, &file, &["file"]),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "truncated multipart",
            multipart_ct(),
            cut,
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "body part not JSON",
            multipart_ct(),
            sdk_multipart("productId=prod_1", &file, &["file"]),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
    ];
    for (what, ct, body, code) in cases {
        let r = post(&u, &ct, &body);
        assert_eq!(
            r.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-alipay-sidecar-error"), Some(code), "{what}");
        assert_eq!(r.result_code().0, "F", "{what}");
    }
    assert!(
        u.gw.received().iter().all(|r| r.target != UPLOAD),
        "a refused upload reached the gateway"
    );
}

fn check_config(outbound: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let toml = RigConfig {
        outbound,
        ..Default::default()
    }
    .toml("https://open-eu.alipay.com", None);
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        toml.replacen("gateway = \"https://open-eu.alipay.com\"\n", "", 1),
    )
    .unwrap();
    let (code, out, err) = run_bounded(
        std::process::Command::new(crate::support::bin())
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        std::time::Duration::from_secs(60),
    );
    (code, format!("{out}{err}"))
}

#[test]
fn check_config_wants_an_upload_gateway_only_where_none_is_known() {
    // open-eu.alipay.com has no upload host in the SDKs' table
    let (code, out) = check_config("gateway = \"https://open-eu.alipay.com\"\n");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("upload_gateway"), "{out}");
    // an explicit upload gateway, or the upload route left out, is fine
    let (code, out) = check_config(
        "gateway = \"https://open-eu.alipay.com\"\nupload_gateway = \"https://open-big-sea.alipay.com\"\n",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(
        "gateway = \"https://open-eu.alipay.com\"\nallowed_path_prefixes = [\"/ams/api/v1/payments/\"]\n",
    );
    assert_eq!(code, 0, "{out}");
    // every gateway of the table, and a non-Alipay one, derives its own
    for g in [
        "https://open-sea-global.alipay.com",
        "https://open-na.alipay.com",
        "https://open-de-global.alipay.com",
        "https://127.0.0.1:8443",
    ] {
        let (code, out) = check_config(&format!("gateway = \"{g}\"\n"));
        assert_eq!(code, 0, "{g}: {out}");
    }
}
