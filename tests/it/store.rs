//! The store's files and servers through the REAL binary: private SQLite files, retention and
//! `notifications prune`, PostgreSQL down at start and back (a cluster of the test's own,
//! paused and resumed), exit codes of a store that cannot be opened.

use std::path::Path;
use std::time::Duration;

use sidecar_store::{
    EventKey, ListFilter, NewNotification, NewPay, PayOutcome, Store, StoreConfig,
};
use tempfile::TempDir;

use crate::inbound::{alipay_key, result, signed, Notification};
use crate::journal::{
    assert_success, cli, config, event_id, metric, pg_admin_url, post, sqlite, OwnCluster,
};
use crate::support::{command, rt, run_bounded, App, Behaviour, Sidecar, CLIENT_ID};

const NOTIFY: &str = "/merchant/notify";
const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn body(id: &str, status: &str) -> String {
    let code = if status == "S" {
        "SUCCESS"
    } else {
        "PROCESS_FAIL"
    };
    format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"{code}","resultStatus":"{status}","resultMessage":"m"}},"paymentRequestId":"{id}","paymentAmount":{{"currency":"HKD","value":"100"}}}}"#
    )
}

/// A PAYMENT_RESULT signed by the vectors' Alipay key now (fresh `Request-Time`).
fn fresh(id: &str, status: &str) -> Notification {
    let time = alipay_sidecar::protocol::format_iso8601(now_ms());
    signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        &time,
        &body(id, status),
    )
}

fn open(path: &Path) -> Store {
    rt().block_on(Store::open(&StoreConfig::sqlite(path)))
        .unwrap()
}

// ---------------------------------------------------------------- L2

#[cfg(unix)]
#[test]
fn the_sqlite_store_and_its_wal_and_shm_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let app = App::start(Behaviour::Ack);
    let toml = config(dir.path(), &app.url(), "", &sqlite(dir.path()));
    let s = Sidecar::start(dir.path(), &toml);
    assert_success(&post(&s, &fresh("perm-1", "S")), "stored and delivered");
    let files: Vec<_> = ["state.db", "state.db-wal", "state.db-shm"]
        .iter()
        .map(|f| dir.path().join(f))
        .collect();
    for f in &files {
        let mode = std::fs::metadata(f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} holds notification bodies",
            f.display()
        );
    }
}

// ---------------------------------------------------------------- L3

