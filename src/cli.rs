//! The command line: parses arguments (clap) and dispatches to the module that does the work.
//!
//! Kept thin on purpose: the tools live in [`crate::tools`] (testable without a process), the
//! sidecar in [`crate::server`], the fake gateway in [`crate::mock_gateway`], the demo in
//! [`crate::demo`] and the container health probe in [`crate::admin`].

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

use crate::tools::{self, ConfigArgs, KeygenArgs, SignArgs, VerifyArgs};

/// alipay-sidecar: signs Alipay Global (AMS / Antom) API calls on the way out and verifies
/// Alipay's responses and payment notifications, so the app never holds the merchant key.
#[derive(Parser, Debug)]
#[command(name = "alipay-sidecar", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar (outbound signing proxy, inbound notification verifier, admin listener).
    Run(ConfigArgs),
    /// Sign a request offline and print its Client-Id, Request-Time and Signature headers.
    Sign(SignArgs),
    /// Check a captured signature (notification, response or request) offline.
    #[command(after_help = tools::VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Generate a new RSA-2048 merchant key pair (PEM and the dashboard's one-line base64).
    Keygen(KeygenArgs),
    /// Load the config and every key, catch the classic key mix-ups, print a summary.
    CheckConfig(ConfigArgs),
    /// Run a fake Alipay gateway that verifies and signs like the real one (tests, demos).
    MockGateway(crate::mock_gateway::MockGatewayArgs),
    /// Start a throw-away fake gateway and sidecar and show a signed round trip.
    Demo(crate::demo::DemoArgs),
    /// Exit 0 when the sidecar's readiness endpoint answers 200 (container HEALTHCHECK).
    Healthcheck {
        /// The readiness URL to call.
        #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
    },
}

/// Parses the process arguments and runs the chosen subcommand; returns the exit code
/// (2 for usage errors, as for the tools).
pub fn main() -> i32 {
    // Before pingora builds any TLS config, so the gateway TLS runs on aws-lc-rs like the
    // signatures (why and what else stays linked: src/protocol/engine.rs).
    crate::protocol::install_tls_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match cli.command {
        Command::Run(args) => crate::server::run(&args.config),
        Command::Sign(args) => {
            let stdin = std::io::stdin();
            if args.body_file.is_none() && stdin.is_terminal() {
                eprintln!("reading the body from stdin (end with Ctrl-D), or pass --body-file");
            }
            tools::sign(
                &args,
                None,
                &mut stdin.lock(),
                &mut stdout.lock(),
                &mut stderr.lock(),
            )
        }
        Command::Verify(args) => {
            let stdin = std::io::stdin();
            if args.body_file.is_none() && stdin.is_terminal() {
                eprintln!("reading the body from stdin (end with Ctrl-D), or pass --body-file");
            }
            tools::verify(
                &args,
                &mut stdin.lock(),
                &mut stdout.lock(),
                &mut stderr.lock(),
            )
        }
        Command::Keygen(args) => tools::keygen(&args, &mut stdout.lock(), &mut stderr.lock()),
        Command::CheckConfig(args) => {
            tools::check_config(&args, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::MockGateway(args) => crate::mock_gateway::cli_main(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Healthcheck { url } => crate::admin::healthcheck(&url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
