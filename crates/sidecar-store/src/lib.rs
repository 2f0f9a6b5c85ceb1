//! The state store of alipay-sidecar (issue 13): the notification journal with
//! de-duplication, the store-and-forward delivery queue, and the pay records the
//! missed-notification reconciler works on, on SQLite or PostgreSQL through sqlx.
//!
//! Without `[store]` the sidecar is stateless; this crate is only used when a store is
//! configured. It does no HTTP and reads no clock: every time is UTC milliseconds passed in by
//! the caller, so the sidecar decides what "now" is and tests are deterministic.
//!
//! The backends, the schema, the de-duplication key and event id, the retry schedule and
//! lease model, failure handling and how to run the tests are described in this crate's
//! `README.md` (`crates/sidecar-store/README.md`); keep that text in step with the code.

mod backfill;
mod error;
mod event;
mod journal;
mod lock;
mod pays;
mod retention;
mod store;

pub use backfill::{BackfillCursor, Journaled};
pub use error::StoreError;
pub use event::{body_sha256, BusinessIdKind, EventKey};
pub use journal::{
    Delivery, ListFilter, NewNotification, NotificationRecord, NotificationStatus, Recorded,
};
pub use lock::{payment_lock_key, AdvisoryLease, PaymentLockPool, LOCK_POOL_SIZE};
pub use pays::{pay_id, NewPay, PayOutcome, PayOwner, PayRecord, PayRecorded};
pub use retention::{Pruned, BATCH as PRUNE_BATCH};
pub use store::{check_store, BackendKind, Store, StoreConfig, DEFAULT_TIMEOUT};
