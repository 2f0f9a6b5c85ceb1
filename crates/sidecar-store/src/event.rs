//! The notification de-duplication key and the event id derived from it (pure, no I/O).
//!
//! Alipay notifications carry no notification id; the Antom docs only say "handle
//! idempotency". The key below is what identifies one *event* across Alipay's re-sends (up to
//! 8 within 24 h, each re-signed with a new `Request-Time`): who (client id), where (the notify
//! path Alipay posted to), what (`notifyType`, the business id) and the outcome (`result`).

use sha2::{Digest, Sha256};

/// Version tag hashed in front of the canonical key, so that a future change of the key's
/// definition yields new ids instead of silently colliding with old ones.
const EVENT_ID_DOMAIN: &[u8] = b"alipay-sidecar/event/v1\n";

/// Which field of the body identifies the business object the notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusinessIdKind {
    /// `eventId` of the body, when a notification carries one (issue 22): Antom's event log
    /// says the event id is "shared by the webhook event and query result", so when it is in
    /// the body it identifies the event, whatever else the body says.
    EventId,
    /// `paymentRequestId` (PAYMENT_RESULT, PAYMENT_PENDING, ...).
    PaymentRequestId,
    /// `refundRequestId` (REFUND_RESULT).
    RefundRequestId,
    /// `captureRequestId` (CAPTURE_RESULT).
    CaptureRequestId,
    /// `disputeId` and `notifyTime` (dispute types: one dispute has several notifications).
    DisputeIdAndNotifyTime,
    /// None of the above in the body (AUTHCODE_CREATED, TOKEN_CANCELED, unknown types, a body
    /// that is not a JSON object): the SHA-256 of the body bytes. A byte-identical re-send is
    /// still recognised; at worst a re-send with different bytes is delivered twice, never lost.
    BodySha256,
}

impl BusinessIdKind {
    /// The name stored in the journal and shown by `notifications list`.
    pub fn as_str(self) -> &'static str {
        match self {
            BusinessIdKind::EventId => "eventId",
            BusinessIdKind::PaymentRequestId => "paymentRequestId",
            BusinessIdKind::RefundRequestId => "refundRequestId",
            BusinessIdKind::CaptureRequestId => "captureRequestId",
            BusinessIdKind::DisputeIdAndNotifyTime => "disputeId+notifyTime",
            BusinessIdKind::BodySha256 => "bodySha256",
        }
    }

    /// Inverse of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "eventId" => BusinessIdKind::EventId,
            "paymentRequestId" => BusinessIdKind::PaymentRequestId,
            "refundRequestId" => BusinessIdKind::RefundRequestId,
            "captureRequestId" => BusinessIdKind::CaptureRequestId,
            "disputeId+notifyTime" => BusinessIdKind::DisputeIdAndNotifyTime,
            "bodySha256" => BusinessIdKind::BodySha256,
            _ => return None,
        })
    }
}

/// The de-duplication key of one notification event.
///
/// Two notifications are the same event exactly when their keys are equal. The key is built
/// from fields Alipay keeps across re-sends; `Request-Time` and the signature (headers) are not
/// part of it, so a re-signed re-send is the same event. The result is part of it, so a
/// different result for the same payment (say `U` then `S`) is a different event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    /// `client-id` of the notification (selects the merchant).
    pub client_id: String,
    /// The path Alipay posted to on the sidecar (before any `path_map`). The reconciler uses
    /// the path of the pay request's `paymentNotifyUrl`, which is the same path.
    pub path: String,
    /// `notifyType`, empty when absent.
    pub notify_type: String,
    /// Which field [`business_id`](Self::business_id) comes from.
    pub business_id_kind: BusinessIdKind,
    /// The business id (for disputes `disputeId` and `notifyTime` joined by a space; for
    /// [`BusinessIdKind::BodySha256`] the lowercase hex digest).
    pub business_id: String,
    /// `result.resultStatus`, empty when absent.
    pub result_status: String,
    /// `result.resultCode`, empty when absent.
    pub result_code: String,
}

