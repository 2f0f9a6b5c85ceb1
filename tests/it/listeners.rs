//! Connections and listeners through the REAL binary: idle keep-alive connections are closed, a
//! framing error ends its connection, one peer cannot hold every slot, no listener exists that
//! the config does not name, self-loops and absurd values are refused, and under a real 128 MiB
//! memory limit a hostile crowd leaves the sidecar alive and serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::inbound::{fresh, start, wait_received};
use crate::support::{
    bin, read_response, request, run_bounded, vector_gateway, write_vector_keys, App, Behaviour,
    Sidecar,
};

/// Reads until the peer closes (Ok(bytes)) or `limit` passes (Err(bytes so far)).
fn read_until_closed(c: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let start = Instant::now();
    let mut got = Vec::new();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match c.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(got), // reset: closed too
        }
    }
    Err(got)
}

/// One complete 35-byte request, the shape of the issue's reproduction.
const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// A sidecar with every listener (inbound, outbound plain + HTTPS, admin), `inbound` lines
/// in `[inbound]` and `tail` after `[admin] listen` (more `[admin]` lines, then sections).
fn all_listeners(
    dir: &Path,
    app: &App,
    gw_port: u16,
    ca: &Path,
    inbound: &str,
    tail: &str,
) -> Sidecar {
    write_vector_keys(dir);
    let toml = format!(
        "client_id = \"T_111222333\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\n\
         alipay_public_keys = {{ \"1\" = \"alipay_public_key.pem\" }}\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
         gateway = \"https://127.0.0.1:{gw_port}\"\nca_file = {ca:?}\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{}\"\n{inbound}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{tail}\n",
        app.url(),
    );
    Sidecar::start(dir, &toml)
}

fn metric(s: &Sidecar, sample: &str) -> f64 {
    s.metrics()
        .text
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn idle_keep_alive_connections_are_closed_on_every_listener() {
    let app = App::start(Behaviour::Ack);
    let dir = tempfile::tempdir().unwrap();
    let gw = vector_gateway(dir.path(), |_| {});
    let ca = gw.ca_file().expect("ca");
    let s = all_listeners(
        dir.path(),
        &app,
        gw.local_addr().port(),
        ca,
        "",
        "[server]\nidle_timeout = \"1s\"\n",
    );
    // plain listeners: one request that succeeds, its answer, then nothing
    let n = fresh("idle");
    let mut notification = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        n.uri,
        n.body.len()
    );
    for (k, v) in &n.headers {
        notification.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut notification = (notification + "\r\n").into_bytes();
    notification.extend_from_slice(&n.body);
    let body = crate::support::pay_body("idle", "5800", "");
    let pay = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        crate::support::PAY,
        body.len()
    )
    .into_bytes();
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    for (listener, req) in [
        ("inbound", notification),
        ("outbound", pay),
        ("admin", healthz.clone()),
    ] {
        let mut c = TcpStream::connect(s.addr(listener)).unwrap();
        c.write_all(&req).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = read_response(&mut c).expect("an answer");
        assert_eq!(r.status, 200, "{listener}");
        assert_ne!(
            r.header("connection"),
            Some("close"),
            "{listener}: kept alive"
        );
        // pingora 0.9 alone keeps this connection forever; the idle timeout closes it
        let rest = read_until_closed(&mut c, Duration::from_secs(30));
        assert_eq!(
            rest.as_deref().map(<[u8]>::len),
            Ok(0),
            "{listener}: the idle connection was not closed quietly"
        );
    }
    // the HTTPS outbound listener: the same after a TLS handshake
    let tls_addr = s.addr("outbound_tls");
    let closed = crate::support::rt().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let connector = tls_any_certificate();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(&healthz_like_pay()).await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = tls.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "an answer over TLS");
        let rest = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        rest.unwrap_or(false)
    });
    assert!(closed, "outbound_tls: the idle connection was not closed");
    for listener in ["inbound", "outbound", "outbound_tls", "admin"] {
        let sample = format!(
            "alipay_sidecar_connections_closed_total{{listener=\"{listener}\",reason=\"idle_timeout\"}}"
        );
        assert!(metric(&s, &sample) >= 1.0, "{sample} not counted");
    }
    drop(gw);
}

