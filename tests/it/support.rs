//! Shared helpers for the integration tests: the published vectors and their test-only keys,
//! the one rig (the real binary on port-0 listeners it reports in its ready file, the fake
//! gateway, an app stand-in), one HTTP client (ureq) and one raw helper (httparse) for the
//! bytes a client library would refuse to send.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// The vectors file copied from the shared spec (data, not code).
pub fn vectors_file() -> &'static Value {
    static FILE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ams-public.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file"))
            .expect("vectors json")
    })
}

/// All vectors.
pub fn vectors() -> Vec<Value> {
    vectors_file()["vectors"]
        .as_array()
        .expect("vectors array")
        .clone()
}

/// One key text from `keys.<who>.<form>`, e.g. `key("merchant", "private_pkcs8_pem")`.
pub fn key(who: &str, form: &str) -> String {
    vectors_file()["keys"][who][form]
        .as_str()
        .unwrap_or_else(|| panic!("no key {who}.{form}"))
        .to_string()
}

/// `inputs.<field>` as a string.
pub fn input<'a>(v: &'a Value, field: &str) -> &'a str {
    v["inputs"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no inputs.{field}", v["id"]))
}

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

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alipay_sidecar::mock_gateway::{MockGateway, MockGatewayConfig, ReceivedRequest};

/// The merchant client id every rig uses.
pub const CLIENT_ID: &str = "T_111222333";
/// The live pay path.
pub const PAY: &str = "/ams/api/v1/payments/pay";
/// `[keys]` for the files [`write_vector_keys`] writes next to the config file.
pub const VECTOR_KEYS: &str = "merchant_private_key = \"merchant_private_key.pem\"\nmerchant_key_version = 1\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";

/// One vector by id.
pub fn vector(id: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id}"))
}

/// A pay request body (`extra` is spliced in before the closing brace, e.g.
/// `,"mockFault":"drop"`).
pub fn pay_body(id: &str, value: &str, extra: &str) -> String {
    format!(
        r#"{{"paymentRequestId":"{id}","paymentAmount":{{"currency":"HKD","value":"{value}"}},"order":{{"orderDescription":"珍珠奶茶 🧋"}}{extra}}}"#
    )
}

/// POSTs [`pay_body`]`(id, "5800", extra)` to the outbound listener at `outbound`.
pub fn pay(outbound: SocketAddr, id: &str, extra: &str) -> Response {
    request(
        outbound,
        "POST",
        PAY,
        &[("Content-Type", "application/json; charset=UTF-8")],
        pay_body(id, "5800", extra).as_bytes(),
    )
    .unwrap()
}

/// Writes the vectors' merchant private key and Alipay public key into `dir` and returns
/// `(merchant_private_key.pem, alipay_public_key.pem)` file names.
pub fn write_vector_keys(dir: &Path) -> (String, String) {
    write_key(
        dir,
        "merchant_private_key.pem",
        "merchant",
        "private_pkcs8_pem",
    );
    write_key(dir, "alipay_public_key.pem", "alipay", "public_spki_pem");
    (
        "merchant_private_key.pem".into(),
        "alipay_public_key.pem".into(),
    )
}

/// Writes [`key`]`(who, form)` to `dir/file`.
pub fn write_key(dir: &Path, file: &str, who: &str, form: &str) {
    std::fs::write(dir.join(file), key(who, form)).unwrap();
}

/// An `[inbound]` section on port 0 forwarding to `forward_to`.
pub fn inbound_section(forward_to: &str) -> String {
    format!("[inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{forward_to}\"\n")
}

// ---------------------------------------------------------------- the sidecar process

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

// ---------------------------------------------------------------- the rig: gateway + sidecar

