//! The real binary: one-shot commands, and a running `alipay-sidecar run` on port-0
//! listeners it reports in its ready file.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `alipay-sidecar` binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_alipay-sidecar"))
}

/// The binary with `args`, stdin closed, stdout and stderr captured, and no inherited
/// `ALIPAY_SIDECAR_*` or `RUST_LOG` variable (each would change what it does).
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ALIPAY_SIDECAR_") || name == "RUST_LOG" {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

use test_support::Response;

use super::http::request;
use super::metrics::Metrics;

/// A running `alipay-sidecar run` process; killed on drop. Its listeners say port 0 in the
/// config: the sidecar binds them and reports the addresses in its `--ready-file`, so no
/// port is picked (and possibly taken by someone else) before the sidecar binds it.
pub struct Sidecar {
    child: Option<Child>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Every listener by name (`outbound`, `outbound_tls`, `inbound`, `admin`).
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Where stdout+stderr go.
    pub log_path: std::path::PathBuf,
    /// The config file.
    pub config_path: std::path::PathBuf,
    /// The `--ready-file` it wrote.
    pub ready_path: std::path::PathBuf,
}

impl Sidecar {
    /// Writes `toml` to `dir/sidecar.toml`, starts the binary and waits (bounded) for its
    /// ready file: every listener accepts connections.
    pub fn start(dir: &Path, toml: &str) -> Sidecar {
        Self::start_with_env(dir, toml, &[])
    }

    /// As [`Sidecar::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Sidecar {
        let config_path = dir.join("sidecar.toml");
        std::fs::write(&config_path, toml).unwrap();
        Self::launch(&config_path, &[], env)
    }

    /// `run --config config_path` plus `args`, its output in a log file next to the config.
    pub fn launch(config_path: &Path, args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        Self::launch_via(&[], config_path, args, env)
    }

    /// As [`Sidecar::launch`], the binary started through `via` (a program and its
    /// arguments that end by exec'ing the rest of the command line, e.g. a shell that first
    /// enters a memory cgroup); empty: directly.
    pub fn launch_via(
        via: &[String],
        config_path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Sidecar {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = config_path.parent().expect("the config is in a folder");
        let log_path = dir.join(format!("sidecar-{n}.log"));
        let ready_path = dir.join(format!("sidecar-{n}.ready.json"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = match via.split_first() {
            None => Command::new(bin()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--ready-file")
            .arg(&ready_path)
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sidecar");
        let mut s = Sidecar {
            child: Some(child),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            listeners: BTreeMap::new(),
            log_path,
            config_path: config_path.to_path_buf(),
            ready_path: ready_path.clone(),
        };
        s.listeners = s.wait_ready_file(&ready_path);
        s.admin = s.addr("admin");
        s
    }

    fn wait_ready_file(&mut self, path: &Path) -> BTreeMap<String, SocketAddr> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sidecar exited with {status} before becoming ready:\n{}",
                    self.logs()
                );
            }
            // written atomically: once it exists, it is whole
            if let Ok(text) = std::fs::read_to_string(path) {
                let v: Value = serde_json::from_str(&text).expect("ready file is JSON");
                return v["listeners"]
                    .as_object()
                    .expect("ready file names the listeners")
                    .iter()
                    .map(|(name, addr)| (name.clone(), addr.as_str().unwrap().parse().unwrap()))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sidecar not ready after 30s:\n{}", self.logs());
    }

    /// The address a listener is bound to (`outbound`, `outbound_tls`, `inbound`, `admin`).
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no {listener} listener in {:?}", self.listeners))
    }

    /// `GET` on the admin listener.
    pub fn admin_get(&self, path: &str) -> Response {
        request(self.admin, "GET", path, &[], b"").unwrap()
    }

    /// `POST /admin/reload`.
    pub fn reload(&self) -> Response {
        request(self.admin, "POST", "/admin/reload", &[], b"").unwrap()
    }

    /// One `/metrics` scrape, parsed.
    pub fn metrics(&self) -> Metrics {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics");
        Metrics::parse(&String::from_utf8(r.body).expect("metrics are UTF-8"))
    }

    /// Polls until `check` gives a value; fails after 30 s with the sidecar's logs (nothing
    /// here asserts on time: the deadline only turns a hang into a failure).
    pub fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if start.elapsed() > deadline {
                panic!(
                    "{what}: not within {deadline:?}\n--- sidecar logs ---\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the log shows `needle`, waiting for it up to 10 s: log lines reach stdout
    /// from the sidecar's log queue a few milliseconds after the event (batched), so a line
    /// is looked for, not expected at once.
    pub fn logged(&self, needle: &str) -> bool {
        let start = Instant::now();
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal by name (`TERM`, `HUP`, …) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to the end with its output captured, failing the test if it takes longer than
/// `limit` (a hang is a failure, not a stuck test): (exit code, stdout, stderr).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> (i32, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the command");
    // drain both pipes while waiting, so a chatty child cannot block on a full pipe
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}
