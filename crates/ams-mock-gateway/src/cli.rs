//! `alipay-sidecar mock-gateway`: the gateway as a command, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::config::MockGatewayConfig;
use crate::error::MockGatewayError;
use crate::fault::Fault;
use crate::gateway::{write_file, MockGateway};
use crate::out_dir::{self, Kept, SidecarToml};
use crate::receiver::{start_receiver, Delivered};
use crate::switches::{NotifyMode, PaymentOutcome};

/// Options of `alipay-sidecar mock-gateway`: a fake Alipay gateway for offline testing.
#[derive(clap::Args, Debug, Clone)]
pub struct MockGatewayArgs {
    /// Address to listen on (port 0 = any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a generated CA + server certificate; the CA is written to
    /// OUT_DIR/ca.pem for the sidecar's `ca_file`.
    #[arg(long)]
    pub tls: bool,
    /// Keep the gateway's files in DIR across restarts: the CA (ca.pem, ca_key.pem) and the
    /// Alipay key pair, and (without --merchant-public-key) a merchant key pair, each reused
    /// when present and created when absent (private keys mode 0600); then also a complete
    /// DIR/sidecar.toml (rewritten at each start) for `alipay-sidecar run --config
    /// DIR/sidecar.toml`, TLS on (implies --tls) and the receiver. Without it the files go
    /// to ./mock-gateway and the CA and the Alipay key are new at every start.
    #[arg(long = "out-dir", visible_alias = "tls-dir", value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Merchant public key file (SPKI/PKCS#1 PEM or one-line base64 DER) used to verify
    /// request signatures. Required without --out-dir; with it, DIR's own merchant key pair is
    /// used when this is not given (and no sidecar.toml is written when it is).
    #[arg(long, value_name = "FILE", required_unless_present = "out_dir")]
    pub merchant_public_key: Option<PathBuf>,
    /// The gateway's "Alipay" private key file; when absent a key pair is generated (kept in
    /// DIR with --out-dir). The public half is always written to OUT_DIR/alipay_public_key.pem.
    #[arg(long, value_name = "FILE")]
    pub alipay_private_key: Option<PathBuf>,
    /// With --out-dir: where the notification receiver (the app stand-in that prints each
    /// notification and answers 200) listens; sidecar.toml's `[inbound] forward_to`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub receiver: SocketAddr,
    /// With --out-dir: start no receiver (your own app listens at --receiver).
    #[arg(long)]
    pub no_receiver: bool,
    /// With --out-dir: the ports of the sidecar's outbound, inbound and admin listeners on
    /// 127.0.0.1 in sidecar.toml.
    #[arg(
        long,
        value_name = "OUT,IN,ADMIN",
        value_delimiter = ',',
        default_value = "8080,8081,9090"
    )]
    pub sidecar_ports: Vec<u16>,
    /// keyVersion announced in response and notification signatures.
    #[arg(long, value_name = "N", default_value = "1")]
    pub key_version: String,
    /// Accept only this Client-Id (others get INVALID_SIGNATURE); default: any, and with
    /// --out-dir the sidecar.toml's `SANDBOX_MOCKGATEWAY0001`.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Accept the API key in this file (one line, `{isak|irak}_{TEST|PROD}_…`) as
    /// `Authorization: Bearer`; other keys get an unsigned OAUTH_FAIL. Default: no API key.
    #[arg(long, value_name = "FILE")]
    pub api_key: Option<PathBuf>,
    /// Send notifications here instead of the request's paymentNotifyUrl (http:// only).
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
    /// Wait before each notification attempt, comma-separated (the count is the number of
    /// attempts).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = humantime::parse_duration,
        default_value = "0s,2s,10s,60s,300s"
    )]
    pub notify_backoff: Vec<Duration>,
    /// Fault for every request: delay:<ms>, slow_sign:<ms>, drop, reset_mid_body, http_status:<code>,
    /// unsigned, tampered, invalid_signature, unknown_exception, signed_failure, no_notify,
    /// notify_tampered, stale_response_time.
    #[arg(long, value_name = "KIND", value_parser = Fault::from_str)]
    pub fault: Option<Fault>,
    /// When each payment's notification is sent once it is final: immediate, none (only when
    /// triggered with POST /mock/notify/PAYMENT_REQUEST_ID), late:DURATION. A pay's
    /// "mockNotify" field overrides it.
    #[arg(long, value_name = "MODE", value_parser = NotifyMode::from_str, default_value = "immediate")]
    pub notify: NotifyMode,
    /// How each pay ends: success, success_after:DURATION, fail_after:DURATION (or
    /// fail_after:DURATION:CODE), never; all but success answer PAYMENT_IN_PROCESS/U. A pay's
    /// "mockOutcome" field overrides it.
    #[arg(long, value_name = "OUTCOME", value_parser = PaymentOutcome::from_str, default_value = "success")]
    pub outcome: PaymentOutcome,
}

