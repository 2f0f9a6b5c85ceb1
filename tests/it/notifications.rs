//! Notifications under pressure, through the REAL binary: unverified bodies held open (bounded
//! before they are read, within the memory budget), replayed and stale notifications, and two
//! copies of one notification while the first is still with the app.
//!
//! The memory tests run the sidecar under a real 128 MiB limit, the shipped Kubernetes one:
//! a cgroup child group (v2 `memory.max`, or v1 `memory.limit_in_bytes`) when the machine
//! allows it, `setrlimit(RLIMIT_DATA)` otherwise; the test prints which one ran.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use alipay_sidecar::protocol::{content_to_sign, format_iso8601, sign_content};

use crate::inbound::{alipay_key, fresh, result, signed, start, wait_received, Notification};
use crate::support::{
    read_response, run_bounded, write_vector_keys, App, Behaviour, Response, APP_ACK,
};

const CLIENT_ID: &str = "T_111222333";
const NOTIFY: &str = "/merchant/notify";
const ACK: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;
const LIMIT: u64 = 128 * 1024 * 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------- a real memory limit

/// How the sidecar's memory is limited.
enum How {
    CgroupV2(PathBuf),
    CgroupV1(PathBuf),
    Rlimit,
}

/// A memory limit on one running process, taken off again on drop.
struct MemoryLimit {
    pid: u32,
    how: How,
    /// What the process held when it joined a v1 group that could not take its existing
    /// pages along (`move_charge_at_immigrate` refused): the group's limit is the total
    /// minus this, and its peak plus this is the process's.
    base: u64,
}

/// `VmRSS` of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

