//! Listener limits through the REAL binary: what an unauthenticated peer can make a listener
//! hold (connections, header bytes, time), request smuggling shapes, key files that are not
//! files, and `check-config` refusals of values that would fail or mislead later.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use alipay_sidecar::mock_gateway::MockGateway;

use crate::inbound::{fresh, start, wait_received};
use crate::support::{
    bin, request, run_bounded, vector_gateway, write_vector_keys, App, Behaviour,
};

/// `VmRSS` / `VmHWM` of a process, in KiB.
fn mem_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn json_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["result"]["resultCode"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A fake gateway signing with the vector Alipay key (so the sidecar, which trusts it,
/// verifies every answer), and the `[outbound]` lines pointing at it.
fn gateway(dir: &std::path::Path) -> (MockGateway, String) {
    let gw = vector_gateway(dir, |_| {});
    let toml = format!(
        "[outbound]\nlisten = \"127.0.0.1:0\"\ngateway = \"https://127.0.0.1:{}\"\nca_file = {:?}\n",
        gw.local_addr().port(),
        gw.ca_file().expect("ca").display().to_string()
    );
    (gw, toml)
}

pub(crate) fn pay(out: SocketAddr, id: &str) -> crate::support::Response {
    crate::support::pay(out, id, "")
}

#[test]
fn a_thousand_slow_header_clients_cannot_take_the_sidecar_down() {
    let app = App::start(Behaviour::Ack);
    let dir = tempfile::tempdir().unwrap();
    let (gw, outbound_toml) = gateway(dir.path());
    let s = start(
        &app.url(),
        &format!("{outbound_toml}[server]\nheader_read_timeout = \"4s\"\n"),
    );
    let out = s.sidecar.addr("outbound");
    // let the process settle, then take its idle size
    assert_eq!(pay(out, "warm").status, 200);
    assert_eq!(s.post(&fresh("warm"), &[]).status, 200);
    let pid = s.sidecar.pid();
    let idle = mem_kib(pid, "VmRSS:");

    // 1,000 clients, each trying to trickle a 1 MiB header into the public port (fewer, and
    // said so, when even the raised open-files limit cannot hold them and what else runs)
    let crowd = crate::support::scaled_connections(
        "limits::a_thousand_slow_header_clients_cannot_take_the_sidecar_down",
        1000,
        // what the fake gateways of the tests running beside this one (in this process)
        // need to keep accepting
        600,
    );
    let n = crowd.n;
    let clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            let c = TcpStream::connect(s.inbound).expect("connect");
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let attacker = std::thread::spawn(move || {
        let mut clients: Vec<Option<TcpStream>> = clients.into_iter().map(Some).collect();
        let head = b"POST /merchant/notify HTTP/1.1\r\nHost: x\r\nX-Pad: ";
        let pad = [b'a'; 4096];
        let mut sent = vec![0usize; clients.len()];
        let start = Instant::now();
        // bounded: each client stops at 1 MiB, when the sidecar closed it, or after 20 s
        while start.elapsed() < Duration::from_secs(20) && clients.iter().any(Option::is_some) {
            for (i, slot) in clients.iter_mut().enumerate() {
                let Some(c) = slot.as_mut() else { continue };
                let chunk: &[u8] = if sent[i] == 0 { head } else { &pad };
                match c.write(chunk) {
                    Ok(n) => sent[i] += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => *slot = None, // closed by the sidecar
                }
                if sent[i] >= 1 << 20 {
                    *slot = None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        sent.iter().sum::<usize>()
    });

    // during the attack: notifications and outbound calls keep succeeding
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        let r = s.post(&fresh(&format!("during_attack_{i}")), &[]);
        assert_eq!(
            r.status,
            200,
            "notification during the attack: {}",
            s.sidecar.logs()
        );
        let r = pay(out, &format!("during_attack_{i}"));
        assert_eq!(r.status, 200, "outbound during the attack");
        assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let bytes_sent = attacker.join().unwrap();
    let peak = mem_kib(pid, "VmHWM:");
    std::thread::sleep(Duration::from_secs(1));
    let after = mem_kib(pid, "VmRSS:");
    eprintln!(
        "attack: {bytes_sent} bytes sent; RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB"
    );
    // The bound of the issue: 100 MiB for a release binary idling at <= 20 MiB. The tests
    // run the debug binary, which idles higher; what the attack may add is the same.
    let bound = 100 * 1024 + idle.saturating_sub(20 * 1024);
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB is above {bound} KiB (idle {idle} KiB)"
    );
    assert!(
        after <= idle + 40 * 1024,
        "RSS did not come back near idle: {after} KiB after, {idle} KiB idle"
    );
    // every slow client was cut off by a limit, and said so in the metrics
    let closed = s.metric(
        r#"alipay_sidecar_connections_closed_total{listener="inbound",reason="header_too_large"}"#,
    ) + s.metric(
        r#"alipay_sidecar_connections_closed_total{listener="inbound",reason="header_timeout"}"#,
    );
    assert!(
        closed >= n as f64,
        "only {closed} of {n} slow connections were closed"
    );
    assert_eq!(wait_received(&app, 6).len(), 6);
    // the log says so a few times, not 1,000
    let logs = s.sidecar.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("broke a request-head limit"))
        .count();
    assert!((1..=30).contains(&lines), "{lines} limit log lines");
    drop(gw);
}

#[test]
fn connections_beyond_max_connections_are_closed_unread() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "max_connections = 4");
    // four connections busy with a request (its body still arriving): a connection that only
    // waits would be evicted to admit the fifth (tests/it/listeners.rs)
    let n = fresh("busy");
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        n.uri,
        n.body.len()
    );
    for (k, v) in &n.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(s.inbound).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(&n.body[..5]).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.metric(r#"alipay_sidecar_open_connections{listener="inbound"}"#),
        4.0
    );
    // the fifth: closed at once, without an answer
    let mut fifth = TcpStream::connect(s.inbound).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = fifth.write_all(b"POST /merchant/notify HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    match fifth.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the fifth connection was served: {other:?}"),
    }
    assert_eq!(
        s.metric(r#"alipay_sidecar_connections_refused_total{listener="inbound"}"#),
        1.0
    );
    // a slot that is given back can be used again
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.post(&fresh("after_cap"), &[]);
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn oversized_and_trickled_heads_get_431_and_408() {
    let app = App::start(Behaviour::Ack);
    let s = start(
        &app.url(),
        "[server]\nmax_header_bytes = 4096\nheader_read_timeout = \"2s\"",
    );
    // too large, sent at once: 431 in the envelope, then the connection closes
    let mut c = TcpStream::connect(s.inbound).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = format!(
        "POST /merchant/notify HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let _ = c.write_all(big.as_bytes());
    let r = crate::support::read_response(&mut c).expect("an answer");
    assert_eq!(r.status, 431);
    assert_eq!(json_code(&r.body), "SIDECAR_HEADERS_TOO_LARGE");
    assert_eq!(
        r.header("x-alipay-sidecar-error"),
        Some("SIDECAR_HEADERS_TOO_LARGE")
    );

    // one byte every 300 ms: the head never completes within 2 s → 408 and close, even
    // though each read is quick (pingora's own timeout is per read)
    let mut c = TcpStream::connect(s.inbound).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let head = b"POST /merchant/notify HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut answer = Vec::new();
    let began = Instant::now();
    for b in head.iter() {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(n) = c.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || !answer.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
        assert!(began.elapsed() < Duration::from_secs(30), "bounded test");
    }
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "no 408 for a trickled head: {text:?}"
    );
    assert!(text.contains("SIDECAR_REQUEST_TIMEOUT"), "{text}");

    // the body deadline: a head, then a body that never completes
    let s = start(&app.url(), "[server]\nbody_read_timeout = \"1s\"");
    let n = fresh("slow_body");
    let mut c = TcpStream::connect(s.inbound).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        n.uri,
        n.body.len()
    );
    for (k, v) in &n.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&n.body[..10]).unwrap();
    let r = crate::support::read_response(&mut c).expect("an answer");
    assert_eq!(r.status, 408);
    assert_eq!(json_code(&r.body), "SIDECAR_REQUEST_TIMEOUT");
    assert!(app.received().is_empty());
    assert_eq!(
        s.metric_reaching(r#"alipay_sidecar_requests_total{api="notify",direction="inbound",merchant="default",outcome="bad_request",status="408"}"#, 1.0),
        1.0
    );
}

