//! Retention (`[store] retention`, `alipay-sidecar notifications prune`, issue 18 L3): the
//! journal keeps every body it saw, so without pruning it only grows.
//!
//! The rule: only work that is *finished* goes.
//! * a notification whose status is `delivered` and that changed last before the cut-off
//!   (`updated_at`: delivery, or the last re-send seen);
//! * a pay record that is `closed` and was closed before the cut-off.
//!
//! Never pruned: `pending` notifications (not yet with the app, in line or queued), `dead`
//! ones (the app never took them: `notifications retry --dead` revives them; an operator
//! decides), open pay records. A cut-off older than Alipay's 24 h of re-sends keeps
//! de-duplication intact: a re-send of a pruned event would be delivered again.
//!
//! Deletes go in batches of [`BATCH`] rows (one short statement each), so pruning a large
//! backlog never holds the SQLite writer lock or a PostgreSQL transaction for long.

use crate::store::{dispatch, Cols, Store};
use crate::StoreError;

/// Rows deleted per statement.
pub const BATCH: i64 = 500;

/// What [`Store::prune`] removed (or, for a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Delivered notifications.
    pub notifications: u64,
    /// Closed pay records.
    pub pays: u64,
}

const NOTIFICATIONS_WHERE: &str = "status = 'delivered' AND updated_at < $1";
const PAYS_WHERE: &str = "status = 'closed' AND finished_at < $1";

impl Store {
    /// Deletes delivered notifications and closed pay records whose last change is before
    /// `before` (UTC ms), see the module doc. `dry_run`: counts only.
    pub async fn prune(&self, before: i64, dry_run: bool) -> Result<Pruned, StoreError> {
        if dry_run {
            return Ok(Pruned {
                notifications: self
                    .count("notifications", NOTIFICATIONS_WHERE, before)
                    .await?,
                pays: self.count("pay_records", PAYS_WHERE, before).await?,
            });
        }
        Ok(Pruned {
            notifications: self
                .delete("notifications", "event_id", NOTIFICATIONS_WHERE, before)
                .await?,
            pays: self.delete("pay_records", "id", PAYS_WHERE, before).await?,
        })
    }

    async fn count(&self, table: &str, filter: &str, before: i64) -> Result<u64, StoreError> {
        let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {filter}");
        let n = dispatch!(self.backend, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(before)
                .fetch_one(pool)
                .await
                .map_err(|e| StoreError::query("count prunable rows", e))?;
            row.int("n")?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn delete(
        &self,
        table: &str,
        id: &str,
        filter: &str,
        before: i64,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {table} WHERE {id} IN (SELECT {id} FROM {table} WHERE {filter} LIMIT $2)"
        );
        let mut total = 0u64;
        loop {
            let n = dispatch!(self.backend, |pool| sqlx::query(sqlx::AssertSqlSafe(
                sql.clone()
            ))
            .bind(before)
            .bind(BATCH)
            .execute(pool)
            .await
            .map_err(|e| StoreError::query("prune", e))?
            .rows_affected());
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
