//! The official Alipay Python SDKs from PyPI, unmodified, through the REAL binary: their
//! HTTPS-only, port-443, absolute-form transport against the sidecar's TLS listener, the fake
//! gateway behind it, and a notification checked by the SDK's own webhook code.
//!
//! - `global-alipay-sdk-python` 1.0.1 (legacy apps; does not check certificates),
//!   venv `target/sdk-venv`;
//! - `global-open-sdk-python` 1.7.1 (the current release; checks certificates), venv
//!   `target/sdk-venv-open`, trusting the sidecar through `SSL_CERT_FILE` = `tls_trust_out`
//!   with the listener's certificate issued from `tls_ca_cert` / `tls_ca_key`, and a sidecar
//!   restart in the middle of the flow.
//!
//! `scripts/sdk-venv.sh` builds both venvs (`.ci/run` runs it). Under `CI=true` nothing here
//! skips; elsewhere a test that cannot run (a venv missing, port 443 not bindable: it needs
//! root or `net.ipv4.ip_unprivileged_port_start <= 443`) writes `SKIPPED <test>: <why>`
//! straight to the process's stderr, past the test harness's output capture, so a person
//! running `cargo test` sees it next to the `ok`. The tests share port 443, so they take turns
//! ([`PORT_443`]).

mod api_key;
mod transports; // issue 24: meter/uploadEvent over HTTP/2, multipart uploadImage

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    command, inbound_section, run_bounded, write_key, Rig, RigConfig, Sidecar, CLIENT_ID,
};

/// The tests of this file bind 127.0.0.1:443 one at a time.
static PORT_443: Mutex<()> = Mutex::new(());

/// Says that `test` cannot run here and why (`SKIPPED <test>: <why>`, a failure under CI):
/// [`crate::support::skip`], the one helper of every such test.
pub(crate) fn skip(test: &str, why: &str) {
    crate::support::skip(test, why);
}

/// The venv's python when the test can run (venv there, port 443 free); `None` after
/// [`skip`] otherwise.
fn preconditions(test: &str, venv: &str) -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(venv)
        .join("bin/python");
    if !python.exists() {
        skip(
            test,
            &format!(
                "{} is missing; run scripts/sdk-venv.sh first",
                python.display()
            ),
        );
        return None;
    }
    // the SDK connects to port 443 whatever the gateway URL says
    if let Err(e) = std::net::TcpListener::bind("127.0.0.1:443") {
        skip(
            test,
            &format!("127.0.0.1:443 cannot be bound ({e}); run as root"),
        );
        return None;
    }
    Some(python)
}

/// A port for the SDK script's app server. The one port picked before it is bound: the
/// script binds it itself (its `--app-port`), and the sidecar's `forward_to` must name it
/// at start.
fn app_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// The rig for an SDK: the HTTPS listener on 127.0.0.1:443 (plus `outbound`), inbound
/// forwarding to the script's app on `app`, the key files the SDK itself reads.
fn sdk_rig(outbound: &str, app: u16) -> Rig {
    let tail = inbound_section(&format!("http://127.0.0.1:{app}"));
    let outbound =
        format!("tls_listen = \"127.0.0.1:443\"\nrequest_timeout = \"30s\"\n{outbound}\n");
    Rig::start(
        RigConfig {
            outbound: &outbound,
            plain_listener: false,
            tail: &tail,
            ..Default::default()
        },
        |cfg| cfg.notify_backoff = vec![Duration::from_millis(200), Duration::from_secs(1)],
        |dir| {
            write_key(dir, "sdk_merchant.pem", "merchant", "private_pkcs1_pem");
            write_key(dir, "sdk_alipay_public.pem", "alipay", "public_spki_pem");
        },
    )
}

/// `tests/sdk/python/sdk_flow.py` with `python`, against `rig`, with `extra` arguments.
fn flow_command(python: &Path, rig: &Rig, app: u16, extra: &[&str]) -> Command {
    let dir = rig.dir.path();
    let notify = format!("http://{}/alipay/notify", rig.sidecar.addr("inbound"));
    let mut cmd = Command::new(python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/python/sdk_flow.py"
    ))
    .args(["--gateway", "https://127.0.0.1", "--client-id", CLIENT_ID])
    .arg("--merchant-private-key")
    .arg(dir.join("sdk_merchant.pem"))
    .arg("--alipay-public-key")
    .arg(dir.join("sdk_alipay_public.pem"))
    .args([
        "--notify-url",
        &notify,
        "--app-port",
        &app.to_string(),
        "--run-id",
        &format!("{}", std::process::id()),
    ])
    .args(extra)
    // the app's own environment only: no inherited trust settings
    .env_remove("SSL_CERT_FILE")
    .env_remove("SSL_CERT_DIR")
    .env_remove("REQUESTS_CA_BUNDLE");
    cmd
}

