//! The real `alipay-sidecar` binary: `sign`, `verify`, `keygen` and `check-config` on the
//! published vectors and on config files written into temporary folders.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use base64::Engine as _;
use serde_json::Value;

use crate::support::{command, input, key, vectors};

/// Runs the binary with `args`, feeding `stdin`, with no inherited ALIPAY_SIDECAR_* variable
/// plus the given `env`.
fn run_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(args);
    cmd.stdin(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn alipay-sidecar");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_env(args, stdin, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The vectors' test keys written as files.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        for (who, form, name) in [
            ("merchant", "private_pkcs8_pem", "merchant_private.pem"),
            (
                "merchant",
                "private_pkcs1_pem",
                "merchant_private_pkcs1.pem",
            ),
            ("merchant", "private_pkcs8_der_b64", "merchant_private.b64"),
            ("merchant", "public_spki_pem", "merchant_public.pem"),
            ("alipay", "public_spki_pem", "alipay_public.pem"),
            ("alipay", "public_spki_der_b64", "alipay_public.b64"),
            ("alipay", "private_pkcs8_pem", "alipay_private.pem"),
        ] {
            std::fs::write(dir.path().join(name), key(who, form)).expect("write key");
        }
        Keys { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).expect("write file");
        p.display().to_string()
    }
}

/// `SHA256:<hex>` of a base64 SPKI DER, computed independently of the binary.
fn fingerprint(spki_b64: &str) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(spki_b64.trim())
        .expect("b64");
    format!("SHA256:{}", alipay_sidecar::protocol::sha256_hex(&der))
}

fn of_kind<'a>(all: &'a [Value], kinds: &[&str]) -> Vec<&'a Value> {
    all.iter()
        .filter(|v| kinds.contains(&v["kind"].as_str().unwrap_or("")))
        .collect()
}

fn sign_args<'a>(v: &'a Value, private_key: &'a str) -> Vec<&'a str> {
    vec![
        "sign",
        "--private-key",
        private_key,
        "--client-id",
        input(v, "client_id"),
        "--path",
        input(v, "uri"),
        "--request-time",
        input(v, "time"),
        "--key-version",
        input(v, "key_version"),
    ]
}

fn expected_sign_output(v: &Value) -> String {
    format!(
        "Client-Id: {}\nRequest-Time: {}\nSignature: {}\n",
        input(v, "client_id"),
        input(v, "time"),
        v["expected_signature_header"]
            .as_str()
            .expect("expected_signature_header")
    )
}

#[test]
fn sign_every_request_and_ack_vector_from_a_body_file() {
    let keys = Keys::new();
    let all = vectors();
    let signing = of_kind(&all, &["request_sign", "ack_sign"]);
    assert_eq!(signing.len(), 9, "8 REQ + ACK-01");
    for v in signing {
        assert_eq!(input(v, "method"), "POST");
        let body = keys.write("body.bin", input(v, "body").as_bytes());
        let private = keys.path("merchant_private.pem");
        let mut args = sign_args(v, &private);
        args.extend(["--body-file", &body]);
        let out = run(&args, b"");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            v["id"],
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), expected_sign_output(v), "{}", v["id"]);
    }
}

#[test]
fn sign_reads_the_body_from_stdin_and_every_key_form_signs_alike() {
    let keys = Keys::new();
    let all = vectors();
    // REQ-08: CRLF, JSON escapes: the bytes must arrive untouched through stdin.
    let v = all.iter().find(|v| v["id"] == "REQ-08").expect("REQ-08");
    for key_file in [
        "merchant_private.pem",
        "merchant_private_pkcs1.pem",
        "merchant_private.b64",
    ] {
        let private = keys.path(key_file);
        let out = run(&sign_args(v, &private), input(v, "body").as_bytes());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{key_file}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), expected_sign_output(v), "{key_file}");
    }
}