/// A pay call to the outbound listener, raw.
fn healthz_like_pay() -> Vec<u8> {
    let body = crate::support::pay_body("idle_tls", "5800", "");
    format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        crate::support::PAY,
        body.len()
    )
    .into_bytes()
}

/// A rustls client that accepts any certificate (the generated one is not in a trust store;
/// what is tested here is the connection's life, not the certificate).
fn tls_any_certificate() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    #[derive(Debug)]
    struct Any(rustls::crypto::CryptoProvider);
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Any(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[test]
fn a_framing_error_is_answered_with_close_and_ends_the_connection() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let n = fresh("bad_chunk");
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
        n.uri
    );
    for (k, v) in &n.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    // a malformed chunk size, then a second request that must never be read
    let raw = format!("{head}\r\nzz\r\n{{}}\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut c = TcpStream::connect(s.inbound).unwrap();
    c.write_all(raw.as_bytes()).unwrap();
    let all = read_until_closed(&mut c, Duration::from_secs(30))
        .expect("the connection is closed after the framing error");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{text}");
    assert!(!lower.contains("keep-alive"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "only one answer: {text}"
    );
    assert!(app.received().is_empty());
}

#[test]
fn one_peer_cannot_hold_every_slot() {
    let app = App::start(Behaviour::Ack);
    let dir = tempfile::tempdir().unwrap();
    let gw = vector_gateway(dir.path(), |_| {});
    let ca = gw.ca_file().expect("ca");
    // a long idle timeout: only eviction can free the slots in this test
    let sidecar = all_listeners(
        dir.path(),
        &app,
        gw.local_addr().port(),
        ca,
        "max_connections = 8",
        "max_connections = 4\n[server]\nidle_timeout = \"10m\"\nheader_read_timeout = \"10m\"\n",
    );
    let inbound = sidecar.addr("inbound");
    // the issue's request shape is refused (GET) and its connection now ends with the answer
    let mut c = TcpStream::connect(inbound).unwrap();
    c.write_all(GET).unwrap();
    let answer = read_until_closed(&mut c, Duration::from_secs(30)).expect("closed");
    assert!(answer.starts_with(b"HTTP/1.1 405"));
    // every slot holds a connection that sent one (accepted) request and waits
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|i| {
            let n = fresh(&format!("idle_{i}"));
            let mut raw = format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
                n.uri,
                n.body.len()
            );
            for (k, v) in &n.headers {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            let mut raw = (raw + "\r\n").into_bytes();
            raw.extend_from_slice(&n.body);
            let mut c = TcpStream::connect(inbound).unwrap();
            c.write_all(&raw).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(read_response(&mut c).expect("answered").status, 200);
            c
        })
        .collect();
    // and on the admin listener, which holds no more than 4, connections that say nothing
    let _admin_idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(sidecar.admin).unwrap())
        .collect();
    let s = Setup2 { sidecar, inbound };
    std::thread::sleep(Duration::from_millis(300));
    // genuine traffic still gets in: a new connection takes the oldest waiting one's slot
    // (the first one here; its own slot is free again once its answer closed it)
    for i in 0..3 {
        let r = s.post(&fresh(&format!("evict_{i}")), &[]);
        assert_eq!(r.status, 200, "{}", s.sidecar.logs());
        assert_eq!(s.sidecar.admin_get("/healthz").status, 200);
    }
    assert_eq!(wait_received(&app, 11).len(), 11);
    // the oldest idle connections were the ones closed
    let closed_first = read_until_closed(&mut idle[0], Duration::from_secs(10));
    assert!(
        closed_first.is_ok(),
        "the oldest idle connection is evicted"
    );
    assert!(
        metric(
            &s.sidecar,
            r#"alipay_sidecar_connections_closed_total{listener="inbound",reason="evicted"}"#
        ) >= 1.0
    );
    assert!(
        metric(
            &s.sidecar,
            r#"alipay_sidecar_connections_closed_total{listener="admin",reason="evicted"}"#
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &s.sidecar,
            r#"alipay_sidecar_connections_refused_total{listener="inbound"}"#
        ),
        0.0
    );
    drop(gw);
}