/// The one rig: the fake gateway (TLS, signing with the vectors' Alipay key, expecting
/// [`CLIENT_ID`]) and a sidecar in front of it on port-0 listeners.
pub struct Rig {
    /// The fake gateway.
    pub gw: MockGateway,
    /// The sidecar.
    pub sidecar: Sidecar,
    /// The sidecar's plain outbound listener (the HTTPS one when there is no plain one).
    pub outbound: SocketAddr,
    /// The folder holding the config, keys, the gateway's CA and the logs.
    pub dir: tempfile::TempDir,
}

/// What differs between rigs; [`RigConfig::default`] is vector keys, the gateway's CA
/// trusted, JSON logs.
pub struct RigConfig<'a> {
    /// The merchant's client id (the gateway expects it unless `gateway` says otherwise).
    pub client_id: &'a str,
    /// The `[keys]` body.
    pub keys: &'a str,
    /// More `[outbound]` lines (e.g. `tls_listen = "127.0.0.1:0"`, timeouts, policy).
    pub outbound: &'a str,
    /// Sections after `[admin]` (e.g. `[inbound]`, `[server]`, `[log]`).
    pub tail: &'a str,
    /// Whether `ca_file` names the gateway's CA.
    pub trust_ca: bool,
    /// Extra environment variables for the sidecar process.
    pub env: &'a [(&'a str, &'a str)],
    /// Whether `[outbound]` has a plain `listen` (port 0); without it, give `tls_listen`.
    pub plain_listener: bool,
}

impl Default for RigConfig<'_> {
    fn default() -> Self {
        RigConfig {
            client_id: CLIENT_ID,
            keys: VECTOR_KEYS,
            outbound: "",
            tail: "[log]\nformat = \"json\"\n",
            trust_ca: true,
            env: &[],
            plain_listener: true,
        }
    }
}

impl RigConfig<'_> {
    /// The sidecar's config: `[outbound]` on port 0 towards `gateway` (trusting `ca`), the
    /// admin listener on port 0.
    pub fn toml(&self, gateway: &str, ca: Option<&Path>) -> String {
        let ca = ca
            .map(|ca| format!("ca_file = {:?}\n", ca.display().to_string()))
            .unwrap_or_default();
        let listen = if self.plain_listener {
            "listen = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        format!(
            "client_id = \"{client_id}\"\n[keys]\n{keys}\n[outbound]\n{listen}gateway = \"{gateway}\"\n{ca}{outbound}\n[admin]\nlisten = \"127.0.0.1:0\"\n{tail}",
            client_id = self.client_id,
            keys = self.keys,
            outbound = self.outbound,
            tail = self.tail,
        )
    }
}

impl Rig {
    /// Vector keys, the gateway's CA trusted, `outbound` added to `[outbound]`.
    pub fn with(outbound: &str) -> Rig {
        Self::start(
            RigConfig {
                outbound,
                ..Default::default()
            },
            |_| {},
            |_| {},
        )
    }

    /// `gateway` adjusts the fake gateway; `prepare` lays out files in the folder (the vector
    /// keys are already there) before the sidecar starts.
    pub fn start(
        rig: RigConfig,
        gateway: impl FnOnce(&mut MockGatewayConfig),
        prepare: impl FnOnce(&Path),
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        write_vector_keys(dir.path());
        let gw = vector_gateway(dir.path(), |cfg| {
            cfg.expected_client_id = Some(rig.client_id.into());
            gateway(cfg)
        });
        prepare(dir.path());
        let ca = if rig.trust_ca { gw.ca_file() } else { None };
        let gateway = format!("https://127.0.0.1:{}", gw.local_addr().port());
        let toml = rig.toml(&gateway, ca);
        let sidecar = Sidecar::start_with_env(dir.path(), &toml, rig.env);
        let outbound = match sidecar.listeners.get("outbound") {
            Some(plain) => *plain,
            None => sidecar.addr("outbound_tls"),
        };
        Rig {
            gw,
            outbound,
            sidecar,
            dir,
        }
    }

    /// POSTs a pay (see [`pay`]) through the outbound listener.
    pub fn pay(&self, id: &str, extra: &str) -> Response {
        pay(self.outbound, id, extra)
    }

