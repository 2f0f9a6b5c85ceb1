//! The store on real backends: an SQLite file in a temp folder, and a real PostgreSQL server
//! whose URL is in `SIDECAR_TEST_PG_URL` (`scripts/test-postgres.sh start` makes one).
//! Every scenario runs on both, through the same function. Each PostgreSQL test creates its
//! own database, so tests run in parallel. Without the URL the PostgreSQL variants print why
//! they skip, except under `CI=true`, where they fail.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sidecar_store::{
    BackendKind, EventKey, ListFilter, NewNotification, NewPay, NotificationStatus, PayOutcome,
    PayOwner, Store, StoreConfig, StoreError,
};
use sqlx::Connection;

/// Deliberately not `ALIPAY_SIDECAR_…`: the sidecar reads every variable with that prefix as a
/// config override and refuses unknown ones, so such a variable exported for the whole
/// `cargo test` run (as .ci/run does) would stop every sidecar the other tests start.
const PG_ENV: &str = "SIDECAR_TEST_PG_URL";
const CLIENT: &str = "2188120012345678";
const PATH: &str = "/alipay/notify";
const LEASE: Duration = Duration::from_secs(30);

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// One test's database: a fresh SQLite file, or a fresh PostgreSQL database.
struct TestDb {
    config: StoreConfig,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>, // (admin URL, database name)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `postgres://u@h:p/postgres?x` → `postgres://u@h:p/<db>?x`
fn with_database(url: &str, db: &str) -> String {
    let start = url.find("://").map(|i| i + 3).expect("URL with a scheme");
    let (head, tail) = url.split_at(start);
    let auth_end = tail.find(['/', '?']).unwrap_or(tail.len());
    let (authority, rest) = tail.split_at(auth_end);
    let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
    format!("{head}{authority}/{db}{query}")
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            config: StoreConfig::sqlite(dir.path().join("state.db")),
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres(test: &str) -> Option<TestDb> {
        let admin = match std::env::var(PG_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                // The same words as the integration tests' one helper
                // (tests/it/support/skip.rs, not reachable from this crate): `SKIPPED <test>:
                // <why>` straight to stderr (libtest hides a passing test's eprintln), a
                // failure under CI=true.
                let why = format!(
                    "{PG_ENV} is not set (export {PG_ENV}=\"$(scripts/test-postgres.sh start)\" to run it)"
                );
                assert!(
                    !under_ci(),
                    "CI=true: {test} (PostgreSQL) must run, but {why}"
                );
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED {test} (PostgreSQL): {why}");
                return None;
            }
        };
        let name = format!(
            "t_{}_{}_{}",
            test,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connect to {PG_ENV}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Some(TestDb {
            config: StoreConfig::postgres(with_database(&admin, &name)),
            _dir: None,
            pg: Some((admin, name)),
        })
    }

    async fn open(&self) -> Store {
        Store::open(&self.config)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.config.display()))
    }

    async fn finish(self) {
        if let Some((admin, name)) = &self.pg {
            let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

/// Generates `on_sqlite::NAME` and `on_postgres::NAME` for each scenario `NAME(&TestDb)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::TestDb::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

on_both!(
    journal_deduplicates_and_tracks_status,
    concurrent_copies_make_one_row,
    store_and_forward_queue,
    pay_record_lifecycle,
    two_stores_claim_each_record_once,
    reopen_keeps_data_and_migrations_are_idempotent,
    unknown_ids_are_reported_not_errors,
    prune_removes_only_finished_work,
    pay_answers_and_closed_outcomes,
    backfill_cursor_lease_and_journal_lookup,
);

fn pay_body(prid: &str, status: &str, code: &str) -> String {
    format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"{code}","resultStatus":"{status}","resultMessage":"m"}},"paymentRequestId":"{prid}","paymentId":"2024010112345","paymentAmount":{{"currency":"USD","value":"100"}}}}"#
    )
}

fn headers() -> Vec<(String, String)> {
    vec![
        (
            "content-type".into(),
            "application/json; charset=UTF-8".into(),
        ),
        ("x-alipay-sidecar-verified".into(), "true".into()),
    ]
}

async fn record(
    store: &Store,
    merchant: &str,
    body: &[u8],
    now: i64,
    deliver_at: Option<i64>,
) -> sidecar_store::Recorded {
    let key = EventKey::from_notification(CLIENT, PATH, body);
    store
        .record_notification(&NewNotification {
            merchant,
            key: &key,
            body,
            headers: &headers(),
            now,
            deliver_at,
        })
        .await
        .unwrap()
}