/// The script's JSON step lines.
fn steps(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn names(steps: &[Value]) -> Vec<&str> {
    steps.iter().map(|s| s["step"].as_str().unwrap()).collect()
}

/// The gateway verified every request the sidecar signed, on the SDK's paths; `pays` pays.
fn assert_gateway_verified_all(rig: &Rig, pays: usize) {
    let got = rig.gw.received();
    for (api, count) in [
        ("payments/pay", pays),
        ("payments/inquiryPayment", 1),
        ("payments/refund", 1),
        ("payments/cancel", 1),
    ] {
        let seen: Vec<_> = got.iter().filter(|r| r.target.ends_with(api)).collect();
        assert_eq!(seen.len(), count, "the gateway got {} {api}", seen.len());
        for r in seen {
            assert!(
                r.verified,
                "{api}: the gateway did not verify the sidecar's signature"
            );
            assert!(r.target.starts_with("/ams/api/"), "{}", r.target);
        }
    }
}

#[test]
fn the_official_python_sdk_works_through_the_sidecar() {
    const TEST: &str = "python_sdk::the_official_python_sdk_works_through_the_sidecar";
    let _port = PORT_443.lock().unwrap_or_else(|p| p.into_inner());
    let Some(python) = preconditions(TEST, "target/sdk-venv") else {
        return;
    };
    let app = app_port();
    let rig = sdk_rig("", app);
    let (code, out, err) = run_bounded(
        &mut flow_command(&python, &rig, app, &[]),
        Duration::from_secs(180),
    );
    assert_eq!(
        code,
        0,
        "the SDK flow failed:\n{out}\n{err}\n--- sidecar:\n{}",
        rig.sidecar.logs()
    );
    let steps = steps(&out);
    assert_eq!(
        names(&steps),
        [
            "pay",
            "notification",
            "inquiryPayment",
            "refund",
            "pay (to cancel)",
            "cancel",
            "done"
        ],
        "{out}"
    );
    assert!(steps.iter().all(|s| s["ok"] == true), "{out}");
    assert_eq!(steps[1]["notify_type"], "PAYMENT_RESULT");
    assert_eq!(steps[6]["sdk"], "global-alipay-sdk-python 1.0.1");
    assert_gateway_verified_all(&rig, 2);
    assert!(
        rig.sidecar.logged("absolute-form"),
        "the SDK's absolute-form target was seen and logged once"
    );
}

/// The `certificate_sha256` of the HTTPS listener a sidecar logged at start.
fn served_fingerprint(logs: &str) -> String {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v["certificate_sha256"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no certificate_sha256 in:\n{logs}"))
}

#[test]
fn the_current_python_sdk_verifies_tls_with_the_local_ca_across_a_sidecar_restart() {
    const TEST: &str = "python_sdk::the_current_python_sdk_verifies_tls_with_the_local_ca_across_a_sidecar_restart";
    let _port = PORT_443.lock().unwrap_or_else(|p| p.into_inner());
    let Some(python) = preconditions(TEST, "target/sdk-venv-open") else {
        return;
    };
    // the deployment's CA, made once; the trust bundle on a folder the app reads
    let ca = tempfile::tempdir().unwrap();
    let (code, out, err) = run_bounded(
        &mut command(&["local-ca", "--out", &ca.path().display().to_string()]),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let trust = ca.path().join("trust").join("ca-bundle.pem");
    std::fs::create_dir(trust.parent().unwrap()).unwrap();
    let app = app_port();
    let mut rig = sdk_rig(
        &format!(
            "tls_ca_cert = {:?}\ntls_ca_key = {:?}\ntls_trust_out = {:?}\n",
            ca.path().join("ca.pem").display().to_string(),
            ca.path().join("ca.key").display().to_string(),
            trust.display().to_string()
        ),
        app,
    );
    let bundle = std::fs::read(&trust).expect("tls_trust_out written at start");
    let first_leaf = served_fingerprint(&rig.sidecar.logs());

    let resume = rig.dir.path().join("resume");
    let mut child = flow_command(
        &python,
        &rig,
        app,
        &[
            "--restart-after",
            "inquiryPayment",
            "--resume-file",
            &resume.display().to_string(),
        ],
    )
    .env("SSL_CERT_FILE", &trust)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .stdin(Stdio::null())
    .spawn()
    .expect("start the SDK flow");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut out = String::new();
    let mut restarted = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains("\"step\": \"restart\"") {
                    // the sidecar goes away and comes back with the same config and CA files
                    let config = rig.sidecar.config_path.clone();
                    rig.sidecar.signal("KILL");
                    // killed by a signal: no exit code, but gone (and port 443 with it)
                    let _ = rig.sidecar.wait_exit(Duration::from_secs(30));
                    rig.sidecar = Sidecar::launch(&config, &[], &[]);
                    std::fs::write(&resume, "go").unwrap();
                    restarted = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the SDK flow did not finish within 300 s:\n{out}");
            }
        }
    }
    let status = child.wait().unwrap();
    let err = err_reader.join().unwrap();
    assert!(
        status.success(),
        "the SDK flow failed:\n{out}\n{err}\n--- sidecar:\n{}",
        rig.sidecar.logs()
    );
    assert!(restarted, "{out}");
    let steps = steps(&out);
    assert_eq!(
        names(&steps),
        [
            "pay",
            "notification",
            "inquiryPayment",
            "restart",
            "refund",
            "pay (to cancel)",
            "cancel",
            "done"
        ],
        "{out}"
    );
    // every call passed the SDK's own response verification (it raises otherwise)
    assert!(steps.iter().all(|s| s["ok"] == true), "{out}");
    assert_eq!(steps[1]["notify_type"], "PAYMENT_RESULT");
    assert_eq!(steps[7]["sdk"], "global-open-sdk-python 1.7.1");
    assert_gateway_verified_all(&rig, 2);
    // the restart served a new leaf under the same CA; the app's trust file did not change
    let second_leaf = served_fingerprint(&rig.sidecar.logs());
    assert_ne!(first_leaf, second_leaf, "a new leaf after the restart");
    assert_eq!(std::fs::read(&trust).unwrap(), bundle);
}