    /// A pay the fake gateway answers with `fault` (its `mockFault` switch).
    pub fn pay_fault(&self, id: &str, fault: &str) -> Response {
        self.pay(id, &format!(",\"mockFault\":\"{fault}\""))
    }

    /// One `/metrics` scrape, parsed.
    pub fn scrape(&self) -> Metrics {
        self.sidecar.metrics()
    }

    /// See [`Sidecar::eventually`].
    pub fn eventually<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        self.sidecar.eventually(what, check)
    }

    /// `POST /admin/reload`.
    pub fn reload(&self) -> Response {
        self.sidecar.reload()
    }

    /// The status of `GET /readyz`.
    pub fn ready_status(&self) -> u16 {
        self.sidecar.admin_get("/readyz").status
    }

    /// The last pay the gateway received.
    pub fn last_pay(&self) -> ReceivedRequest {
        self.last_received(PAY)
    }

    /// The last request the gateway received on `path`.
    pub fn last_received(&self, path: &str) -> ReceivedRequest {
        self.gw
            .received()
            .into_iter()
            .rev()
            .find(|r| r.target == path)
            .unwrap_or_else(|| panic!("gateway got no request on {path}"))
    }
}

// ---------------------------------------------------------------- HTTP: ureq, and raw bytes

/// A response: from [`request`] (ureq) or from the raw helpers (httparse).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes (de-chunked).
    pub body: Vec<u8>,
    /// The body is as long as its framing announced (false only from [`parse_response`]).
    pub complete: bool,
}

impl Response {
    /// First header value by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }

    /// Fails unless the status is `status`, showing `what` and the body.
    pub fn assert_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `(result.resultStatus, result.resultCode)` of a JSON body ("" when absent).
    pub fn result_code(&self) -> (String, String) {
        let v = self.json();
        let s = |f: &str| v["result"][f].as_str().unwrap_or("").to_string();
        (s("resultStatus"), s("resultCode"))
    }
}

/// The tests' HTTP client: no redirects, no added `User-Agent`/`Accept`, no pooled
/// connections (each request its own connection, as a listener limit test expects), any
/// status is an answer, not an error.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent()
    })
}

/// Sends one well-formed request (over a new connection) and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req
        .body(body.to_vec())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut resp = agent().run(req).map_err(ureq::Error::into_io)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(ureq::Error::into_io)?;
    Ok(Response {
        status,
        headers,
        body,
        complete: true,
    })
}

/// The bytes of a request with `Content-Length` and `Connection: close` (for
/// [`raw_request`] when the test needs to bend one part: the target, the Host header, …).
pub fn raw_bytes(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// Sends raw bytes (a whole request, any framing, malformed on purpose) and reads one
/// response.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

/// Reads one HTTP/1.1 response from a stream (Content-Length, chunked, or until close),
/// skipping interim 1xx answers.
pub fn read_response(s: &mut dyn Read) -> std::io::Result<Response> {
    read_framed(s, false)
}

/// Parses a whole response as read until the peer closed; a body cut short is returned
/// with `complete: false`.
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    read_framed(&mut std::io::Cursor::new(raw), true)
}

/// The values of header `name` (any case), in order.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `(name as received, value)` pairs.
fn header_pairs(headers: &[httparse::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect()
}

fn eof(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string())
}

/// Reads more into `buf`; false at the end of the stream.
fn fill(s: &mut dyn Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut tmp = [0u8; 8192];
    let n = s.read(&mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n > 0)
}

