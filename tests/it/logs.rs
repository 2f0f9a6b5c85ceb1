//! What the logs never show, at any level and format: key material, Signature values.

use crate::inbound::fresh;
use std::time::Duration;

use crate::support::{assert_verified_ok, start, DEADLINE, FLAT_KEYS, JSON_LOGS};
use crate::support::{key, request, rt, App, Behaviour, Rig, RigConfig};

// ---------------------------------------------------------------- 7. logs without secrets

/// `n` windows of `width` characters spread over `text`.
fn windows(text: &str, width: usize, n: usize) -> Vec<&str> {
    assert!(text.len() > width && text.is_ascii());
    (0..n)
        .map(|i| (text.len() - width) * i / (n - 1))
        .map(|at| &text[at..at + width])
        .collect()
}

#[test]
fn debug_logs_never_contain_key_material_or_signatures() {
    let app = App::start(Behaviour::Ack);
    let tail = format!(
        "[log]\nformat = \"json\"\nlevel = \"debug\"\n{}",
        crate::support::inbound_section(&app.url())
    );
    let rig = start(
        FLAT_KEYS,
        &tail,
        |g| g.notify_backoff = vec![Duration::ZERO],
        |_| {},
    );

    assert_verified_ok(&rig.pay("pay_logs_1", ""), "pay", &rig.sidecar);
    let tampered = rig.pay("pay_logs_2", r#","mockFault":"tampered""#);
    assert_eq!(tampered.status, 502, "a tampered response is refused");
    let in_addr = rig.sidecar.addr("inbound");
    let notify_url = format!(r#","paymentNotifyUrl":"http://{in_addr}/alipay/notify""#);
    assert_verified_ok(
        &rig.pay("pay_logs_3", &notify_url),
        "pay with a notification",
        &rig.sidecar,
    );
    rt().block_on(rig.gw.notifications_settled());
    let attempts = rig.gw.notifications();
    assert!(
        attempts.iter().any(|a| a.acknowledged),
        "the notification went through the inbound listener: {attempts:?}\n{}",
        rig.sidecar.logs()
    );
    // wait for the request lines (written after the answers)
    rig.eventually("request log lines of both directions", || {
        let logs = rig.sidecar.logs();
        (logs.matches("\"direction\":\"outbound\"").count() >= 3
            && logs.contains("\"direction\":\"inbound\""))
        .then_some(())
    });

    let logs = rig.sidecar.logs();
    let json_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        json_lines
            .iter()
            .any(|v| v["direction"] == "outbound" && v["api"] == "payments/pay"),
        "{logs}"
    );
    assert!(
        json_lines.iter().any(|v| v["level"] == "DEBUG"),
        "debug logging is on: {logs}"
    );

    // no private key material, in any form
    for form in ["private_pkcs8_der_b64", "private_pkcs1_der_b64"] {
        let b64 = key("merchant", form);
        for w in windows(&b64, 40, 8) {
            assert!(!logs.contains(w), "{form} window {w:?} is in the logs");
        }
    }
    for form in ["private_pkcs8_pem", "private_pkcs1_pem"] {
        for line in key("merchant", form)
            .lines()
            .filter(|l| l.len() >= 40 && !l.starts_with("-----"))
        {
            assert!(!logs.contains(line), "a {form} line is in the logs");
        }
    }
    assert!(
        !logs.contains("PRIVATE KEY-----"),
        "a PEM private key is in the logs"
    );

    // no Signature header value, neither as sent nor decoded
    let received = rig.gw.received();
    assert!(received.len() >= 3);
    for req in &received {
        let header = req.header("signature").expect("signed");
        let value = header.split_once("signature=").expect("signature= part").1;
        assert!(value.len() > 60, "{header}");
        assert!(
            !logs.contains(value),
            "a full Signature value is in the logs"
        );
        assert!(
            !logs.contains(&value[..60]),
            "the start of a Signature value is in the logs"
        );
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .unwrap()
            .to_string();
        assert!(
            !logs.contains(&decoded[..60]),
            "a decoded Signature value is in the logs"
        );
    }
}

#[test]
fn signature_values_never_reach_the_logs_even_at_trace() {
    let app = App::start(Behaviour::Ack);
    let tail = crate::support::inbound_section(&app.url());
    let rig = Rig::start(
        RigConfig {
            tail: &tail,
            env: &[("RUST_LOG", "trace")],
            ..Default::default()
        },
        |_| {},
        |_| {},
    );
    let (gw, s) = (&rig.gw, &rig.sidecar);
    let r = rig.pay("trace_logs", "");
    assert_eq!(r.status, 200);
    let n = fresh("trace_logs");
    let r = request(
        s.addr("inbound"),
        "POST",
        &n.uri,
        &n.headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect::<Vec<_>>(),
        &n.body,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let logs = s.logs();
    assert!(
        logs.len() > 10_000,
        "trace logging is on: {} bytes",
        logs.len()
    );
    // the signature values that crossed the sidecar: the gateway's answer, the notification
    let mut values: Vec<String> = gw
        .received()
        .iter()
        .flat_map(|r| r.headers.iter())
        .filter(|(k, _)| k.eq_ignore_ascii_case("signature"))
        .map(|(_, v)| v.clone())
        .collect();
    values.extend(
        n.headers
            .iter()
            .filter(|(k, _)| k == "Signature")
            .map(|(_, v)| v.clone()),
    );
    assert!(!values.is_empty());
    for v in values {
        let sig = v.rsplit("signature=").next().unwrap();
        let probe = &sig[..40.min(sig.len())];
        assert!(
            !logs.contains(probe),
            "a Signature value is in the trace log"
        );
    }
    assert!(
        logs.contains("signature=<redacted>"),
        "pingora's header dumps are redacted"
    );
}

/// The log lines leave the request path through a bounded queue (issue 23): they still arrive
/// while the sidecar runs, the dropped-lines counter is exported, and the lines written last
/// (after the server stopped) are flushed before the process exits.
#[test]
fn log_lines_arrive_through_the_queue_and_are_flushed_at_exit() {
    let mut rig = start(FLAT_KEYS, JSON_LOGS, |_| {}, |_| {});
    assert_verified_ok(&rig.pay("pay_log_queue_1", ""), "pay", &rig.sidecar);
    rig.eventually("the request's log line, while the sidecar runs", || {
        rig.sidecar
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["direction"] == "outbound" && v["api"] == "payments/pay")
            .then_some(())
    });
    let text = String::from_utf8(rig.sidecar.admin_get("/metrics").body).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "alipay_sidecar_log_lines_dropped_total 0"),
        "the dropped-lines counter is exported, at zero: {text}"
    );

    rig.sidecar.signal("TERM");
    let code = rig.sidecar.wait_exit(DEADLINE);
    assert_eq!(code, Some(0), "graceful exit\n{}", rig.sidecar.logs());
    let logs = rig.sidecar.logs();
    assert!(
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["message"] == "stopped"),
        "the last line (after the server stopped) was flushed before exit: {logs}"
    );
}
