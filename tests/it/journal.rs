//! Notification journal, de-duplication and store-and-forward through the REAL binary: real
//! SQLite files, real PostgreSQL servers (`SIDECAR_TEST_PG_URL`, and a dedicated throw-away
//! cluster for the store-failure test), the app stand-in on a real socket, the `notifications`
//! CLI against a running sidecar's store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::inbound::{alipay_key, from_vector, result, signed, Notification, OLD_VECTORS};
use crate::support::{
    command, request, run_bounded, vector, write_vector_keys, App, Behaviour, Received, Response,
    Sidecar, CLIENT_ID, VECTOR_KEYS,
};

const NOTIFY: &str = "/merchant/notify";
const ACK: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;
const EVENT_ID: &str = "x-alipay-sidecar-event-id";
/// As .crates/sidecar-store/tests/store.rs: not `ALIPAY_SIDECAR_…` (the sidecar refuses
/// unknown variables with that prefix).
const PG_ENV: &str = "SIDECAR_TEST_PG_URL";

// ---------------------------------------------------------------- set-up

/// A sidecar config: the vector keys, `[inbound]` to `app` plus `inbound_extra`, `[store]`.
/// The freshness window is off: NTF-01 and its re-signed copies are from 2019.
pub(crate) fn config(dir: &Path, app: &str, inbound_extra: &str, store: &str) -> String {
    write_vector_keys(dir);
    format!(
        "client_id = \"{CLIENT_ID}\"\n[keys]\n{VECTOR_KEYS}[inbound]\nlisten = \"127.0.0.1:0\"\n\
         forward_to = \"{app}\"\n{OLD_VECTORS}\n{inbound_extra}\n{store}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    )
}

pub(crate) fn sqlite(dir: &Path) -> String {
    format!("[store]\npath = \"{}\"\n", dir.join("state.db").display())
}

/// An app that acks and a sidecar in front of it on an SQLite store in a temp folder.
pub(crate) fn started(inbound_extra: &str) -> (TempDir, App, Sidecar) {
    let dir = TempDir::new().unwrap();
    let app = App::start(Behaviour::Ack);
    let toml = config(dir.path(), &app.url(), inbound_extra, &sqlite(dir.path()));
    let s = Sidecar::start(dir.path(), &toml);
    (dir, app, s)
}

pub(crate) fn post(sidecar: &Sidecar, n: &Notification) -> Response {
    let headers: Vec<(&str, &str)> = n
        .headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    request(sidecar.addr("inbound"), "POST", &n.uri, &headers, &n.body).unwrap()
}

/// Alipay's acknowledgement check: 200 and a SUCCESS result.
pub(crate) fn assert_success(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    let (status, code, _) = result(r);
    assert_eq!((status.as_str(), code.as_str()), ("S", "SUCCESS"), "{what}");
}

/// NTF-01 as Alipay posts it.
pub(crate) fn ntf01() -> Notification {
    from_vector(&vector("NTF-01"))
}

/// NTF-01's body re-signed by the vectors' Alipay key with another `Request-Time` (what a
/// re-send looks like), with `edit` applied to the body first.
pub(crate) fn resigned(time: &str, edit: impl FnOnce(String) -> String) -> Notification {
    let body = edit(String::from_utf8(ntf01().body).unwrap());
    signed(&alipay_key(), "1", NOTIFY, CLIENT_ID, time, &body)
}

/// The same payment, failed: another event.
pub(crate) fn failed_result() -> Notification {
    resigned("2019-07-12T12:10:00.000+05:30", |b| {
        let f = b.replacen(
            r#""resultCode":"SUCCESS","resultStatus":"S""#,
            r#""resultCode":"PAYMENT_FAIL","resultStatus":"F""#,
            1,
        );
        assert_ne!(f, b, "NTF-01's result is where the test expects it");
        f
    })
}

pub(crate) fn event_id(r: &Received) -> String {
    r.one(EVENT_ID)
        .expect("every delivery carries X-Alipay-Sidecar-Event-Id")
        .to_string()
}

pub(crate) fn metric(s: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.metrics().sum(name, labels)
}

fn deliveries(s: &Sidecar, outcome: &str) -> f64 {
    metric(
        s,
        "alipay_sidecar_deliveries_total",
        &[("outcome", outcome)],
    )
}

/// `alipay-sidecar notifications ARGS --config CONFIG`: (exit code, stdout, stderr).
pub(crate) fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["notifications"];
    all.extend_from_slice(args);
    let mut cmd = command(&all);
    cmd.arg("--config").arg(config);
    run_bounded(&mut cmd, Duration::from_secs(60))
}

/// Polls `check` (no timed assertion: the deadline only turns a hang into a failure).
fn eventually<T>(s: &Sidecar, what: &str, check: impl FnMut() -> Option<T>) -> T {
    s.eventually(what, check)
}