fn read_framed(s: &mut dyn Read, allow_short: bool) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 100];
        let mut head = httparse::Response::new(&mut slots);
        let parsed = head
            .parse(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let httparse::Status::Complete(head_len) = parsed else {
            if !fill(s, &mut buf)? {
                return Err(eof("connection closed before the response head"));
            }
            continue;
        };
        let status = head.code.unwrap_or(0);
        let headers: Vec<(String, String)> = header_pairs(head.headers)
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        buf.drain(..head_len);
        if (100..200).contains(&status) {
            continue; // interim answer: the real one follows
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut complete = true;
        let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                match httparse::parse_chunk_size(&buf) {
                    Ok(httparse::Status::Complete((at, 0))) => {
                        buf.drain(..at);
                        break;
                    }
                    Ok(httparse::Status::Complete((at, size))) => {
                        let end = at + size as usize + 2;
                        while buf.len() < end {
                            if !fill(s, &mut buf)? {
                                return Err(eof("connection closed inside a chunk"));
                            }
                        }
                        body.extend_from_slice(&buf[at..at + size as usize]);
                        buf.drain(..end);
                    }
                    Ok(httparse::Status::Partial) => {
                        if !fill(s, &mut buf)? {
                            return Err(eof("connection closed before the last chunk"));
                        }
                    }
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "bad chunk size",
                        ))
                    }
                }
            }
            body
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < len {
                if !fill(s, &mut buf)? {
                    if allow_short {
                        complete = false;
                        break;
                    }
                    return Err(eof("body shorter than Content-Length"));
                }
            }
            buf.truncate(len);
            buf
        } else {
            s.read_to_end(&mut buf)?;
            buf
        };
        return Ok(Response {
            status,
            headers,
            body,
            complete,
        });
    }
}

// ---------------------------------------------------------------- the app stand-in

/// The stand-in app's own acknowledgement: distinguishable from the sidecar's.
pub const APP_ACK: &str = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"answeredBy":"app"}"#;

/// How the app stand-in answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with [`APP_ACK`] and an `X-App` header.
    Ack,
    /// This status and body.
    Status(u16, &'static str),
    /// Waits this long, then acks (longer than the sidecar's forward_timeout).
    Slow(Duration),
    /// The n-th request gets the n-th answer; the last one repeats.
    Answers(Vec<(u16, &'static str)>),
}

/// One request the app received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The request target.
    pub target: String,
    /// Names as received on the wire.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Received {
    /// Every value of a header (any case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }

    /// The header's value; fails when it appears more than once.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {:?}",
            all.len(),
            self.headers
        );
        all.first().copied()
    }
}

/// A plain HTTP/1.1 server (the merchant's app) that records every request and answers per
/// [`Behaviour`]; one thread per connection.
pub struct App {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// A bound socket that does not listen yet ([`App::down`]).
    down: Option<tokio::net::TcpSocket>,
}

impl App {
    /// Listening on a port of its own.
    pub fn start(behaviour: Behaviour) -> App {
        let mut app = Self::down(behaviour);
        app.up();
        app
    }

    /// Holds a port but does not listen yet: connections are refused until [`App::up`].
    pub fn down(behaviour: Behaviour) -> App {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        App {
            addr: socket.local_addr().unwrap(),
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            down: Some(socket),
        }
    }

    /// Starts listening (on the port held since [`App::down`]).
    pub fn up(&mut self) {
        let socket = self.down.take().expect("the app is down");
        let listener: TcpListener = {
            let _rt = rt().enter();
            let l = socket.listen(1024).unwrap().into_std().unwrap();
            l.set_nonblocking(false).unwrap();
            l
        };
        let (received, behaviour) = (self.received.clone(), self.behaviour.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (received, behaviour) = (received.clone(), behaviour.clone());
                std::thread::spawn(move || serve_one(stream, &received, &behaviour));
            }
        });
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Changes how it answers from now on.
    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Waits (generously) until the app has received `n` requests.
    pub fn wait_received(&self, n: usize) -> Vec<Received> {
        let start = Instant::now();
        while self.received().len() < n && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.received()
    }
}

