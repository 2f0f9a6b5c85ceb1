//! `alipay-sidecar demo`: the whole product on one machine with nothing configured.
//!
//! It generates throw-away merchant keys, starts the fake Alipay gateway over TLS (with its
//! own CA, which the sidecar trusts through `ca_file`), a tiny notification receiver standing
//! in for the merchant app, and the real sidecar (`alipay-sidecar run`, as a child process, so
//! Ctrl-C drains it exactly like an operator's SIGINT). Then it runs one pay → inquiry round
//! trip through the sidecar, printing the signed headers that went out and the verification
//! result that came back, and waits for the gateway's signed PAYMENT_RESULT notification to
//! pass the sidecar's inbound verifier and reach the receiver.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::mock_gateway::{MockGateway, MockGatewayConfig};

/// Options of `alipay-sidecar demo`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// Stop after the sample traffic instead of waiting for Ctrl-C (for scripts and CI).
    #[arg(long)]
    pub once: bool,
    /// Use free ephemeral ports instead of 8080 (outbound), 8081 (inbound), 9090 (admin),
    /// 8443 (gateway) and 3000 (receiver).
    #[arg(long)]
    pub ephemeral_ports: bool,
}

struct Ports {
    outbound: u16,
    inbound: u16,
    admin: u16,
    gateway: u16,
    app: u16,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Ports {
    fn pick(ephemeral: bool) -> std::io::Result<Ports> {
        if ephemeral {
            return Ok(Ports {
                outbound: free_port()?,
                inbound: free_port()?,
                admin: free_port()?,
                gateway: free_port()?,
                app: free_port()?,
            });
        }
        Ok(Ports {
            outbound: 8080,
            inbound: 8081,
            admin: 9090,
            gateway: 8443,
            app: 3000,
        })
    }
}

/// Entry point of `alipay-sidecar demo`; returns the process exit code.
pub fn run(args: DemoArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start a runtime: {e}");
            return 1;
        }
    };
    let args_ephemeral = args.ephemeral_ports;
    match rt.block_on(demo(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("demo failed: {e}");
            if !args_ephemeral {
                eprintln!("hint: the demo uses ports 8080, 8081, 9090, 8443 and 3000; if one is taken, run `alipay-sidecar demo --ephemeral-ports`");
            }
            1
        }
    }
}

type DemoResult<T> = Result<T, String>;