#[test]
fn sign_explain_shows_the_escaped_content_its_hash_and_the_key() {
    let keys = Keys::new();
    let all = vectors();
    let private = keys.path("merchant_private.pem");
    let merchant_fp = fingerprint(&key("merchant", "public_spki_der_b64"));
    for id in ["REQ-01", "REQ-08"] {
        let v = all.iter().find(|v| v["id"] == id).expect("vector");
        let mut args = sign_args(v, &private);
        args.push("--explain");
        let out = run(&args, input(v, "body").as_bytes());
        assert_eq!(out.status.code(), Some(0), "{id}");
        assert_eq!(
            text(&out.stdout),
            expected_sign_output(v),
            "{id}: stdout stays three lines"
        );
        let err = text(&out.stderr);
        let sha = v["content_sha256_utf8"].as_str().expect("sha");
        assert!(
            err.contains(&format!("content sha256: {sha}")),
            "{id}: {err}"
        );
        assert!(err.contains(&merchant_fp), "{id}: {err}");
        assert!(
            err.contains(&format!("POST {}\\n", input(v, "uri"))),
            "{id}: {err}"
        );
        if id == "REQ-08" {
            assert!(err.contains("{\\r\\n"), "CRLF visible: {err}");
        } else {
            // 珍 (U+73CD) and the bubble-tea emoji (U+1F9CB) are shown escaped.
            assert!(
                err.contains("\\u{73cd}") && err.contains("\\u{1f9cb}"),
                "{err}"
            );
        }
    }
}