fn serve_one(mut s: TcpStream, received: &Mutex<Vec<Received>>, behaviour: &Mutex<Behaviour>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let Some(req) = read_request(&mut s) else {
        return;
    };
    let index = {
        let mut received = received.lock().unwrap();
        received.push(req);
        received.len() - 1
    };
    let behaviour = behaviour.lock().unwrap().clone();
    let (status, body, extra) = match behaviour {
        Behaviour::Ack => (200, APP_ACK, "X-App: stand-in\r\n"),
        Behaviour::Status(status, body) => (status, body, ""),
        Behaviour::Slow(d) => {
            std::thread::sleep(d);
            (200, APP_ACK, "")
        }
        Behaviour::Answers(list) => {
            let (status, body) = list[index.min(list.len() - 1)];
            (status, body, "")
        }
    };
    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()));
}

/// One request with a Content-Length body (what the sidecar sends), read until whole.
fn read_request(s: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    loop {
        if let Some(request) = parse_request(&buf) {
            return Some(request);
        }
        if !fill(s, &mut buf).ok()? {
            return None;
        }
    }
}

/// The request in `buf` (httparse), once its head and its Content-Length body are whole;
/// `None` while more is needed (or when it is not a request).
pub fn parse_request(buf: &[u8]) -> Option<Received> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(head_len) = req.parse(buf).ok()? else {
        return None;
    };
    let headers = header_pairs(req.headers);
    let len: usize = values(&headers, "content-length")
        .first()
        .map_or(0, |v| v.parse().unwrap());
    let body = buf.get(head_len..head_len + len)?.to_vec();
    Some(Received {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        headers,
        body,
    })
}

// ---------------------------------------------------------------- Prometheus text

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name (a histogram's `_bucket`, `_sum`, `_count` as written).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One `/metrics` scrape, parsed.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The text as scraped.
    pub text: String,
    /// Every sample line.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses every sample line; fails on a line that is none.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                parse_sample(l).unwrap_or_else(|| panic!("not a Prometheus sample line: {l:?}"))
            })
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum over the matching samples (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// `name{label="value",…} value` (no crate fits: `prometheus-parse` does not decode escaped
/// quotes in label values and folds `_bucket` lines into histograms, which the tests read
/// one by one).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        loop {
            // label name up to '=', or the closing brace
            let mut key = String::new();
            let mut closed_at = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '}' => {
                        closed_at = Some(i);
                        break;
                    }
                    '=' => break,
                    ',' if key.is_empty() => {}
                    c => key.push(c),
                }
            }
            if let Some(i) = closed_at {
                rest = &body[i + 1..];
                break;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[test]
fn prometheus_sample_parser_reads_labels_and_values() {
    let m = Metrics::parse(
        "# HELP x y\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\nz_bucket{le=\"+Inf\"} 7\nw{} 1e3\n",
    );
    assert_eq!(m.sum("x", &[("a", "1")]), 3.0);
    assert_eq!(m.sum("x", &[("b", "q\"uote")]), 3.0);
    assert_eq!(m.sum("x", &[("a", "2")]), 0.0);
    assert_eq!(m.sum("y", &[]), 2.5);
    assert_eq!(m.sum("z_bucket", &[("le", "+Inf")]), 7.0);
    assert_eq!(m.sum("w", &[]), 1000.0);
}

/// One tokio runtime for every in-process server the tests start (fake gateways).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A TLS client (rustls with ring) trusting the certificates in `ca_pem` (none: nothing).
pub fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A fake gateway (TLS, its CA in `dir`) that signs with the vector Alipay key, so a sidecar
/// trusting the vector keys verifies every answer; `edit` adjusts its config.
pub fn vector_gateway(dir: &Path, edit: impl FnOnce(&mut MockGatewayConfig)) -> MockGateway {
    let mut cfg = MockGatewayConfig::new(key("merchant", "public_spki_pem"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls = Some(dir.to_path_buf());
    cfg.alipay_private_key = Some(key("alipay", "private_pkcs8_pem"));
    cfg.notify_backoff = vec![];
    edit(&mut cfg);
    rt().block_on(MockGateway::start(cfg))
        .expect("mock gateway")
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
