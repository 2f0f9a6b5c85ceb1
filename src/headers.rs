//! The header names the sidecar defines, in one place: every `X-Alipay-Sidecar-*` header it
//! sends to the app or the client, and the internal ones of a stored delivery.
//!
//! Why one file: these spellings are a contract (apps, SDK wrappers and dashboards read them),
//! so a newcomer finds them all by the file's name, and no two files can spell one differently.
//! Every incoming `X-Alipay-Sidecar-*` header is dropped before forwarding
//! ([`SIDECAR_PREFIX`]), so none of them can be forged by a peer.

/// What was checked about the message handed on (`true`, `false`, `disabled`, …: see
/// [`crate::handler::Marker`]).
pub const VERIFIED_HEADER: &str = "X-Alipay-Sidecar-Verified";

/// The Alipay key version that verified the message.
pub const KEY_VERSION_HEADER: &str = "X-Alipay-Sidecar-Key-Version";

/// The sidecar's error code, also in the JSON body, for clients that only read headers.
pub const ERROR_HEADER: &str = "X-Alipay-Sidecar-Error";

/// Names the merchant of a request on a shared outbound listener with several merchants.
/// Stripped before forwarding (like every `X-Alipay-Sidecar-*` header), ignored where the
/// listener already decides the merchant.
pub const MERCHANT_HEADER: &str = "X-Alipay-Sidecar-Merchant";

/// The event id given to the app with a notification, stable across Alipay's re-sends.
pub const EVENT_ID_HEADER: &str = "X-Alipay-Sidecar-Event-Id";

/// Marks a verified PAYMENT_RESULT that contradicts the outcome the sidecar recorded and
/// delivered for that payment (issue 18 M2), e.g. `recorded=cancelled`: Alipay's late S after
/// the sidecar cancelled the payment at its close time. The notification is still delivered
/// (it is Alipay's word); the app must inquire (a cancel of a paid payment refunds it).
pub const CONFLICT_HEADER: &str = "X-Alipay-Sidecar-Conflict";

/// Marks a payment result the sidecar learnt itself (`inquiryPayment`: the reconciler's
/// inquiry after a missed notification), delivered to the app like a notification.
pub const SOURCE_HEADER: &str = "X-Alipay-Sidecar-Source";

/// Internal header of a stored delivery: the app path to deliver to instead of the notify
/// path (set by the reconciler from `[reconcile] deliver_path`). Consumed by the delivery
/// worker, never sent.
pub const DELIVER_PATH_HEADER: &str = "x-alipay-sidecar-deliver-path";

/// Internal header of a stored delivery: the query string of the notify URL Alipay posted to
/// (the key and the `path` column hold the path alone). Consumed by the delivery worker,
/// never sent.
pub const DELIVER_QUERY_HEADER: &str = "x-alipay-sidecar-deliver-query";

/// Prefix of the sidecar's own headers (lower case); incoming ones are dropped so none can be
/// forged.
pub const SIDECAR_PREFIX: &str = "x-alipay-sidecar-";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name starts with the prefix that the forwarding strips, so none can be forged.
    #[test]
    fn every_name_is_under_the_stripped_prefix() {
        for name in [
            VERIFIED_HEADER,
            KEY_VERSION_HEADER,
            ERROR_HEADER,
            MERCHANT_HEADER,
            EVENT_ID_HEADER,
            CONFLICT_HEADER,
            SOURCE_HEADER,
            DELIVER_PATH_HEADER,
            DELIVER_QUERY_HEADER,
        ] {
            assert!(
                name.to_ascii_lowercase().starts_with(SIDECAR_PREFIX),
                "{name}"
            );
        }
    }
}
