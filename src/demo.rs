//! `alipay-sidecar demo`: the whole product on one machine with nothing configured.
//!
//! It generates throw-away merchant keys, starts the fake Alipay gateway over TLS (with its
//! own CA, which the sidecar trusts through `ca_file`), a tiny notification receiver standing
//! in for the merchant app, and the real sidecar (`alipay-sidecar run`, as a child process).
//! Then it runs one pay → inquiry round trip through the sidecar and waits for the gateway's
//! signed PAYMENT_RESULT notification to pass the sidecar's inbound verifier and reach the
//! receiver. Every exchange is shown as it happens, the user's own curl requests included:
//! `[gateway]` lines (the headers the sidecar signed, notifications sent), `[sidecar]` lines
//! (the sidecar's JSON log, piped through the demo: each exchange's verdict) and `[app]` lines
//! (notifications delivered).
//!
//! Cleaning up is the point of the signal handling: SIGTERM, SIGHUP and SIGINT (and the death
//! of the demo's parent, through `PR_SET_PDEATHSIG` on Linux) stop the sidecar and remove the
//! temp folder holding the throw-away private key. The sidecar child has its own
//! `PR_SET_PDEATHSIG`, so it stops even when the demo is killed with SIGKILL; the folder left
//! then is removed by the next demo.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::mock_gateway::{MockGateway, MockGatewayConfig, ReceivedRequest};

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

/// Entry point of `alipay-sidecar demo`; returns the process exit code: 0 when the sample
/// traffic verified (and, without `--once`, when a signal stopped it afterwards), 1 when it
/// failed, 128 + the signal number when a signal interrupted it before it completed.
pub fn run(args: DemoArgs) -> i32 {
    // The demo is a foreground toy: when whoever started it goes away (an IDE, a test
    // harness, a terminal), it stops too, and cleans up like on SIGTERM.
    die_with_parent(libc::SIGTERM);
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
    rt.block_on(demo(args))
}

/// Asks the kernel to send `signal` to this process when its parent dies (Linux); elsewhere a
/// no-op.
fn die_with_parent(signal: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a process attribute.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = signal;
}

type DemoResult<T> = Result<T, String>;

/// The signals that stop the demo (and with it every child and the temp folder).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for one; returns its name and number.
    async fn recv(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", libc::SIGTERM),
            _ = self.hup.recv() => ("SIGHUP", libc::SIGHUP),
            _ = self.int.recv() => ("SIGINT", libc::SIGINT),
        }
    }
}

const DIR_PREFIX: &str = "alipay-sidecar-demo-";

async fn demo(args: DemoArgs) -> i32 {
    // Signal handlers first: from here on SIGTERM/SIGHUP/SIGINT clean up instead of killing
    // the demo and orphaning its sidecar.
    let mut signals = match StopSignals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: cannot install signal handlers: {e}");
            return 1;
        }
    };
    remove_stale_folders();
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
    if let Err(e) = create_private_dir(&dir) {
        eprintln!("demo failed: creating {}: {e}", dir.display());
        return 1;
    }
    let traffic_done = Arc::new(AtomicBool::new(false));
    let code = tokio::select! {
        result = demo_in(&dir, &args, traffic_done.clone()) => match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("demo failed: {e}");
                1
            }
        },
        (name, number) = signals.recv() => {
            println!("== {name}: stopping the sidecar and removing {}", dir.display());
            if traffic_done.load(Ordering::SeqCst) && !args.once { 0 } else { 128 + number }
        }
    };
    // demo_in has been dropped here: its Sidecar stopped the child process (SIGTERM, then
    // SIGKILL), the gateway and receiver tasks end with the runtime.
    let _ = std::fs::remove_dir_all(&dir);
    println!("== stopped");
    code
}

