//! The backfill's state (issue 22): a cursor per merchant (the end of its last complete walk of
//! Alipay's notification event log) under a lease, so with PostgreSQL one replica walks a
//! merchant's log at a time; and the journal lookup by event key without the notify path
//! (the event log does not say which path Alipay posted to).

use crate::store::{dispatch, Cols, Store};
use crate::{EventKey, StoreError};

/// A merchant's backfill cursor as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillCursor {
    /// `eventCreateTimeTo` (UTC ms) of the last complete walk; `None` before the first.
    pub last_complete_to: Option<i64>,
    /// When that walk completed (UTC ms).
    pub last_complete_at: Option<i64>,
}

/// An event already in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journaled {
    /// Its event id.
    pub event_id: String,
    /// Its delivery status (`pending`, `delivered`, `dead`).
    pub status: String,
}

const ENSURE_SQL: &str =
    "INSERT INTO backfill_cursors (merchant) VALUES ($1) ON CONFLICT (merchant) DO NOTHING";

/// One statement: atomic on both backends (PostgreSQL locks the row, SQLite has one writer).
const CLAIM_SQL: &str = "\
UPDATE backfill_cursors SET lease_owner = $2, lease_until = $3
WHERE merchant = $1 AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until <= $4
    OR lease_owner = $2)
RETURNING last_complete_to, last_complete_at";

const COMPLETE_SQL: &str = "\
UPDATE backfill_cursors SET last_complete_to = $3, last_complete_at = $4, lease_owner = NULL,
    lease_until = NULL
WHERE merchant = $1 AND lease_owner = $2";

const RELEASE_SQL: &str = "\
UPDATE backfill_cursors SET lease_owner = NULL, lease_until = NULL
WHERE merchant = $1 AND lease_owner = $2";

const CURSOR_SQL: &str =
    "SELECT last_complete_to, last_complete_at FROM backfill_cursors WHERE merchant = $1";

const JOURNALED_SQL: &str = "\
SELECT event_id, status FROM notifications
WHERE client_id = $1 AND business_id = $2 AND notify_type = $3 AND business_id_kind = $4
    AND result_status = $5 AND result_code = $6
ORDER BY first_seen LIMIT 1";

impl Store {
    /// Takes `merchant`'s backfill lease for `owner` until `until` (UTC ms) when it is free,
    /// expired, or already `owner`'s; returns the cursor, or `None` when another owner holds it.
    pub async fn claim_backfill(
        &self,
        merchant: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<BackfillCursor>, StoreError> {
        dispatch!(self.backend, |pool| {
            sqlx::query(ENSURE_SQL)
                .bind(merchant)
                .execute(pool)
                .await
                .map_err(|e| StoreError::query("create backfill cursor", e))?;
            let row = sqlx::query(CLAIM_SQL)
                .bind(merchant)
                .bind(owner)
                .bind(until)
                .bind(now)
                .fetch_optional(pool)
                .await
                .map_err(|e| StoreError::query("claim backfill lease", e))?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(BackfillCursor {
                    last_complete_to: row.opt_int("last_complete_to")?,
                    last_complete_at: row.opt_int("last_complete_at")?,
                })),
            }
        })
    }

    /// A walk by `owner` reached the end of the list for the window ending `to`: moves the
    /// cursor and frees the lease. False when the lease was lost meanwhile (nothing changed).
    pub async fn complete_backfill(
        &self,
        merchant: &str,
        owner: &str,
        to: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = dispatch!(self.backend, |pool| sqlx::query(COMPLETE_SQL)
            .bind(merchant)
            .bind(owner)
            .bind(to)
            .bind(now)
            .execute(pool)
            .await
            .map_err(|e| StoreError::query("complete backfill", e))?
            .rows_affected());
        Ok(n == 1)
    }

    /// Frees `owner`'s lease without moving the cursor (a walk that did not finish).
    pub async fn release_backfill(&self, merchant: &str, owner: &str) -> Result<(), StoreError> {
        dispatch!(self.backend, |pool| sqlx::query(RELEASE_SQL)
            .bind(merchant)
            .bind(owner)
            .execute(pool)
            .await
            .map_err(|e| StoreError::query("release backfill lease", e))
            .map(|_| ())?);
        Ok(())
    }

    /// `merchant`'s cursor (default when it never walked).
    pub async fn backfill_cursor(&self, merchant: &str) -> Result<BackfillCursor, StoreError> {
        dispatch!(self.backend, |pool| {
            let row = sqlx::query(CURSOR_SQL)
                .bind(merchant)
                .fetch_optional(pool)
                .await
                .map_err(|e| StoreError::query("read backfill cursor", e))?;
            match row {
                None => Ok(BackfillCursor::default()),
                Some(row) => Ok(BackfillCursor {
                    last_complete_to: row.opt_int("last_complete_to")?,
                    last_complete_at: row.opt_int("last_complete_at")?,
                }),
            }
        })
    }

    /// The journaled event with `key`, whatever notify path it was recorded under (the first
    /// one recorded when there are several).
    pub async fn journaled(&self, key: &EventKey) -> Result<Option<Journaled>, StoreError> {
        dispatch!(self.backend, |pool| {
            let row = sqlx::query(JOURNALED_SQL)
                .bind(&key.client_id)
                .bind(&key.business_id)
                .bind(&key.notify_type)
                .bind(key.business_id_kind.as_str())
                .bind(&key.result_status)
                .bind(&key.result_code)
                .fetch_optional(pool)
                .await
                .map_err(|e| StoreError::query("look up journaled event", e))?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some(Journaled {
                    event_id: row.text("event_id")?,
                    status: row.text("status")?,
                })),
            }
        })
    }
}
