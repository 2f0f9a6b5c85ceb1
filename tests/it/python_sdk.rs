//! The official Alipay Python SDK (`global-alipay-sdk-python` from PyPI, unmodified) through the
//! REAL binary: its HTTPS-only, port-443, absolute-form transport against the sidecar's TLS
//! listener, the fake gateway behind it, and a notification checked by the SDK's own webhook
//! code. The SDK's virtual environment comes from `scripts/sdk-venv.sh` (`.ci/run` builds
//! it). Under `CI=true` nothing here skips; elsewhere the test skips, saying why, when the
//! environment is missing or port 443 cannot be bound (it needs root or
//! `net.ipv4.ip_unprivileged_port_start <= 443`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{inbound_section, run_bounded, write_key, Rig, RigConfig, CLIENT_ID};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Why the test cannot run here; a failure under CI, a skip elsewhere.
fn unavailable(why: &str) -> bool {
    assert!(!in_ci(), "CI=true: the Python SDK test must run, but {why}");
    eprintln!("SKIPPED python_sdk: {why}");
    true
}

#[test]
fn the_official_python_sdk_works_through_the_sidecar() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    if !python.exists()
        && unavailable(&format!(
            "{} is missing; run scripts/sdk-venv.sh first",
            python.display()
        ))
    {
        return;
    }
    // the SDK connects to port 443 whatever the gateway URL says
    match std::net::TcpListener::bind("127.0.0.1:443") {
        Ok(l) => drop(l),
        Err(e) => {
            if unavailable(&format!("127.0.0.1:443 cannot be bound ({e}); run as root")) {
                return;
            }
        }
    }

    // The one port picked before it is bound: the SDK script's app server binds it itself
    // (its `--app-port`), and the sidecar's `forward_to` must name it at start.
    let app = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let tail = inbound_section(&format!("http://127.0.0.1:{app}"));
    let rig = Rig::start(
        RigConfig {
            outbound: "tls_listen = \"127.0.0.1:443\"\nrequest_timeout = \"30s\"\n",
            plain_listener: false,
            tail: &tail,
            ..Default::default()
        },
        |cfg| cfg.notify_backoff = vec![Duration::from_millis(200), Duration::from_secs(1)],
        |dir| {
            write_key(dir, "sdk_merchant.pem", "merchant", "private_pkcs1_pem");
            write_key(dir, "sdk_alipay_public.pem", "alipay", "public_spki_pem");
        },
    );
    let (gw, sidecar, dir) = (&rig.gw, &rig.sidecar, &rig.dir);
    let inbound = sidecar.addr("inbound");

    let run_id = format!("{}", std::process::id());
    let notify = format!("http://{inbound}/alipay/notify");
    let (code, out, err) = run_bounded(
        Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/sdk/python/sdk_flow.py"
            ))
            .args(["--gateway", "https://127.0.0.1", "--client-id", CLIENT_ID])
            .arg("--merchant-private-key")
            .arg(dir.path().join("sdk_merchant.pem"))
            .arg("--alipay-public-key")
            .arg(dir.path().join("sdk_alipay_public.pem"))
            .args([
                "--notify-url",
                &notify,
                "--app-port",
                &app.to_string(),
                "--run-id",
                &run_id,
            ]),
        Duration::from_secs(180),
    );
    assert_eq!(
        code,
        0,
        "the SDK flow failed:\n{out}\n{err}\n--- sidecar:\n{}",
        sidecar.logs()
    );
    let steps: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
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

    // the gateway verified every request the sidecar signed, on the SDK's paths
    let got = gw.received();
    for api in [
        "payments/pay",
        "payments/inquiryPayment",
        "payments/refund",
        "payments/cancel",
    ] {
        let r = got
            .iter()
            .find(|r| r.target.ends_with(api))
            .unwrap_or_else(|| panic!("the gateway got no {api}"));
        assert!(
            r.verified,
            "{api}: the gateway did not verify the sidecar's signature"
        );
        assert!(r.target.starts_with("/ams/api/"), "{}", r.target);
    }
    assert!(
        sidecar.logs().contains("absolute-form"),
        "the SDK's absolute-form target was seen and logged once"
    );
}
