//! The backfill from Alipay's notification event log (issue 22) end to end: the real binary,
//! the fake gateway (its event log and `inquireNotificationList`, notifications dropped on
//! purpose with notify mode `drop`), a real SQLite file; the app stand-in counts what it gets.

use std::time::{Duration, SystemTime};

use sidecar_store::{Store, StoreConfig};

use crate::journal::{create_database, pg_admin_url};
use crate::support::*;

const NOTIFY_PATH: &str = "/alipay/notify";
const LIST: &str = "/ams/api/v1/notification/inquireNotificationList";
const SOURCE: &str = "X-Alipay-Sidecar-Source";

/// Walks every `interval` (when `on`); recovered events go to [`NOTIFY_PATH`].
fn reconcile_section(on: bool, interval: &str) -> String {
    format!("[reconcile]\nbackfill = {on}\nbackfill_interval = \"{interval}\"\ndeliver_path = \"{NOTIFY_PATH}\"\n")
}

struct Setup {
    rig: Rig,
    app: App,
    store: Store,
    toml_tail: String,
    _db: Option<tempfile::TempDir>,
}

fn sqlite() -> (StoreConfig, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let section = format!("[store]\npath = {:?}\n", path.display().to_string());
    (StoreConfig::sqlite(path), section, dir)
}

impl Setup {
    fn start(page_max: usize) -> Setup {
        Self::with_worker(page_max, true)
    }

    fn with_worker(page_max: usize, on: bool) -> Setup {
        let app = App::start(Behaviour::Ack);
        let (config, section, dir) = sqlite();
        Self::on(app, config, &section, Some(dir), page_max, on, "1s")
    }

    fn on(
        app: App,
        config: StoreConfig,
        store_section: &str,
        db: Option<tempfile::TempDir>,
        page_max: usize,
        on: bool,
        interval: &str,
    ) -> Setup {
        let toml_tail = format!(
            "{}{store_section}{}\n[log]\nformat = \"json\"\n",
            inbound_section(&app.url()),
            reconcile_section(on, interval)
        );
        let rig = Rig::start(
            RigConfig {
                tail: &toml_tail,
                ..Default::default()
            },
            |cfg| {
                cfg.notify_backoff = vec![Duration::ZERO];
                cfg.event_page_max = page_max;
            },
            |_| {},
        );
        let store = rt().block_on(Store::open(&config)).expect("open the store");
        Setup {
            rig,
            app,
            store,
            toml_tail,
            _db: db,
        }
    }

    /// The backfill on (every `interval`) with a fresh PostgreSQL database `db_name`; `None`
    /// (after `SKIPPED`, outside CI only: under CI=true a missing server fails) when there
    /// is no server.
    fn on_postgres(test: &str, db_name: &str, interval: &str) -> Option<Setup> {
        let admin = pg_admin_url(test)?;
        let url = create_database(&admin, db_name);
        let section = format!("[store]\nurl = {url:?}\n");
        let app = App::start(Behaviour::Ack);
        Some(Setup::on(
            app,
            StoreConfig::postgres(url),
            &section,
            None,
            100,
            true,
            interval,
        ))
    }

    fn notify_url(&self) -> String {
        format!("http://{}{NOTIFY_PATH}", self.rig.sidecar.addr("inbound"))
    }

    /// A pay that succeeds at once; its PAYMENT_RESULT is sent (`immediate`) or dropped.
    fn pay(&self, id: &str, notify: &str) -> String {
        let extra = format!(
            r#","paymentNotifyUrl":"{}","mockNotify":"{notify}""#,
            self.notify_url()
        );
        let r = self.rig.pay(id, &extra);
        r.assert_status(200, "pay");
        r.json()["paymentId"]
            .as_str()
            .expect("paymentId")
            .to_string()
    }