async fn journal_deduplicates_and_tracks_status(db: &TestDb) {
    let store = db.open().await;
    let body = pay_body("pay-1", "S", "SUCCESS");
    let first = record(&store, "sg", body.as_bytes(), 1_000, None).await;
    assert!(first.inserted);
    assert_eq!(first.status, NotificationStatus::Pending);
    assert!(!first.already_delivered);
    assert_eq!(first.first_seen, 1_000);
    assert_eq!(first.seen_count, 1);
    assert_eq!(
        first.event_id,
        EventKey::from_notification(CLIENT, PATH, body.as_bytes()).event_id()
    );

    // Not delivered yet (the app failed): Alipay's re-send is recorded, not suppressed.
    let resend = record(&store, "sg", body.as_bytes(), 120_000, None).await;
    assert_eq!(resend.event_id, first.event_id);
    assert!(!resend.inserted);
    assert!(!resend.already_delivered);
    assert_eq!(resend.first_seen, 1_000);
    assert_eq!(resend.seen_count, 2);
    assert!(store
        .record_attempt_failure(&first.event_id, "app answered 502", None, 120_001)
        .await
        .unwrap());

    assert!(store
        .mark_delivered(&first.event_id, 130_000)
        .await
        .unwrap());
    // Same event with other bytes (as Alipay might re-serialise it): suppressed.
    let reordered = format!(
        r#"{{"paymentRequestId":"pay-1","notifyType":"PAYMENT_RESULT","result":{{"resultStatus":"S","resultCode":"SUCCESS"}},"notifyTime":"{}"}}"#,
        "2024-01-01T00:10:00Z"
    );
    let dup = record(&store, "sg", reordered.as_bytes(), 700_000, None).await;
    assert_eq!(dup.event_id, first.event_id);
    assert!(dup.already_delivered);
    assert_eq!(dup.status, NotificationStatus::Delivered);
    assert_eq!(dup.seen_count, 3);

    // Another result for the same payment is another event.
    let fail = record(
        &store,
        "sg",
        pay_body("pay-1", "F", "ORDER_CLOSED").as_bytes(),
        800_000,
        None,
    )
    .await;
    assert!(fail.inserted);
    assert_ne!(fail.event_id, first.event_id);
    // Another merchant's event.
    let other = record(
        &store,
        "my",
        pay_body("pay-9", "S", "SUCCESS").as_bytes(),
        900_000,
        None,
    )
    .await;
    assert!(other.inserted);

    // show: the first body byte for byte, its headers, the counters.
    let shown = store.show(&first.event_id).await.unwrap().unwrap();
    assert_eq!(shown.body, body.as_bytes());
    assert_eq!(
        shown.body_sha256,
        sidecar_store::body_sha256(body.as_bytes())
    );
    assert_eq!(shown.headers, headers());
    assert_eq!(shown.status, NotificationStatus::Delivered);
    assert_eq!(shown.delivered_at, Some(130_000));
    assert_eq!(shown.seen_count, 3);
    assert_eq!(shown.last_seen, 700_000);
    assert_eq!(shown.attempts, 1);
    assert_eq!(shown.last_error.as_deref(), Some("app answered 502"));
    assert_eq!(shown.notify_type, "PAYMENT_RESULT");
    assert_eq!(shown.business_id, "pay-1");
    assert_eq!(shown.merchant, "sg");
    assert_eq!(
        (shown.result_status.as_str(), shown.result_code.as_str()),
        ("S", "SUCCESS")
    );

    // list: newest first, filters, limit.
    let all = store.list(&ListFilter::default()).await.unwrap();
    let ids: Vec<_> = all.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            other.event_id.as_str(),
            fail.event_id.as_str(),
            first.event_id.as_str()
        ]
    );
    assert!(all.iter().all(|r| r.body.is_empty()));
    let delivered = store
        .list(&ListFilter {
            status: Some(NotificationStatus::Delivered),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].event_id, first.event_id);
    let sg_pending = store
        .list(&ListFilter {
            status: Some(NotificationStatus::Pending),
            merchant: Some("sg"),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(sg_pending.len(), 1);
    assert_eq!(sg_pending[0].event_id, fail.event_id);
    let one = store
        .list(&ListFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    store.close().await;
}

async fn concurrent_copies_make_one_row(db: &TestDb) {
    let store = db.open().await;
    let body = pay_body("pay-c", "S", "SUCCESS");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            record(&store, "sg", body.as_bytes(), 1_000 + i, None).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|r| r.inserted).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().all(|r| !r.already_delivered));
    let ids: HashSet<_> = results.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids.len(), 1);
    let mut counts: Vec<_> = results.iter().map(|r| r.seen_count).collect();
    counts.sort();
    assert_eq!(counts, (1..=10).collect::<Vec<_>>());
    let all = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].seen_count, 10);

    // Once delivered, ten concurrent re-sends are all suppressed.
    store.mark_delivered(&all[0].event_id, 5_000).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            record(&store, "sg", body.as_bytes(), 6_000 + i, None).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.already_delivered && !r.inserted, "{r:?}");
    }
    store.close().await;
}

