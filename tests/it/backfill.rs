//! The backfill from Alipay's notification event log (issue 22) end to end: the real binary,
//! the fake gateway (its event log and `inquireNotificationList`, notifications dropped on
//! purpose with notify mode `drop`), a real SQLite file; the app stand-in counts what it gets.

use std::time::Duration;

use sidecar_store::{Store, StoreConfig};

use crate::journal::{create_database, pg_admin_url};
use crate::support::*;

const NOTIFY_PATH: &str = "/alipay/notify";
const LIST: &str = "/ams/api/v1/notification/inquireNotificationList";
const SOURCE: &str = "X-Alipay-Sidecar-Source";

/// Walks every second (when `on`); recovered events go to [`NOTIFY_PATH`].
fn reconcile_section(on: bool) -> String {
    format!("[reconcile]\nbackfill = {on}\nbackfill_interval = \"1s\"\ndeliver_path = \"{NOTIFY_PATH}\"\n")
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
        Self::on(app, config, &section, Some(dir), page_max, on)
    }

    fn on(
        app: App,
        config: StoreConfig,
        store_section: &str,
        db: Option<tempfile::TempDir>,
        page_max: usize,
        on: bool,
    ) -> Setup {
        let toml_tail = format!(
            "{}{store_section}{}\n[log]\nformat = \"json\"\n",
            inbound_section(&app.url()),
            reconcile_section(on)
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

#[test]
fn two_replicas_on_postgresql_walk_once() {
    let Some(admin) = pg_admin_url("two_replicas_on_postgresql_walk_once") else {
        return;
    };
    let url = create_database(&admin, "backfill_two");
    let section = format!("[store]\nurl = {url:?}\n");
    let app = App::start(Behaviour::Ack);
    let s = Setup::on(
        app,
        StoreConfig::postgres(url.clone()),
        &section,
        None,
        100,
        true,
    );
    // a second replica on the same database and gateway
    let gateway = format!("https://127.0.0.1:{}", s.rig.gw.local_addr().port());
    let toml = RigConfig {
        tail: &s.toml_tail,
        ..Default::default()
    }
    .toml(&gateway, s.rig.gw.ca_file());
    let dir2 = tempfile::tempdir().unwrap();
    write_vector_keys(dir2.path());
    let _second = Sidecar::start(dir2.path(), &toml);
    let payment_id = s.pay("bf-pg-1", "immediate");
    s.refund_dropped("bf-pg-refund-1", &payment_id);
    s.rig
        .eventually("the app receives the recovered REFUND_RESULT", || {
            (!s.received("bf-pg-refund-1").is_empty()).then_some(())
        });
    s.two_more_walks();
    std::thread::sleep(Duration::from_secs(1));
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