// ---------------------------------------------------------------- de-duplication

#[test]
fn three_identical_notifications_reach_the_app_once_and_are_acknowledged_three_times() {
    let (_dir, app, s) = started("");
    let n = ntf01();
    let replies: Vec<Response> = (0..3).map(|_| post(&s, &n)).collect();
    for (i, r) in replies.iter().enumerate() {
        assert_success(r, &format!("copy {i}"));
    }
    for r in &replies[1..] {
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            ACK,
            "a suppressed re-send gets the sidecar's exact SUCCESS acknowledgement"
        );
    }
    let got = app.received();
    assert_eq!(got.len(), 1, "exactly one delivery");
    assert_eq!(got[0].body, n.body, "byte-exact");
    let id = event_id(&got[0]);
    assert!(id.starts_with("evt_"), "{id}");
    let dup = |s: &Sidecar| {
        metric(
            s,
            "alipay_sidecar_notifications_duplicate_total",
            &[("merchant", "default")],
        )
    };
    assert_eq!(dup(&s), 2.0);

    // re-signed with a later Request-Time: the same event, also a duplicate
    let r = post(&s, &resigned("2019-07-12T12:20:56.253+05:30", |b| b));
    assert_success(&r, "re-signed re-send");
    assert_eq!(app.received().len(), 1);
    assert_eq!(dup(&s), 3.0);

    // another result for the same payment: another event, delivered
    assert_success(&post(&s, &failed_result()), "the failed result");
    let got = app.received();
    assert_eq!(got.len(), 2);
    assert_ne!(
        event_id(&got[1]),
        id,
        "a different result is a different event"
    );
    assert_eq!(dup(&s), 3.0);
}

#[test]
fn forward_mode_delivers_every_copy_with_the_same_event_id() {
    let (_dir, app, s) = started("duplicates = \"forward\"\n");
    let n = ntf01();
    for i in 0..3 {
        assert_success(&post(&s, &n), &format!("copy {i}"));
    }
    let ids: Vec<String> = app.received().iter().map(event_id).collect();
    assert_eq!(ids.len(), 3, "every copy is delivered");
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(
        metric(&s, "alipay_sidecar_notifications_duplicate_total", &[]),
        0.0
    );
}

// ---------------------------------------------------------------- store-and-forward

#[test]
fn store_and_forward_outlasts_the_app_and_a_kill_9() {
    let dir = TempDir::new().unwrap();
    let mut app = App::down(Behaviour::Ack);
    let extra = "acknowledge = \"after-store\"\ndelivery_schedule = [\"0s\", \"200ms\"]\nforward_timeout = \"2s\"\n";
    let toml = config(dir.path(), &app.url(), extra, &sqlite(dir.path()));
    let mut first = Sidecar::start(dir.path(), &toml);
    // Alipay is acknowledged at once, the app being down
    for n in [ntf01(), ntf01(), failed_result()] {
        let r = post(&first, &n);
        assert_success(&r, "stored");
        assert_eq!(String::from_utf8_lossy(&r.body), ACK);
    }
    // the worker keeps trying (compressed schedule) for longer than Alipay's window
    eventually(&first, "failed attempts on the first sidecar", || {
        (deliveries(&first, "failed") >= 6.0).then_some(())
    });
    let (code, listed, err) = cli(&first.config_path, &["list", "--status", "pending"]);
    assert_eq!(code, 0, "{err}");
    let pending: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("evt_"))
        .map(str::to_string)
        .collect();
    assert_eq!(pending.len(), 2, "one queue entry per event:\n{listed}");

    // kill -9, restart on the same SQLite file
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let second = Sidecar::launch(&first.config_path, &[], &[]);
    eventually(&second, "the restarted sidecar works the queue", || {
        (deliveries(&second, "failed") >= 1.0).then_some(())
    });
    app.up();
    let got = app.wait_received(2);
    eventually(&second, "both delivered", || {
        (deliveries(&second, "delivered") >= 2.0).then_some(())
    });
    let got_ids: std::collections::BTreeSet<String> = app.received().iter().map(event_id).collect();
    let want: std::collections::BTreeSet<String> = pending.into_iter().collect();
    assert_eq!(got_ids, want, "nothing lost, the same event ids");
    assert!(got
        .iter()
        .all(|r| r.one("x-alipay-sidecar-verified") == Some("true")));
    let (_, delivered, _) = cli(&second.config_path, &["list", "--status", "delivered"]);
    for id in &want {
        assert!(delivered.contains(id.as_str()), "{delivered}");
    }
}