async fn store_and_forward_queue(db: &TestDb) {
    let store = db.open().await;
    let body = pay_body("pay-q", "S", "SUCCESS");
    let queued = record(&store, "sg", body.as_bytes(), 1_000, Some(1_000)).await;
    // Delivered in line by the receiver: never handed to the worker.
    let inline = record(
        &store,
        "sg",
        pay_body("pay-i", "S", "SUCCESS").as_bytes(),
        1_000,
        None,
    )
    .await;

    assert!(store
        .claim_due_deliveries(999, "a", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let got = store
        .claim_due_deliveries(1_000, "a", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.event_id, queued.event_id);
    assert_eq!(d.body, body.as_bytes());
    assert_eq!(d.headers, headers());
    assert_eq!(
        (d.merchant.as_str(), d.client_id.as_str(), d.path.as_str()),
        ("sg", CLIENT, PATH)
    );
    assert_eq!(d.notify_type, "PAYMENT_RESULT");
    assert_eq!((d.attempts, d.first_seen), (0, 1_000));
    // Leased: nobody else gets it.
    assert!(store
        .claim_due_deliveries(2_000, "b", LEASE, 10)
        .await
        .unwrap()
        .is_empty());

    // The app is down: next attempt in 2 minutes.
    assert!(store
        .record_attempt_failure(&queued.event_id, "connection refused", Some(121_000), 1_500)
        .await
        .unwrap());
    assert!(store
        .claim_due_deliveries(120_999, "b", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_due_deliveries(121_000, "b", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);

    // Worker b dies mid-delivery: after its lease, c takes it over, same event id.
    let lease_ms = LEASE.as_millis() as i64;
    assert!(store
        .claim_due_deliveries(121_000 + lease_ms - 1, "c", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let taken = store
        .claim_due_deliveries(121_000 + lease_ms, "c", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].event_id, queued.event_id);

    // Gave up: dead, not claimable; retry --dead revives it.
    assert!(store
        .mark_dead(&queued.event_id, "max_delivery_age", 200_000)
        .await
        .unwrap());
    assert!(!store
        .mark_dead(&queued.event_id, "again", 200_001)
        .await
        .unwrap());
    assert!(!store
        .record_attempt_failure(&queued.event_id, "late", Some(1), 200_002)
        .await
        .unwrap());
    let dead = store
        .list(&ListFilter {
            status: Some(NotificationStatus::Dead),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("max_delivery_age"));
    assert!(store
        .claim_due_deliveries(300_000, "c", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.retry_dead(300_000).await.unwrap(), 1);
    assert_eq!(store.retry_dead(300_000).await.unwrap(), 0);
    let revived = store
        .claim_due_deliveries(300_000, "c", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(revived.len(), 1);
    assert!(store
        .mark_delivered(&queued.event_id, 300_100)
        .await
        .unwrap());
    assert!(store
        .claim_due_deliveries(900_000, "c", LEASE, 10)
        .await
        .unwrap()
        .is_empty());

    // replay: a delivered event (and an in-line one) delivered once more, due now.
    assert!(store.replay(&queued.event_id, 400_000).await.unwrap());
    assert!(store.replay(&inline.event_id, 400_000).await.unwrap());
    let replayed = store
        .claim_due_deliveries(400_000, "d", LEASE, 10)
        .await
        .unwrap();
    let ids: HashSet<_> = replayed.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(
        ids,
        HashSet::from([queued.event_id.as_str(), inline.event_id.as_str()])
    );
    let shown = store.show(&queued.event_id).await.unwrap().unwrap();
    assert_eq!(shown.status, NotificationStatus::Pending);
    assert_eq!(shown.attempts, 1);
    for d in &replayed {
        assert!(store.mark_delivered(&d.event_id, 400_100).await.unwrap());
    }

    // limit and order: oldest due first.
    for (i, at) in [(1, 500_300), (2, 500_100), (3, 500_200)] {
        record(
            &store,
            "sg",
            pay_body(&format!("pay-o{i}"), "S", "SUCCESS").as_bytes(),
            500_000,
            Some(at),
        )
        .await;
    }
    let two = store
        .claim_due_deliveries(600_000, "e", LEASE, 2)
        .await
        .unwrap();
    let prids: Vec<_> = two
        .iter()
        .map(|d| EventKey::from_notification(CLIENT, PATH, &d.body).business_id)
        .collect();
    assert_eq!(prids, ["pay-o2", "pay-o3"]);
    store.close().await;
}

fn new_pay<'a>(prid: &'a str, reconcile_at: i64, close_time: i64) -> NewPay<'a> {
    NewPay {
        merchant: "sg",
        client_id: CLIENT,
        payment_request_id: prid,
        payment_notify_url: Some("https://shop.example/alipay/notify"),
        payment_id: Some("2024010112345"),
        close_time,
        reconcile_at,
        now: 1_000,
    }
}

async fn pay_record_lifecycle(db: &TestDb) {
    let store = db.open().await;
    let rec = store
        .record_pay(&new_pay("p-1", 61_000, 1_801_000))
        .await
        .unwrap();
    assert!(rec.inserted);
    assert_eq!(rec.id, sidecar_store::pay_id("sg", "p-1"));
    // A retried pay with the same paymentRequestId: same record, untouched.
    let again = store
        .record_pay(&new_pay("p-1", 99_000, 99_000))
        .await
        .unwrap();
    assert_eq!(
        again,
        sidecar_store::PayRecorded {
            id: rec.id.clone(),
            inserted: false
        }
    );
    assert_eq!(store.open_pay_count().await.unwrap(), 1);
    let p = store.pay(&rec.id).await.unwrap().unwrap();
    assert_eq!(p.next_at, 61_000);
    assert_eq!(p.close_time, 1_801_000);
    assert_eq!(p.created_at, 1_000);
    assert_eq!(
        p.payment_notify_url.as_deref(),
        Some("https://shop.example/alipay/notify")
    );
    assert_eq!((p.outcome, p.inquiries), (None, 0));

    assert!(store
        .claim_due_pays(60_999, "a", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let claimed = store.claim_due_pays(61_000, "a", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].claim_owner.as_deref(), Some("a"));
    assert_eq!(
        claimed[0].claim_until,
        Some(61_000 + LEASE.as_millis() as i64)
    );
    assert!(store
        .claim_due_pays(62_000, "b", LEASE, 10)
        .await
        .unwrap()
        .is_empty());

    // Inquiry not final: only the claimer can reschedule.
    assert!(!store.reschedule_pay(&rec.id, "b", 64_000).await.unwrap());
    assert!(store.reschedule_pay(&rec.id, "a", 64_000).await.unwrap());
    assert!(!store.reschedule_pay(&rec.id, "a", 65_000).await.unwrap());
    let p = store.pay(&rec.id).await.unwrap().unwrap();
    assert_eq!((p.next_at, p.inquiries, p.claim_owner), (64_000, 1, None));

    // a claims, dies; after the lease b takes over and a's late reschedule is refused.
    let claimed = store.claim_due_pays(64_000, "a", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let lease_ms = LEASE.as_millis() as i64;
    assert!(store
        .claim_due_pays(64_000 + lease_ms - 1, "b", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let taken = store
        .claim_due_pays(64_000 + lease_ms, "b", LEASE, 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].inquiries, 1);
    assert!(!store.reschedule_pay(&rec.id, "a", 200_000).await.unwrap());
    assert!(store
        .finish_pay(&rec.id, PayOutcome::InquiredSuccess, 100_000)
        .await
        .unwrap());
    assert!(!store
        .finish_pay(&rec.id, PayOutcome::Expired, 100_001)
        .await
        .unwrap());
    let p = store.pay(&rec.id).await.unwrap().unwrap();
    assert_eq!(p.outcome, Some(PayOutcome::InquiredSuccess));
    assert_eq!(p.finished_at, Some(100_000));
    assert_eq!(store.open_pay_count().await.unwrap(), 0);
    assert!(store
        .claim_due_pays(i64::MAX / 2, "b", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    // Closed stays closed when the app retries the pay.
    assert!(
        !store
            .record_pay(&new_pay("p-1", 1, 2))
            .await
            .unwrap()
            .inserted
    );
    assert_eq!(store.open_pay_count().await.unwrap(), 0);

    // The notification closes the record, by merchant or by client id; not another merchant's.
    store
        .record_pay(&new_pay("p-2", 61_000, 1_801_000))
        .await
        .unwrap();
    store
        .record_pay(&new_pay("p-3", 61_000, 1_801_000))
        .await
        .unwrap();
    assert_eq!(store.open_pay_count().await.unwrap(), 2);
    assert!(!store
        .close_pay(PayOwner::Merchant("my"), "p-2", PayOutcome::Notified, 5_000)
        .await
        .unwrap());
    assert!(!store
        .close_pay(
            PayOwner::ClientId("2188000000000000"),
            "p-2",
            PayOutcome::Notified,
            5_000
        )
        .await
        .unwrap());
    assert!(store
        .close_pay(PayOwner::Merchant("sg"), "p-2", PayOutcome::Notified, 5_000)
        .await
        .unwrap());
    assert!(store
        .close_pay(
            PayOwner::ClientId(CLIENT),
            "p-3",
            PayOutcome::Notified,
            5_000
        )
        .await
        .unwrap());
    assert!(!store
        .close_pay(
            PayOwner::ClientId(CLIENT),
            "p-3",
            PayOutcome::Notified,
            5_001
        )
        .await
        .unwrap());
    assert!(!store
        .close_pay(
            PayOwner::Merchant("sg"),
            "never-recorded",
            PayOutcome::Notified,
            5_000
        )
        .await
        .unwrap());
    assert_eq!(store.open_pay_count().await.unwrap(), 0);
    let p2 = store
        .pay(&sidecar_store::pay_id("sg", "p-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p2.outcome, Some(PayOutcome::Notified));

    // Close time before reconcile_after: due at the close time (to cancel or expire it).
    let short = store
        .record_pay(&new_pay("p-4", 61_000, 31_000))
        .await
        .unwrap();
    let due = store.claim_due_pays(31_000, "a", LEASE, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, short.id);
    assert!(store
        .finish_pay(&short.id, PayOutcome::Expired, 31_001)
        .await
        .unwrap());
    store.close().await;
}

async fn two_stores_claim_each_record_once(db: &TestDb) {
    const PAYS: usize = 120;
    const EVENTS: usize = 60;
    let a = db.open().await;
    let b = db.open().await;
    for i in 0..PAYS {
        let prid = format!("p-{i}");
        let store = if i % 2 == 0 { &a } else { &b };
        store
            .record_pay(&new_pay(&prid, 10_000 + i as i64, 2_000_000))
            .await
            .unwrap();
    }
    for i in 0..EVENTS {
        let store = if i % 2 == 0 { &a } else { &b };
        record(
            store,
            "sg",
            pay_body(&format!("e-{i}"), "S", "SUCCESS").as_bytes(),
            1_000,
            Some(2_000 + i as i64),
        )
        .await;
    }
    // Both replicas (two claimers each) claim until nothing is left, all at the same "now".
    let mut tasks = Vec::new();
    for (n, store) in [a.clone(), a.clone(), b.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let owner = format!("replica-{n}");
            let mut pays = Vec::new();
            let mut events = Vec::new();
            loop {
                let p = store
                    .claim_due_pays(50_000, &owner, LEASE, 7)
                    .await
                    .unwrap();
                let e = store
                    .claim_due_deliveries(50_000, &owner, LEASE, 5)
                    .await
                    .unwrap();
                if p.is_empty() && e.is_empty() {
                    break;
                }
                assert!(p
                    .iter()
                    .all(|r| r.claim_owner.as_deref() == Some(owner.as_str())));
                pays.extend(p.into_iter().map(|r| r.id));
                events.extend(e.into_iter().map(|d| d.event_id));
                tokio::task::yield_now().await;
            }
            (pays, events)
        }));
    }
    let mut pay_claims: HashMap<String, usize> = HashMap::new();
    let mut event_claims: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let (p, e) = t.await.unwrap();
        for id in p {
            *pay_claims.entry(id).or_default() += 1;
        }
        for id in e {
            *event_claims.entry(id).or_default() += 1;
        }
    }
    assert_eq!(pay_claims.len(), PAYS);
    assert!(pay_claims.values().all(|&n| n == 1), "{pay_claims:?}");
    assert_eq!(event_claims.len(), EVENTS);
    assert!(event_claims.values().all(|&n| n == 1), "{event_claims:?}");

    // Every lease expires together: each record is claimed again exactly once.
    let later = 50_000 + LEASE.as_millis() as i64;
    let (x, y) = tokio::join!(
        a.claim_due_pays(later, "a", LEASE, 1_000),
        b.claim_due_pays(later, "b", LEASE, 1_000)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len() + y.len(), PAYS);
    let ids: HashSet<_> = x.iter().chain(&y).map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), PAYS);
    a.close().await;
    b.close().await;
}

async fn reopen_keeps_data_and_migrations_are_idempotent(db: &TestDb) {
    let store = db.open().await;
    let r = record(
        &store,
        "sg",
        pay_body("pay-r", "S", "SUCCESS").as_bytes(),
        1_000,
        None,
    )
    .await;
    store.mark_delivered(&r.event_id, 2_000).await.unwrap();
    store
        .record_pay(&new_pay("p-r", 61_000, 99_000))
        .await
        .unwrap();
    store.close().await;

    // Two processes starting at once on the same database both migrate (or find it done).
    let (x, y) = tokio::join!(Store::open(&db.config), Store::open(&db.config));
    let (x, y) = (x.unwrap(), y.unwrap());
    let again = record(
        &x,
        "sg",
        pay_body("pay-r", "S", "SUCCESS").as_bytes(),
        3_000,
        None,
    )
    .await;
    assert!(again.already_delivered, "{again:?}");
    assert_eq!(again.event_id, r.event_id);
    assert_eq!(y.open_pay_count().await.unwrap(), 1);
    let expected = match db.config {
        StoreConfig::Sqlite { .. } => BackendKind::Sqlite,
        StoreConfig::Postgres { .. } => BackendKind::Postgres,
    };
    assert_eq!(x.kind(), expected);
    x.close().await;
    y.close().await;
    let z = db.open().await;
    assert_eq!(z.list(&ListFilter::default()).await.unwrap().len(), 1);
    z.close().await;
}

async fn unknown_ids_are_reported_not_errors(db: &TestDb) {
    let store = db.open().await;
    let id = "evt_00000000000000000000000000000000";
    assert!(store.show(id).await.unwrap().is_none());
    assert!(!store.mark_delivered(id, 1).await.unwrap());
    assert!(!store.replay(id, 1).await.unwrap());
    assert!(!store.mark_dead(id, "x", 1).await.unwrap());
    assert!(!store
        .record_attempt_failure(id, "x", None, 1)
        .await
        .unwrap());
    assert!(store.pay("pay_nope").await.unwrap().is_none());
    assert!(!store
        .finish_pay("pay_nope", PayOutcome::Expired, 1)
        .await
        .unwrap());
    assert!(!store.reschedule_pay("pay_nope", "a", 1).await.unwrap());
    assert_eq!(store.retry_dead(1).await.unwrap(), 0);
    // A limit of 0 or less claims nothing (PostgreSQL would refuse a negative LIMIT).
    store.record_pay(&new_pay("p-l", 0, 10)).await.unwrap();
    assert!(store
        .claim_due_pays(5, "a", LEASE, -1)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_due_pays(5, "a", LEASE, 0)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_due_deliveries(5, "a", LEASE, -1)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.claim_due_pays(5, "a", LEASE, 1).await.unwrap().len(),
        1
    );
    // Hostile sizes are stored bounded, not refused.
    let r = record(&store, "sg", b"not json at all", 1, None).await;
    let huge = "e".repeat(1_000_000);
    assert!(store
        .record_attempt_failure(&r.event_id, &huge, None, 2)
        .await
        .unwrap());
    let shown = store.show(&r.event_id).await.unwrap().unwrap();
    assert!(shown.last_error.unwrap().len() <= 1000);
    assert_eq!(shown.body, b"not json at all");
    store.close().await;
}

// ---- SQLite only: files that cannot be used, with messages that say what to do.

#[tokio::test]
async fn sqlite_missing_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder").join("state.db");
    let e = Store::open(&StoreConfig::sqlite(&path)).await.unwrap_err();
    assert!(matches!(e, StoreError::SqliteFolder { .. }), "{e:?}");
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("no-such-folder") && msg.contains("does not exist"),
        "{msg}"
    );
    assert!(!path.exists());

    // The "folder" is a file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = Store::open(&StoreConfig::sqlite(file.join("state.db")))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::SqliteFolder { .. }), "{e:?}");
}

#[tokio::test]
async fn sqlite_unwritable_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // The path is a folder.
    let e = Store::open(&StoreConfig::sqlite(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::SqliteUnwritable { .. }), "{e:?}");
    assert!(e.to_string().contains("is a folder"), "{e}");

    // A folder nobody may create files in, not even root (procfs).
    let e = Store::open(&StoreConfig::sqlite("/proc/alipay-sidecar-state.db"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::SqliteUnwritable { .. }), "{e:?}");
    assert!(e.is_unavailable());
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("/proc/alipay-sidecar-state.db") && msg.contains("writable"),
        "{msg}"
    );

    // Permissions: root ignores them, so this part runs for other users only (developers;
    // CI, as root, covers the cases above).
    if !running_as_root() {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let db = TestDb {
            config: StoreConfig::sqlite(ro.join("state.db")),
            _dir: None,
            pg: None,
        };
        db.open().await.close().await;
        std::fs::set_permissions(ro.join("state.db"), std::fs::Permissions::from_mode(0o444))
            .unwrap();
        let e = Store::open(&db.config).await.unwrap_err();
        assert!(matches!(e, StoreError::SqliteUnwritable { .. }), "{e:?}");
        let empty = dir.path().join("ro-folder");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o555)).unwrap();
        let e = Store::open(&StoreConfig::sqlite(empty.join("state.db")))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::SqliteUnwritable { .. }), "{e:?}");
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn sqlite_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![b'#'; 8192]).unwrap();
    let e = Store::open(&StoreConfig::sqlite(&path)).await.unwrap_err();
    assert!(matches!(e, StoreError::SqliteNotADatabase { .. }), "{e:?}");
    eprintln!("{e}");
    assert!(
        e.to_string().contains("not a usable SQLite database"),
        "{e}"
    );
    // Not overwritten.
    assert_eq!(std::fs::read(&path).unwrap(), vec![b'#'; 8192]);
}