#[test]
fn retention_prunes_finished_work_and_the_cli_prunes_on_demand() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("state.db");
    // seed: work that finished 40 days ago, and unfinished work as old
    let store = open(&db);
    let old = now_ms() - 40 * DAY_MS;
    let record = |id: &str, at: i64| {
        let b = body(id, "S");
        let key = EventKey::from_notification(CLIENT_ID, NOTIFY, b.as_bytes());
        rt().block_on(store.record_notification(&NewNotification {
            merchant: "default",
            key: &key,
            body: b.as_bytes(),
            headers: &[],
            now: at,
            deliver_at: None,
        }))
        .unwrap()
        .event_id
    };
    let delivered = record("old-delivered", old);
    rt().block_on(store.mark_delivered(&delivered, old))
        .unwrap();
    let pending = record("old-pending", old);
    fn pay(id: &str, old: i64) -> NewPay<'_> {
        NewPay {
            merchant: "default",
            client_id: CLIENT_ID,
            payment_request_id: id,
            payment_notify_url: None,
            payment_id: None,
            close_time: old + 1000,
            reconcile_at: old + 1000,
            now: old,
        }
    }
    let closed = rt()
        .block_on(store.record_pay(&pay("old-closed", old)))
        .unwrap()
        .id;
    rt().block_on(store.finish_pay(&closed, PayOutcome::Expired, old))
        .unwrap();
    let open_pay = rt()
        .block_on(store.record_pay(&pay("old-open", old)))
        .unwrap()
        .id;

    // a sidecar with the default retention (30 days) prunes by itself shortly after start
    let app = App::start(Behaviour::Ack);
    let toml = config(dir.path(), &app.url(), "", &sqlite(dir.path()));
    let s = Sidecar::start(dir.path(), &toml);
    s.eventually("the retention pruned the finished work", || {
        (metric(
            &s,
            "alipay_sidecar_store_pruned_total",
            &[("kind", "notifications")],
        ) >= 1.0)
            .then_some(())
    });
    assert_eq!(
        metric(&s, "alipay_sidecar_store_pruned_total", &[("kind", "pays")]),
        1.0
    );
    assert!(
        rt().block_on(store.show(&delivered)).unwrap().is_none(),
        "delivered: pruned"
    );
    assert!(
        rt().block_on(store.show(&pending)).unwrap().is_some(),
        "pending: kept"
    );
    assert!(
        rt().block_on(store.pay(&closed)).unwrap().is_none(),
        "closed: pruned"
    );
    assert!(
        rt().block_on(store.pay(&open_pay)).unwrap().is_some(),
        "open: kept"
    );

    // on demand: everything finished, whatever its age; a dry run first
    assert_success(&post(&s, &fresh("new-1", "S")), "delivered now");
    let new = event_id(&app.received()[0]);
    let path = &s.config_path;
    let (code, out, err) = cli(path, &["prune", "--older-than", "0s", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would prune 1 delivered"), "{out}");
    assert!(
        rt().block_on(store.show(&new)).unwrap().is_some(),
        "a dry run deletes nothing"
    );
    let (code, out, err) = cli(path, &["prune", "--older-than", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pruned 1 delivered"), "{out}");
    let left: Vec<String> = rt()
        .block_on(store.list(&ListFilter::default()))
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        left,
        vec![pending.clone()],
        "only the pending event is left"
    );
    // the default is the config's retention: nothing left is that old and finished
    let (code, out, _) = cli(path, &["prune"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("pruned 0 delivered") && out.contains("30days"),
        "{out}"
    );
    let (code, _, err) = cli(path, &["prune", "--older-than", "soon"]);
    assert_eq!(code, 2, "a bad duration is a usage error: {err}");
}

#[test]
fn check_config_refuses_store_timeouts_and_retentions_out_of_range() {
    let dir = TempDir::new().unwrap();
    for (extra, key) in [
        ("timeout = \"10ms\"\n", "store.timeout"),
        ("timeout = \"5m\"\n", "store.timeout"),
        ("retention = \"1h\"\n", "store.retention"),
        ("retention = \"soon\"\n", "store.retention"),
    ] {
        let store = format!("{}{extra}", sqlite(dir.path()));
        let toml = config(dir.path(), "http://127.0.0.1:3000", "", &store);
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, toml).unwrap();
        let (code, out, err) = run_bounded(
            command(&["check-config", "--config"]).arg(&path),
            Duration::from_secs(60),
        );
        assert_eq!(code, 2, "{extra}: {out}{err}");
        assert!(err.contains(key), "{extra}: names {key}: {err}");
    }
}

// ---------------------------------------------------------------- L5

/// A sidecar started while PostgreSQL is down starts (in line, without the store), says so,
/// fails closed in store-and-forward mode, and uses the store once PostgreSQL is back.
#[test]
fn a_sidecar_started_while_postgresql_is_down_starts_and_recovers() {
    if pg_admin_url("a_sidecar_started_while_postgresql_is_down_starts_and_recovers").is_none() {
        return;
    }
    let pg = OwnCluster::start();
    pg.script("pause");
    let app = App::start(Behaviour::Ack);
    let store = format!("[store]\nurl = \"{}\"\ntimeout = \"1s\"\n", pg.url);
    let (dl, ds) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let inline = Sidecar::start(dl.path(), &config(dl.path(), &app.url(), "", &store));
    let saf = Sidecar::start(
        ds.path(),
        &config(
            ds.path(),
            &app.url(),
            "acknowledge = \"after-store\"\n",
            &store,
        ),
    );
    for s in [&inline, &saf] {
        assert!(
            s.logged("unreachable at start"),
            "a warn line says it started without the store:\n{}",
            s.logs()
        );
        assert_eq!(metric(s, "alipay_sidecar_store_up", &[]), 0.0);
        let ready = s.admin_get("/readyz");
        assert_eq!(ready.status, 200, "in service without the store");
        assert!(
            String::from_utf8_lossy(&ready.body).contains("store unavailable"),
            "{ready:?}"
        );
    }
    // in line: delivered without the journal
    assert_success(
        &post(&inline, &fresh("pg-down-1", "S")),
        "in line, store down",
    );
    assert_eq!(app.received().len(), 1);
    assert!(event_id(&app.received()[0]).starts_with("evt_"));
    // after-store: fail closed, so that Alipay re-sends
    let r = post(&saf, &fresh("pg-down-2", "S"));
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(result(&r).1, "SIDECAR_STORE_UNAVAILABLE");
    assert_eq!(app.received().len(), 1);

    pg.script("resume");
    for s in [&inline, &saf] {
        s.eventually("the store is up again", || {
            (metric(s, "alipay_sidecar_store_up", &[]) == 1.0).then_some(())
        });
        assert_eq!(
            String::from_utf8_lossy(&s.admin_get("/readyz").body),
            "ready\n"
        );
    }
    // Alipay's re-send to the store-and-forward sidecar is stored now, then delivered
    assert_success(
        &post(&saf, &fresh("pg-down-2", "S")),
        "stored after recovery",
    );
    inline.eventually("the queued notification is delivered", || {
        (app.received().len() >= 2).then_some(())
    });
    // the in-line sidecar records again: a re-send of what it delivered is suppressed
    let n = fresh("pg-down-3", "S");
    assert_success(&post(&inline, &n), "first copy");
    assert_success(&post(&inline, &n), "re-send");
    assert_eq!(app.received().len(), 3, "the re-send was recognised");
    let db = rt()
        .block_on(Store::open(&StoreConfig::postgres(pg.url.clone())))
        .unwrap();
    let ids: Vec<String> = rt()
        .block_on(db.list(&ListFilter::default()))
        .unwrap()
        .into_iter()
        .map(|e| e.business_id)
        .collect();
    assert!(
        ids.contains(&"pg-down-2".to_string()) && ids.contains(&"pg-down-3".to_string()),
        "{ids:?}"
    );
}

/// A store that cannot be opened for another reason than being unreachable is a configuration
/// error: exit 2, naming the key (the README's exit-code table), from `run` and from
/// `check-config` alike (issue 20 item 6: `check-config` passed a missing store folder), and
/// `check-config` creates nothing.
#[test]
fn a_store_that_cannot_be_opened_is_exit_2_for_run_and_check_config() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("no-such-folder/state.db");
    let store = format!("[store]\npath = \"{}\"\n", missing.display());
    let toml = config(dir.path(), "http://127.0.0.1:3000", "", &store);
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, toml).unwrap();
    let mut said = Vec::new();
    for cmd in ["run", "check-config"] {
        let (code, _, err) = run_bounded(
            command(&[cmd, "--config"]).arg(&path),
            Duration::from_secs(60),
        );
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains("store.path"), "{cmd}: {err}");
        assert!(err.contains("no-such-folder"), "{cmd}: {err}");
        said.push(err.lines().next().unwrap_or_default().to_string());
    }
    assert_eq!(
        said[0],
        said[1].replace("error: ", "error: cannot start: "),
        "the same error"
    );

    // a usable store folder passes check-config, which leaves no file behind
    let ok = dir.path().join("state.db");
    let toml = config(
        dir.path(),
        "http://127.0.0.1:3000",
        "",
        &format!("[store]\npath = \"{}\"\n", ok.display()),
    );
    std::fs::write(&path, toml).unwrap();
    let (code, out, err) = run_bounded(
        command(&["check-config", "--config"]).arg(&path),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!ok.exists(), "check-config created {}", ok.display());
}