/// Runs `check-config` with a deadline (a hang is a failure, not a stuck test).
fn check_config(dir: &std::path::Path, toml: &str) -> (i32, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).unwrap();
    let (code, out, err) = run_bounded(
        Command::new(bin())
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        Duration::from_secs(30),
    );
    (code, out + &err)
}

const BASE: &str = "client_id = \"T_111222333\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";

#[test]
fn check_config_refuses_what_would_fail_or_mislead_later() {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    std::fs::write(dir.path().join("empty-ca.pem"), "no certificate here\n").unwrap();
    let outbound = |line: &str| format!("{BASE}[outbound]\nlisten = \"127.0.0.1:18080\"\n{line}\n");
    let cases: Vec<(String, &str)> = vec![
        (outbound("gateway = \"https://127.0.0.1:65536\""), "65536"),
        (outbound("gateway = \"https://gw.example#frag\""), "fragment"),
        (outbound("gateway = \"https://user:pw@gw.example\""), "user names"),
        (outbound("gateway = \"https://gw.example/ams\""), "path"),
        (outbound("gateway = \"https://gw.example/?x=1\""), "query"),
        (
            outbound("gateway = \"https://gw.example\"\nagent_token = \"tok\\r\\nX-Evil: 1\""),
            "control characters",
        ),
        (
            outbound("gateway = \"https://gw.example\"\nca_file = \"empty-ca.pem\""),
            "no PEM certificate",
        ),
        (
            format!("{BASE}[outbound]\nlisten = \"127.0.0.1:18080\"\ngateway = \"https://gw.example\"\n[admin]\nlisten = \"127.0.0.1:18080\"\n"),
            "also used by",
        ),
        (
            format!("{BASE}[inbound]\nlisten = \"0.0.0.0:18081\"\nforward_to = \"http://127.0.0.1:3000\"\n[admin]\nlisten = \"127.0.0.1:18081\"\n"),
            "also used by",
        ),
        (
            outbound("gateway = \"https://gw.example\"\n[server]\nthreads = 100000"),
            "worker threads",
        ),
        (
            BASE.replace("{ \"1\" =", "{ \"01\" =")
                + "[outbound]\nlisten = \"127.0.0.1:18080\"\ngateway = \"https://gw.example\"\n",
            "canonical",
        ),
    ];
    for (toml, expect) in &cases {
        let (code, out) = check_config(dir.path(), toml);
        assert_ne!(code, 0, "accepted:\n{toml}\n{out}");
        assert!(out.contains(expect), "expected {expect:?} in:\n{out}");
    }
    // warnings, not errors
    let (code, out) = check_config(
        dir.path(),
        &format!("{BASE}[outbound]\nlisten = \"127.0.0.1:18080\"\ngateway = \"https://gw.example\"\nallowed_path_prefixes = [\"/\"]\n[admin]\nlisten = \"0.0.0.0:19090\"\n"),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed_path_prefixes"), "{out}");
    assert!(out.contains("admin listener"), "{out}");
}

#[test]
fn key_files_that_are_not_files_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let base = format!(
        "{BASE}[outbound]\nlisten = \"127.0.0.1:18082\"\ngateway = \"https://gw.example\"\n"
    );
    // check-config: a FIFO, a device, a folder, a huge file
    let fifo = dir.path().join("fifo.pem");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.pem")).unwrap();
    std::fs::create_dir(dir.path().join("folder.pem")).unwrap();
    std::fs::write(dir.path().join("huge.pem"), vec![b'A'; 100 * 1024]).unwrap();
    for (file, expect) in [
        ("fifo.pem", "named pipe"),
        ("zero.pem", "device"),
        ("folder.pem", "folder"),
        ("huge.pem", "larger than"),
    ] {
        let toml = base.replace("\"alipay_public_key.pem\"", &format!("\"{file}\""));
        let (code, out) = check_config(dir.path(), &toml);
        assert_ne!(code, 0, "{file} accepted: {out}");
        assert!(out.contains(expect) && out.contains(file), "{file}: {out}");
    }
    // a 4608-bit key: the message names the sizes that work
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/rsa-4608-private.pem"
        ),
        dir.path().join("big_private.pem"),
    )
    .unwrap();
    let toml = base.replace("\"merchant_private_key.pem\"", "\"big_private.pem\"");
    let (code, out) = check_config(dir.path(), &toml);
    assert_ne!(code, 0);
    assert!(
        out.contains("4608") && out.contains("2048 to 4096"),
        "{out}"
    );
}