async fn demo(args: DemoArgs) -> DemoResult<()> {
    let dir = std::env::temp_dir().join(format!("alipay-sidecar-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = demo_in(&dir, &args).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo_in(dir: &Path, args: &DemoArgs) -> DemoResult<()> {
    let ports = Ports::pick(args.ephemeral_ports).map_err(|e| e.to_string())?;
    println!(
        "== alipay-sidecar demo (throw-away keys in {})",
        dir.display()
    );

    // 1. keys
    let merchant = crate::protocol::generate_keypair().map_err(|e| e.to_string())?;
    write_private(
        &dir.join("merchant_private_key.pem"),
        &merchant.private_pkcs8_pem,
    )?;
    println!("   merchant key pair generated: {}", merchant.fingerprint);

    // 2. the fake gateway, over TLS
    let client_id = "SANDBOX_DEMO0000000001";
    let mut gw_cfg = MockGatewayConfig::new(merchant.public_spki_pem.clone());
    gw_cfg.listen = SocketAddr::from(([127, 0, 0, 1], ports.gateway));
    gw_cfg.tls = Some(dir.to_path_buf());
    gw_cfg.expected_client_id = Some(client_id.to_string());
    gw_cfg.notify_backoff = vec![
        Duration::from_millis(0),
        Duration::from_millis(500),
        Duration::from_secs(2),
    ];
    let gw = MockGateway::start(gw_cfg)
        .await
        .map_err(|e| format!("fake gateway: {e}"))?;
    std::fs::write(
        dir.join("alipay_public_key.pem"),
        gw.alipay_public_key_pem(),
    )
    .map_err(|e| e.to_string())?;
    let ca = gw
        .ca_file()
        .ok_or("the fake gateway wrote no CA file")?
        .to_path_buf();

    // 3. the "app" that receives verified notifications
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let app_addr = SocketAddr::from(([127, 0, 0, 1], ports.app));
    let receiver = start_receiver(app_addr, received.clone()).await?;

    // 4. the sidecar itself
    let config_path = dir.join("sidecar.toml");
    std::fs::write(&config_path, demo_config(client_id, &ports, &ca)).map_err(|e| e.to_string())?;
    let mut child = Sidecar::spawn(&config_path, &dir.join("sidecar.log"))?;
    wait_ready(&mut child, ports.admin).await?;

    let out = format!("http://127.0.0.1:{}", ports.outbound);
    let inbound = format!("http://127.0.0.1:{}", ports.inbound);
    println!("   listening:");
    println!(
        "     fake Alipay gateway  {}   (TLS, its CA: {})",
        gw.base_url(),
        ca.display()
    );
    println!("     sidecar outbound     {out}   (point your app's gateway URL here)");
    println!(
        "     sidecar inbound      {inbound}   (register {inbound}/alipay/notify as notify URL)"
    );
    println!(
        "     sidecar admin        http://127.0.0.1:{}   (/metrics /healthz /readyz)",
        ports.admin
    );
    println!("     demo app receiver    http://{app_addr}   (gets verified notifications)");
    println!("   try it yourself:");
    println!("     curl -s {out}/ams/api/v1/payments/pay -H 'Content-Type: application/json' \\");
    println!("       -d '{{\"paymentRequestId\":\"curl-1\",\"paymentAmount\":{{\"currency\":\"USD\",\"value\":\"100\"}},\"paymentNotifyUrl\":\"{inbound}/alipay/notify\"}}' -i");
    println!("     curl -s {out}/ams/api/v1/payments/inquiryPayment -d '{{\"paymentRequestId\":\"curl-1\"}}' -i");
    println!(
        "     curl -s http://127.0.0.1:{}/metrics | grep alipay_sidecar_requests_total",
        ports.admin
    );

    let traffic = sample_traffic(&out, &inbound, &gw, &received).await;
    if let Err(e) = &traffic {
        eprintln!(
            "   sample traffic failed: {e}\n   sidecar log: {}",
            dir.join("sidecar.log").display()
        );
    }
    if traffic.is_ok() && !args.once {
        println!("== running; Ctrl-C stops everything");
        let _ = tokio::signal::ctrl_c().await;
    }
    child.stop();
    receiver.abort();
    gw.shutdown().await;
    println!("== stopped");
    traffic
}

fn demo_config(client_id: &str, p: &Ports, ca: &Path) -> String {
    format!(
        r#"# generated by `alipay-sidecar demo`
client_id = "{client_id}"
[keys]
merchant_private_key = "merchant_private_key.pem"
merchant_key_version = 1
alipay_public_keys = {{ "1" = "alipay_public_key.pem" }}
[outbound]
listen = "127.0.0.1:{}"
gateway = "https://127.0.0.1:{}"
ca_file = {:?}
[inbound]
listen = "127.0.0.1:{}"
forward_to = "http://127.0.0.1:{}"
[admin]
listen = "127.0.0.1:{}"
[log]
format = "text"
level = "warn"
[server]
shutdown_grace = "1s"
shutdown_timeout = "5s"
"#,
        p.outbound,
        p.gateway,
        ca.display().to_string(),
        p.inbound,
        p.app,
        p.admin
    )
}

async fn sample_traffic(
    out: &str,
    inbound: &str,
    gw: &MockGateway,
    received: &Mutex<Vec<(String, String)>>,
) -> DemoResult<()> {
    let id = format!("demo-{}", std::process::id());
    let pay = format!(
        r#"{{"productCode":"CASHIER_PAYMENT","paymentRequestId":"{id}","order":{{"referenceOrderId":"order-{id}","orderDescription":"珍珠奶茶 🧋","orderAmount":{{"currency":"HKD","value":"5800"}}}},"paymentAmount":{{"currency":"HKD","value":"5800"}},"paymentMethod":{{"paymentMethodType":"ALIPAY_HK"}},"paymentNotifyUrl":"{inbound}/alipay/notify"}}"#
    );
    println!("== 1. pay: the app sends a plain, unsigned request to the sidecar");
    let (status, verified, body) = post(&format!("{out}/ams/api/v1/payments/pay"), pay).await?;
    show_outgoing(gw, "/ams/api/v1/payments/pay");
    println!(
        "   <- {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" {
        return Err(format!(
            "pay was not verified (status {status}, verified {verified})"
        ));
    }
    println!("== 2. inquiryPayment");
    let (status, verified, body) = post(
        &format!("{out}/ams/api/v1/payments/inquiryPayment"),
        format!(r#"{{"paymentRequestId":"{id}"}}"#),
    )
    .await?;
    show_outgoing(gw, "/ams/api/v1/payments/inquiryPayment");
    println!(
        "   <- {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" {
        return Err(format!(
            "inquiry was not verified (status {status}, verified {verified})"
        ));
    }
    println!("== 3. the gateway's signed PAYMENT_RESULT notification, through the sidecar's inbound verifier");
    let start = Instant::now();
    loop {
        if let Some((verified, body)) = received.lock().ok().and_then(|r| r.first().cloned()) {
            println!(
                "   app received it with X-Alipay-Sidecar-Verified: {verified}\n      {}",
                shorten(&body)
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "no notification reached the app in 10s; gateway attempts: {:?}",
                gw.notifications()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("== done: every answer the app saw was verified");
    Ok(())
}

fn show_outgoing(gw: &MockGateway, path: &str) {
    if let Some(r) = gw.received().into_iter().rev().find(|r| r.target == path) {
        println!("   -> the sidecar signed and sent to the gateway:");
        for h in ["client-id", "request-time", "signature"] {
            let v = r.header(h).unwrap_or("-");
            let v = if h == "signature" {
                format!("{}…", &v[..v.len().min(60)])
            } else {
                v.to_string()
            };
            println!("        {h}: {v}");
        }
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s.to_string()
    }
}

async fn post(url: &str, body: String) -> DemoResult<(u16, String, String)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(url)
        .header("Content-Type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let verified = resp
        .headers()
        .get("x-alipay-sidecar-verified")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(absent)")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, verified, String::from_utf8_lossy(&body).to_string()))
}

async fn start_receiver(
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, String)>>>,
) -> DemoResult<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("demo receiver on {addr}: {e}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let received = received.clone();
                    async move {
                        let verified = req
                            .headers()
                            .get("x-alipay-sidecar-verified")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(absent)")
                            .to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Ok(mut r) = received.lock() {
                            r.push((verified, String::from_utf8_lossy(&body).to_string()));
                        }
                        let ack = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("Content-Type", "application/json")
                                .body(Full::new(Bytes::from(ack)))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }))
}

fn write_private(path: &Path, pem: &str) -> DemoResult<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(pem.as_bytes()).map_err(|e| e.to_string())
}

/// The sidecar child process; stopped (SIGTERM, then kill) on `stop` or drop.
struct Sidecar {
    child: Option<Child>,
    log: PathBuf,
}

impl Sidecar {
    fn spawn(config: &Path, log: &Path) -> DemoResult<Sidecar> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting the sidecar: {e}"))?;
        Ok(Sidecar {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .stderr(Stdio::null())
                    .status();
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(8) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_ready(child: &mut Sidecar, admin_port: u16) -> DemoResult<()> {
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(c) = child.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let log = std::fs::read_to_string(&child.log).unwrap_or_default();
                return Err(format!("the sidecar exited ({status}):\n{log}"));
            }
        }
        let u = url.clone();
        if tokio::task::spawn_blocking(move || crate::admin::healthcheck_quiet(&u))
            .await
            .unwrap_or(false)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the sidecar was not ready in 20s; see {}",
        child.log.display()
    ))
}
