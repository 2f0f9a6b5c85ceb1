//! Errors the sidecar itself produces, in Alipay's result envelope.
//!
//! Apps already handle `{"result":{"resultStatus", "resultCode", "resultMessage"}}`; using the
//! same shape means their existing retry/inquiry logic works unchanged (spec §9):
//! `U` = outcome unknown, retry with the same request id or inquire; `F` = definite refusal,
//! fix the request or the configuration. Every code is listed in docs/outbound.md.

use bytes::Bytes;

/// `resultStatus` of a sidecar error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Outcome unknown: the request may or may not have reached Alipay.
    U,
    /// Refused: retrying the identical request will not help.
    F,
}

/// Every error the sidecar answers with on its own behalf. A closed set: metrics label
/// `alipay_sidecar_errors_total{code}` with these codes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarError {
    /// Only POST is forwarded (all AMS APIs are POST).
    MethodNotAllowed,
    /// The path is outside `allowed_path_prefixes`, or not an origin-form path.
    PathNotAllowed,
    /// The body exceeds `max_body_bytes`.
    BodyTooLarge,
    /// The request could not be read (malformed framing, client went away).
    BadRequest,
    /// Connecting to the gateway failed (DNS, refused, reset before sending).
    GatewayUnreachable,
    /// No complete answer from the gateway within `request_timeout`.
    GatewayTimeout,
    /// The gateway's TLS certificate is not trusted (or TLS failed).
    GatewayTlsError,
    /// The gateway's answer broke off or was not valid HTTP.
    GatewayProtocolError,
    /// The gateway's answer exceeds the response size limit.
    GatewayResponseTooLarge,
    /// A 200 response whose signature does not verify, or with only one of the two headers.
    ResponseSignatureInvalid,
    /// A 200 response without a signature that is not an `F` rejection.
    ResponseUnsigned,
    /// Signing failed (the merchant key could not sign).
    SigningFailed,
    /// Inbound: the notification's signature or client id did not verify.
    NotificationUnverified,
    /// Inbound: the notification's Request-Time is outside `max_request_time_skew`.
    NotificationStale,
    /// Inbound: the app is down, timed out or answered 5xx; Alipay should re-send.
    AppUnavailable,
    /// The request head exceeds `[server] max_header_bytes`; the connection is closed.
    HeadersTooLarge,
    /// The request head or body did not arrive within `[server] header_read_timeout` /
    /// `body_read_timeout`; nothing was forwarded.
    RequestTimeout,
    /// Outbound: the request carries `Origin` or `Sec-Fetch-*`, so a browser sent it (a web
    /// page must never drive the signer).
    BrowserRequestRefused,
    /// Outbound: the `Host` header names neither a loopback address nor an `allowed_hosts`
    /// entry (DNS rebinding).
    HostNotAllowed,
    /// Outbound, several merchants on a shared listener: the request names no merchant in
    /// `X-Alipay-Sidecar-Merchant`, or one that is not configured.
    MerchantUnknown,
    /// Inbound store-and-forward (`acknowledge = "after-store"`): the notification could not
    /// be committed to the store, so it is not acknowledged; Alipay re-sends it.
    StoreUnavailable,
    /// Inbound: the notification's body did not fit `[inbound] unverified_body_budget_bytes`
    /// (too many bodies being read at once); nothing was forwarded, Alipay re-sends it.
    InboundBusy,
    /// Outbound: a signed answer whose `response-time` is outside
    /// `[outbound] max_response_time_skew` (a replayed or mis-clocked answer); the request may
    /// have reached Alipay, so the outcome is unknown: inquire.
    ResponseStale,
    /// Outbound: the merchant's key store (a PKCS#11 token) did not sign: it failed, timed
    /// out (`[keys] sign_timeout`), every sign slot was busy, or its circuit breaker is open.
    /// Nothing was sent to Alipay; retry later with the same request id.
    SignerUnavailable,
    /// Outbound, `product/uploadImage`: the body is not the SDKs' multipart (no
    /// `multipart/form-data` boundary, broken framing, a missing, repeated, unknown or
    /// oversized part, a `body` part that is not `{"productId","fileSha256"}` JSON); nothing
    /// was signed or sent.
    UploadMalformed,
    /// Outbound, `product/uploadImage`: `fileSha256` in the `body` part is not the SHA-256 of
    /// the file part; nothing was signed or sent.
    UploadDigestMismatch,
    /// Outbound, an unsigned session route (`meter/uploadEvent`): not exactly one non-empty
    /// `X-Session-Id`; nothing was sent.
    SessionIdMissing,
}

impl SidecarError {
    /// Every code, for documentation checks and pre-created metric series.
    pub const ALL: [SidecarError; 27] = [
        SidecarError::MethodNotAllowed,
        SidecarError::PathNotAllowed,
        SidecarError::BodyTooLarge,
        SidecarError::BadRequest,
        SidecarError::GatewayUnreachable,
        SidecarError::GatewayTimeout,
        SidecarError::GatewayTlsError,
        SidecarError::GatewayProtocolError,
        SidecarError::GatewayResponseTooLarge,
        SidecarError::ResponseSignatureInvalid,
        SidecarError::ResponseUnsigned,
        SidecarError::SigningFailed,
        SidecarError::NotificationUnverified,
        SidecarError::NotificationStale,
        SidecarError::AppUnavailable,
        SidecarError::HeadersTooLarge,
        SidecarError::RequestTimeout,
        SidecarError::BrowserRequestRefused,
        SidecarError::HostNotAllowed,
        SidecarError::MerchantUnknown,
        SidecarError::StoreUnavailable,
        SidecarError::InboundBusy,
        SidecarError::ResponseStale,
        SidecarError::SignerUnavailable,
        SidecarError::UploadMalformed,
        SidecarError::UploadDigestMismatch,
        SidecarError::SessionIdMissing,
    ];