/// A sidecar and its inbound address, posting notifications.
struct Setup2 {
    sidecar: Sidecar,
    inbound: SocketAddr,
}

impl Setup2 {
    fn post(
        &self,
        n: &crate::inbound::Notification,
        extra: &[(&str, &str)],
    ) -> crate::support::Response {
        let mut headers: Vec<(&str, &str)> = n
            .headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        headers.extend_from_slice(extra);
        request(self.inbound, "POST", &n.uri, &headers, &n.body).unwrap()
    }
}

// ---------------------------------------------------------------- M3: no implicit listener

#[test]
fn merchants_with_their_own_listeners_open_no_shared_default_listener() {
    let dir = tempfile::tempdir().unwrap();
    let gw = vector_gateway(dir.path(), |_| {});
    let ca = gw.ca_file().expect("ca");
    write_vector_keys(dir.path());
    let keys = "[merchants.keys]\nmerchant_private_key = \"merchant_private_key.pem\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";
    let toml = format!(
        "[outbound]\ngateway = \"https://127.0.0.1:{}\"\nca_file = {ca:?}\n\
         [[merchants]]\nname = \"a\"\nclient_id = \"T_111222333\"\n{keys}[merchants.outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[merchants]]\nname = \"b\"\nclient_id = \"T_444555666\"\n{keys}[merchants.outbound]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        gw.local_addr().port()
    );
    // check-config says which listeners there are
    std::fs::write(dir.path().join("two.toml"), &toml).unwrap();
    let (code, out, err) = run_bounded(
        Command::new(bin())
            .args(["check-config", "--config"])
            .arg(dir.path().join("two.toml")),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}{err}");
    let s = Sidecar::start(dir.path(), &toml);
    let names: Vec<&str> = s.listeners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["admin", "outbound:a", "outbound:b"],
        "no shared outbound listener (and nothing on 127.0.0.1:8080)"
    );
    assert!(
        !s.logs().contains("127.0.0.1:8080"),
        "the default address is not opened: {}",
        s.logs()
    );
    drop(gw);
}

// ---------------------------------------------------------------- L7: check-config refusals

const BASE: &str = "client_id = \"T_111222333\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";

fn check_config(dir: &Path, toml: &str) -> (i32, String) {
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

#[test]
fn self_loops_absurd_durations_and_huge_key_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let out_in = |outbound: &str, inbound: &str| {
        format!(
            "{BASE}[outbound]\nlisten = \"127.0.0.1:18480\"\ngateway = \"https://gw.example\"\n{outbound}\n\
             [inbound]\nlisten = \"0.0.0.0:18481\"\nforward_to = \"http://127.0.0.1:3000\"\n{inbound}\n\
             [admin]\nlisten = \"127.0.0.1:18490\"\n"
        )
    };
    let self_inbound = out_in("", "").replace("127.0.0.1:3000", "127.0.0.1:18481");
    let self_outbound = out_in("", "").replace("127.0.0.1:3000", "localhost:18480");
    let self_admin = out_in("", "").replace("127.0.0.1:3000", "127.0.0.1:18490");
    let gateway_self = out_in("tls_listen = \"127.0.0.1:18443\"", "")
        .replace("https://gw.example", "https://127.0.0.1:18443");
    let cases: Vec<(String, &str)> = vec![
        (self_inbound, "inbound.listen"),
        (self_outbound, "outbound.listen"),
        (self_admin, "admin.listen"),
        (gateway_self, "outbound.tls_listen"),
        (
            out_in("request_timeout = \"1ns\"", ""),
            "outbound.request_timeout",
        ),
        (
            out_in("connect_timeout = \"100000000y\"", ""),
            "outbound.connect_timeout",
        ),
        (
            out_in("", "forward_timeout = \"1us\""),
            "inbound.forward_timeout",
        ),
        (
            out_in("", "") + "[server]\nidle_timeout = \"100000000y\"\n",
            "server.idle_timeout",
        ),
        (
            out_in("", "max_delivery_age = \"100000000y\""),
            "inbound.max_delivery_age",
        ),
        (
            out_in("", "delivery_schedule = [\"0s\", \"100000000y\"]"),
            "inbound.delivery_schedule",
        ),
        (
            out_in("", "").replace("{ \"1\" =", "{ \"123456789012345678901234567890\" ="),
            "digits",
        ),
        (
            out_in("", "").replace(
                "[keys]\n",
                "[keys]\nmerchant_key_version = \"123456789012345678901234567890\"\n",
            ),
            "digits",
        ),
    ];
    for (toml, expect) in &cases {
        let (code, out) = check_config(dir.path(), toml);
        assert_ne!(code, 0, "accepted:\n{toml}\n{out}");
        assert!(out.contains(expect), "expected {expect:?} in:\n{out}");
    }
    // the same refusal at start: nothing is bound, exit code 2 (config unusable)
    let path = dir.path().join("start.toml");
    std::fs::write(
        &path,
        out_in("", "").replace("127.0.0.1:3000", "127.0.0.1:18481"),
    )
    .unwrap();
    let (code, out, err) = run_bounded(
        Command::new(bin()).arg("run").arg("--config").arg(&path),
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("own listener"), "{err}");
    // what stays accepted: a duration of 1 ms, a 9-digit version, 0s in a schedule
    let fine = out_in(
        "request_timeout = \"1ms\"",
        "delivery_schedule = [\"0s\", \"1m\"]",
    )
    .replace("{ \"1\" =", "{ \"123456789\" =");
    let (code, out) = check_config(dir.path(), &fine);
    assert_eq!(code, 0, "{out}");
}