#[test]
fn sign_defaults_to_now_in_epoch_millis_and_version_1() {
    let keys = Keys::new();
    let private = keys.path("merchant_private.pem");
    let out = run(
        &[
            "sign",
            "--private-key",
            &private,
            "--client-id",
            "T_1",
            "--path",
            "/ams/api/v1/payments/pay",
        ],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let time = lines[1].strip_prefix("Request-Time: ").expect("time line");
    assert!(
        time.len() == 13 && time.bytes().all(|b| b.is_ascii_digit()),
        "{time}"
    );
    assert!(
        lines[2].starts_with("Signature: algorithm=RSA256,keyVersion=1,signature="),
        "{stdout}"
    );
    // The default output verifies with the merchant public key.
    let header = lines[2].strip_prefix("Signature: ").expect("sig");
    let public = keys.path("merchant_public.pem");
    let out = run(
        &[
            "verify",
            "--public-key",
            &public,
            "--client-id",
            "T_1",
            "--path",
            "/ams/api/v1/payments/pay",
            "--time",
            time,
            "--signature",
            header,
        ],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn sign_usage_errors_exit_2() {
    let keys = Keys::new();
    let private = keys.path("merchant_private.pem");
    let public = keys.path("merchant_public.pem");
    let base = ["sign", "--client-id", "T_1", "--request-time", "1"];
    let out = run(
        &[
            &base[..],
            &[
                "--private-key",
                &private,
                "--path",
                "https://open-sea-global.alipay.com/ams/api/v1/payments/pay",
            ],
        ]
        .concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("(here: /ams/api/v1/payments/pay)"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &[
            &base[..],
            &["--private-key", &public, "--path", "/ams/api/x"],
        ]
        .concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("PRIVATE key"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &[
            &base[..],
            &[
                "--private-key",
                &private,
                "--path",
                "/ams/api/x",
                "--key-version",
                "v2",
            ],
        ]
        .concat(),
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["sign", "--client-id", "T_1"], b"");
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing arguments are a usage error"
    );
}

fn verify_args<'a>(v: &'a Value, public_key: &'a str, body: &'a str) -> Vec<&'a str> {
    vec![
        "verify",
        "--public-key",
        public_key,
        "--client-id",
        input(v, "client_id"),
        "--path",
        input(v, "uri"),
        "--time",
        v["inputs"]["time"].as_str().unwrap_or(""),
        "--signature",
        v["inputs"]["signature_header"].as_str().unwrap_or(""),
        "--body-file",
        body,
    ]
}

#[test]
fn verify_every_response_and_notification_vector() {
    let keys = Keys::new();
    let all = vectors();
    let checked = of_kind(&all, &["response_verify", "notify_verify"]);
    assert_eq!(checked.len(), 16, "11 RSP + 5 NTF");
    let alipay = keys.path("alipay_public.pem");
    let alipay_fp = fingerprint(&key("alipay", "public_spki_der_b64"));
    for v in checked {
        let id = v["id"].as_str().expect("id");
        let body = keys.write("body.bin", input(v, "body").as_bytes());
        let out = run(&verify_args(v, &alipay, &body), b"");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let expected = &v["expected_valid"];
        let content_sha = v["content_sha256_utf8"].as_str();
        match id {
            // Unsigned response: nothing to verify, reported as a missing signature.
            "RSP-06" => {
                assert_eq!(expected, "unsigned");
                assert_eq!(out.status.code(), Some(1), "{id}: {stderr}");
                assert!(stderr.contains("missing signature"), "{id}: {stderr}");
            }
            // Raw base64 signature: valid under percent-decoding (never '+' -> ' ').
            "RSP-10" => {
                assert_eq!(expected["percent_decode"], true);
                assert_eq!(out.status.code(), Some(0), "{id}: {stderr}");
            }
            // NTF-04 is about verifying URI-less content; the CLI always builds
            // `POST <path>\n…`, so the same inputs verify (and a path-less call is refused).
            "NTF-04" => {
                assert_eq!(expected, false);
                assert_eq!(out.status.code(), Some(0), "{id}: {stderr}");
                let mut args = verify_args(v, &alipay, &body);
                args[6] = "";
                let out = run(&args, b"");
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "{id}: an empty --path is a usage error"
                );
            }
            _ if expected == true => {
                assert_eq!(out.status.code(), Some(0), "{id}: {stderr}");
                let kv = v["inputs"]["signature_header"]
                    .as_str()
                    .and_then(|h| h.split(',').find_map(|i| i.strip_prefix("keyVersion=")))
                    .expect("keyVersion");
                assert_eq!(stdout.lines().count(), 1, "{id}: {stdout}");
                assert!(
                    stdout.contains(&format!("keyVersion {kv}")) && stdout.contains(&alipay_fp),
                    "{id}: {stdout}"
                );
            }
            _ => {
                assert_eq!(expected, false, "{id}");
                assert_eq!(out.status.code(), Some(1), "{id}: {stderr}");
                assert!(stderr.contains("signature mismatch"), "{id}: {stderr}");
                let sha = content_sha.expect("sha");
                assert!(
                    stderr.contains(&format!("content sha256: {sha}")),
                    "{id}: {stderr}"
                );
            }
        }
    }
}

#[test]
fn verify_request_vectors_with_the_merchant_public_key() {
    let keys = Keys::new();
    let all = vectors();
    let public = keys.path("merchant_public.pem");
    for v in of_kind(&all, &["request_sign", "ack_sign"]) {
        let out = run(
            &[
                "verify",
                "--public-key",
                &public,
                "--client-id",
                input(v, "client_id"),
                "--path",
                input(v, "uri"),
                "--time",
                input(v, "time"),
                "--signature",
                v["expected_signature_header"].as_str().expect("header"),
            ],
            input(v, "body").as_bytes(),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            v["id"],
            text(&out.stderr)
        );
        if let Some(dotnet) = v["dotnet_style_signature_header"].as_str() {
            let out = run(
                &[
                    "verify",
                    "--public-key",
                    &public,
                    "--client-id",
                    input(v, "client_id"),
                    "--path",
                    input(v, "uri"),
                    "--time",
                    input(v, "time"),
                    "--signature",
                    dotnet,
                ],
                input(v, "body").as_bytes(),
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{} lowercase escapes: {}",
                v["id"],
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn verify_key_versions() {
    let keys = Keys::new();
    let all = vectors();
    let v = all.iter().find(|v| v["id"] == "RSP-09").expect("RSP-09");
    let body = keys.write("body.bin", input(v, "body").as_bytes());
    let alipay = keys.path("alipay_public.pem");
    let merchant = keys.path("merchant_public.pem");

    // A single key without a version answers for the header's keyVersion 2.
    let out = run(&verify_args(v, &alipay, &body), b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("keyVersion 2"));

    // Bound explicitly as version 2 (the base64 form of the same key).
    let bound = format!("2={}", keys.path("alipay_public.b64"));
    let out = run(&verify_args(v, &bound, &body), b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("keyVersion 2"));

    // Bound as version 1 only: a distinct "unknown key version" failure, not a mismatch.
    let bound = format!("1={alipay}");
    let out = run(&verify_args(v, &bound, &body), b"");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown key version") && !err.contains("mismatch"),
        "{err}"
    );

    // Two versions: the header's version picks the key.
    let v1 = format!("1={merchant}");
    let v2 = format!("2={alipay}");
    let mut args = verify_args(v, &v1, &body);
    args.extend(["--public-key", &v2]);
    let out = run(&args, b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rsp01 = all.iter().find(|v| v["id"] == "RSP-01").expect("RSP-01");
    let body01 = keys.write("body01.bin", input(rsp01, "body").as_bytes());
    let mut args = verify_args(rsp01, &v1, &body01);
    args.extend(["--public-key", &v2]);
    let out = run(&args, b"");
    assert_eq!(
        out.status.code(),
        Some(1),
        "keyVersion 1 is the merchant key here"
    );
    assert!(text(&out.stderr).contains("signature mismatch"));

    // Two keys for the same version, or a private key, are usage errors.
    let mut args = verify_args(v, &alipay, &body);
    args.extend(["--public-key", &merchant]);
    assert_eq!(run(&args, b"").status.code(), Some(2));
    let private = keys.path("alipay_private.pem");
    let out = run(&verify_args(v, &private, &body), b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("PUBLIC key"),
        "{}",
        text(&out.stderr)
    );
    let missing = keys.path("nope.pem");
    assert_eq!(
        run(&verify_args(v, &missing, &body), b"").status.code(),
        Some(2)
    );
}

#[test]
fn verify_help_explains_offline_notification_checks() {
    let out = run(&["verify", "--help"], b"");
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(
        help.contains("captured Alipay notification")
            && help.contains("Request-Time")
            && help.contains("raw body"),
        "{help}"
    );
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_pair_that_round_trips_and_never_overwrites() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out_dir = tmp.path().join("keys");
    let d = out_dir.display().to_string();
    let out = run(&["keygen", "--out", &d], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let names = [
        "merchant_private_key.pem",
        "merchant_public_key.pem",
        "merchant_private_key.base64.txt",
        "merchant_public_key.base64.txt",
    ];
    let contents: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(out_dir.join(n)).expect("written"))
        .collect();
    let public_b64 = String::from_utf8(contents[3].clone()).expect("text");
    assert_eq!(public_b64.trim().lines().count(), 1, "one line");
    assert!(
        text(&out.stdout).contains(&fingerprint(&public_b64)),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&contents[0]).starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(text(&contents[1]).starts_with("-----BEGIN PUBLIC KEY-----"));
    #[cfg(unix)]
    {
        assert_eq!(mode(&out_dir.join(names[0])), 0o600);
        assert_eq!(mode(&out_dir.join(names[2])), 0o600);
    }

    // sign → verify with every combination of the written forms.
    for private in [names[0], names[2]] {
        let p = out_dir.join(private).display().to_string();
        let signed = run(
            &[
                "sign",
                "--private-key",
                &p,
                "--client-id",
                "SANDBOX_1",
                "--path",
                "/ams/sandbox/api/v1/payments/pay",
                "--request-time",
                "1714538096000",
            ],
            b"{\"a\":1}",
        );
        assert_eq!(signed.status.code(), Some(0), "{}", text(&signed.stderr));
        let stdout = text(&signed.stdout);
        let header = stdout
            .lines()
            .nth(2)
            .and_then(|l| l.strip_prefix("Signature: "))
            .expect("signature line");
        for public in [names[1], names[3]] {
            let q = out_dir.join(public).display().to_string();
            let out = run(
                &[
                    "verify",
                    "--public-key",
                    &q,
                    "--client-id",
                    "SANDBOX_1",
                    "--path",
                    "/ams/sandbox/api/v1/payments/pay",
                    "--time",
                    "1714538096000",
                    "--signature",
                    header,
                ],
                b"{\"a\":1}",
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{private} / {public}: {}",
                text(&out.stderr)
            );
            let tampered = run(
                &[
                    "verify",
                    "--public-key",
                    &q,
                    "--client-id",
                    "SANDBOX_1",
                    "--path",
                    "/ams/sandbox/api/v1/payments/pay",
                    "--time",
                    "1714538096000",
                    "--signature",
                    header,
                ],
                b"{\"a\":2}",
            );
            assert_eq!(tampered.status.code(), Some(1));
        }
    }

    // A second run refuses and changes nothing.
    let again = run(&["keygen", "--out", &d], b"");
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("refusing to overwrite"),
        "{}",
        text(&again.stderr)
    );
    for (n, c) in names.iter().zip(&contents) {
        assert_eq!(
            &std::fs::read(out_dir.join(n)).expect("still there"),
            c,
            "{n} unchanged"
        );
    }

    // One existing file is enough to refuse, and nothing else gets written.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("merchant_public_key.pem"), "mine").expect("write");
    let out = run(&["keygen", "--out", &other.display().to_string()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        std::fs::read_dir(&other).expect("dir").count(),
        1,
        "nothing written"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("merchant_public_key.pem")).expect("read"),
        "mine"
    );
}

/// A config folder with the vectors' keys and a sidecar.toml.
fn config_dir(alipay_key: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
    std::fs::write(
        dir.path().join("keys/merchant_private_key.pem"),
        key("merchant", "private_pkcs8_pem"),
    )
    .expect("write");
    let (who, form) = alipay_key.split_once('.').expect("who.form");
    std::fs::write(
        dir.path().join("keys/alipay_public_key.pem"),
        key(who, form),
    )
    .expect("write");
    let text = format!(
        "client_id = \"T_111222333\"\n\
         [keys]\n\
         merchant_private_key = \"keys/merchant_private_key.pem\"\n\
         alipay_public_keys = {{ \"1\" = \"keys/alipay_public_key.pem\" }}\n\
         [outbound]\n\
         gateway = \"https://open-sea-global.alipay.com\"\n\
         [inbound]\n\
         forward_to = \"http://127.0.0.1:3000\"\n\
         {extra}"
    );
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

#[test]
fn check_config_accepts_a_good_config() {
    let (_dir, path) = config_dir("alipay.public_spki_pem", "");
    let p = path.display().to_string();
    let out = run(&["check-config", "--config", &p], b"");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for needle in [
        "T_111222333",
        "https://open-sea-global.alipay.com",
        "127.0.0.1:8080",
        "0.0.0.0:8081",
        "127.0.0.1:9090",
        &fingerprint(&key("merchant", "public_spki_der_b64")),
        &fingerprint(&key("alipay", "public_spki_der_b64")),
        "OK",
    ] {
        assert!(stdout.contains(needle), "missing {needle}: {stdout}");
    }
    // The same through ALIPAY_SIDECAR_CONFIG.
    let out = run_env(&["check-config"], b"", &[("ALIPAY_SIDECAR_CONFIG", &p)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_config_refuses_the_merchant_public_key_as_alipays() {
    let (_dir, path) = config_dir("merchant.public_spki_pem", "");
    let out = run(
        &["check-config", "--config", &path.display().to_string()],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("you configured your own public key as Alipay's"),
        "{err}"
    );
    assert!(
        err.contains("download Alipay's public key from the dashboard"),
        "{err}"
    );
    assert!(err.contains("sidecar.toml:4"), "names the line: {err}");
}

#[test]
fn check_config_reports_config_errors_with_file_key_and_line() {
    let cases: [(&str, &[&str]); 3] = [
        (
            "verfy_responses = false\n",
            &[
                ":9:",
                "`inbound.verfy_responses`",
                "unknown field",
                "did you mean `verify_responses` in the [outbound] section?",
            ],
        ),
        (
            "forward_timeout = \"ten seconds\"\n",
            &[
                ":9:",
                "`inbound.forward_timeout`",
                "not a duration",
                "\"5s\"",
            ],
        ),
        (
            "mode = \"enforcing\"\n",
            &[":9:", "`inbound.mode`", "enforce", "shadow"],
        ),
    ];
    for (extra, needles) in cases {
        let (_dir, path) = config_dir("alipay.public_spki_pem", extra);
        let out = run(
            &["check-config", "--config", &path.display().to_string()],
            b"",
        );
        assert_eq!(out.status.code(), Some(2), "{extra}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{extra}: missing {n}: {err}");
        }
    }
    // A missing key file: named with the config line that points at it.
    let (dir, path) = config_dir("alipay.public_spki_pem", "");
    std::fs::remove_file(dir.path().join("keys/alipay_public_key.pem")).expect("rm");
    let out = run(
        &["check-config", "--config", &path.display().to_string()],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("sidecar.toml:4")
            && err.contains("keys.alipay_public_keys.1")
            && err.contains("alipay_public_key.pem")
            && err.contains("does not exist"),
        "{err}"
    );
    // A config that does not exist.
    let out = run(
        &[
            "check-config",
            "--config",
            &dir.path().join("nope.toml").display().to_string(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope.toml"));
}

#[test]
fn check_config_applies_env_overrides_and_refuses_unknown_variables() {
    let (_dir, path) = config_dir("alipay.public_spki_pem", "");
    let p = path.display().to_string();
    let out = run_env(
        &["check-config", "--config", &p],
        b"",
        &[
            ("ALIPAY_SIDECAR_OUTBOUND_REGION", "na"),
            ("ALIPAY_SIDECAR_CLIENT_ID", "T_999"),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("https://open-na-global.alipay.com") && stdout.contains("T_999"),
        "{stdout}"
    );

    let out = run_env(
        &["check-config", "--config", &p],
        b"",
        &[("ALIPAY_SIDECAR_OUTBOUND_GATEWY", "https://x")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("ALIPAY_SIDECAR_OUTBOUND_GATEWY")
            && err.contains("ALIPAY_SIDECAR_OUTBOUND_GATEWAY"),
        "{err}"
    );

    let out = run_env(
        &["check-config", "--config", &p],
        b"",
        &[(
            "ALIPAY_SIDECAR_OUTBOUND_GATEWAY",
            "http://open-sea-global.alipay.com",
        )],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("environment variable ALIPAY_SIDECAR_OUTBOUND_GATEWAY")
            && err.contains("TLS is mandatory"),
        "{err}"
    );
}
