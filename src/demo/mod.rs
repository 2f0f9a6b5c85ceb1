//! `alipay-sidecar demo`: the whole product on one machine with nothing configured.
//!
//! It generates throw-away merchant keys, starts the fake Alipay gateway over TLS (with its
//! own CA, which the sidecar trusts through `ca_file`), a tiny notification receiver standing
//! in for the merchant app, and the real sidecar (`alipay-sidecar run`, as a child process).
//! Then it runs one pay → inquiry round trip through the sidecar and waits for the gateway's
//! signed PAYMENT_RESULT notification to pass the sidecar's inbound verifier and reach the
//! receiver, a missed notification reconciled, and a dropped one recovered by the backfill
//! from the gateway's event log; it ends with the audit of that log against the journal
//! (`notifications audit`). Every exchange is shown as it happens, the user's own curl requests included:
//! `[gateway]` lines (the headers the sidecar signed, notifications sent), `[sidecar]` lines
//! (the sidecar's JSON log, piped through the demo: each exchange's verdict) and `[app]` lines
//! (notifications delivered).
//!
//! Cleaning up is the point of the signal handling: SIGTERM, SIGHUP and SIGINT (and the death
//! of the demo's parent, through `PR_SET_PDEATHSIG` on Linux) stop the sidecar and remove the
//! temp folder holding the throw-away private key. The sidecar child has its own
//! `PR_SET_PDEATHSIG`, so it stops even when the demo is killed with SIGKILL; the folder left
//! then is removed by the next demo.

mod flows;
mod report;
mod setup;
mod sidecar;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mock_gateway::{start_receiver, Delivered, MockGateway, MockGatewayConfig};
use flows::{sample_traffic, AuditTarget};
use report::{print_delivered, print_listening, print_try_it, GatewayView};
use setup::{
    check_ports_free, create_private_dir, demo_config, remove_stale_folders, write_private, Ports,
    DIR_PREFIX,
};
use sidecar::Sidecar;

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

/// Sets everything up in `dir`, runs the sample traffic and, without `--once`, waits for a
/// signal; what it started stops when it returns or is dropped.
async fn demo_in(dir: &Path, args: &DemoArgs, traffic_done: Arc<AtomicBool>) -> Result<(), String> {
    let ports = Ports::pick(args.ephemeral_ports);
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
    let (receiver, app) = {
        let received = received.clone();
        start_receiver(
            SocketAddr::from(([127, 0, 0, 1], ports.app)),
            move |delivered| {
                print_delivered(&delivered);
                if let Ok(mut r) = received.lock() {
                    r.push(delivered);
                }
            },
        )
        .await
        .map_err(|e| format!("demo app: {e}"))?
    };

    // 4. the sidecar itself, its JSON log piped through the demo to show each exchange; it
    //    names the addresses it listens on in its ready file
    let config_path = dir.join("sidecar.toml");
    std::fs::write(
        &config_path,
        demo_config(
            client_id,
            &ports,
            gw.local_addr(),
            app,
            &ca,
            &dir.join("state.db"),
        ),
    )
    .map_err(|e| e.to_string())?;
    let exchanges = Arc::new(AtomicUsize::new(0));
    let mut child = Sidecar::spawn(
        &config_path,
        &dir.join("sidecar.log"),
        &dir.join("ready.json"),
        exchanges.clone(),
    )?;
    let listeners = child.wait_ready().await?;
    let view = Arc::new(GatewayView::new(gw.clone()));
    let watcher = tokio::spawn(view.clone().watch());

    print_listening(&gw, &ca, child.pid(), &listeners, app, client_id);
    let out = format!("http://{}", listeners.outbound);
    let inbound = format!("http://{}", listeners.inbound);
    let audit = AuditTarget {
        config: config_path.clone(),
        via: listeners.outbound,
    };
    let traffic = sample_traffic(&out, &inbound, &view, &received, &exchanges, audit).await;
    if let Err(e) = &traffic {
        eprintln!(
            "   sample traffic failed: {e}\n   the sidecar's last log lines:\n{}",
            child.last_log_lines()
        );
    }
    if traffic.is_ok() && !args.once {
        traffic_done.store(true, Ordering::SeqCst);
        print_try_it(&listeners);
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