// ---- PostgreSQL: connection failures (the first needs no server).

#[tokio::test]
async fn postgres_unreachable_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let e = Store::open(&StoreConfig::postgres(
        "postgres://sidecar:secret@127.0.0.1:1/alipay",
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::PostgresUnreachable { .. }), "{e:?}");
    assert!(e.is_unavailable());
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("127.0.0.1:1") && msg.contains("unreachable"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "password in message: {msg}");
    assert!(
        msg.to_lowercase().contains("refused"),
        "cause missing: {msg}"
    );

    let e = Store::open(&StoreConfig::postgres("postgres://h:notaport/db"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidUrl { .. }), "{e:?}");
}

#[tokio::test]
async fn postgres_missing_database_is_a_clear_error() {
    let Some(db) = TestDb::postgres("postgres_missing_database").await else {
        return;
    };
    let (admin, _) = db.pg.clone().unwrap();
    let e = Store::open(&StoreConfig::postgres(with_database(
        &admin,
        "no_such_database_here",
    )))
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::PostgresLogin { .. }), "{e:?}");
    eprintln!("{e}");
    assert!(e.to_string().contains("no_such_database_here"), "{e}");
    db.finish().await;
}

#[test]
fn with_database_replaces_the_path_only() {
    assert_eq!(
        with_database("postgres://u@h:5/postgres?sslmode=disable", "t1"),
        "postgres://u@h:5/t1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5", "t1"),
        "postgres://u@h:5/t1"
    );
}