#[test]
fn past_max_delivery_age_a_notification_is_dead_until_retried() {
    let dir = TempDir::new().unwrap();
    let mut app = App::down(Behaviour::Ack);
    let extra = "acknowledge = \"after-store\"\ndelivery_schedule = [\"0s\", \"100ms\"]\nmax_delivery_age = \"1s\"\n";
    let toml = config(dir.path(), &app.url(), extra, &sqlite(dir.path()));
    let s = Sidecar::start(dir.path(), &toml);
    assert_success(&post(&s, &ntf01()), "stored");
    let id = eventually(&s, "marked dead", || {
        let (code, out, _) = cli(&s.config_path, &["list", "--status", "dead", "--json"]);
        assert_eq!(code, 0);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let first = v.as_array()?.first()?.clone();
        Some(first["event_id"].as_str().unwrap().to_string())
    });
    assert!(s.logged("marked dead"), "a warn line says so");
    assert_eq!(deliveries(&s, "dead"), 1.0);
    assert!(app.received().is_empty());

    app.up();
    let (code, out, err) = cli(&s.config_path, &["retry", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 dead"), "{out}");
    let got = app.wait_received(1);
    assert_eq!(got.len(), 1);
    assert_eq!(event_id(&got[0]), id);
    eventually(&s, "delivered after the retry", || {
        (deliveries(&s, "delivered") == 1.0).then_some(())
    });
    assert_eq!(app.received().len(), 1, "delivered once");
}

// ---------------------------------------------------------------- the CLI

#[test]
fn notifications_cli_lists_shows_and_replays_a_running_sidecars_events() {
    let (dir, app, s) = started("");
    assert_success(&post(&s, &ntf01()), "delivered in line");
    let id = event_id(&app.received()[0]);
    let path = &s.config_path;

    let (code, out, err) = cli(path, &["list"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{out}"));
    for want in [
        "PAYMENT_RESULT",
        "pay_20240501_0001",
        "delivered",
        "default",
    ] {
        assert!(line.contains(want), "{want} missing from {line:?}");
    }
    assert!(out.starts_with("EVENT ID"), "a table with a header:\n{out}");

    let (_, out, _) = cli(path, &["list", "--status", "pending"]);
    assert!(!out.contains(&id), "{out}");
    let (_, out, _) = cli(path, &["list", "--merchant", "someone-else"]);
    assert!(!out.contains(&id), "{out}");
    let (code, out, _) = cli(path, &["list", "--json", "--status", "delivered"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["event_id"], id.as_str());
    assert_eq!(v[0]["business_id"], "pay_20240501_0001");

    // ALIPAY_SIDECAR_CONFIG instead of --config, like run
    let mut cmd = command(&["notifications", "show", &id]);
    cmd.env("ALIPAY_SIDECAR_CONFIG", path);
    let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&String::from_utf8(ntf01().body).unwrap()),
        "the body:\n{out}"
    );
    assert!(out.contains("delivered"), "{out}");

    let (code, _, err) = cli(path, &["show", "evt_00000000000000000000000000000000"]);
    assert_eq!(code, 1, "an unknown event is a runtime failure: {err}");
    assert!(err.contains("no event"), "{err}");

    // replay: delivered again by the running sidecar's worker, same event id
    let (code, out, err) = cli(path, &["replay", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued"), "{out}");
    let got = app.wait_received(2);
    assert_eq!(got.len(), 2);
    assert_eq!(event_id(&got[1]), id);
    assert_eq!(got[1].body, ntf01().body);
    assert_eq!(got[1].target, NOTIFY);
    assert_eq!(got[1].one("x-alipay-sidecar-verified"), Some("true"));
    assert!(
        got[1].one("signature").is_some(),
        "Alipay's headers are kept"
    );
    eventually(&s, "marked delivered again", || {
        let (_, out, _) = cli(path, &["list", "--status", "delivered"]);
        out.contains(&id).then_some(())
    });

    // a config without [store]: usage error
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, config(dir.path(), &app.url(), "", "")).unwrap();
    let (code, _, err) = cli(&bare, &["list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[store]"), "{err}");
    let (code, _, _) = cli(path, &["retry"]);
    assert_eq!(code, 2, "retry needs --dead");
}

// ---------------------------------------------------------------- PostgreSQL

/// The PostgreSQL server of the tests, or `None` after [`crate::support::skip`] (`SKIPPED
/// <test>: <why>` outside CI, a failure under CI).
pub(crate) fn pg_admin_url(test: &str) -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            crate::support::skip(
                test,
                &format!(
                    "{PG_ENV} is not set (export {PG_ENV}=\"$(scripts/test-postgres.sh start)\" to run it)"
                ),
            );
            None
        }
    }
}

/// A fresh database on the server at `admin` (psql from Debian's postgresql packages).
pub(crate) fn create_database(admin: &str, test: &str) -> String {
    let name = format!("it_{test}_{}", std::process::id());
    let out = Command::new("psql")
        .args([admin, "-v", "ON_ERROR_STOP=1", "-q"])
        .args([
            "-c",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        ])
        .args(["-c", &format!("CREATE DATABASE \"{name}\"")])
        .output()
        .unwrap_or_else(|e| panic!("run psql to create database {name}: {e}"));
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // scripts/test-postgres.sh's URL names a database (`…:port/postgres`): swap it
    let (server, rest) = admin.rsplit_once('/').expect("a URL with a database");
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    format!("{server}/{name}{query}")
}

#[test]
fn two_replicas_on_one_postgresql_deliver_once() {
    let Some(admin) = pg_admin_url("two_replicas_on_one_postgresql_deliver_once") else {
        return;
    };
    let url = create_database(&admin, "replicas");
    let app = App::start(Behaviour::Ack);
    let store = format!("[store]\nurl = \"{url}\"\n");
    let (da, db) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = Sidecar::start(da.path(), &config(da.path(), &app.url(), "", &store));
    let b = Sidecar::start(db.path(), &config(db.path(), &app.url(), "", &store));
    let n = ntf01();
    assert_success(&post(&a, &n), "via replica A");
    let r = post(&b, &resigned("2019-07-12T12:18:56.253+05:30", |b| b));
    assert_success(&r, "Alipay's re-send via replica B");
    assert_eq!(String::from_utf8_lossy(&r.body), ACK);
    assert_eq!(app.received().len(), 1, "one delivery in total");
    assert_eq!(
        metric(&b, "alipay_sidecar_notifications_duplicate_total", &[]),
        1.0
    );
}

/// A PostgreSQL cluster of this test's own (scripts/test-postgres.sh, copied into a temp
/// folder so that its state file is not the checkout's): stopped mid-test.
pub(crate) struct OwnCluster {
    script: PathBuf,
    pub(crate) url: String,
    _dir: TempDir,
}

impl OwnCluster {
    pub(crate) fn start() -> OwnCluster {
        let dir = TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        let script = dir.path().join("scripts/test-postgres.sh");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-postgres.sh"),
            &script,
        )
        .unwrap();
        let (code, out, err) = run_bounded(
            Command::new("bash").arg(&script).arg("start"),
            Duration::from_secs(120),
        );
        assert_eq!(code, 0, "start a PostgreSQL cluster: {err}");
        OwnCluster {
            script,
            url: out.trim().to_string(),
            _dir: dir,
        }
    }

    fn stop(&self) {
        self.script("stop");
    }

    /// `pause` / `resume` / `stop` of scripts/test-postgres.sh on this cluster.
    pub(crate) fn script(&self, command: &str) {
        let (code, _, err) = run_bounded(
            Command::new("bash").arg(&self.script).arg(command),
            Duration::from_secs(120),
        );
        assert_eq!(code, 0, "{command} the cluster: {err}");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).arg("stop").output();
    }
}