fn read_key_file(what: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "mock-gateway: cannot read the {what} file {}: {e}",
            path.display()
        )
    })
}

/// The client id of the sidecar.toml `--out-dir` writes (when `--client-id` is not given):
/// a sandbox one, so the sidecar calls the sandbox paths, as Alipay requires.
const OUT_DIR_CLIENT_ID: &str = "SANDBOX_MOCKGATEWAY0001";

/// Where the files go without `--out-dir` (new CA and Alipay key at every start).
const DEFAULT_DIR: &str = "mock-gateway";

/// Entry point of `alipay-sidecar mock-gateway`; runs until Ctrl-C (or SIGTERM) and returns
/// the process exit code (0 stopped cleanly, 1 could not start, 2 bad input).
pub fn cli_main(args: MockGatewayArgs) -> i32 {
    use std::io::IsTerminal as _;
    // Logs go to stderr so stdout carries only the start-up summary.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();

    if args.sidecar_ports.len() != 3 {
        eprintln!(
            "mock-gateway: --sidecar-ports takes three ports, OUT,IN,ADMIN (e.g. 8080,8081,9090)"
        );
        return 2;
    }
    // --out-dir: the keys kept in DIR, read (or made) before anything starts
    let kept = match &args.out_dir {
        None => Kept::default(),
        Some(dir) => match out_dir::prepare(
            dir,
            args.alipay_private_key.is_none(),
            args.merchant_public_key.is_none(),
        ) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("mock-gateway: {e}");
                return 1;
            }
        },
    };
    let merchant_public_key = match (&args.merchant_public_key, &kept.merchant_public_pem) {
        (Some(path), _) => match read_key_file("merchant public key", path) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
        (None, Some(pem)) => pem.clone(),
        (None, None) => {
            eprintln!(
                "mock-gateway: give --merchant-public-key FILE (the public half of the key the \
                 sidecar signs with), or --out-dir DIR to keep a merchant key pair (and a \
                 sidecar.toml using it) in DIR"
            );
            return 2;
        }
    };
    let alipay_private_key = match &args.alipay_private_key {
        None => kept.alipay_private_pem.clone(),
        Some(path) => match read_key_file("Alipay private key", path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    let api_key = match &args.api_key {
        None => None,
        Some(path) => match read_key_file("API key", path) {
            Ok(k) => Some(k.trim().to_string()),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
    };
    let writes_config = kept.merchant_public_pem.is_some();
    let dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let config = MockGatewayConfig {
        listen: args.listen,
        api_key,
        // the sidecar reaches a gateway over https only: a sidecar.toml needs TLS
        tls: (args.tls || writes_config).then(|| dir.clone()),
        keep_ca: args.out_dir.is_some(),
        merchant_public_key,
        alipay_private_key,
        alipay_key_version: args.key_version.clone(),
        expected_client_id: args
            .client_id
            .clone()
            .or_else(|| writes_config.then(|| OUT_DIR_CLIENT_ID.to_string())),
        notify_url_override: args.notify_url.clone(),
        notify_backoff: args.notify_backoff.clone(),
        fault: args.fault,
        notify: args.notify,
        outcome: args.outcome.clone(),
        event_page_max: crate::MAX_EVENT_LIMIT as usize,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-gateway: cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run_cli(config, args, dir, kept))
}

async fn run_cli(
    config: MockGatewayConfig,
    args: MockGatewayArgs,
    dir: PathBuf,
    kept: Kept,
) -> i32 {
    let generated = config.alipay_private_key.is_none();
    let client_id = config.expected_client_id.clone();
    let gateway = match MockGateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return match e {
                MockGatewayError::Bind { .. }
                | MockGatewayError::Tls { .. }
                | MockGatewayError::WriteFile { .. }
                | MockGatewayError::KeyGeneration { .. } => 1,
                _ => 2,
            };
        }
    };
    let public_key_path = dir.join(out_dir::ALIPAY_PUBLIC_KEY);
    if let Err(e) = write_file(&public_key_path, &gateway.alipay_public_key_pem()) {
        eprintln!("{e}");
        gateway.shutdown().await;
        return 1;
    }
    // --out-dir with its own merchant key: the receiver, then the sidecar.toml naming it
    let mut receiver = None;
    let mut sidecar_toml = None;
    if kept.merchant_public_pem.is_some() {
        let forward_to = if args.no_receiver {
            args.receiver
        } else {
            match start_receiver(args.receiver, print_delivered).await {
                Ok((task, bound)) => {
                    receiver = Some(task);
                    bound
                }
                Err(e) => {
                    eprintln!("mock-gateway: {e}; pick another with --receiver ADDR, or --no-receiver when your app listens there");
                    gateway.shutdown().await;
                    return 1;
                }
            }
        };
        let path = dir.join(out_dir::SIDECAR_TOML);
        let toml = sidecar_toml_text(
            &args,
            &gateway,
            client_id.as_deref().unwrap_or(OUT_DIR_CLIENT_ID),
            forward_to,
        );
        if let Err(e) = out_dir::write_public(&path, &toml) {
            eprintln!("mock-gateway: {e}");
            gateway.shutdown().await;
            return 1;
        }
        sidecar_toml = Some((path, forward_to));
    }

    println!("mock-gateway: listening on {}", gateway.base_url());
    if let Some(ca) = gateway.ca_file() {
        let kept_note = if args.out_dir.is_some() {
            ", kept with its key in the same folder"
        } else {
            ""
        };
        println!(
            "mock-gateway: wrote {} (the CA to trust{kept_note})",
            ca.display()
        );
    }
    println!(
        "mock-gateway: wrote {} (Alipay public key, keyVersion {}{})",
        public_key_path.display(),
        args.key_version,
        if !generated {
            ""
        } else if args.out_dir.is_some() {
            "; its private key is kept in the same folder"
        } else {
            "; generated for this run — pass --out-dir DIR or --alipay-private-key for a stable key"
        }
    );
    for (file, what) in &kept.generated {
        println!(
            "mock-gateway: generated {} ({what})",
            dir.join(file).display()
        );
    }
    println!(
        "mock-gateway: verifying requests with {} (client id: {})",
        match &args.merchant_public_key {
            Some(path) => path.display().to_string(),
            None => dir.join(out_dir::MERCHANT_PUBLIC_KEY).display().to_string(),
        },
        client_id.as_deref().unwrap_or("any")
    );
    println!(
        "mock-gateway: notifications to {} with back-off {}",
        args.notify_url
            .as_deref()
            .unwrap_or("the request's paymentNotifyUrl"),
        args.notify_backoff
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    if let Some(f) = args.fault {
        println!("mock-gateway: fault for every request: {f}");
    }
    if args.notify != NotifyMode::Immediate || args.outcome != PaymentOutcome::Success {
        println!(
            "mock-gateway: every pay: outcome {}, notification {} (POST {}/mock/notify/<paymentRequestId> sends one now)",
            args.outcome,
            args.notify,
            gateway.base_url()
        );
    }
    match &sidecar_toml {
        Some((path, forward_to)) => {
            if receiver.is_some() {
                println!("mock-gateway: receiving the sidecar's notifications on {forward_to} (each printed, answered 200)");
            }
            println!(
                "mock-gateway: wrote {} (rewritten at each start); run the sidecar with:",
                path.display()
            );
            println!("    alipay-sidecar run --config {}", path.display());
        }
        None => {
            if args.out_dir.is_some() {
                println!("mock-gateway: no sidecar.toml written: the merchant key is yours (--merchant-public-key), so its private half is not in {}", dir.display());
            }
            println!("mock-gateway: sidecar settings:");
            println!("    [outbound] gateway = \"{}\"", gateway.base_url());
            if let Some(ca) = gateway.ca_file() {
                println!("    [outbound] ca_file = \"{}\"", ca.display());
            }
            println!(
                "    [keys] alipay_public_keys = {{ \"{}\" = \"{}\" }}",
                args.key_version,
                public_key_path.display()
            );
        }
    }
    println!("mock-gateway: press Ctrl-C to stop");

    wait_for_stop_signal().await;
    println!("mock-gateway: stopping");
    if let Some(task) = receiver {
        task.abort();
    }
    gateway.shutdown().await;
    0
}

/// The sidecar.toml of `--out-dir`: every path relative to DIR (where it lies), so DIR can move.
fn sidecar_toml_text(
    args: &MockGatewayArgs,
    gateway: &MockGateway,
    client_id: &str,
    forward_to: SocketAddr,
) -> String {
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let common = SidecarToml {
        client_id,
        merchant_private_key: Path::new(out_dir::MERCHANT_PRIVATE_KEY),
        alipay_public_key: (&args.key_version, Path::new(out_dir::ALIPAY_PUBLIC_KEY)),
        gateway: &gateway.base_url(),
        ca_file: Path::new(out_dir::CA_CERT),
        outbound: local(args.sidecar_ports[0]),
        inbound: local(args.sidecar_ports[1]),
        forward_to,
        admin: local(args.sidecar_ports[2]),
    }
    .render();
    format!(
        "# written by `alipay-sidecar mock-gateway --out-dir` at each start: edits are lost, \
         copy it to change it\n{common}"
    )
}

/// One line per notification the receiver got: what the app would see.
fn print_delivered(d: Delivered) {
    println!(
        "mock-gateway: receiver: POST {} X-Alipay-Sidecar-Verified: {}{} {}",
        d.path,
        d.verified,
        d.source
            .map(|s| format!(" X-Alipay-Sidecar-Source: {s}"))
            .unwrap_or_default(),
        d.body
    );
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
