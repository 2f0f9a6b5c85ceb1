//! The metric set's unit tests (kept beside `metrics.rs` so that file stays the definitions).

use super::*;
use std::sync::Arc;

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

/// A handled outbound request as the adapter records it: what the handler saw, the count and
/// duration, the in-flight gauge.
fn one_request(m: &Metrics, direction: Direction, r: &Report) {
    let _in_flight = m.in_flight(direction);
    m.record_handled(direction, r);
    m.record_finished(direction, r, r.status, Duration::from_millis(3));
}

fn outbound_report() -> Report {
    let mut r = Report::new(Arc::from("default"), "payments/pay");
    r.outcome = Outcome::Verified;
    r.status = 200;
    r.request_bytes = Some(300);
    r.sign_time = Some(Duration::from_micros(800));
    r.verify_time = Some(Duration::from_micros(20));
    r.verification = Some(VerificationResult::Valid);
    r.upstream = Some(crate::report::UpstreamTiming {
        elapsed: Duration::from_millis(2),
        status: 200,
        body_bytes: 200,
    });
    r.gateway_result_status = Some("S");
    r
}

#[test]
fn a_request_makes_one_label_lookup_once_its_handles_are_resolved() {
    let m = Metrics::new().expect("metrics");
    let out = outbound_report();
    let mut refused = Report::new(Arc::from("default"), INBOUND_API_LABEL);
    refused.outcome = Outcome::Rejected;
    refused.status = 401;
    refused.request_bytes = Some(10);
    refused.verification = Some(VerificationResult::WrongClientId);
    refused.error = Some(SidecarError::NotificationUnverified);
    for (direction, r) in [(Direction::Outbound, &out), (Direction::Inbound, &refused)] {
        let first = label_lookups();
        one_request(&m, direction, r);
        let resolving = label_lookups() - first;
        let before = label_lookups();
        one_request(&m, direction, r);
        one_request(&m, direction, r);
        assert_eq!(
            label_lookups() - before,
            2,
            "{direction:?}: one lookup per request (the request counter's open status label); \
             the first request resolved {resolving}"
        );
    }
    // the handles record into the same series the lookups did
    let text = m.render();
    for line in [
        "alipay_sidecar_requests_total{api=\"payments/pay\",direction=\"outbound\",merchant=\"default\",outcome=\"verified\",status=\"200\"} 3",
        "alipay_sidecar_request_duration_seconds_count{api=\"payments/pay\",direction=\"outbound\",merchant=\"default\"} 3",
        "alipay_sidecar_upstream_duration_seconds_count{api=\"payments/pay\",direction=\"outbound\",merchant=\"default\"} 3",
        "alipay_sidecar_gateway_result_status_total{api=\"payments/pay\",merchant=\"default\",result_status=\"S\"} 3",
        "alipay_sidecar_body_size_bytes_count{direction=\"outbound\",kind=\"request\"} 3",
        "alipay_sidecar_body_size_bytes_count{direction=\"outbound\",kind=\"response\"} 3",
        "alipay_sidecar_verify_duration_seconds_count{direction=\"outbound\"} 3",
        "alipay_sidecar_signature_verifications_total{direction=\"outbound\",result=\"valid\"} 3",
        "alipay_sidecar_requests_total{api=\"notify\",direction=\"inbound\",merchant=\"default\",outcome=\"rejected\",status=\"401\"} 3",
        "alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"wrong_client_id\"} 3",
        "alipay_sidecar_errors_total{code=\"SIDECAR_NOTIFICATION_UNVERIFIED\"} 3",
        "alipay_sidecar_in_flight_requests{direction=\"outbound\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    // a handle is resolved on first use: no series appears before it is recorded
    assert!(!text.contains("result_status=\"F\""), "{text}");
    assert!(
        !text.contains("direction=\"inbound\",kind=\"response\""),
        "{text}"
    );
}

#[test]
fn another_merchant_or_api_gets_its_own_series() {
    let m = Metrics::new().expect("metrics");
    let mut r = outbound_report();
    one_request(&m, Direction::Outbound, &r);
    r.merchant = Arc::from("second");
    r.api = OTHER_API_LABEL;
    one_request(&m, Direction::Outbound, &r);
    // a label outside the API list still records, through the lookup
    r.api = "not/a/label";
    one_request(&m, Direction::Outbound, &r);
    let text = m.render();
    for line in [
        "alipay_sidecar_request_duration_seconds_count{api=\"payments/pay\",direction=\"outbound\",merchant=\"default\"} 1",
        "alipay_sidecar_request_duration_seconds_count{api=\"other\",direction=\"outbound\",merchant=\"second\"} 1",
        "alipay_sidecar_request_duration_seconds_count{api=\"not/a/label\",direction=\"outbound\",merchant=\"second\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
}

#[test]
fn status_text_is_decimal() {
    let mut buf = [0; 5];
    for n in [0u16, 7, 200, 499, 65535] {
        assert_eq!(status_text(n, &mut buf), n.to_string());
    }
}
