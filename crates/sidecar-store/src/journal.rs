//! The notification journal: de-duplication and the store-and-forward queue.

use std::time::Duration;

use crate::event::{body_sha256, BusinessIdKind, EventKey};
use crate::store::{bounded, dispatch, ClaimSql, Cols, Store};
use crate::StoreError;

/// Longest error text kept per failed attempt (an app's error page can be large).
const MAX_ERROR_LEN: usize = 1000;

/// Where an event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationStatus {
    /// Recorded, not yet delivered to the app (the app did not answer 2xx yet).
    Pending,
    /// The app answered 2xx once; re-sends are acknowledged without reaching it.
    Delivered,
    /// Store-and-forward gave up (`max_delivery_age`); `replay` or `retry_dead` revive it.
    Dead,
}

impl NotificationStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Delivered => "delivered",
            NotificationStatus::Dead => "dead",
        }
    }

    /// Inverse of [`as_str`](Self::as_str) (`--status` of `notifications list`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => NotificationStatus::Pending,
            "delivered" => NotificationStatus::Delivered,
            "dead" => NotificationStatus::Dead,
            _ => return None,
        })
    }
}

impl std::fmt::Display for NotificationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified notification (or one built by the reconciler) to record.
#[derive(Debug, Clone, Copy)]
pub struct NewNotification<'a> {
    /// Merchant name from the config (selected by the notification's client id).
    pub merchant: &'a str,
    /// The de-duplication key ([`EventKey::from_notification`]).
    pub key: &'a EventKey,
    /// The body exactly as it will be delivered.
    pub body: &'a [u8],
    /// The headers a later delivery must carry (store-and-forward, `replay`).
    pub headers: &'a [(String, String)],
    /// Now, UTC milliseconds.
    pub now: i64,
    /// `Some(t)`: queue it for the delivery worker at `t` (store-and-forward: the receiver
    /// acknowledges Alipay after this returns). `None`: the receiver delivers it in line and
    /// reports with [`Store::mark_delivered`] / [`Store::record_attempt_failure`]; the worker
    /// never touches it (until `replay`).
    pub deliver_at: Option<i64>,
}

/// What [`Store::record_notification`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `X-Alipay-Sidecar-Event-Id`.
    pub event_id: String,
    /// Status after this call.
    pub status: NotificationStatus,
    /// When the event was first recorded (UTC ms).
    pub first_seen: i64,
    /// True for exactly one caller per event: the one whose call created the row (under any
    /// concurrency, across processes and replicas). Everyone else sees a re-send.
    pub inserted: bool,
    /// The app already answered 2xx for this event: acknowledge Alipay without delivering
    /// (`duplicates = "suppress"`).
    pub already_delivered: bool,
    /// Copies recorded so far, this one included.
    pub seen_count: i64,
}

/// One queued delivery handed to a worker by [`Store::claim_due_deliveries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: String,
    pub merchant: String,
    pub client_id: String,
    /// The path Alipay posted to (apply `path_map` when delivering).
    pub path: String,
    pub notify_type: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Failed attempts so far (position in `delivery_schedule`).
    pub attempts: i64,
    /// For `max_delivery_age`.
    pub first_seen: i64,
}

/// Filter for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter<'a> {
    pub status: Option<NotificationStatus>,
    pub merchant: Option<&'a str>,
    /// At most this many, newest first; `None`: all.
    pub limit: Option<i64>,
}

/// One row of `notifications list`, or the full `notifications show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub event_id: String,
    pub merchant: String,
    pub client_id: String,
    pub path: String,
    pub notify_type: String,
    pub business_id_kind: BusinessIdKind,
    pub business_id: String,
    pub result_status: String,
    pub result_code: String,
    pub body_sha256: String,
    pub status: NotificationStatus,
    pub first_seen: i64,
    pub last_seen: i64,
    pub seen_count: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
    /// Filled by [`Store::show`] only (`list` leaves them empty).
    pub body: Vec<u8>,
    /// Filled by [`Store::show`] only.
    pub headers: Vec<(String, String)>,
}

