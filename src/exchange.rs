//! What the outbound and inbound handlers share, pure: the request target in origin form,
//! copying headers across a hop (the sidecar's own header names are in [`crate::headers`]),
//! and small readers (`result.resultStatus`, a header's text, the clock).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::headers::SIDECAR_PREFIX;
// re-exported for the files that still name it here (delivery, reconcile); the name lives in
// crate::headers

/// Hop-by-hop headers (RFC 9110 §7.6.1) and framing, which each hop sets for itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The origin-form target (path and query) of a request target: itself when it starts with
/// `/`, or the path and query of an absolute-form `http(s)://host[:port]/path?q` (what the
/// Python SDK writes, RFC 9112 §3.2.2). The authority never chooses the upstream; it is
/// logged once, at info, so an operator sees which clients use the form.
pub fn origin_form(raw: &str) -> Option<String> {
    if raw.starts_with('/') {
        return Some(raw.to_string());
    }
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let uri: http::Uri = raw.parse().ok()?;
    let authority = uri.authority()?;
    let target = uri.path_and_query()?.as_str();
    if !target.starts_with('/') {
        return None;
    }
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            authority = %echo(authority.as_str()),
            "a client sends absolute-form request targets (e.g. the Python SDK); the path and \
             query are signed and sent, the authority is ignored (logged once)"
        );
    }
    Some(target.to_string())
}

/// Copies request headers to the next hop: drops hop-by-hop and framing headers, those the
/// `Connection` header names, `Host`, `Expect`, any `X-Alipay-Sidecar-*` (so they cannot be
/// forged) and the names in `also_drop`; keeps the received name case where pingora kept it.
pub fn forward_request_headers(
    from: &RequestHeader,
    to: &mut RequestHeader,
    also_drop: &[&str],
) -> pingora::Result<()> {
    let cased = from.case_header_iter().map(|(n, v)| (n.as_slice(), v));
    for (name, value) in end_to_end_headers(cased, &from.headers, |h| {
        h == "host" || h == "expect" || also_drop.contains(&h)
    }) {
        to.append_header(name, value)?;
    }
    Ok(())
}

/// An upstream answer's status and headers for the client, minus hop-by-hop, framing and any
/// `X-Alipay-Sidecar-*` the upstream sent.
pub fn relayed_response_header(from: &ResponseHeader) -> pingora::Result<ResponseHeader> {
    let mut out = ResponseHeader::build(from.status, Some(from.headers.len() + 3))?;
    let cased = from.case_header_iter().map(|(n, v)| (n.as_slice(), v));
    for (name, value) in end_to_end_headers(cased, &from.headers, |_| false) {
        out.append_header(name, value)?;
    }
    Ok(out)
}

/// The headers that may cross a hop: not hop-by-hop or framing, not named by `Connection`,
/// not the sidecar's own markers, and not `drop(lowercase name)`.
fn end_to_end_headers<'a>(
    case: impl Iterator<Item = (&'a [u8], &'a http::HeaderValue)>,
    map: &http::HeaderMap,
    drop: impl Fn(&str) -> bool,
) -> Vec<(Bytes, http::HeaderValue)> {
    let named_by_connection = connection_tokens(map);
    cased_headers(case, map)
        .into_iter()
        .filter(|(name, _)| {
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            !(HOP_BY_HOP.contains(&lower.as_str())
                || lower.starts_with(SIDECAR_PREFIX)
                || named_by_connection.contains(&lower)
                || drop(&lower))
        })
        .collect()
}

/// Headers with their names as received (case kept) when pingora recorded the case, else
/// with lowercase names.
fn cased_headers<'a>(
    case: impl Iterator<Item = (&'a [u8], &'a http::HeaderValue)>,
    map: &http::HeaderMap,
) -> Vec<(Bytes, http::HeaderValue)> {
    let cased: Vec<(Bytes, http::HeaderValue)> = case
        .map(|(n, v)| (Bytes::copy_from_slice(n), v.clone()))
        .collect();
    if cased.len() == map.len() {
        return cased;
    }
    map.iter()
        .map(|(n, v)| (Bytes::copy_from_slice(n.as_str().as_bytes()), v.clone()))
        .collect()
}

