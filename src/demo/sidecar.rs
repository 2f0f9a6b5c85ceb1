//! The real sidecar as the demo's child process: started with the demo's config and a
//! `--ready-file`, its JSON log turned into `[sidecar]` lines, stopped with the demo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The last `n` lines of a file, indented (the folder is removed when the demo ends, so the
/// lines are shown rather than the path).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("     {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `[sidecar]` line for a JSON log line of the sidecar: each exchange (direction, API,
/// status, verification outcome) and each warning or error; `None` for the rest.
fn sidecar_event(line: &str) -> Option<(bool, String)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let field = |name: &str| match &v[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    let message = field("message").unwrap_or_default();
    // The backfill's walks of the event log (inquireNotificationList, every few seconds for
    // as long as the demo runs) are the demo's only calls outside the known API list (label
    // `other`): not shown here nor counted as the script's exchanges; the gateway's view
    // names them while the demo's step 6 waits for one.
    if message == "request"
        && field("direction").as_deref() == Some("outbound")
        && field("api").as_deref() == Some(crate::protocol::OTHER_API_LABEL)
    {
        return None;
    }
    if message == "request" {
        let mut text = format!(
            "{} {}: answered {}, {}",
            field("direction").unwrap_or_default(),
            field("api").unwrap_or_default(),
            field("status").unwrap_or_default(),
            match field("outcome").as_deref() {
                Some("verified") => "signature verified".to_string(),
                Some(other) => format!("outcome {other}"),
                None => "no outcome".to_string(),
            }
        );
        if let Some(version) = field("key_version") {
            text.push_str(&format!(" (Alipay keyVersion {version})"));
        }
        if let Some(code) = field("error_code") {
            text.push_str(&format!(", {code}"));
        }
        if let Some(ms) = v["duration_ms"].as_f64() {
            text.push_str(&format!(", {ms:.1} ms"));
        }
        return Some((true, text));
    }
    if message.starts_with("reconcile:") {
        let id = field("payment_request_id")
            .map(|id| format!(" ({id})"))
            .unwrap_or_default();
        return Some((false, format!("{message}{id}")));
    }
    let level = field("level").unwrap_or_default();
    if level == "WARN" || level == "ERROR" {
        let error = field("error").map(|e| format!(": {e}")).unwrap_or_default();
        return Some((false, format!("{level} {message}{error}")));
    }
    None
}

/// The sidecar child process; stopped (SIGTERM, then kill) on `stop` or drop. Its stdout (the
/// JSON log) is copied to the log file by a thread that also prints the `[sidecar]` lines.
pub(super) struct Sidecar {
    child: Option<Child>,
    log: PathBuf,
    ready_file: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The addresses the sidecar's listeners are bound to, as its ready file names them (with
/// `--ephemeral-ports` its config says port 0 and only the sidecar knows the ports).
#[derive(Debug, Clone, Copy)]
pub(super) struct Listeners {
    pub(super) outbound: SocketAddr,
    pub(super) inbound: SocketAddr,
    pub(super) admin: SocketAddr,
}

/// The listeners named in the ready file `run --ready-file` writes; `None` until it is there
/// (it is written whole, at once).
fn read_ready_file(path: &Path) -> Result<Option<Listeners>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "reading the sidecar's ready file {}: {e}",
                path.display()
            ))
        }
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("the sidecar's ready file is not JSON ({e}): {text}"))?;
    let addr = |name: &str| {
        v["listeners"][name]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("the sidecar's ready file names no {name} listener: {text}"))
    };
    Ok(Some(Listeners {
        outbound: addr("outbound")?,
        inbound: addr("inbound")?,
        admin: addr("admin")?,
    }))
}

impl Sidecar {
    /// Starts `alipay-sidecar run --config CONFIG --ready-file READY_FILE`, its log going to
    /// `log`; each outbound exchange it logs counts in `exchanges`.
    pub(super) fn spawn(
        config: &Path,
        log: &Path,
        ready_file: &Path,
        exchanges: Arc<AtomicUsize>,
    ) -> Result<Sidecar, String> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--ready-file")
            .arg(ready_file)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpid has no preconditions.
            let parent = unsafe { libc::getpid() };
            // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
            // system calls (prctl, getppid), allocating nothing.
            unsafe {
                command.pre_exec(move || {
                    // The sidecar gets SIGTERM (and drains) when the demo dies, even by SIGKILL.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                    if libc::getppid() != parent {
                        // the demo died between fork and prctl
                        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting the sidecar: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the sidecar has no stdout pipe")?;
        let reader = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut file = file;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some((exchange, text)) = sidecar_event(&line) {
                    println!("   [sidecar] {text}");
                    if exchange && text.starts_with("outbound") {
                        exchanges.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Ok(Sidecar {
            child: Some(child),
            log: log.to_path_buf(),
            ready_file: ready_file.to_path_buf(),
            reader: Some(reader),
        })
    }

    /// The last lines of its log, to show why it failed.
    pub(super) fn last_log_lines(&self) -> String {
        tail(&self.log, 20)
    }

    /// Waits (up to 20 s) until the sidecar has written its ready file and answers `/readyz`
    /// on the admin listener named there; returns the addresses of its listeners.
    pub(super) async fn wait_ready(&mut self) -> Result<Listeners, String> {
        let start = Instant::now();
        let mut listeners = None;
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "the sidecar exited ({status}):\n{}",
                        self.last_log_lines()
                    ));
                }
            }
            if listeners.is_none() {
                listeners = read_ready_file(&self.ready_file)?;
            }
            if let Some(found) = listeners {
                let url = format!("http://{}/readyz", found.admin);
                if tokio::task::spawn_blocking(move || crate::admin::healthcheck_quiet(&url))
                    .await
                    .unwrap_or(false)
                {
                    return Ok(found);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the sidecar was not ready in 20s; its last log lines:\n{}",
            self.last_log_lines()
        ))
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: signalling our own child, which has not been reaped yet.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
            }
            let start = Instant::now();
            let mut exited = false;
            while start.elapsed() < Duration::from_secs(8) {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // the pipe is closed now: the reader thread ends
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
    }
}