impl MemoryLimit {
    /// Puts `pid` under a `bytes` limit: a cgroup child group of this test's own group when
    /// the machine allows it, `RLIMIT_DATA` otherwise.
    fn apply(pid: u32, bytes: u64) -> MemoryLimit {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let name = format!("alipay-sidecar-it-{pid}");
        // v1: a memory hierarchy of its own
        if let Some(rel) = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        {
            let dir = Path::new("/sys/fs/cgroup/memory")
                .join(rel.trim_start_matches('/'))
                .join(&name);
            if std::fs::create_dir(&dir).is_ok() {
                // what the process already holds is charged to the new group where the
                // kernel can move charges; elsewhere the group gets the rest of the limit
                let moved =
                    std::fs::write(dir.join("memory.move_charge_at_immigrate"), "3").is_ok();
                let base = if moved { 0 } else { rss(pid) };
                let group = bytes.saturating_sub(base).to_string();
                let ok = std::fs::write(dir.join("memory.limit_in_bytes"), &group).is_ok()
                    // no swap either, when the kernel accounts it
                    && (std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &group).is_ok()
                        || !dir.join("memory.memsw.limit_in_bytes").exists())
                    && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok();
                if ok {
                    eprintln!(
                        "memory limit: cgroup v1 {} = {group} bytes (+ {base} bytes held before joining = {bytes})",
                        dir.display()
                    );
                    return MemoryLimit {
                        pid,
                        how: How::CgroupV1(dir),
                        base,
                    };
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        // v2: the unified hierarchy
        if let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) {
            let parent = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
            let dir = parent.join(&name);
            let controllers =
                std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory")
                && std::fs::create_dir(&dir).is_ok()
            {
                let ok = std::fs::write(dir.join("memory.max"), bytes.to_string()).is_ok()
                    && std::fs::write(dir.join("memory.swap.max"), "0").is_ok()
                    && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok();
                if ok {
                    eprintln!("memory limit: cgroup v2 {} = {bytes} bytes", dir.display());
                    return MemoryLimit {
                        pid,
                        how: How::CgroupV2(dir),
                        base: 0,
                    };
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        let lim = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: prlimit on another process with a valid struct; no memory is shared.
        let rc = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_DATA,
                &lim,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(
            rc,
            0,
            "no cgroup child group could be made and setrlimit failed too: {}",
            std::io::Error::last_os_error()
        );
        eprintln!("memory limit: setrlimit(RLIMIT_DATA) = {bytes} bytes (no cgroup available)");
        MemoryLimit {
            pid,
            how: How::Rlimit,
            base: 0,
        }
    }

    /// The most memory the process used under the limit, in bytes.
    fn peak(&self) -> u64 {
        let read = |p: PathBuf| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let from_group = match &self.how {
            How::CgroupV1(d) => read(d.join("memory.max_usage_in_bytes")),
            How::CgroupV2(d) => read(d.join("memory.peak")),
            How::Rlimit => None,
        };
        from_group.map(|p: u64| p + self.base).unwrap_or_else(|| {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        })
    }

    /// OOM kills inside the group (0 where the kernel does not say).
    fn oom_kills(&self) -> u64 {
        let file = match &self.how {
            How::CgroupV1(d) => d.join("memory.oom_control"),
            How::CgroupV2(d) => d.join("memory.events"),
            How::Rlimit => return 0,
        };
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        let dir = match &self.how {
            How::CgroupV1(d) | How::CgroupV2(d) => d.clone(),
            How::Rlimit => return,
        };
        // back to the parent group, so the child can go (the process may still run)
        if let Some(parent) = dir.parent() {
            let _ = std::fs::write(parent.join("cgroup.procs"), self.pid.to_string());
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

// ---------------------------------------------------------------- hostile clients

/// A notification head as an attacker writes it: `headers`, `Content-Length: length`.
fn head(headers: &[(&str, String)], length: usize) -> Vec<u8> {
    let mut h = format!("POST {NOTIFY} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n");
    for (n, v) in headers {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// What one hostile client saw.
#[derive(Debug, Default)]
struct Seen {
    /// The answer it got before it sent its body, if any.
    early: Option<Response>,
    /// Body bytes the sidecar took.
    sent: usize,
}

/// Starts `n` clients that each send `head`, wait up to `wait` for an early answer, and
/// otherwise send all but the last byte of a `length`-byte body and hold the connection
/// until `release` is dropped. Returns the per-client results once every client is set.
fn hold_bodies(
    addr: SocketAddr,
    n: usize,
    head: Vec<u8>,
    length: usize,
    wait: Duration,
) -> (
    Vec<Seen>,
    mpsc::Sender<()>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    let mut threads = Vec::new();
    for _ in 0..n {
        let (head, seen_tx, release_rx) = (head.clone(), seen_tx.clone(), release_rx.clone());
        threads.push(std::thread::spawn(move || {
            let mut seen = Seen::default();
            let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(20)) else {
                let _ = seen_tx.send(seen);
                return;
            };
            let _ = c.write_all(&head);
            c.set_read_timeout(Some(wait)).unwrap();
            let mut peek = [0u8; 1];
            match c.peek(&mut peek) {
                Ok(k) if k > 0 => {
                    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    seen.early = read_response(&mut c).ok();
                    let _ = seen_tx.send(seen);
                    return;
                }
                _ => {}
            }
            c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let junk = vec![b'x'; 16 * 1024];
            while seen.sent < length - 1 {
                let take = junk.len().min(length - 1 - seen.sent);
                match c.write(&junk[..take]) {
                    Ok(k) => seen.sent += k,
                    Err(_) => break,
                }
            }
            let _ = seen_tx.send(seen);
            // hold the connection (and the sidecar's buffer) until released
            let _ = release_rx.lock().unwrap().recv();
            let _ = c.read(&mut peek);
        }));
    }
    drop(seen_tx);
    let seen: Vec<Seen> = (0..n)
        .map(|_| {
            seen_rx
                .recv_timeout(Duration::from_secs(120))
                .expect("a client got stuck")
        })
        .collect();
    (seen, release_tx, threads)
}

fn busy(seen: &[Seen]) -> usize {
    seen.iter()
        .filter(|s| {
            s.early
                .as_ref()
                .is_some_and(|r| r.status == 503 && result(r).1 == "SIDECAR_INBOUND_BUSY")
        })
        .count()
}

/// A `Signature` header as Alipay writes it (keyVersion 1, 256-byte value), over other
/// content than any body a hostile client sends: it passes every check the head allows.
fn valid_looking_signature() -> String {
    let content = content_to_sign("POST", NOTIFY, CLIENT_ID, "0", b"captured");
    sign_content(&alipay_key(), "1", &content).unwrap()
}

#[test]
fn unauthenticated_held_bodies_are_refused_before_they_are_read() {
    let app = App::start(Behaviour::Ack);
    // max_body_bytes raised to 1 MiB on purpose (the default, 64 KiB, would already
    // refuse the attack's Content-Length): the head checks alone must hold the line
    let s = start(&app.url(), "max_body_bytes = 1048576");
    let pid = s.sidecar.pid();
    assert_eq!(s.post(&fresh("warm"), &[]).status, 200);
    let limit = MemoryLimit::apply(pid, LIMIT);

    // the attack of the issue: 150 unauthenticated clients, Content-Length 1 MiB, a junk
    // Signature, then all of the body but its last byte
    let junk = head(
        &[
            ("client-id", CLIENT_ID.to_string()),
            ("Request-Time", format_iso8601(now_ms())),
            ("Signature", "junk".to_string()),
        ],
        1 << 20,
    );
    let (seen, release, threads) =
        hold_bodies(s.inbound, 150, junk, 1 << 20, Duration::from_secs(5));
    // and the other ways a head names no verifiable notification
    let others: [&[(&str, String)]; 4] = [
        &[
            ("client-id", CLIENT_ID.to_string()),
            ("Request-Time", format_iso8601(now_ms())),
        ],
        &[
            ("client-id", "T_SOMEONE_ELSE".to_string()),
            ("Request-Time", format_iso8601(now_ms())),
            ("Signature", valid_looking_signature()),
        ],
        &[
            ("client-id", CLIENT_ID.to_string()),
            ("Request-Time", format_iso8601(now_ms())),
            (
                "Signature",
                valid_looking_signature().replace("keyVersion=1", "keyVersion=7"),
            ),
        ],
        &[
            ("client-id", CLIENT_ID.to_string()),
            ("Request-Time", "2001-09-09T01:46:40Z".to_string()),
            ("Signature", valid_looking_signature()),
        ],
    ];
    let mut early = Vec::new();
    for h in others {
        let (seen, _release, _threads) = hold_bodies(
            s.inbound,
            1,
            head(h, 1 << 20),
            1 << 20,
            Duration::from_secs(20),
        );
        early.push(
            seen.into_iter()
                .next()
                .unwrap()
                .early
                .expect("refused before the body"),
        );
    }

    // during the attack: genuine notifications are still delivered
    for i in 0..5 {
        let r = s.post(&fresh(&format!("during_{i}")), &[]);
        assert_eq!(
            r.status,
            200,
            "during the attack: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(wait_received(&app, 6).len(), 6);
    let peak = limit.peak();
    let taken = seen.iter().map(|s| s.sent).sum::<usize>();
    eprintln!(
        "150 held 1 MiB unauthenticated bodies: {taken} body bytes taken by the sidecar, peak {} KiB under a {} KiB limit",
        peak / 1024,
        LIMIT / 1024
    );
    assert!(alive(pid), "the sidecar died: {}", s.sidecar.logs());
    assert_eq!(limit.oom_kills(), 0, "OOM kill in the sidecar's group");
    assert!(peak < LIMIT, "peak {peak} reached the limit");
    // refused from the head: the junk ones as malformed, each other shape with its reason
    let malformed = s.metric_reaching(
        r#"alipay_sidecar_signature_verifications_total{direction="inbound",result="malformed"}"#,
        150.0,
    );
    assert!(malformed >= 150.0, "{malformed} refused as malformed");
    let codes: Vec<(u16, String)> = early.iter().map(|r| (r.status, result(r).1)).collect();
    assert_eq!(
        codes,
        [
            (401, "SIDECAR_NOTIFICATION_UNVERIFIED".to_string()),
            (401, "SIDECAR_NOTIFICATION_UNVERIFIED".to_string()),
            (401, "SIDECAR_NOTIFICATION_UNVERIFIED".to_string()),
            (401, "SIDECAR_NOTIFICATION_STALE".to_string()),
        ]
    );
    for (r, words) in early.iter().zip([
        "no Signature header",
        "T_SOMEONE_ELSE",
        "keyVersion",
        "max_request_time_skew",
    ]) {
        assert!(
            result(r).2.contains(words),
            "{:?} should say {words}",
            result(r)
        );
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "refused from the head: closed, the body is never drained"
        );
    }
    for (label, want) in [
        ("missing_header", 1.0),
        ("wrong_client_id", 1.0),
        ("unknown_key_version", 1.0),
        ("stale_request_time", 1.0),
    ] {
        let sample = format!(
            r#"alipay_sidecar_signature_verifications_total{{direction="inbound",result="{label}"}}"#
        );
        assert_eq!(s.metric(&sample), want, "{sample}");
    }
    assert_eq!(
        s.metric("alipay_sidecar_inbound_unverified_body_bytes"),
        0.0,
        "no unverified body was buffered"
    );
    drop(release);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        app.received().len(),
        6,
        "nothing unverified reached the app"
    );
}

#[test]
fn held_bodies_of_a_known_client_are_bounded_by_the_budget() {
    let app = App::start(Behaviour::Ack);
    // the defaults: max_body_bytes 64 KiB, unverified_body_budget_bytes 8 MiB
    let s = start(&app.url(), "");
    let pid = s.sidecar.pid();
    assert_eq!(s.post(&fresh("warm"), &[]).status, 200);
    let limit = MemoryLimit::apply(pid, LIMIT);
    let headers = [
        ("client-id", CLIENT_ID.to_string()),
        ("Request-Time", format_iso8601(now_ms())),
        ("Signature", valid_looking_signature()),
    ];

    // a 1 MiB body is refused from its Content-Length: the default limit is 64 KiB
    let (seen, _r, _t) = hold_bodies(
        s.inbound,
        1,
        head(&headers, 1 << 20),
        1 << 20,
        Duration::from_secs(20),
    );
    let r = seen[0].early.as_ref().expect("refused before the body");
    assert_eq!(
        (r.status, result(r).1.as_str()),
        (413, "SIDECAR_BODY_TOO_LARGE")
    );

    // 150 valid-looking heads each declaring 64,000 bytes and holding all but the last one
    let length = 64_000;
    let (seen, release, threads) = hold_bodies(
        s.inbound,
        150,
        head(&headers, length),
        length,
        Duration::from_secs(3),
    );
    let refused = busy(&seen);
    let held = seen
        .iter()
        .filter(|s| s.early.is_none() && s.sent == length - 1)
        .count();
    let budget = 8 * 1024 * 1024;
    eprintln!(
        "150 held 64,000-byte bodies: {held} held, {refused} refused with 503 SIDECAR_INBOUND_BUSY"
    );
    assert_eq!(held, budget / length, "the budget holds this many bodies");
    assert_eq!(
        held + refused,
        150,
        "every other one got the retryable 503: {seen:?}"
    );
    let busy_answer = seen.iter().find_map(|s| s.early.as_ref()).unwrap();
    assert_eq!(result(busy_answer).0, "U", "retryable, so Alipay re-sends");
    assert!(result(busy_answer)
        .2
        .contains("unverified_body_budget_bytes"));
    assert_eq!(
        s.metric("alipay_sidecar_inbound_body_budget_refused_total"),
        refused as f64
    );
    let buffered = s.metric("alipay_sidecar_inbound_unverified_body_bytes");
    assert_eq!(buffered, (held * length) as f64);
    assert!(buffered <= budget as f64);

    // a genuine notification still fits the rest of the budget
    let r = s.post(&fresh("during"), &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let peak = limit.peak();
    eprintln!(
        "peak {} KiB under a {} KiB limit",
        peak / 1024,
        LIMIT / 1024
    );
    assert!(alive(pid));
    assert_eq!(limit.oom_kills(), 0);
    assert!(peak < LIMIT);

    // the held bodies end (client gone): the budget is given back
    drop(release);
    for t in threads {
        t.join().unwrap();
    }
    s.sidecar.eventually("the budget is given back", || {
        (s.metric("alipay_sidecar_inbound_unverified_body_bytes") == 0.0).then_some(())
    });
    assert_eq!(s.post(&fresh("after"), &[]).status, 200);
    assert_eq!(wait_received(&app, 3).len(), 3);
}

// ---------------------------------------------------------------- replays and freshness

#[test]
fn the_same_notification_three_times_is_delivered_once_without_a_store() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let n = fresh("thrice");
    let first = s.post(&n, &[]);
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body,
        APP_ACK.as_bytes(),
        "the app answered the first copy"
    );
    for _ in 0..2 {
        let again = s.post(&n, &[]);
        assert_eq!(again.status, 200);
        assert_eq!(
            again.body,
            ACK.as_bytes(),
            "a replay gets Alipay's SUCCESS body"
        );
    }
    // the same signature written with lower-case escapes is the same notification
    let lower: Vec<(String, String)> = n
        .headers
        .iter()
        .map(|(k, v)| {
            let v = if k == "Signature" {
                v.replace("%2B", "%2b")
                    .replace("%2F", "%2f")
                    .replace("%3D", "%3d")
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    let r = s.post(
        &Notification {
            headers: lower,
            ..n.clone()
        },
        &[],
    );
    assert_eq!(r.body, ACK.as_bytes());
    assert_eq!(app.received().len(), 1, "forwarded once");
    assert_eq!(
        s.metric(r#"alipay_sidecar_notifications_replayed_total{merchant="default"}"#),
        3.0
    );
    // another notification is delivered as usual
    assert_eq!(s.post(&fresh("other"), &[]).body, APP_ACK.as_bytes());
    assert_eq!(app.received().len(), 2);

    // Request-Time in 2001, genuinely signed: refused by the default freshness window
    let old = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        "2001-09-09T09:46:40+08:00",
        r#"{"notifyType":"PAYMENT_RESULT","paymentRequestId":"old"}"#,
    );
    let r = s.post(&old, &[]);
    assert_eq!(r.status, 401);
    let (status, code, message) = result(&r);
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("F", "SIDECAR_NOTIFICATION_STALE")
    );
    assert!(
        message.contains("max_request_time_skew = 2days"),
        "{message}"
    );
    assert_eq!(app.received().len(), 2);
}

#[test]
fn a_failed_delivery_is_not_remembered_as_a_replay() {
    let app = App::start(Behaviour::Status(500, "{}"));
    let s = start(&app.url(), "");
    let n = fresh("retry");
    assert_eq!(s.post(&n, &[]).status, 503);
    app.set(Behaviour::Ack);
    let r = s.post(&n, &[]);
    assert_eq!(
        r.body,
        APP_ACK.as_bytes(),
        "Alipay's re-send reaches the app"
    );
    assert_eq!(s.post(&n, &[]).body, ACK.as_bytes(), "then it is a replay");
    assert_eq!(app.received().len(), 2);
}

#[test]
fn check_config_warns_when_every_replay_protection_is_off() {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let base = format!("client_id = \"{CLIENT_ID}\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\nalipay_public_keys = {{ \"1\" = \"alipay_public_key.pem\" }}\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"http://127.0.0.1:3000\"\n");
    let run = |extra: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{base}{extra}")).unwrap();
        let (code, out, err) = run_bounded(
            std::process::Command::new(crate::support::bin())
                .arg("check-config")
                .arg("--config")
                .arg(&path),
            Duration::from_secs(30),
        );
        (code, out + &err)
    };
    let (code, out) = run("max_request_time_skew = \"off\"\nreplay_window_entries = 0\n");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("no replay protection on notifications"),
        "{out}"
    );
    for kept in [
        "max_request_time_skew = \"off\"\n",
        "replay_window_entries = 0\n",
        "",
    ] {
        let (code, out) = run(kept);
        assert_eq!(code, 0, "{out}");
        assert!(!out.contains("no replay protection"), "{kept}: {out}");
    }
    for (bad, says) in [
        ("unverified_body_budget_bytes = 1024\n", "smaller than"),
        ("replay_window_entries = -1\n", "replay_window_entries"),
        ("max_request_time_skew = \"0s\"\n", "greater than zero"),
    ] {
        let (code, out) = run(bad);
        assert_ne!(code, 0, "{bad} accepted: {out}");
        assert!(out.contains(says), "{bad}: {out}");
    }
}

// ---------------------------------------------------------------- two copies at once (L4)

/// Posts `a`, then `b` while `a` is still with the (slow) app; both answers.
fn two_copies(
    s: &crate::inbound::Setup,
    a: &Notification,
    b: &Notification,
) -> (Response, Response) {
    let (addr, a) = (s.inbound, a.clone());
    let first = std::thread::spawn(move || post(addr, &a));
    std::thread::sleep(Duration::from_millis(700));
    let second = s.post(b, &[]);
    (first.join().unwrap(), second)
}

fn post(addr: SocketAddr, n: &Notification) -> Response {
    let headers: Vec<(&str, &str)> = n
        .headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    crate::support::request(addr, "POST", &n.uri, &headers, &n.body).unwrap()
}

#[test]
fn a_second_copy_waits_for_the_first_instead_of_both_being_delivered() {
    let app = App::start(Behaviour::Slow(Duration::from_secs(3)));
    let s = start(&app.url(), "");
    let n = fresh("twice");
    let started = Instant::now();
    let (first, second) = two_copies(&s, &n, &n);
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body,
        ACK.as_bytes(),
        "the second copy is a replay once the first was taken"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(app.received().len(), 1, "delivered once");
    assert_eq!(
        s.metric(r#"alipay_sidecar_notifications_waited_total{merchant="default"}"#),
        1.0
    );
}

#[test]
fn with_a_store_a_resigned_copy_waits_and_is_suppressed_as_a_duplicate() {
    let app = App::start(Behaviour::Slow(Duration::from_secs(3)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let s = start(
        &app.url(),
        &format!("\n[store]\npath = {:?}\n", db.display().to_string()),
    );
    let body = r#"{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentRequestId":"resigned","paymentId":"p9"}"#;
    let a = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        &format_iso8601(now_ms()),
        body,
    );
    // Alipay's re-send: same event, signed again with a later Request-Time
    let b = signed(
        &alipay_key(),
        "1",
        NOTIFY,
        CLIENT_ID,
        &(now_ms() + 1000).to_string(),
        body,
    );
    let (first, second) = two_copies(&s, &a, &b);
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body,
        ACK.as_bytes(),
        "suppressed: acknowledged by the sidecar"
    );
    assert_eq!(app.received().len(), 1, "delivered once");
    assert_eq!(
        s.metric(r#"alipay_sidecar_notifications_waited_total{merchant="default"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"alipay_sidecar_notifications_duplicate_total{merchant="default"}"#),
        1.0
    );
}