// ---------------------------------------------------------------- L8: admin browser/Host checks

// ---------------------------------------------------------------- M4 + capstone: memory

/// A memory limit for the sidecar: a child memory cgroup (v2, else v1) where the machine
/// allows one (root, a writable hierarchy), else `RLIMIT_DATA` set on the running sidecar
/// (`prlimit`, once it is idle). `RLIMIT_DATA` bounds *virtual* private writable mappings:
/// reserved but untouched thread stacks, and buffers allocated at a capacity only half
/// written (measured: 1,024 slow heads add 40 MiB resident, 72 MiB of `VmData`). So the
/// fallback enforces twice the limit plus what the idle process reserved without touching
/// (`VmData` − `RssAnon`), and the peak it reports and the test asserts on is the resident
/// anonymous memory (`RssAnon`, sampled every 20 ms) against the limit itself.
/// `IT_MEMORY_LIMIT=setrlimit` forces the fallback (to exercise it where cgroups work).
struct MemoryLimit {
    /// `cgroup v2`, `cgroup v1` or `prlimit(RLIMIT_DATA)`.
    kind: &'static str,
    dir: Option<PathBuf>,
    bytes: u64,
    /// The fallback's sampled peak of `RssAnon`, in KiB.
    sampled: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl MemoryLimit {
    fn new(bytes: u64) -> MemoryLimit {
        let name = format!("alipay-sidecar-it-{}", std::process::id());
        if std::env::var("IT_MEMORY_LIMIT").is_ok_and(|v| v == "setrlimit") {
            return MemoryLimit {
                kind: "prlimit(RLIMIT_DATA)",
                dir: None,
                bytes,
                sampled: Default::default(),
            };
        }
        let own = |controller: &str| -> Option<String> {
            let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            text.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                (ctrl == controller).then(|| path.to_string())
            })
        };
        // v2: the unified hierarchy with the memory controller
        let v2_root = Path::new("/sys/fs/cgroup");
        if std::fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        {
            let base = own("").map_or(v2_root.to_path_buf(), |p| {
                v2_root.join(p.trim_start_matches('/'))
            });
            for parent in [base, v2_root.to_path_buf()] {
                let dir = parent.join(&name);
                if std::fs::create_dir(&dir).is_ok() {
                    if std::fs::write(dir.join("memory.max"), bytes.to_string()).is_ok() {
                        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                        return MemoryLimit {
                            kind: "cgroup v2",
                            dir: Some(dir),
                            bytes,
                            sampled: Default::default(),
                        };
                    }
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        // v1: the memory hierarchy
        let v1_root = Path::new("/sys/fs/cgroup/memory");
        if v1_root.join("memory.limit_in_bytes").exists() {
            let base = own("memory").map_or(v1_root.to_path_buf(), |p| {
                v1_root.join(p.trim_start_matches('/'))
            });
            for parent in [base, v1_root.to_path_buf()] {
                let dir = parent.join(&name);
                if std::fs::create_dir(&dir).is_ok() {
                    if std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).is_ok()
                    {
                        // no swap to hide in, where the kernel accounts it
                        let _ = std::fs::write(
                            dir.join("memory.memsw.limit_in_bytes"),
                            bytes.to_string(),
                        );
                        return MemoryLimit {
                            kind: "cgroup v1",
                            dir: Some(dir),
                            bytes,
                            sampled: Default::default(),
                        };
                    }
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        MemoryLimit {
            kind: "prlimit(RLIMIT_DATA)",
            dir: None,
            bytes,
            sampled: Default::default(),
        }
    }

    /// The program and arguments that put the sidecar in the cgroup, then exec it (none for
    /// the `RLIMIT_DATA` fallback, applied by [`MemoryLimit::apply`]).
    fn via(&self) -> Vec<String> {
        match &self.dir {
            Some(dir) => vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "echo $$ > {} && exec \"$0\" \"$@\"",
                    dir.join("cgroup.procs").display()
                ),
            ],
            None => Vec::new(),
        }
    }

    /// The fallback: `RLIMIT_DATA` on the idle sidecar (see the type's doc).
    fn apply(&self, pid: u32) {
        if self.dir.is_some() {
            return;
        }
        let reserved = vm_kib(pid, "VmData:").saturating_sub(vm_kib(pid, "RssAnon:")) * 1024;
        let enforced = 2 * self.bytes + reserved;
        let lim = libc::rlimit {
            rlim_cur: enforced as libc::rlim_t,
            rlim_max: enforced as libc::rlim_t,
        };
        // SAFETY: prlimit on our own child with a local struct.
        let rc = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_DATA,
                &lim,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit(RLIMIT_DATA) on the sidecar failed");
        eprintln!(
            "RLIMIT_DATA = 2 × {} MiB + {} MiB reserved untouched; RssAnon sampled",
            self.bytes >> 20,
            reserved >> 20
        );
        let sampled = self.sampled.clone();
        std::thread::spawn(move || loop {
            let now = vm_kib(pid, "RssAnon:");
            if now == 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            sampled.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        });
    }

    /// The highest memory use so far, in bytes: the cgroup's own peak (what the OOM killer
    /// compares with the limit), else the process's peak RSS.
    fn peak(&self, pid: u32) -> u64 {
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(self.dir.as_ref()?.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let sampled = self.sampled.load(std::sync::atomic::Ordering::Relaxed);
        read("memory.max_usage_in_bytes")
            .or_else(|| read("memory.peak"))
            .unwrap_or_else(|| sampled.max(vm_kib(pid, "RssAnon:")) * 1024)
    }

    /// How many times the kernel OOM-killed in the group (0 without a cgroup).
    fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.dir else { return 0 };
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // empty once the sidecar (dropped before) has been reaped
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The shipped Kubernetes limit (config/kubernetes/deployment.yaml).
const SHIPPED_LIMIT: u64 = 128 * 1024 * 1024;

/// Keeps `n` hostile connections open against `addr` until `stop`: each sends `head_bytes`
/// of a head without its end (just under `max_header_bytes`: the memory-worst slow head),
/// and when the sidecar closes one (deadline, eviction) it reconnects. Returns how many
/// connections it opened.
fn hostile_crowd(
    addr: SocketAddr,
    n: usize,
    head_bytes: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut prefix = b"POST /merchant/notify HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        prefix.resize(head_bytes, b'a');
        let open = |opened: &mut usize| -> Option<TcpStream> {
            let mut c = TcpStream::connect(addr).ok()?;
            *opened += 1;
            c.set_nonblocking(true).ok()?;
            let _ = c.write(&prefix);
            Some(c)
        };
        let mut opened = 0;
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open(&mut opened)).collect();
        let mut buf = [0u8; 1024];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for slot in conns.iter_mut() {
                let alive = match slot.as_mut() {
                    None => false,
                    Some(c) => match c.read(&mut buf) {
                        Ok(0) => false,
                        Ok(_) => false, // answered (408/431): the sidecar closes it
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    },
                };
                if !alive {
                    *slot = open(&mut opened);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        opened
    })
}

/// `n` clients that each send a head with `Content-Length: 1048576` and a junk `Signature`,
/// then as much of the body as the socket takes, and hold it.
fn held_bodies(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let body = vec![b'{'; (1 << 20) - 1];
    (0..n)
        .filter_map(|i| {
            let mut c = TcpStream::connect(addr).ok()?;
            c.set_nonblocking(true).ok()?;
            let head = format!(
                "POST /merchant/notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 1048576\r\nclient-id: T_111222333\r\n\
                 Request-Time: 2026-01-01T00:00:00Z\r\n\
                 Signature: algorithm=RSA256,keyVersion=1,signature=junk{i}\r\n\r\n"
            );
            let _ = c.write(head.as_bytes());
            let _ = c.write(&body);
            Some(c)
        })
        .collect()
}

/// M4 and the capstone of issue 18 ("done means"): under the shipped 128 MiB limit, 1,024
/// hostile slow 32 KiB heads (kept up: every closed one reopens) plus 150 held 1 MiB bodies
/// on the inbound port, then 16 concurrent 1 MiB app calls, leave the sidecar alive, under
/// its limit, and still delivering genuine notifications and outbound calls.
///
/// The inbound `max_body_bytes = 65536` written here is the default issue 18's H2 row makes
/// (notifications are a few KB); with it the held bodies are refused before their body is
/// read.
#[test]
fn under_the_shipped_memory_limit_a_hostile_crowd_leaves_the_sidecar_serving() {
    // the test holds 1,024 + 150 + 16 sockets, the sidecar as many plus its own: the crowd
    // is smaller (and says so, `SCALED …`; a failure under CI) when even the raised
    // open-files limit cannot hold it
    let turn = crate::support::scaled_connections(
        "listeners::under_the_shipped_memory_limit_a_hostile_crowd_leaves_the_sidecar_serving",
        1024,
        // the 150 bodies and 16 calls, and what the fake gateways of the tests running
        // beside this one (in this process) need to keep accepting
        766,
    );
    let (crowd, bodies) = (turn.n, 150);
    let limit = MemoryLimit::new(SHIPPED_LIMIT);
    eprintln!("memory limit: {} MiB via {}", limit.bytes >> 20, limit.kind);

    let app = App::start(Behaviour::Ack);
    let dir = tempfile::tempdir().unwrap();
    let gw = vector_gateway(dir.path(), |_| {});
    write_vector_keys(dir.path());
    // the shipped defaults everywhere, except what the test needs to find its ports, and
    // the inbound body limit of issue 18 (H2)
    let toml = format!(
        "client_id = \"T_111222333\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\n\
         alipay_public_keys = {{ \"1\" = \"alipay_public_key.pem\" }}\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\ngateway = \"https://127.0.0.1:{}\"\nca_file = {:?}\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{}\"\nmax_body_bytes = 65536\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        gw.local_addr().port(),
        gw.ca_file().expect("ca"),
        app.url()
    );
    std::fs::write(dir.path().join("sidecar.toml"), &toml).unwrap();
    let s = Sidecar::launch_via(&limit.via(), &dir.path().join("sidecar.toml"), &[], &[]);
    let pid = s.pid();
    let inbound = s.addr("inbound");
    let out = s.addr("outbound");
    // warm up both directions
    assert_eq!(
        crate::support::pay(out, "warm", "").status,
        200,
        "{}",
        s.logs()
    );
    let post = |id: &str| {
        let n = fresh(id);
        let headers: Vec<(&str, &str)> = n
            .headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        request(inbound, "POST", &n.uri, &headers, &n.body)
    };
    assert_eq!(post("warm").unwrap().status, 200);
    limit.apply(pid);
    let idle_rss = vm_kib(pid, "VmRSS:");
    eprintln!(
        "idle: VmRSS {} KiB, RssAnon {} KiB, VmData {} KiB, threads {}",
        idle_rss,
        vm_kib(pid, "RssAnon:"),
        vm_kib(pid, "VmData:"),
        vm_kib(pid, "Threads:")
    );

    // the crowd: 1,024 slow heads just under the default max_header_bytes (16 KiB), kept
    // up; heads of 32 KiB, the issue's size, are refused 431 at once (a lighter load)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = hostile_crowd(inbound, crowd, 16 * 1024 - 512, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    let peak_heads = limit.peak(pid);
    eprintln!(
        "heads: VmRSS {} KiB, RssAnon {} KiB, VmData {} KiB, threads {}",
        vm_kib(pid, "VmRSS:"),
        vm_kib(pid, "RssAnon:"),
        vm_kib(pid, "VmData:"),
        vm_kib(pid, "Threads:")
    );
    // 150 held 1 MiB bodies
    let held = held_bodies(inbound, bodies);
    std::thread::sleep(Duration::from_secs(1));
    let peak_bodies = limit.peak(pid);
    // 16 concurrent app calls of ~1 MiB each, and genuine notifications, during the attack
    let pad = format!(",\"pad\":\"{}\"", "a".repeat(1_000_000));
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let pad = pad.clone();
            std::thread::spawn(move || {
                crate::support::request(
                    out,
                    "POST",
                    crate::support::PAY,
                    &[("Content-Type", "application/json; charset=UTF-8")],
                    crate::support::pay_body(&format!("big_{i}"), "5800", &pad).as_bytes(),
                )
                .map(|r| {
                    (
                        r.status,
                        r.header("x-alipay-sidecar-verified").map(str::to_string),
                    )
                })
            })
        })
        .collect();
    let mut genuine_ok = 0;
    let mut genuine_failed = Vec::new();
    for i in 0..20 {
        match post(&format!("genuine_{i}")) {
            Ok(r) if r.status == 200 => genuine_ok += 1,
            other => genuine_failed.push(format!("{:?}", other.map(|r| r.status))),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut calls_ok = 0;
    for c in calls {
        match c.join().unwrap() {
            Ok((200, Some(v))) if v == "true" => calls_ok += 1,
            other => eprintln!("app call: {other:?}"),
        }
    }
    let mut small_calls_ok = 0;
    for i in 0..10 {
        let r = request(
            out,
            "POST",
            crate::support::PAY,
            &[("Content-Type", "application/json; charset=UTF-8")],
            crate::support::pay_body(&format!("small_{i}"), "5800", "").as_bytes(),
        );
        if r.is_ok_and(|r| r.status == 200) {
            small_calls_ok += 1;
        }
    }
    let peak = limit.peak(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = attacker.join().unwrap();
    drop(held);
    let alive = Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "capstone: peak after the heads {:.1} MiB, after the held bodies {:.1} MiB",
        mib(peak_heads),
        mib(peak_bodies)
    );
    eprintln!(
        "capstone ({}): limit {} MiB; RSS idle {} MiB; peak {:.1} MiB; hostile connections opened {opened} \
         (kept {crowd}), held bodies {bodies}; genuine notifications {genuine_ok}/20, 1 MiB app calls \
         {calls_ok}/16, small app calls {small_calls_ok}/10; OOM kills {}",
        limit.kind,
        limit.bytes >> 20,
        idle_rss / 1024,
        peak as f64 / (1024.0 * 1024.0),
        limit.oom_kills()
    );
    let logs = s.logs();
    assert!(
        alive,
        "the sidecar died: {}",
        &logs[logs.len().saturating_sub(3000)..]
    );
    assert_eq!(limit.oom_kills(), 0, "OOM-killed in the group");
    assert!(
        peak < limit.bytes,
        "peak {peak} bytes reached the limit {}",
        limit.bytes
    );
    assert_eq!(
        genuine_ok, 20,
        "genuine notifications failed: {genuine_failed:?}"
    );
    assert_eq!(calls_ok, 16, "1 MiB app calls failed");
    assert_eq!(small_calls_ok, 10);
    assert!(wait_received(&app, 21).len() >= 21);
    drop(s);
    drop(gw);
}