impl EventKey {
    /// Builds the key of a (verified) notification from its client id, the path it was posted
    /// to and its body bytes. The body is parsed only to read fields; it is never re-serialised.
    /// Never fails: a body that is not a JSON object is keyed by its SHA-256.
    pub fn from_notification(client_id: &str, path: &str, body: &[u8]) -> EventKey {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let obj = json.as_ref().and_then(|v| v.as_object());
        let field = |name: &str| -> Option<&str> {
            obj.and_then(|o| o.get(name))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let notify_type = field("notifyType").unwrap_or("").to_owned();
        let result = obj
            .and_then(|o| o.get("result"))
            .and_then(|r| r.as_object());
        let result_field = |name: &str| -> String {
            result
                .and_then(|r| r.get(name))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };

        let dispute = || {
            let id = field("disputeId")?;
            let time = field("notifyTime").unwrap_or("");
            Some(format!("{id} {time}"))
        };
        let by_kind = |kind: BusinessIdKind| -> Option<String> {
            match kind {
                BusinessIdKind::EventId => field("eventId").map(str::to_owned),
                BusinessIdKind::PaymentRequestId => field("paymentRequestId").map(str::to_owned),
                BusinessIdKind::RefundRequestId => field("refundRequestId").map(str::to_owned),
                BusinessIdKind::CaptureRequestId => field("captureRequestId").map(str::to_owned),
                BusinessIdKind::DisputeIdAndNotifyTime => dispute(),
                BusinessIdKind::BodySha256 => None,
            }
        };
        // The type says which id it is about; a refund or capture notification may also carry
        // the paymentRequestId of its payment, and two refunds of one payment are two events.
        // Unknown types: the most specific id present.
        let preferred = if notify_type.starts_with("PAYMENT_") {
            Some(BusinessIdKind::PaymentRequestId)
        } else if notify_type.starts_with("REFUND_") {
            Some(BusinessIdKind::RefundRequestId)
        } else if notify_type.starts_with("CAPTURE_") {
            Some(BusinessIdKind::CaptureRequestId)
        } else if notify_type.contains("DISPUTE") {
            Some(BusinessIdKind::DisputeIdAndNotifyTime)
        } else {
            None
        };
        let order = [
            BusinessIdKind::RefundRequestId,
            BusinessIdKind::CaptureRequestId,
            BusinessIdKind::DisputeIdAndNotifyTime,
            BusinessIdKind::PaymentRequestId,
        ];
        let (business_id_kind, business_id) = [BusinessIdKind::EventId]
            .into_iter()
            .chain(preferred)
            .chain(order)
            .find_map(|kind| by_kind(kind).map(|id| (kind, id)))
            .unwrap_or_else(|| (BusinessIdKind::BodySha256, body_sha256(body)));

        EventKey {
            client_id: client_id.to_owned(),
            path: path.to_owned(),
            notify_type,
            business_id_kind,
            business_id,
            result_status: result_field("resultStatus"),
            result_code: result_field("resultCode"),
        }
    }

    /// The canonical, unambiguous serialisation of the key (a JSON array of its strings: no
    /// separator inside a field can make two different keys serialise alike).
    pub fn canonical(&self) -> String {
        serde_json::Value::from(vec![
            self.client_id.as_str(),
            self.path.as_str(),
            self.notify_type.as_str(),
            self.business_id_kind.as_str(),
            self.business_id.as_str(),
            self.result_status.as_str(),
            self.result_code.as_str(),
        ])
        .to_string()
    }

    /// The event id: `evt_` and 32 hex digits, the first 128 bits of the SHA-256 of the
    /// canonical key. Stable across re-sends and processes; 128 bits make an accidental
    /// collision between two events of one store practically impossible.
    pub fn event_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(EVENT_ID_DOMAIN);
        h.update(self.canonical().as_bytes());
        let digest = h.finalize();
        format!("evt_{}", hex(&digest[..16]))
    }

    /// `resultStatus/resultCode` as shown by `notifications list` (empty parts stay empty).
    pub fn result(&self) -> String {
        format!("{}/{}", self.result_status, self.result_code)
    }
}