/// Header names listed in `Connection` (hop-by-hop by declaration, RFC 9110 §7.6.1).
fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// A header's value by (case-insensitive) name, when it is text.
pub fn header_text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// `host` or `host:port` (bracketed IPv6), for the `Host` header of the next hop.
pub fn authority(host: &str, port: u16, default_port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// `result.resultStatus` of a JSON body, if any (read-only: the body is never re-serialised).
pub fn result_status(body: &[u8]) -> Option<String> {
    result_fields(body).status
}

/// `result.resultCode` and `result.resultStatus` of a JSON body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResultFields {
    /// `result.resultCode` when it is a string.
    pub code: Option<String>,
    /// `result.resultStatus` when it is a string.
    pub status: Option<String>,
}

/// Both fields with what parsing the body into a `serde_json::Value` and reading them gave
/// (a body that is not valid JSON, a `result` that is not an object: both `None`; a field
/// that is not a string: `None`; a repeated key: the last one), without building the
/// `Value`: that tree (every field of the answer allocated) was ≈ 15 % of an outbound
/// request's instructions besides RSA, built three times per request (issue 23). Each level
/// is read as a map of borrowed raw values, so nothing but the two strings is copied.
pub fn result_fields(body: &[u8]) -> ResultFields {
    use serde_json::value::RawValue;
    use std::borrow::Cow;
    use std::collections::BTreeMap;
    type Object<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;
    let result = serde_json::from_slice::<Object<'_>>(body)
        .ok()
        .and_then(|top| serde_json::from_str::<Object<'_>>(top.get("result")?.get()).ok());
    let field = |name: &str| {
        let raw = result.as_ref()?.get(name)?;
        serde_json::from_str::<String>(raw.get()).ok()
    };
    ResultFields {
        code: field("resultCode"),
        status: field("resultStatus"),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use crate::protocol::echo;

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass reader gives what reading a parsed `serde_json::Value` gave.
    #[test]
    fn result_fields_match_reading_a_parsed_value() {
        let by_value = |body: &[u8]| {
            let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            let field = |name: &str| {
                v.as_ref()?
                    .get("result")?
                    .get(name)?
                    .as_str()
                    .map(str::to_string)
            };
            ResultFields {
                code: field("resultCode"),
                status: field("resultStatus"),
            }
        };
        for body in [
            r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"ok"},"paymentId":"1"}"#,
            r#"{"paymentId":"1","result":{"resultStatus":"U","resultCode":"PROCESS\u0041"}}"#,
            r#"{"result":{"resultStatus":1,"resultCode":"X"}}"#,
            r#"{"result":{"resultStatus":{"a":[1,2]},"resultCode":["X"]}}"#,
            r#"{"result":"S"}"#,
            r#"{"result":[{"resultStatus":"S"}]}"#,
            r#"{"result":null}"#,
            r#"{"result":{"resultStatus":"S"},"result":{"resultStatus":"F"}}"#,
            r#"{"result":{"resultStatus":"S","resultStatus":"F"}}"#,
            r#"{"result":{"resultStatus":"S"}} trailing"#,
            r#"{"result":{"resultStatus":"S"}"#,
            r#"[1,2,3]"#,
            r#""text""#,
            r#"{"a":{"b":{"result":{"resultStatus":"S"}}}}"#,
            r#"{"Result":{"resultStatus":"S"}}"#,
            "",
            "not json",
        ] {
            assert_eq!(
                result_fields(body.as_bytes()),
                by_value(body.as_bytes()),
                "{body}"
            );
        }
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(
            origin_form("/ams/api/x?y=1").as_deref(),
            Some("/ams/api/x?y=1")
        );
        assert_eq!(
            origin_form("https://127.0.0.1/ams/api/v1/payments/pay").as_deref(),
            Some("/ams/api/v1/payments/pay")
        );
        assert_eq!(
            origin_form("HTTP://evil.example:8443/ams/api/a?q=%2F").as_deref(),
            Some("/ams/api/a?q=%2F")
        );
        assert_eq!(origin_form("*"), None);
        assert_eq!(origin_form("ftp://x/ams"), None);
        assert_eq!(origin_form("127.0.0.1:443"), None);
    }

    #[test]
    fn connection_tokens_are_hop_by_hop() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close, X-Trace"),
        );
        assert_eq!(
            connection_tokens(&h),
            vec!["close".to_string(), "x-trace".to_string()]
        );
    }
}