    /// A refund of `payment_id` through the sidecar; its REFUND_RESULT is dropped.
    fn refund_dropped(&self, refund_id: &str, payment_id: &str) {
        let body = format!(
            r#"{{"refundRequestId":"{refund_id}","paymentId":"{payment_id}","refundAmount":{{"currency":"HKD","value":"100"}},"refundNotifyUrl":"{}","mockNotify":"drop"}}"#,
            self.notify_url()
        );
        let r = request(
            self.rig.outbound,
            "POST",
            "/ams/api/v1/payments/refund",
            &[("Content-Type", "application/json; charset=UTF-8")],
            body.as_bytes(),
        )
        .unwrap();
        r.assert_status(200, "refund");
        assert_eq!(r.json()["result"]["resultStatus"], "S", "refund answer");
    }

    /// What the app received whose body mentions `needle`.
    fn received(&self, needle: &str) -> Vec<Received> {
        self.app
            .received()
            .into_iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
            .collect()
    }

    fn completed_walks_after(&self, t: f64) {
        self.rig.eventually("a backfill walk completes", || {
            let v = self.rig.scrape().sum(
                "alipay_sidecar_backfill_last_complete_timestamp_seconds",
                &[("merchant", "default")],
            );
            (v > t).then_some(())
        });
    }

    fn last_complete(&self) -> f64 {
        self.rig.scrape().sum(
            "alipay_sidecar_backfill_last_complete_timestamp_seconds",
            &[("merchant", "default")],
        )
    }

    /// Lets at least two more walks complete.
    fn two_more_walks(&self) {
        let t = self.last_complete();
        self.completed_walks_after(t);
        let t = self.last_complete();
        self.completed_walks_after(t);
    }
}

fn recovered(m: &Metrics, notify_type: &str) -> f64 {
    m.sum(
        "alipay_sidecar_backfill_events_total",
        &[("notify_type", notify_type), ("outcome", "recovered")],
    )
}

#[test]
fn a_dropped_refund_result_is_recovered_and_delivered_once() {
    let s = Setup::start(100);
    let payment_id = s.pay("bf-pay-1", "immediate");
    s.refund_dropped("bf-refund-1", &payment_id);
    let ev = s.rig.gw.events();
    let refund = ev
        .iter()
        .find(|e| e.notify_type == "REFUND_RESULT")
        .expect("the gateway logged the REFUND_RESULT");
    assert_eq!(
        refund.delivery_status,
        ams_mock_gateway::DeliveryStatus::Failed
    );
    let got = s
        .rig
        .eventually("the app receives the recovered REFUND_RESULT", || {
            let r = s.received("bf-refund-1");
            (!r.is_empty()).then_some(r)
        });
    assert_eq!(got[0].one(SOURCE), Some("inquireNotificationList"));
    assert_eq!(got[0].target, NOTIFY_PATH);
    assert!(got[0]
        .one("X-Alipay-Sidecar-Event-Id")
        .is_some_and(|e| e.starts_with("evt_")));
    assert_eq!(
        got[0].body, refund.notification_data,
        "delivered byte for byte as Alipay's log holds it"
    );
    s.two_more_walks();
    assert_eq!(s.received("bf-refund-1").len(), 1, "delivered once");
    let m = s.rig.scrape();
    assert_eq!(recovered(&m, "REFUND_RESULT"), 1.0);
    assert!(
        s.rig
            .gw
            .received()
            .iter()
            .any(|r| r.target == LIST && r.verified),
        "the list calls are signed by the sidecar"
    );
}

#[test]
fn a_notification_that_arrived_is_not_delivered_again() {
    let s = Setup::start(100);
    s.pay("bf-arrived-1", "immediate");
    s.rig.eventually("the webhook reaches the app", || {
        (!s.received("bf-arrived-1").is_empty()).then_some(())
    });
    s.two_more_walks();
    let got = s.received("bf-arrived-1");
    assert_eq!(got.len(), 1, "the backfill did not deliver it again");
    assert_eq!(got[0].one(SOURCE), None, "the webhook's own delivery");
    let m = s.rig.scrape();
    assert_eq!(recovered(&m, "PAYMENT_RESULT"), 0.0);
    assert!(
        m.sum(
            "alipay_sidecar_backfill_events_total",
            &[("notify_type", "PAYMENT_RESULT"), ("outcome", "journaled")]
        ) >= 1.0
    );
}

