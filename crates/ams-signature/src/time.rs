//! `Request-Time` / `response-time` forms (spec §1.2).
//!
//! The signature treats the time as opaque text; these helpers exist for the sidecar's own
//! policies (emitting a time, and the optional notification freshness window). Pure: the
//! caller supplies "now".

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses every form the SDKs and Alipay send, to epoch milliseconds: epoch millis
/// (`1714538096000`), ISO-8601 with or without fraction, with `Z`, `+08:00` or `+0800`.
/// `None` when the value is none of these.
pub fn parse_request_time(value: &str) -> Option<i64> {
    let v = value.trim();
    if !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_millis());
    }
    // PHP's DATE_ISO8601: offset without colon, e.g. 2024-05-01T12:34:56+0800.
    DateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f%z")
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Epoch milliseconds as decimal text: what the Java and Go SDKs (the most recently
/// maintained ones) send as `Request-Time`.
pub fn format_epoch_millis(ms: i64) -> String {
    ms.to_string()
}

/// ISO-8601 in UTC with whole seconds and `+00:00`, as the Python SDK sends it.
pub fn format_iso8601(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_spec_forms() {
        let base = 1_714_538_096_000; // 2024-05-01T04:34:56Z
        assert_eq!(parse_request_time("1714538096000"), Some(base));
        assert_eq!(parse_request_time("2024-05-01T12:34:56+08:00"), Some(base));
        assert_eq!(parse_request_time("2024-05-01T12:34:56+0800"), Some(base));
        assert_eq!(parse_request_time("2024-05-01T04:34:56Z"), Some(base));
        assert_eq!(
            parse_request_time("2024-05-01T04:34:56.1234567Z"),
            Some(base + 123)
        );
        assert_eq!(
            parse_request_time("2024-05-01T10:04:56.253+05:30"),
            Some(base + 253)
        );
        assert_eq!(parse_request_time("2024-05-01T04:34:56+00:00"), Some(base));
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "12:00",
            "2024-13-01T00:00:00Z",
            "99999999999999999999",
        ] {
            assert_eq!(parse_request_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_epoch_millis(1_714_538_096_000), "1714538096000");
        assert_eq!(
            format_iso8601(1_714_538_096_999),
            "2024-05-01T04:34:56+00:00"
        );
    }
}