/// Creates the demo's folder (it holds a private key), readable by this user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?; // a folder of an earlier process with the same pid
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Removes the folders of earlier demos whose process is gone (killed with SIGKILL, the one
/// signal the demo cannot clean up after; its sidecar died with it through PR_SET_PDEATHSIG).
fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Fails, naming the port and what uses it, when one of the demo's fixed ports is taken.
fn check_ports_free(ports: &Ports) -> DemoResult<()> {
    for (port, what) in [
        (ports.outbound, "sidecar outbound"),
        (ports.inbound, "sidecar inbound"),
        (ports.admin, "sidecar admin"),
        (ports.gateway, "fake Alipay gateway"),
        (ports.app, "demo app receiver"),
    ] {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "is busy: something already listens on it (an earlier demo or sidecar still \
                 running? `ss -ltnp 'sport = :PORT'` shows which process)"
                    .replace("PORT", &port.to_string())
            } else {
                format!("cannot be used: {e}")
            };
            return Err(format!(
                "port {port} (the {what}) {why}; stop that process, or run `alipay-sidecar demo \
                 --ephemeral-ports` to use free ports"
            ));
        }
    }
    Ok(())
}

async fn demo_in(dir: &Path, args: &DemoArgs, traffic_done: Arc<AtomicBool>) -> DemoResult<()> {
    let ports = Ports::pick(args.ephemeral_ports).map_err(|e| e.to_string())?;
    if !args.ephemeral_ports {
        check_ports_free(&ports)?;
    }
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

    // 2. the fake gateway, over TLS. A sandbox client id, so the sandbox paths
    //    (/ams/sandbox/api/…), as Alipay requires for SANDBOX_ ids.
    let client_id = "SANDBOX_DEMO0000000001";
    let mut gw_cfg = MockGatewayConfig::new(merchant.public_spki_pem.clone());
    gw_cfg.listen = SocketAddr::from(([127, 0, 0, 1], ports.gateway));
    gw_cfg.tls = Some(dir.to_path_buf());
    gw_cfg.expected_client_id = Some(client_id.to_string());
    // The first notification a second after the pay: after the inquiry, as with Alipay.
    gw_cfg.notify_backoff = vec![
        Duration::from_secs(1),
        Duration::from_millis(500),
        Duration::from_secs(2),
    ];
    let gw = Arc::new(
        MockGateway::start(gw_cfg)
            .await
            .map_err(|e| format!("fake gateway: {e}"))?,
    );
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
    let received: Arc<Mutex<Vec<Delivered>>> = Arc::default();
    let app_addr = SocketAddr::from(([127, 0, 0, 1], ports.app));
    let receiver = start_receiver(app_addr, received.clone()).await?;

    // 4. the sidecar itself, its JSON log piped through the demo to show each exchange
    let config_path = dir.join("sidecar.toml");
    std::fs::write(
        &config_path,
        demo_config(client_id, &ports, &ca, &dir.join("state.db")),
    )
    .map_err(|e| e.to_string())?;
    let exchanges = Arc::new(AtomicUsize::new(0));
    let mut child = Sidecar::spawn(&config_path, &dir.join("sidecar.log"), exchanges.clone())?;
    wait_ready(&mut child, ports.admin).await?;
    let view = Arc::new(GatewayView {
        gw: gw.clone(),
        seen: Mutex::default(),
    });
    let watcher = tokio::spawn(view.clone().watch());

    let out = format!("http://127.0.0.1:{}", ports.outbound);
    let inbound = format!("http://127.0.0.1:{}", ports.inbound);
    println!("   listening:");
    println!(
        "     fake Alipay gateway  {}   (TLS, its CA: {})",
        gw.base_url(),
        ca.display()
    );
    println!(
        "     sidecar outbound     {out}   (pid {}; point your app's gateway URL here)",
        child.pid()
    );
    println!(
        "     sidecar inbound      {inbound}   (register {inbound}/alipay/notify as notify URL)"
    );
    println!(
        "     sidecar admin        http://127.0.0.1:{}   (/metrics /healthz /readyz)",
        ports.admin
    );
    println!("     demo app receiver    http://{app_addr}   (gets verified notifications)");
    println!("   client id {client_id}: a sandbox id, so the paths are /ams/sandbox/api/…");
    println!(
        "   lines starting with [gateway], [sidecar] and [app] show each exchange as it happens"
    );

    let traffic = sample_traffic(&out, &inbound, &view, &received, &exchanges).await;
    if let Err(e) = &traffic {
        eprintln!(
            "   sample traffic failed: {e}\n   the sidecar's last log lines:\n{}",
            tail(&child.log, 20)
        );
    }
    if traffic.is_ok() && !args.once {
        traffic_done.store(true, Ordering::SeqCst);
        let pay = format!("{out}/ams/sandbox/api/v1/payments/pay");
        let inquiry = format!("{out}/ams/sandbox/api/v1/payments/inquiryPayment");
        println!("   try it yourself (the [gateway]/[sidecar]/[app] lines show what happens):");
        println!("     curl -s {pay} -H 'Content-Type: application/json' \\");
        println!("       -d '{{\"paymentRequestId\":\"curl-1\",\"paymentAmount\":{{\"currency\":\"USD\",\"value\":\"100\"}},\"paymentNotifyUrl\":\"{inbound}/alipay/notify\"}}' -i");
        println!("     curl -s {inquiry} -H 'Content-Type: application/json' \\");
        println!("       -d '{{\"paymentRequestId\":\"curl-1\"}}' -i");
        println!(
            "     curl -s http://127.0.0.1:{}/metrics | grep alipay_sidecar_requests_total",
            ports.admin
        );
        println!("== running; Ctrl-C (or SIGTERM/SIGHUP) stops everything");
        std::future::pending::<()>().await;
    }
    watcher.abort();
    let _ = watcher.await;
    drop(view);
    child.stop();
    receiver.abort();
    if let Ok(gw) = Arc::try_unwrap(gw) {
        gw.shutdown().await;
    }
    traffic
}

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