#[test]
fn the_walk_pages_through_more_than_one_page() {
    let s = Setup::start(2);
    for i in 0..5 {
        s.pay(&format!("bf-page-{i}"), "drop");
    }
    for i in 0..5 {
        let id = format!("bf-page-{i}");
        s.rig
            .eventually("every dropped PAYMENT_RESULT is recovered", || {
                (!s.received(&id).is_empty()).then_some(())
            });
    }
    s.two_more_walks();
    for i in 0..5 {
        assert_eq!(s.received(&format!("bf-page-{i}")).len(), 1, "once each");
    }
    assert!(
        s.rig
            .gw
            .received()
            .iter()
            .any(|r| r.target == LIST && String::from_utf8_lossy(&r.body).contains("startingAfter")),
        "a second page was asked"
    );
}

#[test]
fn the_cursor_survives_a_restart() {
    let mut s = Setup::start(100);
    s.completed_walks_after(0.0);
    s.rig.sidecar.signal("TERM");
    assert!(s.rig.sidecar.wait_exit(Duration::from_secs(60)).is_some());
    let cursor = rt()
        .block_on(s.store.backfill_cursor("default"))
        .unwrap()
        .last_complete_to
        .expect("a cursor is stored");
    let before = s.rig.gw.received().len();
    let gateway = format!("https://127.0.0.1:{}", s.rig.gw.local_addr().port());
    let toml = RigConfig {
        tail: &s.toml_tail,
        ..Default::default()
    }
    .toml(&gateway, s.rig.gw.ca_file());
    s.rig.sidecar = Sidecar::start(s.rig.dir.path(), &toml);
    let first = s.rig.eventually("the restarted sidecar walks", || {
        s.rig
            .gw
            .received()
            .into_iter()
            .skip(before)
            .find(|r| r.target == LIST)
    });
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let from = body["eventCreateTimeFrom"].as_str().unwrap();
    let expected = alipay_sidecar::backfill::iso_utc(
        cursor - alipay_sidecar::backfill::OVERLAP.as_millis() as i64,
    );
    assert_eq!(
        from, expected,
        "starts at the stored cursor (minus the overlap), not 24 h back"
    );
}

/// The walks the gateway saw, in the order they came: (`eventCreateTimeFrom`,
/// `eventCreateTimeTo`) of each walk's first page (one page per walk here).
fn walks(gw: &ams_mock_gateway::MockGateway) -> Vec<(SystemTime, SystemTime)> {
    gw.received()
        .iter()
        .filter(|r| r.target == LIST)
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
        .filter(|b| b.get("startingAfter").is_none())
        .map(|b| {
            let t = |k: &str| humantime::parse_rfc3339(b[k].as_str().unwrap()).unwrap();
            (t("eventCreateTimeFrom"), t("eventCreateTimeTo"))
        })
        .collect()
}