#[test]
fn request_smuggling_shapes_are_refused_and_never_forwarded() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let n = fresh("smuggle");
    let mut signed = String::new();
    for (k, v) in &n.headers {
        signed.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = String::from_utf8(n.body.clone()).unwrap();
    let len = body.len();
    let chunked = format!("{len:x}\r\n{body}\r\n0\r\n\r\n");
    let uri = &n.uri;
    let cases = [
        (
            "CL+TE",
            format!("POST {uri} HTTP/1.1\r\nHost: x\r\n{signed}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"),
        ),
        (
            "duplicate CL",
            format!("POST {uri} HTTP/1.1\r\nHost: x\r\n{signed}Content-Length: {len}\r\nContent-Length: 5\r\n\r\n{body}"),
        ),
        (
            "obs-fold",
            format!("POST {uri} HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n{signed}Content-Length: {len}\r\n\r\n{body}"),
        ),
        (
            "bare CR",
            format!("POST {uri} HTTP/1.1\r\nHost: x\rX-Evil: 1\r\n{signed}Content-Length: {len}\r\n\r\n{body}"),
        ),
    ];
    for (name, raw) in cases {
        let mut c = TcpStream::connect(s.inbound).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(raw.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        eprintln!("{name}: {}", text.lines().next().unwrap_or("(closed)"));
        assert!(
            !text.starts_with("HTTP/1.1 2"),
            "{name} was accepted: {text}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        app.received().is_empty(),
        "a smuggling shape reached the app"
    );
}

#[test]
fn a_fifo_key_keeps_the_old_keys_and_every_reload_trigger_answering() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let dir = s.sidecar.config_path.parent().unwrap().to_path_buf();
    let key_file = dir.join("alipay_public_key.pem");
    let good = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&key_file)
        .status()
        .unwrap()
        .success());
    for _ in 0..2 {
        // each reload answers (it does not hang on the FIFO) and names the file
        let r = request(s.sidecar.admin, "POST", "/admin/reload", &[], b"").unwrap();
        assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
        let text = String::from_utf8_lossy(&r.body);
        assert!(
            text.contains("named pipe") && text.contains("alipay_public_key.pem"),
            "{text}"
        );
    }
    s.sidecar.signal("HUP");
    // the old keys keep serving
    assert_eq!(s.post(&fresh("after_fifo"), &[]).status, 200);
    // and a good file is picked up again
    std::fs::remove_file(&key_file).unwrap();
    std::fs::write(&key_file, good).unwrap();
    let r = request(s.sidecar.admin, "POST", "/admin/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}
