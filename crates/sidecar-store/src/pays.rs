//! Pay records for the missed-notification reconciler.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::store::{dispatch, ClaimSql, Cols, Store};
use crate::StoreError;

/// How a pay record ended (the `outcome` label of the reconciliation metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayOutcome {
    /// Alipay's own PAYMENT_RESULT notification arrived.
    Notified,
    /// inquiryPayment found `SUCCESS`.
    InquiredSuccess,
    /// inquiryPayment found `FAIL`.
    InquiredFail,
    /// Close time passed without a final status; `payments/cancel` was called.
    Cancelled,
    /// Close time passed without a final status; nothing more was done.
    Expired,
}

impl PayOutcome {
    /// Every outcome, for pre-registering metric labels.
    pub const ALL: [PayOutcome; 5] = [
        PayOutcome::Notified,
        PayOutcome::InquiredSuccess,
        PayOutcome::InquiredFail,
        PayOutcome::Cancelled,
        PayOutcome::Expired,
    ];

    /// The stored name and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PayOutcome::Notified => "notified",
            PayOutcome::InquiredSuccess => "inquired_success",
            PayOutcome::InquiredFail => "inquired_fail",
            PayOutcome::Cancelled => "cancelled",
            PayOutcome::Expired => "expired",
        }
    }

    /// Inverse of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        PayOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// An outbound `payments/pay` whose verified answer was not final.
#[derive(Debug, Clone, Copy)]
pub struct NewPay<'a> {
    pub merchant: &'a str,
    pub client_id: &'a str,
    pub payment_request_id: &'a str,
    pub payment_notify_url: Option<&'a str>,
    /// Alipay's `paymentId` from the pay answer, when it had one.
    pub payment_id: Option<&'a str>,
    /// `paymentExpireTime`, else now + `default_close_after` (UTC ms).
    pub close_time: i64,
    /// When to start inquiring: the pay answer's time + `reconcile_after` (UTC ms).
    pub reconcile_at: i64,
    /// Now (UTC ms).
    pub now: i64,
}

/// Which merchant a [`Store::close_pay`] is for: the name when the receiver resolved it, else
/// the notification's client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayOwner<'a> {
    Merchant(&'a str),
    ClientId(&'a str),
}

/// What [`Store::record_pay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayRecorded {
    /// Stable id: `pay_` and 32 hex digits derived from merchant and paymentRequestId.
    pub id: String,
    /// False when this merchant's paymentRequestId was already recorded (a retried pay): the
    /// existing record, open or closed, is left as it is.
    pub inserted: bool,
}

/// A pay record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayRecord {
    pub id: String,
    pub merchant: String,
    pub client_id: String,
    pub payment_request_id: String,
    pub payment_notify_url: Option<String>,
    pub close_time: i64,
    pub created_at: i64,
    /// `None` while open.
    pub outcome: Option<PayOutcome>,
    pub finished_at: Option<i64>,
    /// When the reconciler works it next.
    pub next_at: i64,
    /// Inquiries made so far (position in `inquiry_schedule`).
    pub inquiries: i64,
    pub claim_owner: Option<String>,
    pub claim_until: Option<i64>,
    /// Alipay's `paymentId` from the pay answer, when it had one.
    pub payment_id: Option<String>,
    /// Verified inquiry answers about this very payment so far (the reconciler cancels at
    /// the close time only after at least one).
    pub answers: i64,
}

const PAY_COLS: &str = "id, merchant, client_id, payment_request_id, payment_notify_url, \
    close_time, created_at, outcome, finished_at, next_at, inquiries, claim_owner, claim_until, \
    payment_id, answers";

const CLAIM_PAYS_PG: &str = "\
UPDATE pay_records SET claim_owner = $1, claim_until = $2
WHERE id IN (
    SELECT id FROM pay_records
    WHERE status = 'open' AND next_at <= $3 AND (claim_until IS NULL OR claim_until <= $3)
    ORDER BY next_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED)
RETURNING id, merchant, client_id, payment_request_id, payment_notify_url, close_time,
    created_at, outcome, finished_at, next_at, inquiries, claim_owner, claim_until, payment_id,
    answers";

/// [`CLAIM_PAYS_PG`] without row locks, run in `BEGIN IMMEDIATE` (SQLite: one writer).
const CLAIM_PAYS_SQLITE: &str = "\
UPDATE pay_records SET claim_owner = $1, claim_until = $2
WHERE id IN (
    SELECT id FROM pay_records
    WHERE status = 'open' AND next_at <= $3 AND (claim_until IS NULL OR claim_until <= $3)
    ORDER BY next_at, id
    LIMIT $4)
