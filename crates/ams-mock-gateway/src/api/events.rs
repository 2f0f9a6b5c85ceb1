//! Alipay's notification event log: every notification the gateway sends (or drops on
//! purpose), and the two APIs that read it, `inquireNotificationList` and
//! `inquireNotification`, shaped as global-open-sdk-python 1.7.1's classes read them
//! (`request/notification/`, `response/notification/`, `model/notification_event.py`).
//!
//! It exists so the sidecar's backfill (issue 22) can be tested against the failure it
//! repairs: Alipay recorded a notification whose delivery failed, and only its event log
//! still has it.

use chrono::{DateTime, Duration as Span, Utc};
use serde_json::Value;

use super::json::{envelope, js, obj, param_illegal, success, Status};

/// Path of the list API (production; the sandbox path is accepted too).
pub(crate) const LIST_PATH: &str = "/ams/api/v1/notification/inquireNotificationList";
/// Path of the single-event API.
pub(crate) const ONE_PATH: &str = "/ams/api/v1/notification/inquireNotification";

/// Antom keeps the event log for 30 days: earlier `eventCreateTimeFrom` values are clamped.
pub const EVENT_RETENTION_DAYS: i64 = 30;
/// `eventCreateTimeFrom` defaults to this long before `eventCreateTimeTo` (SDK doc).
const DEFAULT_WINDOW_DAYS: i64 = 7;
/// `limit` when omitted or null (SDK doc: "The server defaults to 10").
const DEFAULT_LIMIT: u64 = 10;
/// Largest `limit` accepted; the SDK does not state Alipay's bound, this one is the mock's
/// (a larger value is `PARAM_ILLEGAL`, as is 0).
pub const MAX_EVENT_LIMIT: u64 = 100;
/// Result code of `inquireNotification` for an unknown `eventId`. Alipay's not-found codes
/// follow `<THING>_NOT_EXIST` (`ORDER_NOT_EXIST`, `REFUND_NOT_EXIST`); the SDK names none for
/// events, so the mock answers in that pattern, signed, with `resultStatus` F.
pub const EVENT_NOT_EXIST: &str = "EVENT_NOT_EXIST";

/// `deliveryStatus` of a [`NotificationEvent`], as the gateway saw its own delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// The merchant acknowledged it (HTTP 200, `resultStatus` S).
    Delivered,
    /// Being sent or re-sent.
    Pending,
    /// Back-off used up, never acknowledged, or dropped on purpose (notify mode `drop`).
    Failed,
}

impl DeliveryStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Delivered => "DELIVERED",
            DeliveryStatus::Pending => "PENDING",
            DeliveryStatus::Failed => "FAILED",
        }
    }
}

/// One entry of the event log (`NotificationEvent` in the SDK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationEvent {
    /// UUID v4, shared by every (re-)send of this notification.
    pub event_id: String,
    /// `notifyType` of the payload (`PAYMENT_RESULT`, `REFUND_RESULT`, …).
    pub notify_type: String,
    /// When the event was created, UTC.
    pub event_create_time: DateTime<Utc>,
    /// How its delivery went so far.
    pub delivery_status: DeliveryStatus,
    /// ISV sub-merchant reference; `None` for the caller's own events (then omitted on the wire).
    pub reference_merchant_id: Option<String>,
    /// The client id whose notification this is: only that caller sees it.
    pub client_id: String,
    /// The original notification body, byte for byte.
    pub notification_data: Vec<u8>,
}

impl NotificationEvent {
    fn json(&self) -> String {
        let mut fields = vec![
            ("eventId", js(&self.event_id)),
            ("notifyType", js(&self.notify_type)),
            ("eventCreateTime", js(&utc_z(self.event_create_time))),
            ("deliveryStatus", js(self.delivery_status.as_str())),
        ];
        if let Some(r) = &self.reference_merchant_id {
            fields.push(("referenceMerchantId", js(r)));
        }
        // The payload is embedded verbatim: it is the JSON the webhook carried.
        let data = String::from_utf8_lossy(&self.notification_data).into_owned();
        fields.push(("notificationData", data));
        obj(&fields)
    }
}

