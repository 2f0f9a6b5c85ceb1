//! Metric definitions: every family the dashboard and alerts rely on is exposed, and API
//! labels come from a fixed list, never from the request.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use alipay_sidecar::metrics::{
    api_label, render, BodyKind, Direction, KeyRole, Metrics, Outcome, ReloadResult,
    VerificationResult, INBOUND_API_LABEL, OTHER_API_LABEL,
};
use proptest::prelude::*;

/// Every metric family the sidecar defines (issue 5); the dashboard and alerts may only use
/// these.
pub const FAMILIES: &[&str] = &[
    "alipay_sidecar_requests_total",
    "alipay_sidecar_request_duration_seconds",
    "alipay_sidecar_upstream_duration_seconds",
    "alipay_sidecar_sign_duration_seconds",
    "alipay_sidecar_verify_duration_seconds",
    "alipay_sidecar_signature_verifications_total",
    "alipay_sidecar_errors_total",
    "alipay_sidecar_body_size_bytes",
    "alipay_sidecar_in_flight_requests",
    "alipay_sidecar_key_reloads_total",
    "alipay_sidecar_key_info",
    "alipay_sidecar_key_last_reload_timestamp_seconds",
    "alipay_sidecar_notification_time_skew_seconds",
    "alipay_sidecar_build_info",
    "alipay_sidecar_gateway_result_status_total",
];

/// An isolated metric set (same definitions as the process-wide one, so tests running in
/// parallel are not disturbed) with one sample recorded in every family, rendered.
pub fn one_of_each() -> String {
    let m = Metrics::new().expect("metric definitions register");
    let api = api_label("/ams/api/v1/payments/pay");
    m.record_request(
        Direction::Outbound,
        "default",
        api,
        Outcome::Verified,
        200,
        Duration::from_millis(12),
    );
    m.observe_upstream(
        Direction::Outbound,
        "default",
        api,
        Duration::from_millis(10),
    );
    m.observe_sign(Duration::from_micros(900));
    m.observe_verify(Direction::Inbound, Duration::from_micros(40));
    m.record_verification(Direction::Inbound, VerificationResult::Invalid("mismatch"));
    m.record_error("SIDECAR_GATEWAY_TIMEOUT");
    m.observe_body_size(Direction::Outbound, BodyKind::Request, 1500);
    let guard = m.in_flight(Direction::Outbound);
    m.record_key_reload(ReloadResult::Failure);
    m.set_loaded_keys(
        "default",
        [
            (KeyRole::MerchantPrivate, "1", "SHA256:00"),
            (KeyRole::AlipayPublic, "1", "SHA256:11"),
        ],
        SystemTime::now(),
    );
    m.observe_notification_skew_ms(-3_000);
    m.record_gateway_result_status("default", api, Some("U"));
    let text = m.render();
    drop(guard);
    text
}

/// The sample names in a text exposition (`_bucket`, `_sum`, `_count` included): what a
/// PromQL expression can select.
pub fn sample_names(exposition: &str) -> BTreeSet<String> {
    crate::support::Metrics::parse(exposition)
        .samples
        .into_iter()
        .map(|s| s.name)
        .collect()
}

#[test]
fn every_family_is_exposed_after_one_sample_each() {
    let text = one_of_each();
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from:\n{text}"
        );
    }
    // And nothing else: a new family must be added to FAMILIES (and thought about for the
    // dashboard) on purpose.
    let typed: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    assert_eq!(typed, FAMILIES.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn names_carry_base_units_and_types_match() {
    let text = one_of_each();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').expect("TYPE line has a kind");
        assert!(name.starts_with("alipay_sidecar_"), "{name}");
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes"),
                "{name}"
            ),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("unexpected metric type {other} for {name}"),
        }
    }
}

#[test]
fn recorded_samples_land_on_the_expected_labels() {
    let text = one_of_each();
    for expected in [
        "alipay_sidecar_requests_total{api=\"payments/pay\",direction=\"outbound\",merchant=\"default\",outcome=\"verified\",status=\"200\"} 1",
        "alipay_sidecar_signature_verifications_total{direction=\"inbound\",result=\"mismatch\"} 1",
        "alipay_sidecar_errors_total{code=\"SIDECAR_GATEWAY_TIMEOUT\"} 1",
        "alipay_sidecar_in_flight_requests{direction=\"outbound\"} 1",
        "alipay_sidecar_key_reloads_total{result=\"failure\"} 1",
        "alipay_sidecar_key_reloads_total{result=\"success\"} 0",
        "alipay_sidecar_gateway_result_status_total{api=\"payments/pay\",merchant=\"default\",result_status=\"U\"} 1",
        "alipay_sidecar_sign_duration_seconds_bucket{le=\"0.001\"} 1",
        "alipay_sidecar_sign_duration_seconds_bucket{le=\"0.0005\"} 0",
        "alipay_sidecar_notification_time_skew_seconds_bucket{le=\"5\"} 1",
        "alipay_sidecar_body_size_bytes_bucket{direction=\"outbound\",kind=\"request\",le=\"4096\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("alipay_sidecar_build_info{")
                && l.contains(&version)
                && l.ends_with(" 1")),
        "{text}"
    );
}