const RECORD_SQL: &str = "\
INSERT INTO notifications (event_id, merchant, client_id, path, notify_type, business_id_kind,
    business_id, result_status, result_code, body_sha256, body, headers, status, first_seen,
    last_seen, seen_count, attempts, next_attempt_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13, $13, 1, 0, $14, $13)
ON CONFLICT (event_id) DO UPDATE SET
    seen_count = notifications.seen_count + 1,
    last_seen = excluded.last_seen
RETURNING event_id, status, first_seen, seen_count";

const SUMMARY_COLS: &str = "event_id, merchant, client_id, path, notify_type, business_id_kind, \
    business_id, result_status, result_code, body_sha256, status, first_seen, last_seen, \
    seen_count, attempts, last_error, next_attempt_at, delivered_at";

const CLAIM_DELIVERIES_PG: &str = "\
UPDATE notifications SET claim_owner = $1, claim_until = $2
WHERE event_id IN (
    SELECT event_id FROM notifications
    WHERE status = 'pending' AND next_attempt_at <= $3
      AND (claim_until IS NULL OR claim_until <= $3)
    ORDER BY next_attempt_at, event_id
    LIMIT $4
    FOR UPDATE SKIP LOCKED)
RETURNING event_id, merchant, client_id, path, notify_type, body, headers, attempts, first_seen,
    next_attempt_at";

/// Same as [`CLAIM_DELIVERIES_PG`] without the row locks, run in a `BEGIN IMMEDIATE`
/// transaction: SQLite has one writer at a time, so the select-and-update is atomic.
const CLAIM_DELIVERIES_SQLITE: &str = "\
UPDATE notifications SET claim_owner = $1, claim_until = $2
WHERE event_id IN (
    SELECT event_id FROM notifications
    WHERE status = 'pending' AND next_attempt_at <= $3
      AND (claim_until IS NULL OR claim_until <= $3)
    ORDER BY next_attempt_at, event_id
    LIMIT $4)
RETURNING event_id, merchant, client_id, path, notify_type, body, headers, attempts, first_seen,
    next_attempt_at";

impl Store {
    /// Records a notification event, or finds it already recorded (insert-or-get, atomic: one
    /// row per event however many copies arrive at once). A re-send counts one more
    /// `seen_count` and leaves the first body, headers and status unchanged.
    pub async fn record_notification(
        &self,
        n: &NewNotification<'_>,
    ) -> Result<Recorded, StoreError> {
        let event_id = n.key.event_id();
        let headers = headers_json(n.headers);
        let digest = body_sha256(n.body);
        let row = dispatch!(self.backend, |pool| {
            let row = sqlx::query(RECORD_SQL)
                .bind(&event_id)
                .bind(n.merchant)
                .bind(&n.key.client_id)
                .bind(&n.key.path)
                .bind(&n.key.notify_type)
                .bind(n.key.business_id_kind.as_str())
                .bind(&n.key.business_id)
                .bind(&n.key.result_status)
                .bind(&n.key.result_code)
                .bind(&digest)
                .bind(n.body)
                .bind(&headers)
                .bind(n.now)
                .bind(n.deliver_at)
                .fetch_one(pool)
                .await
                .map_err(|e| StoreError::query("record notification", e))?;
            (
                row.text("event_id")?,
                row.text("status")?,
                row.int("first_seen")?,
                row.int("seen_count")?,
            )
        });
        let (event_id, status, first_seen, seen_count) = row;
        let status = parse_status(&status)?;
        Ok(Recorded {
            event_id,
            status,
            first_seen,
            inserted: seen_count == 1,
            already_delivered: status == NotificationStatus::Delivered,
            seen_count,
        })
    }