/// `2026-12-07T05:40:00Z`: "returned in UTC with a Z suffix".
fn utc_z(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random UUID v4 (RFC 9562 §5.4) from the OS random source.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Still unique within this process: a counter-like fallback from the clock.
        let n = Utc::now().timestamp_nanos_opt().unwrap_or(0) as u128;
        b = n.to_be_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The log, oldest first (index order breaks ties of equal creation times).
#[derive(Default)]
pub(crate) struct EventLog {
    events: Vec<NotificationEvent>,
}

impl EventLog {
    /// The event for this notification: the existing one when the same client's notification
    /// with the same type and bytes was logged before (a re-send keeps its event id),
    /// otherwise a new one with `status`. Returns its event id.
    pub(crate) fn open(
        &mut self,
        client_id: &str,
        data: &[u8],
        status: DeliveryStatus,
        now: DateTime<Utc>,
    ) -> String {
        let notify_type = serde_json::from_slice::<Value>(data)
            .ok()
            .and_then(|v| {
                v.get("notifyType")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default();
        if let Some(e) = self.events.iter_mut().find(|e| {
            e.client_id == client_id && e.notify_type == notify_type && e.notification_data == data
        }) {
            if e.delivery_status != DeliveryStatus::Delivered {
                e.delivery_status = status;
            }
            return e.event_id.clone();
        }
        let event_id = uuid_v4();
        self.events.push(NotificationEvent {
            event_id: event_id.clone(),
            notify_type,
            event_create_time: now,
            delivery_status: status,
            reference_merchant_id: None,
            client_id: client_id.to_string(),
            notification_data: data.to_vec(),
        });
        event_id
    }

    /// Records how a delivery ended (a DELIVERED event stays DELIVERED).
    pub(crate) fn set_status(&mut self, event_id: &str, status: DeliveryStatus) {
        if let Some(e) = self.events.iter_mut().find(|e| e.event_id == event_id) {
            if e.delivery_status != DeliveryStatus::Delivered {
                e.delivery_status = status;
            }
        }
    }

    /// Every event, oldest first.
    pub(crate) fn all(&self) -> Vec<NotificationEvent> {
        self.events.clone()
    }

    /// Answers a call to `path` (either API, production or sandbox path) for `client_id`;
    /// `None` when `path` is not one of them. `page_max` caps the events per page whatever
    /// `limit` asks (a server may return fewer; `hasMore` tells the client to go on).
    pub(crate) fn answer(
        &self,
        path: &str,
        client_id: &str,
        body: &[u8],
        now: DateTime<Utc>,
        page_max: usize,
    ) -> Option<String> {
        let path = path.replacen("/ams/sandbox/api/", "/ams/api/", 1);
        if path != LIST_PATH && path != ONE_PATH {
            return None;
        }
        let json = match serde_json::from_slice::<Value>(body) {
            Ok(v) if v.is_object() => v,
            _ => return Some(param_illegal("The request body must be a JSON object.")),
        };
        Some(if path == LIST_PATH {
            self.list(client_id, &json, now, page_max)
                .unwrap_or_else(|e| param_illegal(&e))
        } else {
            self.one(client_id, &json)
        })
    }

    fn one(&self, client_id: &str, json: &Value) -> String {
        let Some(id) = json
            .get("eventId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return param_illegal("eventId is required");
        };
        match self
            .events
            .iter()
            .find(|e| e.event_id == id && e.client_id == client_id)
        {
            Some(e) => obj(&[("result", success()), ("notification", e.json())]),
            None => envelope(EVENT_NOT_EXIST, Status::F, "The event does not exist."),
        }
    }

    fn list(
        &self,
        client_id: &str,
        json: &Value,
        now: DateTime<Utc>,
        page_max: usize,
    ) -> Result<String, String> {
        let time = |field: &str| -> Result<Option<DateTime<Utc>>, String> {
            match json.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(|_| format!("{field} must be an ISO 8601 time with an offset")),
                Some(_) => Err(format!("{field} must be a string")),
            }
        };
        let to = time("eventCreateTimeTo")?.unwrap_or(now);
        let from = time("eventCreateTimeFrom")?
            .unwrap_or(to - Span::days(DEFAULT_WINDOW_DAYS))
            .max(now - Span::days(EVENT_RETENTION_DAYS));
        if to < from {
            return Err("eventCreateTimeTo is earlier than eventCreateTimeFrom".into());
        }
        let limit = match json.get("limit") {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_EVENT_LIMIT).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "limit must be an integer from 1 to {MAX_EVENT_LIMIT}"
                    ))
                }
            },
        };
        let types: Vec<&str> = match json.get("notifyType") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().ok_or("notifyType must be an array of strings"))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("notifyType must be an array of strings".into()),
        };
        let after = json
            .get("startingAfter")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        // Newest first: creation time descending, later log entries first on ties.
        let mut matching: Vec<&NotificationEvent> = self
            .events
            .iter()
            .filter(|e| e.client_id == client_id)
            .filter(|e| e.event_create_time >= from && e.event_create_time <= to)
            .filter(|e| types.is_empty() || types.contains(&e.notify_type.as_str()))
            .collect();
        matching.reverse();
        matching.sort_by_key(|e| std::cmp::Reverse(e.event_create_time));
        let start = match after {
            None => 0,
            Some(id) => match matching.iter().position(|e| e.event_id == id) {
                Some(i) => i + 1,
                None => {
                    return Err(
                        "startingAfter is not an event of this query (reuse the same filters)"
                            .into(),
                    )
                }
            },
        };
        let take = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(page_max.max(1));
        let page: Vec<&NotificationEvent> =
            matching.iter().skip(start).take(take).copied().collect();
        let has_more = start + page.len() < matching.len();
        let items: Vec<String> = page.iter().map(|e| e.json()).collect();
        let mut fields = vec![
            ("result", success()),
            ("notifications", format!("[{}]", items.join(","))),
            ("hasMore", has_more.to_string()),
        ];
        if has_more {
            if let Some(last) = page.last() {
                fields.push(("nextStartingAfter", js(&last.event_id)));
            }
        }
        Ok(obj(&fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn log_with(n: usize, now: DateTime<Utc>) -> EventLog {
        let mut log = EventLog::default();
        for i in 0..n {
            let t = if i % 2 == 0 {
                "PAYMENT_RESULT"
            } else {
                "REFUND_RESULT"
            };
            let data = format!(r#"{{"notifyType":"{t}","n":{i}}}"#);
            log.open(
                "c1",
                data.as_bytes(),
                DeliveryStatus::Pending,
                now - Span::minutes((n - i) as i64),
            );
        }
        log
    }

    #[test]
    fn uuid_is_v4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn pages_newest_first_with_cursor() {
        let now = Utc::now();
        let log = log_with(5, now);
        let p1 = v(&log
            .answer(LIST_PATH, "c1", br#"{"limit":2}"#, now, 100)
            .unwrap());
        let ev = p1["notifications"].as_array().unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["notificationData"]["n"], 4);
        assert_eq!(ev[1]["notificationData"]["n"], 3);
        assert_eq!(p1["hasMore"], true);
        let next = p1["nextStartingAfter"].as_str().unwrap();
        assert_eq!(next, ev[1]["eventId"].as_str().unwrap());
        let body = format!(r#"{{"limit":10,"startingAfter":"{next}"}}"#);
        let p2 = v(&log
            .answer(LIST_PATH, "c1", body.as_bytes(), now, 100)
            .unwrap());
        assert_eq!(p2["notifications"].as_array().unwrap().len(), 3);
        assert_eq!(p2["hasMore"], false);
        assert!(p2.get("nextStartingAfter").is_none());
        // page_max caps the page whatever limit says
        let p = v(&log
            .answer(LIST_PATH, "c1", br#"{"limit":10}"#, now, 2)
            .unwrap());
        assert_eq!(p["notifications"].as_array().unwrap().len(), 2);
        assert_eq!(p["hasMore"], true);
    }

    #[test]
    fn filters_types_clients_window_and_bounds() {
        let now = Utc::now();
        let log = log_with(5, now);
        let p = v(&log
            .answer(
                LIST_PATH,
                "c1",
                br#"{"notifyType":["REFUND_RESULT"]}"#,
                now,
                100,
            )
            .unwrap());
        assert_eq!(p["notifications"].as_array().unwrap().len(), 2);
        let p = v(&log.answer(LIST_PATH, "other", b"{}", now, 100).unwrap());
        assert_eq!(p["notifications"].as_array().unwrap().len(), 0);
        // default window 7 days before `to`: a `to` 8 days ago sees nothing
        let old = utc_z(now - Span::days(8));
        let body = format!(r#"{{"eventCreateTimeTo":"{old}"}}"#);
        let p = v(&log
            .answer(LIST_PATH, "c1", body.as_bytes(), now, 100)
            .unwrap());
        assert_eq!(p["notifications"].as_array().unwrap().len(), 0);
        for bad in [
            r#"{"limit":0}"#,
            r#"{"limit":101}"#,
            r#"{"limit":"5"}"#,
            r#"{"eventCreateTimeFrom":"yesterday"}"#,
            r#"{"startingAfter":"nope"}"#,
        ] {
            let p = v(&log
                .answer(LIST_PATH, "c1", bad.as_bytes(), now, 100)
                .unwrap());
            assert_eq!(p["result"]["resultCode"], "PARAM_ILLEGAL", "{bad}");
        }
    }

    #[test]
    fn window_is_clamped_to_retention() {
        let now = Utc::now();
        let mut log = EventLog::default();
        log.open(
            "c1",
            br#"{"notifyType":"PAYMENT_RESULT","a":1}"#,
            DeliveryStatus::Delivered,
            now - Span::days(31),
        );
        log.open(
            "c1",
            br#"{"notifyType":"PAYMENT_RESULT","a":2}"#,
            DeliveryStatus::Delivered,
            now - Span::days(29),
        );
        let from = utc_z(now - Span::days(60));
        let body = format!(r#"{{"eventCreateTimeFrom":"{from}"}}"#);
        let p = v(&log
            .answer(LIST_PATH, "c1", body.as_bytes(), now, 100)
            .unwrap());
        let ev = p["notifications"].as_array().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["notificationData"]["a"], 2);
    }

    #[test]
    fn one_event_and_not_found() {
        let now = Utc::now();
        let mut log = EventLog::default();
        let id = log.open(
            "c1",
            br#"{"notifyType":"REFUND_RESULT"}"#,
            DeliveryStatus::Failed,
            now,
        );
        assert_eq!(
            id,
            log.open(
                "c1",
                br#"{"notifyType":"REFUND_RESULT"}"#,
                DeliveryStatus::Pending,
                now
            )
        );
        let body = format!(r#"{{"eventId":"{id}"}}"#);
        let p = v(&log
            .answer(ONE_PATH, "c1", body.as_bytes(), now, 100)
            .unwrap());
        assert_eq!(p["result"]["resultStatus"], "S");
        let n = &p["notification"];
        assert_eq!(n["eventId"], id.as_str());
        assert_eq!(n["notifyType"], "REFUND_RESULT");
        assert_eq!(n["deliveryStatus"], "PENDING");
        assert!(n["eventCreateTime"].as_str().unwrap().ends_with('Z'));
        assert!(n.get("referenceMerchantId").is_none());
        let p = v(&log
            .answer(ONE_PATH, "c1", br#"{"eventId":"x"}"#, now, 100)
            .unwrap());
        assert_eq!(p["result"]["resultCode"], EVENT_NOT_EXIST);
        assert_eq!(p["result"]["resultStatus"], "F");
        assert!(log
            .answer("/ams/api/v1/payments/pay", "c1", b"{}", now, 100)
            .is_none());
    }
}