#[test]
fn process_wide_render_exposes_build_info_and_alertable_counters() {
    let text = render();
    assert!(
        text.contains("# TYPE alipay_sidecar_build_info gauge"),
        "{text}"
    );
    // Created at zero so that `increase(...) > 0` alerts see the very first failure.
    assert!(text.contains("alipay_sidecar_key_reloads_total{result=\"failure\"}"));
    assert!(text.contains(
        "alipay_sidecar_signature_verifications_total{direction=\"outbound\",result=\"mismatch\"}"
    ));
}

#[test]
fn api_label_maps_known_live_and_sandbox_paths() {
    for (path, label) in [
        ("/ams/api/v1/payments/pay", "payments/pay"),
        ("/ams/sandbox/api/v1/payments/pay", "payments/pay"),
        (
            "/ams/api/v1/payments/inquiryPayment",
            "payments/inquiryPayment",
        ),
        ("/ams/api/v1/payments/cancel", "payments/cancel"),
        ("/ams/api/v1/payments/refund", "payments/refund"),
        (
            "/ams/sandbox/api/v1/payments/inquiryRefund",
            "payments/inquiryRefund",
        ),
        ("/ams/api/v1/payments/consult", "payments/consult"),
        ("/ams/api/v1/payments/capture", "payments/capture"),
        (
            "/ams/api/v1/payments/createPaymentSession",
            "payments/createPaymentSession",
        ),
        (
            "/ams/api/v1/authorizations/applyToken",
            "authorizations/applyToken",
        ),
        (
            "/ams/sandbox/api/v1/authorizations/revoke",
            "authorizations/revoke",
        ),
        ("/ams/api/v1/subscriptions/create", "subscriptions/create"),
        (
            "/ams/api/v1/subscriptions/inquireSubscription",
            "subscriptions/inquireSubscription",
        ),
        ("/ams/api/v1/risk/payments/decide", "risk/payments/decide"),
        (
            "/ams/api/v1/billing/invoice/create",
            "billing/invoice/create",
        ),
        ("/ams/api/v1/payments/pay?trace=1", "payments/pay"),
        (
            "/ams/api//v1/payments/retrievePaymentSession",
            "payments/retrievePaymentSession",
        ),
        (
            "/ams/v1/aba/funds/createExchange",
            "aba/funds/createExchange",
        ),
    ] {
        assert_eq!(api_label(path), label, "{path}");
    }
}

#[test]
fn api_label_gives_other_for_anything_unknown() {
    for path in [
        "",
        "/",
        "/ams/api/v1/",
        "/ams/api/v1/payments/",
        "/ams/api/v1/payments/pay/",
        "/ams/api/v1/payments/PAY",
        "/ams/api/v1/payments/pay/extra",
        "/ams/api/v2/payments/pay",
        "/ams/v1/payments/pay",
        "ams/api/v1/payments/pay",
        "/alipay/notify",
        "/ams/api/v1/payments/2024-ORDER-123",
        "/ams/api/v1/payments/pay%2F",
    ] {
        assert_eq!(api_label(path), OTHER_API_LABEL, "{path:?}");
    }
    assert_eq!(INBOUND_API_LABEL, "notify");
}

/// Whether `label` points into `input`'s memory, i.e. was sliced out of the request.
fn borrowed_from(label: &str, input: &str) -> bool {
    input.as_bytes().as_ptr_range().contains(&label.as_ptr())
}

proptest! {
    #[test]
    fn api_label_never_returns_request_text(
        prefix in prop::sample::select(vec!["/ams/api/v1/", "/ams/sandbox/api/v1/", "/ams/api//v1/", "/", ""]),
        tail in "[a-zA-Z/?=&%.0-9_-]{0,40}",
    ) {
        let path = format!("{prefix}{tail}");
        let label = api_label(&path);
        prop_assert!(!borrowed_from(label, &path));
        // A label is either "other" or a known API, which maps to itself under the live prefix.
        let live = format!("/ams/api/v1/{}", label);
        prop_assert!(label == OTHER_API_LABEL || api_label(&live) == label);
        if label != OTHER_API_LABEL {
            prop_assert!(path.split('?').next().unwrap_or_default().ends_with(label));
        }
    }
}

#[test]
fn api_label_does_not_borrow_even_for_known_paths() {
    let path = String::from("/ams/api/v1/payments/pay");
    let label = api_label(&path);
    assert_eq!(label, "payments/pay");
    assert!(!borrowed_from(label, &path));
}