RETURNING id, merchant, client_id, payment_request_id, payment_notify_url, close_time,
    created_at, outcome, finished_at, next_at, inquiries, claim_owner, claim_until, payment_id,
    answers";

/// `pay_` + 128 bits of SHA-256 over merchant and paymentRequestId (length-prefixed).
pub fn pay_id(merchant: &str, payment_request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"alipay-sidecar/pay/v1\n");
    h.update((merchant.len() as u64).to_be_bytes());
    h.update(merchant.as_bytes());
    h.update(payment_request_id.as_bytes());
    let d = h.finalize();
    let mut s = String::from("pay_");
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Store {
    /// Records a pay whose answer was not final, due for the reconciler at `reconcile_at`
    /// (or at `close_time` when that is earlier). Idempotent on merchant + paymentRequestId.
    /// Commit this before the pay answer goes back to the app.
    pub async fn record_pay(&self, p: &NewPay<'_>) -> Result<PayRecorded, StoreError> {
        let id = pay_id(p.merchant, p.payment_request_id);
        let next_at = p.reconcile_at.min(p.close_time);
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "INSERT INTO pay_records (id, merchant, client_id, payment_request_id,
                 payment_notify_url, close_time, created_at, status, next_at, inquiries,
                 payment_id, answers)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, 0, $9, 0)
             ON CONFLICT DO NOTHING"
        )
        .bind(&id)
        .bind(p.merchant)
        .bind(p.client_id)
        .bind(p.payment_request_id)
        .bind(p.payment_notify_url)
        .bind(p.close_time)
        .bind(p.now)
        .bind(next_at)
        .bind(p.payment_id)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("record pay", e))?
        .rows_affected());
        Ok(PayRecorded {
            id,
            inserted: n > 0,
        })
    }

    /// A verified PAYMENT_RESULT arrived for this payment: close its open record with
    /// `outcome` (normally [`PayOutcome::Notified`]). Returns false when there is no open
    /// record (final pay answer, already closed, or a notification faster than the pay
    /// answer; in the last case the reconciler's inquiry finds the result and the journal
    /// suppresses it as a duplicate).
    pub async fn close_pay(
        &self,
        owner: PayOwner<'_>,
        payment_request_id: &str,
        outcome: PayOutcome,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (by_merchant, by_client) = match owner {
            PayOwner::Merchant(m) => (Some(m), None),
            PayOwner::ClientId(c) => (None, Some(c)),
        };
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE pay_records SET status = 'closed', outcome = $1, finished_at = $2,
                 claim_owner = NULL, claim_until = NULL
             WHERE payment_request_id = $3 AND status = 'open'
               AND ($4 IS NULL OR merchant = $4) AND ($5 IS NULL OR client_id = $5)"
        )
        .bind(outcome.as_str())
        .bind(now)
        .bind(payment_request_id)
        .bind(by_merchant)
        .bind(by_client)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("close pay", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// Claims up to `limit` open records due at `now` for `owner` until `now + lease`: across
    /// every process on the store, one claimer per record until the lease runs out (then
    /// another replica takes it over, e.g. after this one died). Earliest due first. The
    /// claimer ends its turn with [`reschedule_pay`](Self::reschedule_pay) or
    /// [`finish_pay`](Self::finish_pay).
    pub async fn claim_due_pays(
        &self,
        now: i64,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<PayRecord>, StoreError> {
        let sql = ClaimSql {
            op: "claim pays",
            postgres: CLAIM_PAYS_PG,
            sqlite: CLAIM_PAYS_SQLITE,
        };
        let mut out = self
            .claim(&sql, now, owner, lease, limit, |r| pay_from_row(r))
            .await?;
        out.sort_by(|a, b| (a.next_at, &a.id).cmp(&(b.next_at, &b.id)));
        Ok(out)
    }

    /// The claimer made an inquiry that was not final: count it, due again at `next_at`, claim
    /// released. Only while `owner` still holds the claim: returns false when the lease ran out
    /// and another replica took the record over (or it was closed meanwhile).
    pub async fn reschedule_pay(
        &self,
        id: &str,
        owner: &str,
        next_at: i64,
    ) -> Result<bool, StoreError> {
        self.reschedule_pay_answered(id, owner, next_at, false)
            .await
    }

    /// [`reschedule_pay`](Self::reschedule_pay), also counting a verified inquiry answer
    /// about this very payment when `answered` ([`PayRecord::answers`]).
    pub async fn reschedule_pay_answered(
        &self,
        id: &str,
        owner: &str,
        next_at: i64,
        answered: bool,
    ) -> Result<bool, StoreError> {
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE pay_records SET next_at = $3, inquiries = inquiries + 1,
                 answers = answers + $4, claim_owner = NULL, claim_until = NULL
             WHERE id = $1 AND status = 'open' AND claim_owner = $2"
        )
        .bind(id)
        .bind(owner)
        .bind(next_at)
        .bind(i64::from(answered))
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("reschedule pay", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// Closes a record with its outcome (whoever holds the claim: an outcome is a fact).
    /// Returns false when it was already closed (the first outcome stays).
    pub async fn finish_pay(
        &self,
        id: &str,
        outcome: PayOutcome,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = dispatch!(self.backend, |pool| sqlx::query(
            "UPDATE pay_records SET status = 'closed', outcome = $2, finished_at = $3,
                 claim_owner = NULL, claim_until = NULL
             WHERE id = $1 AND status = 'open'"
        )
        .bind(id)
        .bind(outcome.as_str())
        .bind(now)
        .execute(pool)
        .await
        .map_err(|e| StoreError::query("finish pay", e))?
        .rows_affected());
        Ok(n > 0)
    }

    /// One record by id.
    pub async fn pay(&self, id: &str) -> Result<Option<PayRecord>, StoreError> {
        dispatch!(self.backend, |pool| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {PAY_COLS} FROM pay_records WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::query("read pay", e))?;
            row.as_ref().map(|r| pay_from_row(r)).transpose()
        })
    }

    /// The outcome of this payment's *closed* record (`None`: no record, or still open): a
    /// later PAYMENT_RESULT that contradicts it is a conflict the app must hear of.
    pub async fn closed_pay_outcome(
        &self,
        owner: PayOwner<'_>,
        payment_request_id: &str,
    ) -> Result<Option<PayOutcome>, StoreError> {
        let (by_merchant, by_client) = match owner {
            PayOwner::Merchant(m) => (Some(m), None),
            PayOwner::ClientId(c) => (None, Some(c)),
        };
        let outcome = dispatch!(self.backend, |pool| {
            let row = sqlx::query(
                "SELECT outcome FROM pay_records
                 WHERE payment_request_id = $1 AND status = 'closed'
                   AND ($2 IS NULL OR merchant = $2) AND ($3 IS NULL OR client_id = $3)
                 ORDER BY finished_at DESC LIMIT 1",
            )
            .bind(payment_request_id)
            .bind(by_merchant)
            .bind(by_client)
            .fetch_optional(pool)
            .await
            .map_err(|e| StoreError::query("read pay outcome", e))?;
            match row {
                Some(r) => r.opt_text("outcome")?,
                None => None,
            }
        });
        Ok(outcome.as_deref().and_then(PayOutcome::parse))
    }

    /// Open records (the `open records` gauge).
    pub async fn open_pay_count(&self) -> Result<i64, StoreError> {
        dispatch!(self.backend, |pool| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM pay_records WHERE status = 'open'")
                .fetch_one(pool)
                .await
                .map_err(|e| StoreError::query("count open pays", e))?;
            row.int("n")
        })
    }
}