    /// The app answered 2xx: later copies are suppressed. Returns false for an unknown id.
    pub async fn mark_delivered(&self, event_id: &str, now: i64) -> Result<bool, StoreError> {
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE notifications SET status = 'delivered', delivered_at = $2,
                 next_attempt_at = NULL, claim_owner = NULL, claim_until = NULL, updated_at = $2
             WHERE event_id = $1"
        )
        .bind(event_id)
        .bind(now)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("mark delivered", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// A delivery attempt failed: count it, keep the error, release the claim and queue the
    /// next attempt at `next_attempt_at` (`None`: not queued, the in-line receiver will see
    /// Alipay's re-send). Only pending events change; returns whether this one did.
    pub async fn record_attempt_failure(
        &self,
        event_id: &str,
        error: &str,
        next_attempt_at: Option<i64>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let error = bounded(error, MAX_ERROR_LEN);
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE notifications SET attempts = attempts + 1, last_error = $2,
                 next_attempt_at = $3, claim_owner = NULL, claim_until = NULL, updated_at = $4
             WHERE event_id = $1 AND status = 'pending'"
        )
        .bind(event_id)
        .bind(error)
        .bind(next_attempt_at)
        .bind(now)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("record attempt failure", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// Store-and-forward gives up on a pending event (`max_delivery_age` passed).
    pub async fn mark_dead(
        &self,
        event_id: &str,
        error: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let error = bounded(error, MAX_ERROR_LEN);
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE notifications SET status = 'dead', last_error = $2, next_attempt_at = NULL,
                 claim_owner = NULL, claim_until = NULL, updated_at = $3
             WHERE event_id = $1 AND status = 'pending'"
        )
        .bind(event_id)
        .bind(error)
        .bind(now)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("mark dead", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// Claims up to `limit` queued deliveries due at `now` for `owner` until `now + lease`.
    /// Each is handed to exactly one claimer until its lease runs out: a worker that dies
    /// mid-delivery loses it to the next claim after the lease (at-least-once delivery, so
    /// the app sees the same event id again). Oldest due first.
    pub async fn claim_due_deliveries(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let sql = ClaimSql {
            op: "claim deliveries",
            postgres: CLAIM_DELIVERIES_PG,
            sqlite: CLAIM_DELIVERIES_SQLITE,
        };
        let rows = self
            .claim(&sql, now, owner, lease, limit, |r| delivery_from_row(r))
            .await?;
        let mut out: Vec<(i64, Delivery)> = rows;
        out.sort_by(|a, b| (a.0, &a.1.event_id).cmp(&(b.0, &b.1.event_id)));
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// Events for `notifications list`, newest first (bodies and headers left empty).
    pub async fn list(
        &self,
        filter: &ListFilter<'_>,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let status = filter.status.map(NotificationStatus::as_str);
        let limit = filter.limit.unwrap_or(i64::MAX).max(0);
        dispatch!(self.backend, |pool| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SUMMARY_COLS} FROM notifications
                 WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR merchant = $2)
                 ORDER BY first_seen DESC, event_id DESC LIMIT $3"
            )))
            .bind(status)
            .bind(filter.merchant)
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::query("list notifications", e))?;
            rows.iter().map(summary_from_row).collect()
        })
    }

    /// One event with its body and headers (`notifications show ID`).
    pub async fn show(&self, event_id: &str) -> Result<Option<NotificationRecord>, StoreError> {
        dispatch!(self.backend, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SUMMARY_COLS}, body, headers FROM notifications WHERE event_id = $1"
            )))
            .bind(event_id)
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::query("show notification", e))?;
            match row {
                None => Ok(None),
                Some(row) => {
                    let mut rec = summary_from_row(&row)?;
                    rec.body = row.bytes("body")?;
                    rec.headers = parse_headers(&row.text("headers")?)?;
                    Ok(Some(rec))
                }
            }
        })
    }

    /// `notifications replay ID`: back to pending, due now, whatever its status (a delivered
    /// event is delivered once more, with the same event id). Returns false for an unknown id.
    pub async fn replay(&self, event_id: &str, now: i64) -> Result<bool, StoreError> {
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE notifications SET status = 'pending', next_attempt_at = $2,
                 claim_owner = NULL, claim_until = NULL, updated_at = $2
             WHERE event_id = $1"
        )
        .bind(event_id)
        .bind(now)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("replay notification", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// `notifications retry --dead`: every dead event back to pending, due now. Returns how
    /// many.
    pub async fn retry_dead(&self, now: i64) -> Result<u64, StoreError> {
        Ok(dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE notifications SET status = 'pending', next_attempt_at = $1,
                 claim_owner = NULL, claim_until = NULL, updated_at = $1
             WHERE status = 'dead'"
        )
        .bind(now)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("retry dead notifications", e))?
        .rows_affected()))
    }
}