#[test]
fn two_replicas_on_postgresql_walk_once() {
    // 4s: two walks due in one interval would start from one cursor at least 2s (half an
    // interval) apart, more than the wire's whole-second rounding hides
    let Some(s) = Setup::on_postgres("two_replicas_on_postgresql_walk_once", "backfill_two", "4s")
    else {
        return;
    };
    // a second replica on the same database and gateway
    let gateway = format!("https://127.0.0.1:{}", s.rig.gw.local_addr().port());
    let toml = RigConfig {
        tail: &s.toml_tail,
        ..Default::default()
    }
    .toml(&gateway, s.rig.gw.ca_file());
    let dir2 = tempfile::tempdir().unwrap();
    write_vector_keys(dir2.path());
    let second = Sidecar::start(dir2.path(), &toml);
    let payment_id = s.pay("bf-pg-1", "immediate");
    s.refund_dropped("bf-pg-refund-1", &payment_id);
    s.rig
        .eventually("the app receives the recovered REFUND_RESULT", || {
            (!s.received("bf-pg-refund-1").is_empty()).then_some(())
        });
    // both replicas take part: each claims the lease between walks and reads the shared
    // cursor (the gauge is set from the cursor when the claim succeeds)
    for (name, sidecar) in [("first", &s.rig.sidecar), ("second", &second)] {
        sidecar.eventually(
            &format!("the {name} replica reads the shared cursor"),
            || {
                let v = sidecar.metrics().sum(
                    "alipay_sidecar_backfill_last_complete_timestamp_seconds",
                    &[("merchant", "default")],
                );
                (v > 0.0).then_some(())
            },
        );
    }
    s.rig.eventually("at least four walks", || {
        (walks(&s.rig.gw).len() >= 4).then_some(())
    });
    s.two_more_walks();
    // One walk at a time, over one cursor: each walk starts where the one before it ended
    // (minus the overlap), so no two walks started from the same cursor (as two replicas
    // walking at once, or both in one interval, would).
    let w = walks(&s.rig.gw);
    let overlap = alipay_sidecar::backfill::OVERLAP;
    for (i, pair) in w.windows(2).enumerate() {
        let ((_, to), (from, _)) = (pair[0], pair[1]);
        let start = from + overlap;
        // the end goes on the wire rounded up to the second, the start rounded down
        assert!(
            start <= to && start + Duration::from_secs(1) >= to,
            "walk {} starts at {:?} + overlap, not at the end {:?} of walk {i}: two walks from one cursor\n{w:?}",
            i + 1,
            from,
            to
        );
    }
    assert_eq!(
        s.received("bf-pg-refund-1").len(),
        1,
        "one replica recorded it, delivered once"
    );
    let events = rt()
        .block_on(s.store.list(&sidecar_store::ListFilter::default()))
        .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.business_id == "bf-pg-refund-1")
            .count(),
        1
    );
}

/// A payment lock held by the test; dropped (a failed assertion) inside the runtime, which
/// closing its connection needs.
struct Held(Option<(sidecar_store::PaymentLockPool, sidecar_store::AdvisoryLease)>);

impl Drop for Held {
    fn drop(&mut self) {
        let _in = rt().enter();
        self.0.take();
    }
}

/// A recovered PAYMENT_RESULT is recorded under its payment's lock: while another holder
/// (here the test, through the same PostgreSQL advisory lock every replica takes) holds it,
/// the backfill waits, gives up (`alipay_sidecar_payment_lock_busy_total{holder="backfill"}`)
/// and records nothing; once the lock is free, a later walk recovers it, once.
#[test]
fn the_backfill_records_a_payment_result_under_the_payments_lock() {
    let Some(s) = Setup::on_postgres(
        "the_backfill_records_a_payment_result_under_the_payments_lock",
        "backfill_lock",
        "1s",
    ) else {
        return;
    };
    let id = "bf-lock-1";
    let key = sidecar_store::payment_lock_key(CLIENT_ID, id);
    let mut held = Held(Some(rt().block_on(async {
        let pool = s
            .store
            .payment_lock_pool(Duration::from_secs(10))
            .expect("a PostgreSQL store has a lock pool");
        let lease = pool.try_lock(key).await.unwrap().expect("the lock is free");
        (pool, lease)
    })));
    s.pay(id, "drop");
    let busy = |m: &Metrics| {
        m.sum(
            "alipay_sidecar_payment_lock_busy_total",
            &[("holder", "backfill")],
        )
    };
    s.rig
        .eventually("the backfill gives up on the held lock", || {
            (busy(&s.rig.scrape()) >= 1.0).then_some(())
        });
    let m = s.rig.scrape();
    assert_eq!(recovered(&m, "PAYMENT_RESULT"), 0.0);
    assert!(s.received(id).is_empty(), "nothing delivered while locked");
    let journaled = rt()
        .block_on(s.store.list(&sidecar_store::ListFilter::default()))
        .unwrap();
    assert!(
        journaled.iter().all(|e| e.business_id != id),
        "nothing recorded while locked"
    );

    let (_pool, lease) = held.0.take().unwrap();
    rt().block_on(lease.release()).unwrap();
    let got = s.rig.eventually(
        "the PAYMENT_RESULT is recovered once the lock is free",
        || {
            let r = s.received(id);
            (!r.is_empty()).then_some(r)
        },
    );
    assert_eq!(got[0].one(SOURCE), Some("inquireNotificationList"));
    s.two_more_walks();
    assert_eq!(s.received(id).len(), 1, "delivered once");
    assert_eq!(recovered(&s.rig.scrape(), "PAYMENT_RESULT"), 1.0);
}

