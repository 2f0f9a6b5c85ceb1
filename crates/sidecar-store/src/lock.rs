//! The PostgreSQL half of the per-payment lock (issue 22): a session-level advisory lock
//! (`pg_try_advisory_lock(bigint)`) on a 64-bit hash of `(client_id, paymentRequestId)`,
//! held on a connection of a small pool of its own for as long as the holder works on the
//! payment, so that several sidecar replicas on one database never change one payment's state
//! at the same time. The in-process half (one holder per payment within a process) is the
//! sidecar's (`src/paylock.rs`); this file only talks to PostgreSQL.
//!
//! Why an advisory lock and not a row lease: no schema change, and the lock dies with its
//! session: a replica that crashes or loses its connection mid-cancel frees the payment at
//! once instead of after a lease time. Why session-level and not `pg_advisory_xact_lock`: the
//! holder keeps the lock across a gateway call or a delivery to the app; a transaction open
//! that long would be an idle-in-transaction session. Why a pool of its own: a held lock keeps
//! its connection, and the store's pool (8 connections, 2 s acquire timeout) must never be
//! starved by lock holders, or journal writes would time out and the store count as down.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Postgres;

use crate::store::{Backend, Store};
use crate::StoreError;

/// Connections of the lock pool: held locks at once per process (one per payment being
/// worked); a further holder waits for a connection, at most the acquire timeout.
pub const LOCK_POOL_SIZE: u32 = 16;

/// The advisory-lock key of a payment: the first 8 bytes of SHA-256 over
/// `"alipay-sidecar/payment\0" client_id "\0" payment_request_id`, big-endian. A collision
/// (two payments on one key) only makes them wait for each other.
pub fn payment_lock_key(client_id: &str, payment_request_id: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(b"alipay-sidecar/payment\0");
    h.update(client_id.as_bytes());
    h.update(b"\0");
    h.update(payment_request_id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// The connections that hold payment locks (PostgreSQL only). Cheap to clone.
#[derive(Clone)]
pub struct PaymentLockPool {
    pool: PgPool,
}

impl std::fmt::Debug for PaymentLockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentLockPool").finish_non_exhaustive()
    }
}

impl Store {
    /// A lock pool on this store's database (same URL and options), opened lazily; `None` for
    /// SQLite (one process per file: the in-process lock is the whole lock). Call it inside a
    /// tokio runtime (the store's): the pool spawns its maintenance there.
    pub fn payment_lock_pool(&self, acquire_timeout: Duration) -> Option<PaymentLockPool> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pool) => {
                let options = (*pool.connect_options()).clone();
                let pool = PgPoolOptions::new()
                    .max_connections(LOCK_POOL_SIZE)
                    .min_connections(0)
                    .acquire_timeout(acquire_timeout)
                    .connect_lazy_with(options);
                Some(PaymentLockPool { pool })
            }
        }
    }
}

impl PaymentLockPool {
    /// One try: `Some(lease)` when this session now holds the lock of `key`, `None` when
    /// another session holds it (the connection goes back to the pool, holding nothing) or
    /// when every connection of the pool is holding a lock.
    pub async fn try_lock(&self, key: i64) -> Result<Option<AdvisoryLease>, StoreError> {
        let mut conn = match self.pool.acquire().await {
            Ok(conn) => conn,
            // every lock connection is holding a payment: busy, not "the store is down"
            // (which would stop every other store call)
            Err(sqlx::Error::PoolTimedOut) => return Ok(None),
            Err(e) => return Err(StoreError::query("payment lock", e)),
        };
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| StoreError::query("payment lock", e))?;
        Ok(got.then_some(AdvisoryLease {
            conn: Some(conn),
            key,
        }))
    }
}

/// A held advisory lock: its session's connection. [`AdvisoryLease::release`] unlocks and
/// returns the connection to the pool; dropped without it (a cancelled task, a panic), the
/// connection is closed instead, which ends the session and frees the lock: a lock never goes
/// back to the pool still held.
pub struct AdvisoryLease {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
}

impl std::fmt::Debug for AdvisoryLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisoryLease")
            .field("key", &self.key)
            .finish()
    }
}

impl AdvisoryLease {
    /// Unlocks. On any failure the connection is closed (which frees the lock too).
    pub async fn release(mut self) -> Result<(), StoreError> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut *conn)
            .await;
        match unlocked {
            Ok(true) => Ok(()),
            Ok(false) => {
                conn.close_on_drop();
                Err(StoreError::Corrupt {
                    what: "payment lock".into(),
                    detail: "the session did not hold the lock it released; connection closed"
                        .into(),
                })
            }
            Err(e) => {
                conn.close_on_drop();
                Err(StoreError::query("payment unlock", e))
            }
        }
    }
}

impl Drop for AdvisoryLease {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_stable_and_separates_client_ids() {
        assert_eq!(
            payment_lock_key("T_1", "p-1"),
            payment_lock_key("T_1", "p-1")
        );
        assert_ne!(
            payment_lock_key("T_1", "p-1"),
            payment_lock_key("T_2", "p-1")
        );
        assert_ne!(
            payment_lock_key("T_1", "p-1"),
            payment_lock_key("T_1", "p-2")
        );
        // the separator: ("T_1", "2p") is not ("T_12", "p")
        assert_ne!(payment_lock_key("T_1", "2p"), payment_lock_key("T_12", "p"));
    }
}