/// Issue 18 L3: only delivered notifications and closed pay records older than the cut-off
/// go; pending and dead notifications and open records stay; a dry run deletes nothing.
async fn prune_removes_only_finished_work(db: &TestDb) {
    let store = db.open().await;
    let delivered = record(
        &store,
        "sg",
        pay_body("pr-d", "S", "SUCCESS").as_bytes(),
        1_000,
        None,
    )
    .await;
    assert!(store
        .mark_delivered(&delivered.event_id, 2_000)
        .await
        .unwrap());
    let pending = record(
        &store,
        "sg",
        pay_body("pr-p", "S", "SUCCESS").as_bytes(),
        1_000,
        None,
    )
    .await;
    let dead = record(
        &store,
        "sg",
        pay_body("pr-x", "S", "SUCCESS").as_bytes(),
        1_000,
        Some(1_000),
    )
    .await;
    assert!(store
        .mark_dead(&dead.event_id, "too old", 2_000)
        .await
        .unwrap());
    let late = record(
        &store,
        "sg",
        pay_body("pr-l", "S", "SUCCESS").as_bytes(),
        1_000,
        None,
    )
    .await;
    assert!(store.mark_delivered(&late.event_id, 9_000).await.unwrap());
    let closed = store
        .record_pay(&new_pay("pr-c", 61_000, 1_801_000))
        .await
        .unwrap();
    assert!(store
        .finish_pay(&closed.id, PayOutcome::Expired, 3_000)
        .await
        .unwrap());
    let open = store
        .record_pay(&new_pay("pr-o", 61_000, 1_801_000))
        .await
        .unwrap();

    let want = sidecar_store::Pruned {
        notifications: 1,
        pays: 1,
    };
    assert_eq!(store.prune(5_000, true).await.unwrap(), want, "dry run");
    assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 4);
    assert_eq!(store.prune(5_000, false).await.unwrap(), want);
    assert_eq!(
        store.prune(5_000, false).await.unwrap(),
        sidecar_store::Pruned::default()
    );
    let left: Vec<String> = store
        .list(&ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    for kept in [&pending.event_id, &dead.event_id, &late.event_id] {
        assert!(left.contains(kept), "{kept} kept");
    }
    assert!(store.pay(&closed.id).await.unwrap().is_none());
    assert!(store.pay(&open.id).await.unwrap().is_some());
    // more than one batch
    for i in 0..(sidecar_store::PRUNE_BATCH + 3) {
        let r = record(
            &store,
            "sg",
            pay_body(&format!("pr-b{i}"), "S", "SUCCESS").as_bytes(),
            1_000,
            None,
        )
        .await;
        store.mark_delivered(&r.event_id, 2_000).await.unwrap();
    }
    let n = store.prune(5_000, false).await.unwrap();
    assert_eq!(n.notifications, sidecar_store::PRUNE_BATCH as u64 + 3);
    store.close().await;
}