/// Lowercase hex SHA-256 of `body`, as stored in the journal's `body_sha256` column.
pub fn body_sha256(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAY_S: &str = r#"{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentRequestId":"pay-1","paymentId":"2024","paymentAmount":{"value":"100","currency":"USD"},"paymentTime":"2024-01-01T00:00:00+08:00"}"#;

    fn key(body: &str) -> EventKey {
        EventKey::from_notification("2188120012345678", "/alipay/notify", body.as_bytes())
    }

    #[test]
    fn payment_result_key_fields() {
        let k = key(PAY_S);
        assert_eq!(k.notify_type, "PAYMENT_RESULT");
        assert_eq!(k.business_id_kind, BusinessIdKind::PaymentRequestId);
        assert_eq!(k.business_id, "pay-1");
        assert_eq!(k.result_status, "S");
        assert_eq!(k.result_code, "SUCCESS");
        assert_eq!(k.result(), "S/SUCCESS");
        let id = k.event_id();
        assert!(id.starts_with("evt_"), "{id}");
        assert_eq!(id.len(), 4 + 32);
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn same_event_with_other_bytes_has_the_same_id() {
        // A re-send re-signed with another Request-Time has the same body; even re-serialised
        // (other field order, whitespace, another notifyTime/paymentTime) it is the same event.
        let reordered = r#"{ "paymentRequestId" : "pay-1", "result": {"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"ok"},
            "notifyType":"PAYMENT_RESULT", "notifyTime":"2024-01-02T00:00:00Z" }"#;
        assert_eq!(key(PAY_S).event_id(), key(reordered).event_id());
        assert_eq!(key(PAY_S).event_id(), key(PAY_S).event_id());
    }

    #[test]
    fn other_result_client_path_or_type_is_another_event() {
        let base = key(PAY_S).event_id();
        let fail = PAY_S
            .replace(r#""resultStatus":"S""#, r#""resultStatus":"F""#)
            .replace("\"SUCCESS\"", "\"ORDER_CLOSED\"");
        assert_ne!(base, key(&fail).event_id());
        let code_only = PAY_S.replace("\"SUCCESS\"", "\"OTHER\"");
        assert_ne!(base, key(&code_only).event_id());
        assert_ne!(
            base,
            EventKey::from_notification("2188000000000000", "/alipay/notify", PAY_S.as_bytes())
                .event_id()
        );
        assert_ne!(
            base,
            EventKey::from_notification("2188120012345678", "/other", PAY_S.as_bytes()).event_id()
        );
        let pending = PAY_S.replace("PAYMENT_RESULT", "PAYMENT_PENDING");
        assert_ne!(base, key(&pending).event_id());
        let other_payment = PAY_S.replace("pay-1", "pay-2");
        assert_ne!(base, key(&other_payment).event_id());
    }

    #[test]
    fn refund_and_capture_use_their_own_id() {
        let e1 = EventKey::from_notification(
            "c",
            "/n",
            br#"{"notifyType":"REFUND_RESULT","eventId":"9b2c1d7e-0000-4000-8000-000000000001","refundRequestId":"r-1"}"#,
        );
        assert_eq!(e1.business_id_kind, BusinessIdKind::EventId);
        assert_eq!(e1.business_id, "9b2c1d7e-0000-4000-8000-000000000001");
        assert_eq!(
            BusinessIdKind::parse("eventId"),
            Some(BusinessIdKind::EventId)
        );
        let r1 = r#"{"notifyType":"REFUND_RESULT","refundRequestId":"r-1","paymentRequestId":"pay-1","result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#;
        let r2 = r1.replace("r-1", "r-2");
        let k1 = key(r1);
        assert_eq!(k1.business_id_kind, BusinessIdKind::RefundRequestId);
        assert_eq!(k1.business_id, "r-1");
        assert_ne!(k1.event_id(), key(&r2).event_id());

        let c = r#"{"notifyType":"CAPTURE_RESULT","captureRequestId":"c-1","paymentRequestId":"pay-1","result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#;
        let k = key(c);
        assert_eq!(k.business_id_kind, BusinessIdKind::CaptureRequestId);
        assert_eq!(k.business_id, "c-1");
    }

    #[test]
    fn dispute_uses_dispute_id_and_notify_time() {
        let d1 = r#"{"notifyType":"DISPUTE_CREATED","disputeId":"d-1","notifyTime":"2024-01-01T00:00:00Z"}"#;
        let d2 = d1.replace("2024-01-01", "2024-01-05");
        let k = key(d1);
        assert_eq!(k.business_id_kind, BusinessIdKind::DisputeIdAndNotifyTime);
        assert_eq!(k.business_id, "d-1 2024-01-01T00:00:00Z");
        assert_eq!(k.result(), "/");
        assert_ne!(k.event_id(), key(&d2).event_id());
        // Unknown type name, dispute id present: still keyed by it.
        let odd = d1.replace("DISPUTE_CREATED", "CHARGEBACK_X");
        assert_eq!(
            key(&odd).business_id_kind,
            BusinessIdKind::DisputeIdAndNotifyTime
        );
    }

    #[test]
    fn types_without_business_id_fall_back_to_body_digest() {
        let a = r#"{"notifyType":"AUTHCODE_CREATED","authCode":"x"}"#;
        let k = key(a);
        assert_eq!(k.business_id_kind, BusinessIdKind::BodySha256);
        assert_eq!(k.business_id, body_sha256(a.as_bytes()));
        assert_eq!(k.event_id(), key(a).event_id());
        let b = a.replace("\"x\"", "\"y\"");
        assert_ne!(k.event_id(), key(&b).event_id());
    }

    #[test]
    fn hostile_bodies_never_panic() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2,3]",
            b"\"PAYMENT_RESULT\"",
            b"{\"notifyType\":7,\"paymentRequestId\":{\"a\":1},\"result\":[]}",
            b"\xff\xfe\x00",
            b"{\"paymentRequestId\":\"\"}",
        ] {
            let k = EventKey::from_notification("c", "/p", body);
            assert_eq!(k.business_id_kind, BusinessIdKind::BodySha256, "{body:?}");
            assert_eq!(k.business_id, body_sha256(body));
        }
        let deep = "[".repeat(100_000);
        let k = EventKey::from_notification("c", "/p", deep.as_bytes());
        assert_eq!(k.business_id_kind, BusinessIdKind::BodySha256);
    }

    #[test]
    fn canonical_key_is_unambiguous() {
        let mut a = key(PAY_S);
        let mut b = key(PAY_S);
        a.client_id = "a\",\"b".into();
        a.path = "c".into();
        b.client_id = "a".into();
        b.path = "b\",\"c".into();
        assert_ne!(a.canonical(), b.canonical());
        assert_ne!(a.event_id(), b.event_id());
    }

    #[test]
    fn known_vector() {
        // Pins the id derivation: changing it would break de-duplication across an upgrade.
        assert_eq!(
            body_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = key(PAY_S);
        assert_eq!(
            k.canonical(),
            r#"["2188120012345678","/alipay/notify","PAYMENT_RESULT","paymentRequestId","pay-1","S","SUCCESS"]"#
        );
        let mut h = Sha256::new();
        h.update(b"alipay-sidecar/event/v1\n");
        h.update(k.canonical().as_bytes());
        assert_eq!(k.event_id(), format!("evt_{}", &hex(&h.finalize())[..32]));
        assert_eq!(
            BusinessIdKind::parse("bodySha256"),
            Some(BusinessIdKind::BodySha256)
        );
        for kind in [
            BusinessIdKind::PaymentRequestId,
            BusinessIdKind::RefundRequestId,
            BusinessIdKind::CaptureRequestId,
            BusinessIdKind::DisputeIdAndNotifyTime,
            BusinessIdKind::BodySha256,
        ] {
            assert_eq!(BusinessIdKind::parse(kind.as_str()), Some(kind));
        }
    }
}