/// Prints each request the fake gateway receives (the headers the sidecar signed onto it and
/// whether the gateway could verify them) and each notification it delivers, once each:
/// polled in the background, and right after each scripted request so the output keeps its
/// order.
struct GatewayView {
    gw: Arc<MockGateway>,
    seen: Mutex<(Option<ReceivedRequest>, usize)>,
}

impl GatewayView {
    fn print_new(&self) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let all = self.gw.received();
        let start = match &seen.0 {
            Some(last) => all.iter().rposition(|r| r == last).map_or(0, |i| i + 1),
            None => 0,
        };
        for r in &all[start..] {
            let signature = r.header("signature").unwrap_or("(none)");
            println!(
                "   [gateway] received {} {} as signed by the sidecar ({}):\n               client-id: {}\n               request-time: {}\n               signature: {}",
                r.method,
                r.target,
                if r.verified { "signature valid" } else { "signature INVALID" },
                r.header("client-id").unwrap_or("(none)"),
                r.header("request-time").unwrap_or("(none)"),
                shorten_to(signature, 72),
            );
        }
        if let Some(last) = all.last() {
            seen.0 = Some(last.clone());
        }
        let sent = self.gw.notifications();
        for n in sent.iter().skip(seen.1) {
            println!(
                "   [gateway] sent the signed PAYMENT_RESULT notification for {} to {} (attempt {}): {}",
                n.payment_request_id,
                n.url,
                n.attempt,
                match (n.status, &n.error) {
                    (Some(status), _) if n.acknowledged => format!("answered {status}, acknowledged"),
                    (Some(status), _) => format!("answered {status}, not acknowledged (it re-sends)"),
                    (None, Some(e)) => format!("no answer: {e}"),
                    (None, None) => "no answer".to_string(),
                }
            );
        }
        seen.1 = seen.1.max(sent.len());
    }

    async fn watch(self: Arc<Self>) {
        loop {
            self.print_new();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn demo_config(client_id: &str, p: &Ports, ca: &Path, store: &Path) -> String {
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
# a SANDBOX_ client id calls the sandbox paths only
allowed_path_prefixes = ["/ams/sandbox/api/"]
[inbound]
listen = "127.0.0.1:{}"
forward_to = "http://127.0.0.1:{}"
[admin]
listen = "127.0.0.1:{}"
# the state store (notification journal, pay records), in the demo's temp folder
[store]
path = {:?}
# the missed-notification reconciler, with short timings for the demo
[reconcile]
enabled = true
reconcile_after = "1s"
inquiry_schedule = ["500ms"]
default_close_after = "30s"
[log]
# JSON, read by the demo to show each exchange
format = "json"
level = "info"
[server]
shutdown_grace = "1s"
shutdown_timeout = "5s"
"#,
        p.outbound,
        p.gateway,
        ca.display().to_string(),
        p.inbound,
        p.app,
        p.admin,
        store.display().to_string()
    )
}

/// Waits (up to 5 s) until the sidecar has logged `n` outbound exchanges, so its `[sidecar]`
/// line is printed before the answer the app got.
async fn wait_exchanges(exchanges: &AtomicUsize, n: usize) {
    let start = Instant::now();
    while exchanges.load(Ordering::SeqCst) < n && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sample_traffic(
    out: &str,
    inbound: &str,
    view: &GatewayView,
    received: &Mutex<Vec<Delivered>>,
    exchanges: &AtomicUsize,
) -> DemoResult<()> {
    let id = format!("demo-{}", std::process::id());
    let pay = format!(
        r#"{{"productCode":"CASHIER_PAYMENT","paymentRequestId":"{id}","order":{{"referenceOrderId":"order-{id}","orderDescription":"珍珠奶茶 🧋","orderAmount":{{"currency":"HKD","value":"5800"}}}},"paymentAmount":{{"currency":"HKD","value":"5800"}},"paymentMethod":{{"paymentMethodType":"ALIPAY_HK"}},"paymentNotifyUrl":"{inbound}/alipay/notify"}}"#
    );
    let before = exchanges.load(Ordering::SeqCst);
    println!("== 1. pay: the app sends a plain, unsigned request to the sidecar");
    let (status, verified, body) =
        post(&format!("{out}/ams/sandbox/api/v1/payments/pay"), pay).await?;
    view.print_new();
    wait_exchanges(exchanges, before + 1).await;
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" {
        return Err(format!(
            "pay was not verified (status {status}, verified {verified})"
        ));
    }
    println!("== 2. inquiryPayment");
    let (status, verified, body) = post(
        &format!("{out}/ams/sandbox/api/v1/payments/inquiryPayment"),
        format!(r#"{{"paymentRequestId":"{id}"}}"#),
    )
    .await?;
    view.print_new();
    wait_exchanges(exchanges, before + 2).await;
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
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
        if let Some(Delivered { verified, .. }) =
            received.lock().ok().and_then(|r| r.first().cloned())
        {
            view.print_new();
            if verified != "true" {
                return Err(format!(
                    "the notification reached the app with X-Alipay-Sidecar-Verified: {verified}"
                ));
            }
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "no notification reached the app in 10s; gateway attempts: {:?}",
                view.gw.notifications()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reconciled_payment(out, inbound, view, received).await?;
    println!("== done: every answer the app saw was verified, and the missed notification was reconciled");
    Ok(())
}

/// Waits (up to 15 s) until `check` holds, printing what the gateway did meanwhile.
async fn wait_for(view: &GatewayView, what: &str, check: impl Fn() -> bool) -> DemoResult<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > Duration::from_secs(15) {
            return Err(format!("{what}: not within 15s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        view.print_new();
    }
    view.print_new();
    Ok(())
}

/// Step 4, the failure Alipay's own guide ends with: the gateway answers the pay "in
/// process" and never sends the result notification. The sidecar's reconciler inquires
/// (signed, verified) and delivers the result to the app, marked `Source: inquiryPayment`;
/// the gateway's late notification of the same result is acknowledged without reaching the
/// app again.
async fn reconciled_payment(
    out: &str,
    inbound: &str,
    view: &GatewayView,
    received: &Mutex<Vec<Delivered>>,
) -> DemoResult<()> {
    let id = format!("demo-missed-{}", std::process::id());
    let pay = format!(
        r#"{{"productCode":"IN_STORE_PAYMENT","paymentRequestId":"{id}","order":{{"referenceOrderId":"order-{id}","orderDescription":"Entry Code 🧋","orderAmount":{{"currency":"HKD","value":"3200"}}}},"paymentAmount":{{"currency":"HKD","value":"3200"}},"paymentMethod":{{"paymentMethodType":"CONNECT_WALLET"}},"paymentNotifyUrl":"{inbound}/alipay/notify","mockOutcome":"success_after:300ms","mockNotify":"none"}}"#
    );
    println!("== 4. a missed notification: the gateway answers the pay \"in process\" and drops its PAYMENT_RESULT");
    let (status, verified, body) =
        post(&format!("{out}/ams/sandbox/api/v1/payments/pay"), pay).await?;
    view.print_new();
    println!(
        "   <- the app got {status}, X-Alipay-Sidecar-Verified: {verified}\n      {}",
        shorten(&body)
    );
    if status != 200 || verified != "true" || !body.contains("PAYMENT_IN_PROCESS") {
        return Err(format!(
            "the pay was not answered in process (status {status}, verified {verified})"
        ));
    }
    println!("   the sidecar recorded the pay; with no notification after reconcile_after (1s) it calls inquiryPayment itself");
    let reconciled = |r: &Delivered| {
        r.source.as_deref() == Some(crate::reconcile::SOURCE_INQUIRY) && r.body.contains(&id)
    };
    let count = || {
        received
            .lock()
            .map(|r| r.iter().filter(|d| d.body.contains(&id)).count())
            .unwrap_or(0)
    };
    wait_for(
        view,
        "the reconciled PAYMENT_RESULT reaching the app",
        || {
            received
                .lock()
                .is_ok_and(|r| r.iter().any(|d| reconciled(d) && d.verified == "true"))
        },
    )
    .await?;
    println!("== 5. the gateway's late notification of the same result arrives");
    view.gw
        .notify_now(&id)
        .map_err(|e| format!("late notification: {e}"))?;
    wait_for(view, "the late notification acknowledged", || {
        view.gw
            .notifications()
            .iter()
            .any(|n| n.payment_request_id == id && n.acknowledged)
    })
    .await?;
    if count() != 1 {
        return Err(format!(
            "the app received {} notifications for {id}; expected exactly one",
            count()
        ));
    }
    println!("   the sidecar acknowledged it without delivering it again: the app saw this payment's result exactly once");
    Ok(())
}

fn shorten(s: &str) -> String {
    shorten_to(s, 200)
}

fn shorten_to(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
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

/// One notification the demo's app received.
#[derive(Debug, Clone)]
struct Delivered {
    /// `X-Alipay-Sidecar-Verified`.
    verified: String,
    /// `X-Alipay-Sidecar-Source` (`inquiryPayment` for a reconciled result).
    source: Option<String>,
    body: String,
}

async fn start_receiver(
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Delivered>>>,
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
                        let path = req.uri().path().to_string();
                        let verified = req
                            .headers()
                            .get("x-alipay-sidecar-verified")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(absent)")
                            .to_string();
                        let source = req
                            .headers()
                            .get(crate::reconcile::SOURCE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = String::from_utf8_lossy(&body).to_string();
                        let from = match &source {
                            Some(s) => format!(", X-Alipay-Sidecar-Source: {s}"),
                            None => String::new(),
                        };
                        println!(
                            "   [app] notification delivered to POST {path}, X-Alipay-Sidecar-Verified: {verified}{from}\n         {}",
                            shorten(&body)
                        );
                        if let Ok(mut r) = received.lock() {
                            r.push(Delivered {
                                verified,
                                source,
                                body,
                            });
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
struct Sidecar {
    child: Option<Child>,
    log: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Sidecar {
    fn spawn(config: &Path, log: &Path, exchanges: Arc<AtomicUsize>) -> DemoResult<Sidecar> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
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
            reader: Some(reader),
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) {
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

async fn wait_ready(child: &mut Sidecar, admin_port: u16) -> DemoResult<()> {
    let url = format!("http://127.0.0.1:{admin_port}/readyz");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(c) = child.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "the sidecar exited ({status}):\n{}",
                    tail(&child.log, 20)
                ));
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
        "the sidecar was not ready in 20s; its last log lines:\n{}",
        tail(&child.log, 20)
    ))
}