/// Issue 18 M1/L6/M2: the pay answer's paymentId is kept, verified answers are counted, and
/// the outcome of a closed record can be read back.
async fn pay_answers_and_closed_outcomes(db: &TestDb) {
    let store = db.open().await;
    let rec = store
        .record_pay(&new_pay("pa-1", 0, 1_801_000))
        .await
        .unwrap();
    let p = store.pay(&rec.id).await.unwrap().unwrap();
    assert_eq!(p.payment_id.as_deref(), Some("2024010112345"));
    assert_eq!(p.answers, 0);
    let lease = std::time::Duration::from_secs(30);
    assert_eq!(
        store.claim_due_pays(10, "a", lease, 5).await.unwrap().len(),
        1
    );
    assert!(store
        .reschedule_pay_answered(&rec.id, "a", 20, false)
        .await
        .unwrap());
    let c = store.claim_due_pays(20, "a", lease, 5).await.unwrap();
    assert_eq!((c[0].inquiries, c[0].answers), (1, 0));
    assert!(store
        .reschedule_pay_answered(&rec.id, "a", 30, true)
        .await
        .unwrap());
    let p = store.pay(&rec.id).await.unwrap().unwrap();
    assert_eq!((p.inquiries, p.answers), (2, 1));

    let owner = sidecar_store::PayOwner::Merchant("sg");
    assert_eq!(
        store.closed_pay_outcome(owner, "pa-1").await.unwrap(),
        None,
        "open"
    );
    assert!(store
        .finish_pay(&rec.id, PayOutcome::Cancelled, 40)
        .await
        .unwrap());
    assert_eq!(
        store.closed_pay_outcome(owner, "pa-1").await.unwrap(),
        Some(PayOutcome::Cancelled)
    );
    assert_eq!(
        store
            .closed_pay_outcome(sidecar_store::PayOwner::ClientId(CLIENT), "pa-1")
            .await
            .unwrap(),
        Some(PayOutcome::Cancelled)
    );
    assert_eq!(
        store
            .closed_pay_outcome(sidecar_store::PayOwner::Merchant("other"), "pa-1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.closed_pay_outcome(owner, "pa-none").await.unwrap(),
        None
    );
    store.close().await;
}

/// Issue 18 L2: the SQLite database, `-wal` and `-shm` hold notification bodies: 0600, also
/// when they existed with wider permissions.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = |path: &std::path::Path| {
        ["", "-wal", "-shm"].map(|s| std::path::PathBuf::from(format!("{}{s}", path.display())))
    };
    let store = Store::open(&StoreConfig::sqlite(&path)).await.unwrap();
    record(
        &store,
        "sg",
        pay_body("perm-1", "S", "SUCCESS").as_bytes(),
        1,
        None,
    )
    .await;
    for f in files(&path) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    // an existing database made world-readable is tightened at the next open
    for f in files(&path) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let again = Store::open(&StoreConfig::sqlite(&path)).await.unwrap();
    for f in files(&path) {
        assert_eq!(mode(&f), 0o600, "{} tightened", f.display());
    }
    again.close().await;
    store.close().await;
}

