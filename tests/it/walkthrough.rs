//! The README's fake-gateway walkthrough (issue 20, item 5): its paste block run as written
//! (ports swapped for free ones), and `mock-gateway --out-dir` restarted under a running
//! sidecar, which must keep getting verified answers (same CA, same Alipay key).
//!
//! The real binary throughout: `mock-gateway` and `run` as processes, curl for the HTTPS
//! control path as the README uses it. The README's default ports (8443, 8080, 8081, 9090,
//! 3000) are never bound here. The waits are deadlines that turn a hang into a failure,
//! never assertions about time.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, request, run_bounded, skip, Response, Sidecar};

/// Generous: a debug build generates RSA keys with the `rsa` crate on a busy machine.
const DEADLINE: Duration = Duration::from_secs(180);

const PAY: &str = "/ams/sandbox/api/v1/payments/pay";

/// Whether curl is here (the walkthrough's HTTPS calls use it); says SKIPPED when not.
fn have_curl(test: &str) -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(test, "curl is not installed (apt-get install curl)");
    }
    ok
}

/// Polls `check` until it holds; fails with `context()` after [`DEADLINE`].
fn eventually(what: &str, mut check: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `mock-gateway` process, its output in a file; stopped (SIGTERM, then kill) on drop.
struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Gateway {
    /// Starts `mock-gateway ARGS` in `cwd` and waits until it says it is ready.
    fn start(cwd: &Path, args: &[&str]) -> Gateway {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cwd.join(format!("gateway-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .arg("mock-gateway")
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start mock-gateway");
        let mut gw = Gateway { child, log };
        let start = Instant::now();
        while !gw.output().contains("press Ctrl-C to stop") {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("mock-gateway exited ({status}):\n{}", gw.output());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "mock-gateway not ready within {DEADLINE:?}:\n{}",
                gw.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        gw
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port after `prefix` in the start-up summary (`prefix` ends with `127.0.0.1:`).
    fn port_after(&self, prefix: &str) -> u16 {
        let out = self.output();
        let at = out
            .find(prefix)
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{out}"));
        out[at + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// Stops it as Ctrl-C would; it must exit 0.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < DEADLINE, "mock-gateway did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status}:\n{}", self.output());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pay through the sidecar whose notification waits for `/mock/notify` (README's body).
fn pay(sidecar: &Sidecar, id: &str) -> Response {
    let body = format!(
        r#"{{"paymentRequestId":"{id}","paymentAmount":{{"currency":"USD","value":"100"}},"paymentNotifyUrl":"http://{}/notify","mockNotify":"none"}}"#,
        sidecar.addr("inbound")
    );
    request(
        sidecar.addr("outbound"),
        "POST",
        PAY,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .unwrap()
}

fn assert_verified(r: &Response, what: &str) {
    r.assert_status(200, what);
    assert_eq!(
        r.header("x-alipay-sidecar-verified"),
        Some("true"),
        "{what}"
    );
    assert_eq!(r.result_code(), ("S".into(), "SUCCESS".into()), "{what}");
}

/// `POST /mock/notify/ID` over HTTPS with curl, trusting the CA in `dir` (as the README does).
fn notify(dir: &Path, gateway_port: u16, id: &str) {
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["-X", "POST"])
        .arg(format!("https://127.0.0.1:{gateway_port}/mock/notify/{id}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("notification started"),
        "/mock/notify/{id}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The receiver's line for a verified notification of `id`.
fn received(gw: &Gateway, id: &str) -> bool {
    gw.output().lines().any(|l| {
        l.starts_with("mock-gateway: receiver: POST /notify X-Alipay-Sidecar-Verified: true ")
            && l.contains(r#""notifyType":"PAYMENT_RESULT""#)
            && l.contains(&format!(r#""paymentRequestId":"{id}""#))
    })
}

/// A verified pay through the sidecar, then its notification (sent with `/mock/notify`)
/// verified by the sidecar and received by the gateway's receiver.
fn round_trip(gw: &Gateway, sidecar: &Sidecar, dir: &Path, gateway_port: u16, id: &str) {
    assert_verified(&pay(sidecar, id), &format!("pay {id} through the sidecar"));
    notify(dir, gateway_port, id);
    eventually(
        &format!("the notification of {id} verified at the receiver"),
        || received(gw, id),
        || format!("{}\n{}", gw.output(), sidecar.logs()),
    );
}

/// `mock-gateway --out-dir` keeps its CA and Alipay key in DIR: a sidecar started on the
/// written sidecar.toml gets verified answers and verified notifications, keeps getting them
/// from a gateway restarted on the same DIR, and, when the gateway restarts WITHOUT
/// --out-dir (a new CA), gets a TLS error that blames the CA in ca_file.
#[test]
fn a_restarted_fake_gateway_keeps_a_running_sidecar_working() {
    if !have_curl("a_restarted_fake_gateway_keeps_a_running_sidecar_working") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("walkthrough");
    let dir_arg = dir.to_str().unwrap();
    // port 0 everywhere for the first start: the sidecar's listeners are reported in its
    // ready file, the gateway's and the receiver's in the summary (and reused on restart)
    let gw = Gateway::start(
        tmp.path(),
        &[
            "--out-dir",
            dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--receiver",
            "127.0.0.1:0",
            "--sidecar-ports",
            "0,0,0",
        ],
    );
    let gateway_port = gw.port_after("listening on https://127.0.0.1:");
    let receiver_port = gw.port_after("notifications on 127.0.0.1:");
    use std::os::unix::fs::PermissionsExt;
    for private in [
        "ca_key.pem",
        "alipay_private_key.pem",
        "merchant_private_key.pem",
    ] {
        let mode = std::fs::metadata(dir.join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{private}");
    }
    let sidecar = Sidecar::launch(&dir.join("sidecar.toml"), &[], &[]);

    round_trip(&gw, &sidecar, &dir, gateway_port, "try-1");

    // restart on the same DIR and ports: same CA, same Alipay key, nothing generated
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let alipay = std::fs::read_to_string(dir.join("alipay_public_key.pem")).unwrap();
    let toml = std::fs::read_to_string(dir.join("sidecar.toml")).unwrap();
    gw.stop();
    let ports = (
        format!("127.0.0.1:{gateway_port}"),
        format!("127.0.0.1:{receiver_port}"),
    );
    let gw = Gateway::start(
        tmp.path(),
        &[
            "--out-dir",
            dir_arg,
            "--listen",
            &ports.0,
            "--receiver",
            &ports.1,
            "--sidecar-ports",
            "0,0,0",
        ],
    );
    assert!(!gw.output().contains("generated"), "{}", gw.output());
    assert_eq!(std::fs::read_to_string(dir.join("ca.pem")).unwrap(), ca);
    assert_eq!(
        std::fs::read_to_string(dir.join("alipay_public_key.pem")).unwrap(),
        alipay
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sidecar.toml")).unwrap(),
        toml
    );
    round_trip(&gw, &sidecar, &dir, gateway_port, "try-2");
    gw.stop();

    // today's behaviour without --out-dir: a new CA, so the sidecar's TLS fails, and says why
    let merchant_public = dir.join("merchant_public_key.pem");
    let gw = Gateway::start(
        tmp.path(),
        &[
            "--tls",
            "--merchant-public-key",
            merchant_public.to_str().unwrap(),
            "--listen",
            &ports.0,
        ],
    );
    let r = pay(&sidecar, "try-3");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("x-alipay-sidecar-error"),
        Some("SIDECAR_GATEWAY_TLS_ERROR")
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("not signed by the CA in [outbound] ca_file"),
        "{body}"
    );
    drop(gw);
}

/// Free ports for the walkthrough's five listeners, none of them a README default: bound
/// together (so they differ) and released just before the walkthrough binds them.
fn free_ports() -> [u16; 5] {
    let listeners: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    assert!(
        !ports
            .iter()
            .any(|p| [8443, 3000, 8080, 8081, 9090].contains(p)),
        "the OS handed out a README default port: {ports:?}"
    );
    [ports[0], ports[1], ports[2], ports[3], ports[4]]
}

/// Replaces `from` by `to` in `text`, failing when `from` is not there (the README changed
/// and this test no longer runs what it shows).
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the README's walkthrough has no {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// The README's "fake gateway" paste block (the `sh` block that starts `mock-gateway
/// --out-dir`), run by bash in an empty folder with only these changes: no release build
/// (the test's binary instead), and free ports instead of the defaults (given to
/// `mock-gateway` as flags, swapped in the curl URLs). Then what the README says happens
/// must be in the output: the verified pay and the receiver's line for the notification.
#[test]
fn the_readme_walkthrough_runs_as_pasted() {
    if !have_curl("the_readme_walkthrough_runs_as_pasted") {
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains("mock-gateway --out-dir"))
        .expect("README has an sh block with `mock-gateway --out-dir`");

    let [gateway, receiver, outbound, inbound, admin] = free_ports();
    let mut script = swap(block, "cargo build --release\n", "");
    script = swap(
        &script,
        "./target/release/alipay-sidecar",
        bin().to_str().unwrap(),
    );
    script = swap(
        &script,
        "mock-gateway --out-dir walkthrough",
        &format!(
            "mock-gateway --out-dir walkthrough --listen 127.0.0.1:{gateway} --receiver \
             127.0.0.1:{receiver} --sidecar-ports {outbound},{inbound},{admin}"
        ),
    );
    for (default, port) in [
        (":8443", gateway),
        (":3000", receiver),
        (":8080", outbound),
        (":8081", inbound),
        (":9090", admin),
    ] {
        script = swap(&script, default, &format!(":{port}"));
    }
    // the README's own claim of what the gateway prints for the notification
    let claimed = readme
        .split('`')
        .find(|s| s.starts_with("mock-gateway: receiver: "))
        .expect("README shows the receiver's line")
        .trim_end_matches('…');

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.log");
    // all output in a file (the background gateway's too); the background jobs stopped at
    // the end however the script ends
    let wrapped = format!(
        "exec >out.log 2>&1\nset -e\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{script}\n\
         for i in $(seq 600); do grep -q 'mock-gateway: receiver: ' out.log && break; sleep 0.2; done\n"
    );
    let mut bash = Command::new("bash");
    bash.arg("-c").arg(&wrapped).current_dir(tmp.path());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ALIPAY_SIDECAR_") || name == "RUST_LOG" {
            bash.env_remove(&*name);
        }
    }
    let (code, _, _) = run_bounded(&mut bash, Duration::from_secs(600));
    let log = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        code, 0,
        "the walkthrough failed:\n{wrapped}\n--- output ---\n{log}"
    );
    assert!(log.contains("HTTP/1.1 200 OK"), "{log}");
    assert!(log.contains("X-Alipay-Sidecar-Verified: true"), "{log}");
    assert!(log.contains(r#""resultStatus":"S""#), "{log}");
    assert!(log.contains("notification started"), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("mock-gateway: receiver: "))
        .unwrap_or_else(|| panic!("no notification reached the receiver:\n{log}"));
    assert!(
        line.starts_with(claimed),
        "README says {claimed:?}, got {line:?}"
    );
    assert!(line.contains(r#""paymentRequestId":"try-1""#), "{line}");
}