#[test]
fn a_store_that_goes_away_never_loses_a_notification() {
    if pg_admin_url("a_store_that_goes_away_never_loses_a_notification").is_none() {
        return;
    }
    let pg = OwnCluster::start();
    let app = App::start(Behaviour::Ack);
    let store = format!("[store]\nurl = \"{}\"\n", pg.url);
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
    assert_success(&post(&inline, &ntf01()), "with the store up");
    assert_eq!(app.received().len(), 1);

    pg.stop();
    let port = pg
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    // default mode: delivered in line, without the journal, with a clear log line
    let r = post(&inline, &failed_result());
    assert_success(&r, "store down, in line");
    let got = app.received();
    assert_eq!(got.len(), 2, "the notification still reached the app");
    assert_eq!(got[1].body, failed_result().body);
    assert!(event_id(&got[1]).starts_with("evt_"));
    let logs = inline.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("could not be recorded in the store"))
        .unwrap_or_else(|| panic!("no warn line:\n{logs}"));
    assert!(
        line.contains(&format!("127.0.0.1:{port}")),
        "names the store: {line}"
    );
    assert!(line.to_lowercase().contains("warn"), "{line}");
    assert!(
        metric(
            &inline,
            "alipay_sidecar_store_errors_total",
            &[("op", "record")]
        ) >= 1.0
    );
    assert_eq!(
        inline.admin_get("/readyz").status,
        200,
        "readiness stays green"
    );

    // store-and-forward: 503, so that Alipay re-sends
    let r = post(&saf, &failed_result());
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(result(&r).1, "SIDECAR_STORE_UNAVAILABLE");
    assert_eq!(
        app.received().len(),
        2,
        "not delivered by the store-and-forward sidecar"
    );
    assert!(saf.logged(&format!("127.0.0.1:{port}")));
}