fn headers_json(headers: &[(String, String)]) -> String {
    serde_json::Value::from(
        headers
            .iter()
            .map(|(k, v)| serde_json::Value::from(vec![k.as_str(), v.as_str()]))
            .collect::<Vec<_>>(),
    )
    .to_string()
}

fn parse_headers(s: &str) -> Result<Vec<(String, String)>, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        what: "column headers".into(),
        detail: e.to_string(),
    })
}

fn parse_status(s: &str) -> Result<NotificationStatus, StoreError> {
    NotificationStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: "column status".into(),
        detail: format!("unknown notification status {s:?}"),
    })
}

fn delivery_from_row(row: &dyn Cols) -> Result<(i64, Delivery), StoreError> {
    Ok((
        row.opt_int("next_attempt_at")?.unwrap_or(0),
        Delivery {
            event_id: row.text("event_id")?,
            merchant: row.text("merchant")?,
            client_id: row.text("client_id")?,
            path: row.text("path")?,
            notify_type: row.text("notify_type")?,
            body: row.bytes("body")?,
            headers: parse_headers(&row.text("headers")?)?,
            attempts: row.int("attempts")?,
            first_seen: row.int("first_seen")?,
        },
    ))
}

fn summary_from_row(row: &impl Cols) -> Result<NotificationRecord, StoreError> {
    let kind = row.text("business_id_kind")?;
    Ok(NotificationRecord {
        event_id: row.text("event_id")?,
        merchant: row.text("merchant")?,
        client_id: row.text("client_id")?,
        path: row.text("path")?,
        notify_type: row.text("notify_type")?,
        business_id_kind: BusinessIdKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
            what: "column business_id_kind".into(),
            detail: format!("unknown kind {kind:?}"),
        })?,
        business_id: row.text("business_id")?,
        result_status: row.text("result_status")?,
        result_code: row.text("result_code")?,
        body_sha256: row.text("body_sha256")?,
        status: parse_status(&row.text("status")?)?,
        first_seen: row.int("first_seen")?,
        last_seen: row.int("last_seen")?,
        seen_count: row.int("seen_count")?,
        attempts: row.int("attempts")?,
        last_error: row.opt_text("last_error")?,
        next_attempt_at: row.opt_int("next_attempt_at")?,
        delivered_at: row.opt_int("delivered_at")?,
        body: Vec::new(),
        headers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-q".to_string(), "a\"b\\c,[]".to_string()),
        ];
        assert_eq!(parse_headers(&headers_json(&h)).unwrap(), h);
        assert_eq!(headers_json(&[]), "[]");
    }

    #[test]
    fn status_names() {
        for s in [
            NotificationStatus::Pending,
            NotificationStatus::Delivered,
            NotificationStatus::Dead,
        ] {
            assert_eq!(NotificationStatus::parse(s.as_str()), Some(s));
        }
        assert!(NotificationStatus::parse("PENDING").is_none());
    }
}