fn pay_from_row(row: &dyn Cols) -> Result<PayRecord, StoreError> {
    let outcome = match row.opt_text("outcome")? {
        None => None,
        Some(s) => Some(PayOutcome::parse(&s).ok_or_else(|| StoreError::Corrupt {
            what: "column outcome".into(),
            detail: format!("unknown pay outcome {s:?}"),
        })?),
    };
    Ok(PayRecord {
        id: row.text("id")?,
        merchant: row.text("merchant")?,
        client_id: row.text("client_id")?,
        payment_request_id: row.text("payment_request_id")?,
        payment_notify_url: row.opt_text("payment_notify_url")?,
        close_time: row.int("close_time")?,
        created_at: row.int("created_at")?,
        outcome,
        finished_at: row.opt_int("finished_at")?,
        next_at: row.int("next_at")?,
        inquiries: row.int("inquiries")?,
        claim_owner: row.opt_text("claim_owner")?,
        claim_until: row.opt_int("claim_until")?,
        payment_id: row.opt_text("payment_id")?,
        answers: row.int("answers")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names() {
        for o in PayOutcome::ALL {
            assert_eq!(PayOutcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(PayOutcome::InquiredSuccess.as_str(), "inquired_success");
        assert!(PayOutcome::parse("open").is_none());
    }

    #[test]
    fn pay_ids_are_stable_and_unambiguous() {
        let a = pay_id("sg", "p-1");
        assert_eq!(a, pay_id("sg", "p-1"));
        assert!(a.starts_with("pay_") && a.len() == 36, "{a}");
        assert_ne!(a, pay_id("sg", "p-2"));
        assert_ne!(pay_id("ab", "c"), pay_id("a", "bc"));
    }
}
