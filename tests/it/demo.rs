//! `alipay-sidecar demo` as a user meets it: the real binary, killed the ways terminals, IDEs,
//! `timeout` and test harnesses kill it. Whatever stops it, no sidecar process and no temp
//! folder (with its merchant private key) may be left behind.
//!
//! The waits below are deadlines for something that must happen (a process exiting, a line
//! appearing), never assertions about how long it took.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use crate::support::{bin, command};

/// Generous: a debug build generates an RSA key and starts a sidecar on a busy machine.
const DEADLINE: Duration = Duration::from_secs(180);

/// The lines a demo printed so far, read by a thread.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(stdout: ChildStdout) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Reads until a line containing `needle`; panics with everything seen when the output
    /// ends or the deadline passes first.
    fn until(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {needle:?} ({e}); the output was:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything until the output closes.
    fn rest(&mut self) -> String {
        while let Ok(line) = self.rx.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

/// What a running demo told about itself.
struct Running {
    lines: Lines,
    dir: PathBuf,
    sidecar_pid: u32,
}

/// Reads the demo's output until it is running, noting its temp folder and sidecar pid.
fn wait_running(stdout: ChildStdout) -> Running {
    let mut lines = Lines::new(stdout);
    let first = lines.until("throw-away keys in ");
    let dir = first
        .split("throw-away keys in ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no folder in {first:?}"));
    let outbound = lines.until("sidecar outbound");
    let sidecar_pid = outbound
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no sidecar pid in {outbound:?}"));
    lines.until("== running");
    assert!(dir.exists(), "the demo's folder {} exists", dir.display());
    assert!(
        alive(sidecar_pid),
        "the demo's sidecar {sidecar_pid} is running"
    );
    Running {
        lines,
        dir,
        sidecar_pid,
    }
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; false when the deadline passed first.
fn gone(pid: u32) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn demo_command(args: &[&str]) -> Command {
    let mut cmd = command(&[&["demo"], args].concat());
    cmd.stderr(Stdio::inherit());
    cmd
}

fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: sending a signal to a process this test started.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

fn assert_cleaned_up(dir: &Path, sidecar_pid: u32, output: &str) {
    assert!(
        gone(sidecar_pid),
        "the demo's sidecar {sidecar_pid} is still running\n{output}"
    );
    assert!(
        !dir.exists(),
        "the demo's folder {} (with the merchant private key) is still there\n{output}",
        dir.display()
    );
}

fn stopped_by(sig: i32, name: &str) {
    let mut child: Child = demo_command(&["--ephemeral-ports"])
        .spawn()
        .expect("start demo");
    let mut running = wait_running(child.stdout.take().expect("stdout"));
    signal(child.id(), sig);
    let status = child.wait().expect("wait demo");
    let output = running.lines.rest();
    assert!(output.contains(&format!("== {name}")), "{output}");
    assert_eq!(
        status.code(),
        Some(0),
        "a signal after the traffic is a normal stop\n{output}"
    );
    assert_cleaned_up(&running.dir, running.sidecar_pid, &output);
}

#[test]
fn sigterm_stops_the_sidecar_and_removes_the_folder() {
    stopped_by(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_stops_the_sidecar_and_removes_the_folder() {
    stopped_by(libc::SIGHUP, "SIGHUP");
}

/// The demo's parent (a shell, an IDE, a test harness) dies: the demo gets SIGTERM from the
/// kernel (PR_SET_PDEATHSIG) and cleans up as for SIGTERM.
#[test]
fn the_parents_death_stops_the_demo_and_its_sidecar() {
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" demo --ephemeral-ports & echo "demo-pid $!"; wait"#)
        .arg(bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sh");
    let stdout = parent.stdout.take().expect("stdout");
    // The pid line and the demo's lines come through the same pipe.
    let mut lines = Lines::new(stdout);
    let demo_pid: u32 = lines
        .until("demo-pid ")
        .trim_start_matches("demo-pid ")
        .trim()
        .parse()
        .expect("demo pid");
    let first = lines.until("throw-away keys in ");
    let dir = PathBuf::from(
        first
            .split("throw-away keys in ")
            .nth(1)
            .and_then(|r| r.strip_suffix(')'))
            .expect("folder"),
    );
    let outbound = lines.until("sidecar outbound");
    let sidecar_pid: u32 = outbound
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .expect("sidecar pid");
    lines.until("== running");
    assert!(alive(demo_pid) && alive(sidecar_pid));

    parent.kill().expect("SIGKILL the shell");
    let _ = parent.wait();
    assert!(
        gone(demo_pid),
        "the demo outlived its parent\n{}",
        lines.seen.join("\n")
    );
    let output = lines.rest();
    assert!(output.contains("== SIGTERM"), "{output}");
    assert_cleaned_up(&dir, sidecar_pid, &output);
}

/// SIGKILL cannot be caught: the sidecar still dies with the demo (PR_SET_PDEATHSIG), and
/// the folder left behind is removed by the next demo, whose `--once` run prints every
/// exchange and no "try it yourself" commands for ports that are about to close.
#[test]
fn sigkill_takes_the_sidecar_along_and_the_next_demo_removes_the_folder() {
    let mut child = demo_command(&["--ephemeral-ports"])
        .spawn()
        .expect("start demo");
    let running = wait_running(child.stdout.take().expect("stdout"));
    child.kill().expect("SIGKILL the demo");
    let _ = child.wait();
    assert!(
        gone(running.sidecar_pid),
        "the sidecar outlived the demo killed by SIGKILL"
    );
    // (Any demo started now removes it; a parallel test's may already have.)

    let out = demo_command(&["--once", "--ephemeral-ports"])
        .output()
        .expect("second demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        !running.dir.exists(),
        "the next demo removes the stale folder {}",
        running.dir.display()
    );
    for needle in [
        "[gateway] received POST /ams/sandbox/api/v1/payments/pay as signed by the sidecar (signature valid)",
        "signature: algorithm=RSA256,keyVersion=1,signature=",
        "[sidecar] outbound payments/pay: answered 200, signature verified",
        "[sidecar] outbound payments/inquiryPayment: answered 200, signature verified",
        "[app] notification delivered to POST /alipay/notify, X-Alipay-Sidecar-Verified: true",
        "client id SANDBOX_",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}:\n{stdout}");
    }
    assert!(!stdout.contains("try it yourself"), "{stdout}");
    assert!(!stdout.contains("curl "), "{stdout}");
    assert_demo_ends_with_the_audit(&stdout);
    assert!(
        !stdout.contains(" /ams/api/"),
        "a SANDBOX_ id uses sandbox paths: {stdout}"
    );
}

/// Without `--once` the printed commands are complete: the inquiry sends JSON too.
#[test]
fn printed_curl_commands_send_json_to_sandbox_paths() {
    let mut child = demo_command(&["--ephemeral-ports"])
        .spawn()
        .expect("start demo");
    let mut running = wait_running(child.stdout.take().expect("stdout"));
    signal(child.id(), libc::SIGTERM);
    let _ = child.wait();
    let output = running.lines.rest();
    let commands: Vec<&String> = running
        .lines
        .seen
        .iter()
        .skip_while(|l| !l.contains("try it yourself"))
        .take_while(|l| !l.contains("/metrics"))
        .collect();
    let curls: Vec<&&String> = commands.iter().filter(|l| l.contains("curl ")).collect();
    assert_eq!(curls.len(), 2, "{output}");
    for curl in curls {
        assert!(curl.contains("/ams/sandbox/api/v1/payments/"), "{curl}");
        assert!(
            curl.contains("-H 'Content-Type: application/json'"),
            "{curl}"
        );
    }
    assert_cleaned_up(&running.dir, running.sidecar_pid, &output);
}

/// A busy fixed port is reported as busy, naming it, before anything is started.
#[test]
fn a_busy_port_is_named() {
    // Hold 8080 (if another process already holds it, it is just as busy).
    let _held = std::net::TcpListener::bind("127.0.0.1:8080");
    let out = demo_command(&["--once"])
        .stderr(Stdio::piped())
        .output()
        .expect("demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("port 8080 (the sidecar outbound) is busy"),
        "{stderr}"
    );
    assert!(stderr.contains("--ephemeral-ports"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "nothing was started"
    );
}

/// The demo drops a REFUND_RESULT on purpose, its backfill recovers it from the gateway's
/// event log, and it ends with `notifications audit`'s table: every type in the journal and
/// delivered, nothing missing, then the success line.
fn assert_demo_ends_with_the_audit(stdout: &str) {
    let line = |prefix: &str| -> Vec<String> {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{stdout}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert!(
        stdout.contains("X-Alipay-Sidecar-Source: inquireNotificationList"),
        "the dropped REFUND_RESULT reached the app through the backfill:\n{stdout}"
    );
    let recovered = stdout
        .lines()
        .position(|l| l.contains("X-Alipay-Sidecar-Source: inquireNotificationList"))
        .unwrap();
    assert!(
        stdout
            .lines()
            .nth(recovered + 1)
            .is_some_and(|l| l.contains("REFUND_RESULT")),
        "the recovered one is the REFUND_RESULT:\n{stdout}"
    );
    // TYPE AT-ALIPAY IN-JOURNAL DELIVERED MISSING
    assert_eq!(
        line("TYPE"),
        [
            "TYPE",
            "AT",
            "ALIPAY",
            "IN",
            "JOURNAL",
            "DELIVERED",
            "MISSING"
        ],
        "{stdout}"
    );
    assert_eq!(line("REFUND_RESULT")[1..], ["1", "1", "1", "0"], "{stdout}");
    assert_eq!(
        line("PAYMENT_RESULT")[1..],
        ["2", "2", "2", "0"],
        "{stdout}"
    );
    let audit = stdout.find("== 7. the audit").expect("the audit step");
    let nothing = stdout[audit..]
        .find("nothing missing")
        .expect("the audit says nothing is missing");
    let done = stdout.find("== done:").expect("the success line");
    assert!(
        audit + nothing < done,
        "the audit comes before the success line:\n{stdout}"
    );
}
