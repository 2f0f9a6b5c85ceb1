//! The metric set's unit tests (kept beside `metrics.rs` so that file stays the definitions).

use super::*;

#[test]
fn isolated_sets_can_coexist() {
    let a = Metrics::new().expect("first set");
    let b = Metrics::new().expect("second set");
    a.record_error("SIDECAR_TEST");
    assert!(a
        .render()
        .contains("alipay_sidecar_errors_total{code=\"SIDECAR_TEST\"} 1"));
    assert!(!b.render().contains("SIDECAR_TEST"));
}

#[test]
fn in_flight_guard_decrements_on_drop() {
    let m = Metrics::new().expect("metrics");
    let line = |n: i64| format!("alipay_sidecar_in_flight_requests{{direction=\"inbound\"}} {n}\n");
    let first = m.in_flight(Direction::Inbound);
    let second = m.in_flight(Direction::Inbound);
    assert!(m.render().contains(&line(2)));
    drop(first);
    assert!(m.render().contains(&line(1)));
    drop(second);
    assert!(m.render().contains(&line(0)));
}

#[test]
fn key_info_is_replaced_not_accumulated() {
    let m = Metrics::new().expect("metrics");
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.set_loaded_keys(
        "default",
        [
            (KeyRole::MerchantPrivate, "1", "SHA256:aa"),
            (KeyRole::AlipayPublic, "1", "SHA256:bb"),
        ],
        at,
    );
    m.set_loaded_keys("other", [(KeyRole::MerchantPrivate, "9", "SHA256:dd")], at);
    m.set_loaded_keys(
        "default",
        [
            (KeyRole::MerchantPrivate, "2", "SHA256:cc"),
            (KeyRole::AlipayPublic, "1", "SHA256:bb"),
        ],
        at + Duration::from_secs(60),
    );
    let text = m.render();
    assert!(!text.contains("SHA256:aa"), "{text}");
    assert!(text.contains(
        "alipay_sidecar_key_info{fingerprint=\"SHA256:cc\",key_version=\"2\",merchant=\"default\",role=\"merchant_private\"} 1"
    ));
    assert!(text.contains(
        "alipay_sidecar_key_info{fingerprint=\"SHA256:bb\",key_version=\"1\",merchant=\"default\",role=\"alipay_public\"} 1"
    ));
    assert!(
        text.contains("alipay_sidecar_key_info{fingerprint=\"SHA256:dd\",key_version=\"9\",merchant=\"other\",role=\"merchant_private\"} 1"),
        "another merchant's keys stay: {text}"
    );
    assert!(text.contains(
        "alipay_sidecar_key_last_reload_timestamp_seconds{merchant=\"default\"} 1700000060\n"
    ));
}

#[test]
fn skew_is_absolute_and_in_seconds() {
    let m = Metrics::new().expect("metrics");
    m.observe_notification_skew_ms(-2_500);
    m.observe_notification_skew_ms(i64::MIN);
    let text = m.render();
    assert!(text.contains("alipay_sidecar_notification_time_skew_seconds_bucket{le=\"1\"} 0"));
    assert!(text.contains("alipay_sidecar_notification_time_skew_seconds_bucket{le=\"5\"} 1"));
    assert!(text.contains("alipay_sidecar_notification_time_skew_seconds_count 2"));
}

#[test]
fn unrecognised_result_status_is_none() {
    let m = Metrics::new().expect("metrics");
    m.record_gateway_result_status("default", "payments/pay", Some("S"));
    m.record_gateway_result_status("default", "payments/pay", Some("<script>"));
    m.record_gateway_result_status("default", "payments/pay", None);
    let text = m.render();
    assert!(text.contains("api=\"payments/pay\",merchant=\"default\",result_status=\"S\"} 1"));
    assert!(text.contains("api=\"payments/pay\",merchant=\"default\",result_status=\"none\"} 2"));
    assert!(!text.contains("<script>"));
}

#[test]
fn failure_reasons_and_reload_results_exist_at_zero() {
    let text = Metrics::new().expect("metrics").render();
    assert!(text.contains(
        "alipay_sidecar_signature_verifications_total{direction=\"outbound\",result=\"mismatch\"} 0"
    ));
    assert!(text.contains(
        "alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"wrong_client_id\"} 0"
    ));
    assert!(text.contains("alipay_sidecar_key_reloads_total{result=\"failure\"} 0"));
    assert!(text.contains("alipay_sidecar_build_info{git_commit="));
}