/// `[merchants.reconcile] backfill` turns the backfill on for one merchant of two: only its
/// log is walked (list calls, cursor, metrics); the other's dropped notification stays
/// missing (its audit still shows it).
#[test]
fn the_backfill_walks_only_the_merchants_it_is_on_for() {
    const QUIET: &str = "T_999888777";
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let gw = vector_gateway(dir.path(), |cfg| {
        cfg.notify_backoff = vec![Duration::ZERO];
    });
    let app = App::start(Behaviour::Ack);
    let db = dir.path().join("state.db");
    let merchant = |name: &str, client_id: &str, reconcile: &str| {
        format!("[[merchants]]\nname = \"{name}\"\nclient_id = \"{client_id}\"\n[merchants.keys]\n{VECTOR_KEYS}{reconcile}")
    };
    let toml = format!(
        "[outbound]\nlisten = \"127.0.0.1:0\"\ngateway = \"https://127.0.0.1:{}\"\nca_file = {:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{}[store]\npath = {:?}\n{}[log]\nformat = \"json\"\n{}{}",
        gw.local_addr().port(),
        gw.ca_file().unwrap().display().to_string(),
        inbound_section(&app.url()),
        db.display().to_string(),
        reconcile_section(false, "1s"),
        merchant("walked", CLIENT_ID, "[merchants.reconcile]\nbackfill = true\n"),
        merchant("quiet", QUIET, ""),
    );
    let sidecar = Sidecar::start(dir.path(), &toml);
    let outbound = sidecar.addr("outbound");
    let pay = |merchant: &str, id: &str| {
        let r = request(
            outbound,
            "POST",
            PAY,
            &[
                ("Content-Type", "application/json; charset=UTF-8"),
                ("X-Alipay-Sidecar-Merchant", merchant),
            ],
            pay_body(id, "5800", r#","mockNotify":"drop""#).as_bytes(),
        )
        .unwrap();
        r.assert_status(200, "pay");
    };
    pay("walked", "bf-walked-1");
    pay("quiet", "bf-quiet-1");
    let received = |needle: &str| {
        app.received()
            .into_iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
            .count()
    };
    sidecar.eventually(
        "the walked merchant's dropped PAYMENT_RESULT is recovered",
        || (received("bf-walked-1") == 1).then_some(()),
    );
    // two more complete walks of the walked merchant
    let last = || {
        sidecar.metrics().sum(
            "alipay_sidecar_backfill_last_complete_timestamp_seconds",
            &[("merchant", "walked")],
        )
    };
    for _ in 0..2 {
        let t = last();
        sidecar.eventually("a walk completes", || (last() > t).then_some(()));
    }
    assert_eq!(
        received("bf-quiet-1"),
        0,
        "the quiet merchant's log is not walked"
    );
    let lists: Vec<_> = gw
        .received()
        .into_iter()
        .filter(|r| r.target == LIST)
        .collect();
    assert!(lists.len() >= 3, "{}", lists.len());
    assert!(
        lists
            .iter()
            .all(|r| r.header("client-id") == Some(CLIENT_ID)),
        "only the walked merchant's client id asks for its event log"
    );
    let m = sidecar.metrics();
    assert!(
        m.matching(
            "alipay_sidecar_backfill_last_complete_timestamp_seconds",
            &[("merchant", "quiet")]
        )
        .next()
        .is_none(),
        "no backfill series for the quiet merchant:\n{}",
        m.text
    );
    let store = rt()
        .block_on(Store::open(&StoreConfig::sqlite(db.clone())))
        .unwrap();
    assert!(rt()
        .block_on(store.backfill_cursor("walked"))
        .unwrap()
        .last_complete_to
        .is_some());
    assert_eq!(
        rt().block_on(store.backfill_cursor("quiet")).unwrap(),
        sidecar_store::BackfillCursor::default(),
        "no cursor for the quiet merchant"
    );
    // the on-demand audit still reads a merchant whose backfill is off
    let config = sidecar.config_path.display().to_string();
    let via = outbound.to_string();
    let (code, out, err) = run_bounded(
        &mut command(&[
            "notifications",
            "audit",
            "--config",
            &config,
            "--merchant",
            "quiet",
            "--since",
            "1h",
            "--via",
            &via,
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(
        code, 3,
        "the quiet merchant's dropped one is missing\n{out}{err}"
    );
    assert!(out.contains("PAYMENT_RESULT"), "{out}");
}

/// `notifications <cmd> --merchant default --since 1h --via <outbound>` on the running
/// sidecar's config: (exit code, stdout, stderr).
fn cli(s: &Setup, cmd: &str, extra: &[&str]) -> (i32, String, String) {
    let config = s.rig.sidecar.config_path.display().to_string();
    let via = s.rig.outbound.to_string();
    let mut args = vec![
        "notifications",
        cmd,
        "--config",
        &config,
        "--merchant",
        "default",
        "--since",
        "1h",
        "--via",
        &via,
        "--deliver-path",
        NOTIFY_PATH,
    ];
    args.extend_from_slice(extra);
    run_bounded(&mut command(&args), Duration::from_secs(120))
}

#[test]
fn notifications_backfill_and_audit_against_a_running_sidecar() {
    let s = Setup::with_worker(100, false);
    let payment_id = s.pay("bf-cli-1", "immediate");
    s.rig.eventually("the webhook reaches the app", || {
        (!s.received("bf-cli-1").is_empty()).then_some(())
    });
    s.refund_dropped("bf-cli-refund-1", &payment_id);

    let (code, out, err) = cli(&s, "audit", &[]);
    assert_eq!(code, 3, "audit: something is missing\n{out}{err}");
    let line = |out: &str, t: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(t))
            .unwrap_or_else(|| panic!("no {t} line in\n{out}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // TYPE AT-ALIPAY IN-JOURNAL DELIVERED MISSING
    assert_eq!(
        line(&out, "PAYMENT_RESULT")[1..],
        ["1", "1", "1", "0"],
        "{out}"
    );
    assert_eq!(
        line(&out, "REFUND_RESULT")[1..],
        ["1", "0", "0", "1"],
        "{out}"
    );

    let (code, out, err) = cli(&s, "backfill", &["--dry-run"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("dry run"), "{out}");
    let (code, _, _) = cli(&s, "audit", &[]);
    assert_eq!(code, 3, "the dry run recorded nothing");

    let (code, out, err) = cli(&s, "backfill", &[]);
    assert_eq!(code, 3, "it was missing\n{out}{err}");
    // TYPE AT-ALIPAY ALREADY-JOURNALED MISSING RECOVERED FAILED
    assert_eq!(
        line(&out, "REFUND_RESULT")[1..],
        ["1", "0", "1", "1", "0"],
        "{out}"
    );
    let got = s
        .rig
        .eventually("the running sidecar delivers the recovered event", || {
            let r = s.received("bf-cli-refund-1");
            (!r.is_empty()).then_some(r)
        });
    assert_eq!(got[0].one(SOURCE), Some("inquireNotificationList"));

    let (code, out, err) = cli(&s, "audit", &[]);
    assert_eq!(code, 0, "nothing missing now\n{out}{err}");
    assert!(out.contains("nothing missing"), "{out}");
    let (code, out, _) = cli(&s, "backfill", &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(s.received("bf-cli-refund-1").len(), 1, "delivered once");

    let config = s.rig.sidecar.config_path.display().to_string();
    let (code, _, err) = run_bounded(
        &mut command(&[
            "notifications",
            "audit",
            "--config",
            &config,
            "--merchant",
            "nobody",
            "--since",
            "1h",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code, 2, "an unknown merchant is a usage error: {err}");
    assert!(err.contains("nobody"), "{err}");
}
