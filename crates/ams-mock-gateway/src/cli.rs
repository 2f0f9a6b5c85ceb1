//! `alipay-sidecar mock-gateway`: the gateway as a command, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::config::MockGatewayConfig;
use crate::error::MockGatewayError;
use crate::fault::Fault;
use crate::gateway::{write_file, MockGateway};
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
    /// Directory for the files the gateway writes (ca.pem, alipay_public_key.pem).
    #[arg(
        long = "out-dir",
        visible_alias = "tls-dir",
        value_name = "DIR",
        default_value = "mock-gateway"
    )]
    pub out_dir: PathBuf,
    /// Merchant public key file (SPKI/PKCS#1 PEM or one-line base64 DER) used to verify
    /// request signatures.
    #[arg(long, value_name = "FILE")]
    pub merchant_public_key: PathBuf,
    /// The gateway's "Alipay" private key file; when absent a key pair is generated. The
    /// public half is always written to OUT_DIR/alipay_public_key.pem.
    #[arg(long, value_name = "FILE")]
    pub alipay_private_key: Option<PathBuf>,
    /// keyVersion announced in response and notification signatures.
    #[arg(long, value_name = "N", default_value = "1")]
    pub key_version: String,
    /// Accept only this Client-Id (others get INVALID_SIGNATURE); default: any.
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

    let merchant_public_key = match read_key_file("merchant public key", &args.merchant_public_key)
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let alipay_private_key = match &args.alipay_private_key {
        None => None,
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
    let config = MockGatewayConfig {
        listen: args.listen,
        api_key,
        tls: args.tls.then(|| args.out_dir.clone()),
        merchant_public_key,
        alipay_private_key,
        alipay_key_version: args.key_version.clone(),
        expected_client_id: args.client_id.clone(),
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
    runtime.block_on(run_cli(config, args))
}

async fn run_cli(config: MockGatewayConfig, args: MockGatewayArgs) -> i32 {
    let generated = config.alipay_private_key.is_none();
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
    let public_key_path = args.out_dir.join("alipay_public_key.pem");
    if let Err(e) = write_file(&public_key_path, &gateway.alipay_public_key_pem()) {
        eprintln!("{e}");
        gateway.shutdown().await;
        return 1;
    }

    println!("mock-gateway: listening on {}", gateway.base_url());
    if let Some(ca) = gateway.ca_file() {
        println!("mock-gateway: wrote {} (the CA to trust)", ca.display());
    }
    println!(
        "mock-gateway: wrote {} (Alipay public key, keyVersion {}{})",
        public_key_path.display(),
        args.key_version,
        if generated {
            "; generated for this run — pass --alipay-private-key for a stable key"
        } else {
            ""
        }
    );
    println!(
        "mock-gateway: verifying requests with {} (client id: {})",
        args.merchant_public_key.display(),
        args.client_id.as_deref().unwrap_or("any")
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
    println!("mock-gateway: press Ctrl-C to stop");

    wait_for_stop_signal().await;
    println!("mock-gateway: stopping");
    gateway.shutdown().await;
    0
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
