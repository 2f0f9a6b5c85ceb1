//! Shared helpers for the integration tests: the published vectors and their test-only keys.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// The vectors file copied from the shared spec (data, not code).
pub fn vectors_file() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ams-public.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file"))
        .expect("vectors json")
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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago on 127.0.0.1, and never handed out before in this test
/// process (the kernel may give the same ephemeral port to two quick binds, and two
/// listeners of one config must not collide). The sidecar binds it later, so another process
/// could still take it meanwhile; issue 12 replaces this with ports the sidecar reports.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Writes the vectors' merchant private key and Alipay public key into `dir` and returns
/// `(merchant_private_key.pem, alipay_public_key.pem)` file names.
pub fn write_vector_keys(dir: &Path) -> (String, String) {
    std::fs::write(
        dir.join("merchant_private_key.pem"),
        key("merchant", "private_pkcs8_pem"),
    )
    .unwrap();
    std::fs::write(
        dir.join("alipay_public_key.pem"),
        key("alipay", "public_spki_pem"),
    )
    .unwrap();
    (
        "merchant_private_key.pem".into(),
        "alipay_public_key.pem".into(),
    )
}

/// A running `alipay-sidecar run` process; killed on drop.
pub struct Sidecar {
    child: Option<Child>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Where stdout+stderr go.
    pub log_path: std::path::PathBuf,
    /// The config file.
    pub config_path: std::path::PathBuf,
}

impl Sidecar {
    /// Writes `toml` to `dir/sidecar.toml`, starts the binary, waits until `/readyz` is 200.
    /// `admin_port` must be the port of `[admin] listen` in `toml`.
    pub fn start(dir: &Path, toml: &str, admin_port: u16) -> Sidecar {
        Self::start_with_env(dir, toml, admin_port, &[])
    }

    /// As [`Sidecar::start`], with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        toml: &str,
        admin_port: u16,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let config_path = dir.join("sidecar.toml");
        std::fs::write(&config_path, toml).unwrap();
        let log_path = dir.join(format!("sidecar-{admin_port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sidecar");
        let mut s = Sidecar {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            log_path,
            config_path,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sidecar exited with {status} before becoming ready:\n{}",
                    self.logs()
                );
            }
            if let Ok(r) = request(self.admin, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sidecar not ready after 30s:\n{}", self.logs());
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

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// First header value by (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
}

/// Sends one request with `Content-Length` over a new connection and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw_request(addr, &raw)
}

/// Sends raw bytes (a whole request, any framing) and reads one response until close.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

/// Reads one HTTP/1.1 response from a stream (Content-Length, chunked, or until close).
pub fn read_response(s: &mut dyn Read) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before response head",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    if status == 100 {
        // interim answer: the real one follows
        let mut chained = std::io::Cursor::new(rest).chain(s);
        return read_response(&mut chained);
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "body shorter than Content-Length",
                ));
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let n = s.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&tmp[..n]);
            if rest.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        dechunk(&rest)
    } else {
        s.read_to_end(&mut rest)?;
        rest
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..i])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[i + 2..i + 2 + size]);
        data = &data[i + 2 + size + 2..];
    }
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

/// A fake gateway (TLS, its CA in `dir`) that signs with the vector Alipay key, so a sidecar
/// trusting the vector keys verifies every answer; `edit` adjusts its config.
pub fn vector_gateway(
    dir: &Path,
    edit: impl FnOnce(&mut alipay_sidecar::mock_gateway::MockGatewayConfig),
) -> alipay_sidecar::mock_gateway::MockGateway {
    let mut cfg =
        alipay_sidecar::mock_gateway::MockGatewayConfig::new(key("merchant", "public_spki_pem"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls = Some(dir.to_path_buf());
    cfg.alipay_private_key = Some(key("alipay", "private_pkcs8_pem"));
    cfg.notify_backoff = vec![];
    edit(&mut cfg);
    rt().block_on(alipay_sidecar::mock_gateway::MockGateway::start(cfg))
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