/// Issue 22: the backfill's per-merchant cursor under a lease (one owner at a time, expiry,
/// only the owner moves the cursor) and the journal lookup by key without the notify path.
async fn backfill_cursor_lease_and_journal_lookup(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    assert_eq!(a.backfill_cursor("m").await.unwrap().last_complete_to, None);
    let c = a.claim_backfill("m", "r1", 1_000, 61_000).await.unwrap();
    assert_eq!(c.map(|c| c.last_complete_to), Some(None), "free: claimed");
    assert_eq!(
        b.claim_backfill("m", "r2", 2_000, 62_000).await.unwrap(),
        None,
        "held"
    );
    assert!(
        a.claim_backfill("m", "r1", 2_000, 62_000)
            .await
            .unwrap()
            .is_some(),
        "the owner again"
    );
    assert!(
        !b.complete_backfill("m", "r2", 5_000, 5_000).await.unwrap(),
        "not r2's lease"
    );
    assert!(a.complete_backfill("m", "r1", 5_000, 6_000).await.unwrap());
    let c = b
        .claim_backfill("m", "r2", 7_000, 67_000)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(
        (c.last_complete_to, c.last_complete_at),
        (Some(5_000), Some(6_000))
    );
    // r2 dies holding it: after the lease r1 takes over; the cursor is unchanged
    b.release_backfill("m", "nobody").await.unwrap();
    assert_eq!(
        a.claim_backfill("m", "r1", 10_000, 70_000).await.unwrap(),
        None
    );
    let c = a
        .claim_backfill("m", "r1", 67_000, 127_000)
        .await
        .unwrap()
        .expect("expired");
    assert_eq!(c.last_complete_to, Some(5_000));
    a.release_backfill("m", "r1").await.unwrap();
    assert!(b
        .claim_backfill("m", "r2", 68_000, 128_000)
        .await
        .unwrap()
        .is_some());
    // another merchant has its own cursor
    assert!(a
        .claim_backfill("other", "r1", 68_000, 128_000)
        .await
        .unwrap()
        .is_some());

    let body = pay_body("bf-1", "S", "SUCCESS");
    let on_other_path = EventKey::from_notification(CLIENT, "/elsewhere", body.as_bytes());
    assert_eq!(a.journaled(&on_other_path).await.unwrap(), None);
    let r = record(&a, "m", body.as_bytes(), 1_000, Some(1_000)).await;
    let j = b
        .journaled(&on_other_path)
        .await
        .unwrap()
        .expect("found whatever the path");
    assert_eq!(j.event_id, r.event_id);
    assert_eq!(j.status, "pending");
    let failed = EventKey::from_notification(CLIENT, PATH, pay_body("bf-1", "F", "X").as_bytes());
    assert_eq!(
        a.journaled(&failed).await.unwrap(),
        None,
        "another result is another event"
    );
}