    /// The `resultCode`, also the metric label.
    pub fn code(self) -> &'static str {
        match self {
            SidecarError::MethodNotAllowed => "SIDECAR_METHOD_NOT_ALLOWED",
            SidecarError::PathNotAllowed => "SIDECAR_PATH_NOT_ALLOWED",
            SidecarError::BodyTooLarge => "SIDECAR_BODY_TOO_LARGE",
            SidecarError::BadRequest => "SIDECAR_BAD_REQUEST",
            SidecarError::GatewayUnreachable => "SIDECAR_GATEWAY_UNREACHABLE",
            SidecarError::GatewayTimeout => "SIDECAR_GATEWAY_TIMEOUT",
            SidecarError::GatewayTlsError => "SIDECAR_GATEWAY_TLS_ERROR",
            SidecarError::GatewayProtocolError => "SIDECAR_GATEWAY_PROTOCOL_ERROR",
            SidecarError::GatewayResponseTooLarge => "SIDECAR_GATEWAY_RESPONSE_TOO_LARGE",
            SidecarError::ResponseSignatureInvalid => "SIDECAR_RESPONSE_SIGNATURE_INVALID",
            SidecarError::ResponseUnsigned => "SIDECAR_RESPONSE_UNSIGNED",
            SidecarError::SigningFailed => "SIDECAR_SIGNING_FAILED",
            SidecarError::NotificationUnverified => "SIDECAR_NOTIFICATION_UNVERIFIED",
            SidecarError::NotificationStale => "SIDECAR_NOTIFICATION_STALE",
            SidecarError::AppUnavailable => "SIDECAR_APP_UNAVAILABLE",
            SidecarError::HeadersTooLarge => "SIDECAR_HEADERS_TOO_LARGE",
            SidecarError::RequestTimeout => "SIDECAR_REQUEST_TIMEOUT",
            SidecarError::BrowserRequestRefused => "SIDECAR_BROWSER_REQUEST_REFUSED",
            SidecarError::HostNotAllowed => "SIDECAR_HOST_NOT_ALLOWED",
            SidecarError::MerchantUnknown => "SIDECAR_MERCHANT_UNKNOWN",
            SidecarError::StoreUnavailable => "SIDECAR_STORE_UNAVAILABLE",
            SidecarError::InboundBusy => "SIDECAR_INBOUND_BUSY",
            SidecarError::ResponseStale => "SIDECAR_RESPONSE_STALE",
            SidecarError::SignerUnavailable => "SIDECAR_SIGNER_UNAVAILABLE",
            SidecarError::UploadMalformed => "SIDECAR_UPLOAD_MALFORMED",
            SidecarError::UploadDigestMismatch => "SIDECAR_UPLOAD_DIGEST_MISMATCH",
            SidecarError::SessionIdMissing => "SIDECAR_SESSION_ID_MISSING",
        }
    }

    /// `U` where the request may have reached Alipay (or a retry can succeed), `F` otherwise.
    pub fn status(self) -> Status {
        match self {
            SidecarError::GatewayUnreachable
            | SidecarError::GatewayTimeout
            | SidecarError::GatewayProtocolError
            | SidecarError::GatewayResponseTooLarge
            | SidecarError::AppUnavailable
            | SidecarError::StoreUnavailable
            | SidecarError::InboundBusy
            | SidecarError::ResponseStale
            | SidecarError::SignerUnavailable => Status::U,
            _ => Status::F,
        }
    }

    /// The HTTP status the sidecar answers with.
    pub fn http_status(self) -> u16 {
        match self {
            SidecarError::MethodNotAllowed => 405,
            SidecarError::PathNotAllowed
            | SidecarError::BrowserRequestRefused
            | SidecarError::HostNotAllowed => 403,
            SidecarError::HeadersTooLarge => 431,
            SidecarError::RequestTimeout => 408,
            SidecarError::BodyTooLarge => 413,
            SidecarError::BadRequest
            | SidecarError::MerchantUnknown
            | SidecarError::UploadMalformed
            | SidecarError::UploadDigestMismatch
            | SidecarError::SessionIdMissing => 400,
            SidecarError::GatewayTimeout => 504,
            SidecarError::NotificationUnverified | SidecarError::NotificationStale => 401,
            SidecarError::AppUnavailable
            | SidecarError::StoreUnavailable
            | SidecarError::InboundBusy
            | SidecarError::SignerUnavailable => 503,
            SidecarError::SigningFailed => 500,
            _ => 502,
        }
    }

    /// The JSON body: Alipay's envelope with this code and a message saying what to do.
    pub fn body(self, message: &str) -> Bytes {
        let status = match self.status() {
            Status::U => "U",
            Status::F => "F",
        };
        let v = serde_json::json!({"result": {"resultStatus": status, "resultCode": self.code(), "resultMessage": message}});
        Bytes::from(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_in_docs_outbound() {
        let readme = include_str!("../docs/outbound.md");
        for e in SidecarError::ALL {
            let row = format!("| `{}` | {} |", e.code(), e.http_status());
            assert!(readme.contains(&row), "docs/outbound.md has no row {row}");
        }
    }

    #[test]
    fn body_is_alipays_envelope() {
        let b = SidecarError::GatewayTimeout.body("no answer in 15s");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["result"]["resultStatus"], "U");
        assert_eq!(v["result"]["resultCode"], "SIDECAR_GATEWAY_TIMEOUT");
        assert_eq!(v["result"]["resultMessage"], "no answer in 15s");
        assert_eq!(SidecarError::PathNotAllowed.status(), Status::F);
    }
}
