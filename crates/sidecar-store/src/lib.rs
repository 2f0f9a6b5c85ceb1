//! The state store of alipay-sidecar (issue 13): the notification journal with
//! de-duplication, the store-and-forward delivery queue, and the pay records the
//! missed-notification reconciler works on.
//!
//! Without `[store]` the sidecar is stateless, as before; this crate is only used when a store
//! is configured. It does no HTTP and reads no clock: every time is UTC milliseconds passed in
//! by the caller, so the sidecar decides what "now" is and tests are deterministic.
//!
//! # Backends
//!
//! * **SQLite**, embedded (`[store] path`): one sidecar, or one per pod on a volume. WAL
//!   journal (the `notifications` CLI reads while the sidecar writes), `synchronous = FULL` (a
//!   returned commit is on disk: store-and-forward acknowledges Alipay only after that), 5 s
//!   busy timeout between writers. The folder must exist; the file is created.
//! * **PostgreSQL** (`[store] url`): shared by several replicas, which then de-duplicate and
//!   reconcile together (replica B recognises a re-send that replica A delivered; a pay sent
//!   through A is reconciled by exactly one of them).
//!
//! Both through [`sqlx`] (async on tokio like the sidecar, pure-Rust PostgreSQL protocol,
//! bundled SQLite, a migrator that records applied versions in the database). No compile-time
//! checked queries: building needs no database; the tests run every statement on both
//! backends instead.
//!
//! # Schema
//!
//! One migration text for both backends (`migrations/0001_init.sql`, embedded in the binary
//! and applied by [`Store::open`]; the migrator keeps a checksum per version in
//! `_sqlx_migrations`, takes an advisory lock on PostgreSQL so replicas starting together
//! migrate once, and refuses a database migrated by a newer version). Only `TEXT`, `BIGINT`
//! and `BYTEA` columns (SQLite stores `BYTEA` values as blobs), no auto-increment: ids are
//! derived from the data, which also makes inserts idempotent.
//!
//! * `notifications`: one row per event: key parts (merchant, client id, path, `notifyType`,
//!   business id, result), SHA-256 and bytes of the body, the headers a later delivery
//!   carries, `status` (`pending` → `delivered`, or `dead`), first/last seen, copies received,
//!   failed attempts and last error, and for store-and-forward `next_attempt_at` plus a lease
//!   (`claim_owner`, `claim_until`).
//! * `pay_records`: one row per merchant + `paymentRequestId` whose pay answer was not final:
//!   `paymentNotifyUrl`, close time, `status` (`open` → `closed` with an outcome:
//!   `notified`, `inquired_success`, `inquired_fail`, `cancelled`, `expired`), `next_at`,
//!   inquiries made, and a lease; since migration 2 (`0002_pay_answers.sql`) also the pay
//!   answer's `paymentId` and the count of verified inquiry answers about the payment.
//!
//! Finished work is pruned by [`Store::prune`] (the rule: `retention.rs`). An SQLite
//! database, `-wal` and `-shm` are owner-only (0600).
//!
//! # De-duplication key
//!
//! Notifications carry no id (the Antom docs only say "handle idempotency"), so
//! [`EventKey::from_notification`] builds one from the fields the issue lists: client id, the
//! notify path, `notifyType`, the business id and the result (`result.resultStatus`,
//! `result.resultCode`). The business id follows the type: `paymentRequestId` for `PAYMENT_*`,
//! `refundRequestId` for `REFUND_*`, `captureRequestId` for `CAPTURE_*`, `disputeId` +
//! `notifyTime` for dispute types; other types use the most specific of these present. Types
//! with none of them (AUTHCODE_CREATED, TOKEN_CANCELED, unknown ones) are keyed by the SHA-256
//! of the body: Alipay re-sends the same bytes with a new signature, so re-sends are still
//! recognised, and the worst case is a second delivery, never a lost one. The body is parsed
//! only to read these fields; what is delivered is the bytes received.
//!
//! The event id ([`EventKey::event_id`], `X-Alipay-Sidecar-Event-Id`) is `evt_` and the first
//! 128 bits of the SHA-256 of the canonical key, so it is the same on every replica and across
//! restarts, for a byte-identical re-send and for one re-signed with a later `Request-Time`
//! (headers are not in the key), while a different result for the same payment (`U` then
//! `S`) is a different event. A PAYMENT_RESULT the reconciler builds from inquiryPayment has
//! the same key as Alipay's own notification of that result, so whichever comes second is a
//! duplicate. The row's primary key is the event id, which makes
//! [`Store::record_notification`] an atomic insert-or-get: however many copies arrive at once,
//! on however many replicas, exactly one call sees [`Recorded::inserted`].
//!
//! # Retry schedule and the lease model
//!
//! Alipay re-sends an unacknowledged notification up to 8 times within 24 h (intervals 0 s,
//! 2 min, 10 min, 10 min, 1 h, 2 h, 6 h, 15 h), then gives up (Antom docs). In line delivery
//! (the default) therefore needs no queue: the row stays `pending` until the app answers 2xx
//! ([`Store::mark_delivered`]), and a later re-send is delivered again or, once delivered,
//! acknowledged by the sidecar itself. Store-and-forward acknowledges first and owns the
//! retries, continuing past Alipay's 24 h up to `max_delivery_age`: the row is queued with a
//! `next_attempt_at` and a delivery worker claims it.
//!
//! Work that must be done by one process (a queued delivery, a due pay record) is *claimed*
//! with a lease: `claim_owner` and `claim_until = now + lease`. A claim takes rows that are due
//! and whose lease is absent or expired, in one atomic statement: on PostgreSQL
//! `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)` (concurrent claimers skip each
//! other's rows instead of waiting), on SQLite the same update inside `BEGIN IMMEDIATE` (one
//! writer at a time). The claimer ends its turn by recording the result, which releases the
//! claim. If it dies, the lease expires and the next claim by any replica takes the work over:
//! a delivery is at-least-once (the app may see the same event id twice, never zero times), a
//! pay record is inquired again. A lease should be longer than one turn (an HTTP call with its
//! timeout).
//!
//! # Failure
//!
//! [`StoreError`] says what to fix (folder missing, file unwritable, server unreachable, login
//! refused, schema from a newer version). [`StoreError::is_unavailable`] tells the caller that
//! the store is out of reach rather than wrong: notifications then flow as without a store
//! (the store must never be the reason a payment result is lost), or get 503 in
//! store-and-forward mode so that Alipay re-sends.
//!
//! # Tests
//!
//! `tests/store.rs` runs every scenario through the same function on an SQLite file in a temp
//! folder and on a real PostgreSQL server: `export SIDECAR_TEST_PG_URL="$(scripts/test-postgres.sh
//! start)"` (a throw-away cluster on 127.0.0.1; `.ci/run` does this). Without the variable the
//! PostgreSQL variants say why they skip; under `CI=true` they fail instead.

mod error;
mod event;
mod journal;
mod pays;
mod retention;
mod store;

pub use error::StoreError;
pub use event::{body_sha256, BusinessIdKind, EventKey};
pub use journal::{
    Delivery, ListFilter, NewNotification, NotificationRecord, NotificationStatus, Recorded,
};
pub use pays::{pay_id, NewPay, PayOutcome, PayOwner, PayRecord, PayRecorded};
pub use retention::{Pruned, BATCH as PRUNE_BATCH};
pub use store::{BackendKind, Store, StoreConfig, DEFAULT_TIMEOUT};
