//! The command line: parses arguments (clap) and dispatches to the module that does the work.
//!
//! Kept thin on purpose: the tools live in [`crate::tools`] (testable without a process), the
//! sidecar in [`crate::server`], the fake gateway in `crate::mock_gateway` and the demo in
//! `crate::demo` (both with the default `mock-gateway` feature only), and the container
//! health probe in [`crate::admin`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::LogFormat;
use crate::tools::{self, ConfigArgs, KeygenArgs, LocalCaArgs, SignArgs, VerifyArgs};

pub mod exit;
pub mod pkcs11;

pub use exit::EXIT_CODES_HELP;

const NOTIFICATIONS_HELP: &str = "\
Each subcommand takes --config FILE (or ALIPAY_SIDECAR_CONFIG) like run and opens its [store].
Exit status: 0 done; 1 the store cannot be reached or the event does not exist; 2 usage or
configuration error (a config without [store] included).";

const RUN_HELP: &str = "\
Every option above can also be set by the ALIPAY_SIDECAR_* environment variable shown next to
it, and every key of the config file by ALIPAY_SIDECAR_<SECTION>_<KEY> (e.g.
ALIPAY_SIDECAR_OUTBOUND_GATEWAY, ALIPAY_SIDECAR_CLIENT_ID); an ALIPAY_SIDECAR_* variable that
names no option is an error. Command-line options win over the config file.";

/// alipay-sidecar: signs Alipay Global (AMS / Antom) API calls on the way out and verifies
/// Alipay's responses and payment notifications, so the app never holds the merchant key.
#[derive(Parser, Debug)]
#[command(
    name = "alipay-sidecar",
    version,
    propagate_version = true,
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `run --log-format`'s values are the config's `[log] format` values (one declaration).
impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        LogFormat::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()).help(self.help()))
    }
}

/// Options of `alipay-sidecar run`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = format!("{RUN_HELP}\n\n{EXIT_CODES_HELP}"))]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log filter, overriding `[log] level`: error, warn, info, debug, trace, or a tracing
    /// filter such as `alipay_sidecar=debug,info` (RUST_LOG still wins when set).
    #[arg(long, value_name = "FILTER", env = "ALIPAY_SIDECAR_LOG_LEVEL")]
    log_level: Option<String>,
    /// Log line format, overriding `[log] format` [default: json when stdout is not a
    /// terminal, text otherwise].
    #[arg(long, value_name = "FORMAT", env = "ALIPAY_SIDECAR_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Once every listener accepts connections, write this file (atomically) as JSON naming
    /// the address each listener is bound to, e.g. {"pid":7,"listeners":{"admin":
    /// "127.0.0.1:41234",…}}; with `listen = "127.0.0.1:0"` the port is picked at start and
    /// this is how to learn it.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

/// Options of `alipay-sidecar healthcheck`.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// The readiness URL to call [default: /readyz on the config's `[admin] listen` with
    /// --config, else http://127.0.0.1:9090/readyz].
    #[arg(long, conflicts_with = "config")]
    url: Option<String>,
    /// Take the admin address from this config file's `[admin] listen` (and its
    /// ALIPAY_SIDECAR_ADMIN_LISTEN override).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Give up when connecting, or then the answer, takes longer than this, e.g. 500ms or 3s.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as 500ms or 3s"))?;
    if d.is_zero() {
        return Err("the timeout must be more than 0".into());
    }
    Ok(d)
}

/// Shells `completions` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash (e.g. > /etc/bash_completion.d/alipay-sidecar)
    Bash,
    /// zsh (e.g. > "${fpath[1]}/_alipay-sidecar")
    Zsh,
    /// fish (e.g. > ~/.config/fish/completions/alipay-sidecar.fish)
    Fish,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar (outbound signing proxy, inbound notification verifier, admin listener).
    Run(RunArgs),
    /// Sign a request offline and print its Client-Id, Request-Time and Signature headers.
    Sign(SignArgs),
    /// Check a captured signature (notification, response or request) offline.
    #[command(after_help = tools::VERIFY_HELP)]
    Verify(VerifyArgs),
    /// Generate a new RSA merchant key pair (PEM and the dashboard's one-line base64).
    Keygen(KeygenArgs),
    /// Make a CA for the HTTPS listener (ca.pem, ca.key) that outlives restarts:
    /// `[outbound] tls_ca_cert` / `tls_ca_key`; apps trust it once.
    LocalCa(LocalCaArgs),
    /// Load the config and every key, catch the classic key mix-ups, print a summary.
    #[command(after_help = EXIT_CODES_HELP)]
    CheckConfig(ConfigArgs),
    /// Run a fake Alipay gateway that verifies and signs like the real one (tests, demos).
    #[cfg(feature = "mock-gateway")]
    MockGateway(Box<crate::mock_gateway::MockGatewayArgs>),
    /// Start a throw-away fake gateway and sidecar and show a signed round trip.
    #[cfg(feature = "mock-gateway")]
    Demo(crate::demo::DemoArgs),
    /// Inspect and re-deliver the notification journal of `[store]` (list, show, replay,
    /// retry --dead); works while a sidecar runs on the same store.
    #[command(subcommand, after_help = NOTIFICATIONS_HELP)]
    Notifications(crate::notifications::NotificationsCommand),
    /// The merchant key in a PKCS#11 token (HSM, cloud KMS): list tokens and keys, make a key
    /// pair inside the token (docs/hsm.md).
    Pkcs11(pkcs11::Pkcs11Args),
    /// Exit 0 when the sidecar's readiness endpoint answers 200 (container HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
    /// Print a shell completion script, e.g. `alipay-sidecar completions bash >
    /// /etc/bash_completion.d/alipay-sidecar`.
    Completions {
        /// The shell to write the script for.
        shell: Shell,
    },
    /// Print the manual page (roff), e.g. `alipay-sidecar man > alipay-sidecar.1 && man
    /// ./alipay-sidecar.1`.
    Man,
}

/// The version line: the crate version, plus the git commit when the build was stamped with
/// `ALIPAY_SIDECAR_GIT_COMMIT` (the Dockerfile and CI do).
pub fn version() -> String {
    match option_env!("ALIPAY_SIDECAR_GIT_COMMIT").map(str::trim) {
        Some(commit) if !commit.is_empty() && commit != "unknown" => {
            format!("{} (git {commit})", env!("CARGO_PKG_VERSION"))
        }
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The clap command, with the version line of this build (for completions and the man page
/// too).
fn command() -> clap::Command {
    let version: &'static str = Box::leak(version().into_boxed_str());
    Cli::command().version(version)
}

/// Parses the process arguments and runs the chosen subcommand; returns the exit code
/// (2 for usage errors, see [`EXIT_CODES_HELP`]).
pub fn main() -> i32 {
    // Before pingora builds any TLS config, so the gateway TLS runs on aws-lc-rs like the
    // signatures (why and what else stays linked: src/tls.rs).
    crate::tls::install_tls_provider();
    let parsed = command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            match invalid_env_value(&e, std::env::args_os().skip(1)) {
                Some(message) => eprintln!("error: {message}"),
                None => {
                    let _ = e.print();
                }
            }
            return e.exit_code();
        }
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match cli.command {
        Command::Run(args) => {
            // The command-line options go through the same override path as the environment
            // (validated and reported like any other ALIPAY_SIDECAR_* value). Setting them here
            // is sound: no other thread exists yet.
            // A bad --log-level is reported as the flag's: passed on through the variable, the
            // config would blame ALIPAY_SIDECAR_LOG_LEVEL, which the user never set (issue 20).
            // A value that did come from the variable is left to the config, which names it.
            if let Some(level) = &args.log_level {
                let from_flag = matches
                    .subcommand_matches("run")
                    .and_then(|m| m.value_source("log_level"))
                    == Some(clap::parser::ValueSource::CommandLine);
                if from_flag {
                    if let Err(message) = crate::config::check_log_filter(level) {
                        eprintln!("error: --log-level: {message}");
                        return exit::EXIT_USAGE;
                    }
                }
                std::env::set_var("ALIPAY_SIDECAR_LOG_LEVEL", level);
            }
            if let Some(format) = args.log_format {
                std::env::set_var("ALIPAY_SIDECAR_LOG_FORMAT", format.as_str());
            }
            crate::server::run(&args.config.config, args.ready_file.as_deref())
        }
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
        Command::LocalCa(args) => tools::local_ca(&args, &mut stdout.lock(), &mut stderr.lock()),
        Command::CheckConfig(args) => {
            tools::check_config(&args, &mut stdout.lock(), &mut stderr.lock())
        }
        #[cfg(feature = "mock-gateway")]
        Command::MockGateway(args) => crate::mock_gateway::cli_main(*args),
        #[cfg(feature = "mock-gateway")]
        Command::Demo(args) => crate::demo::run(args),
        Command::Notifications(command) => {
            crate::notifications::run(&command, &mut stdout.lock(), &mut stderr.lock())
        }
        Command::Pkcs11(args) => pkcs11::run(&args, &mut stdout.lock(), &mut stderr.lock()),
        Command::Healthcheck(args) => healthcheck(&args),
        Command::Completions { shell } => {
            let mut cmd = command();
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "alipay-sidecar", &mut script);
            write_out(&script, "the completion script")
        }
        Command::Man => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(command()).render(&mut page) {
                Ok(()) => write_out(&page, "the manual page"),
                Err(e) => {
                    eprintln!("error: cannot render the manual page: {e}");
                    1
                }
            }
        }
    }
}

/// clap blames the flag (`invalid value 'xml' for '--log-format <FORMAT>'`) also when the value
/// came from the option's environment variable; then this names the variable instead, since
/// the command line the user typed holds no such flag (issue 20). `None`: clap's own message
/// is right.
fn invalid_env_value(
    e: &clap::Error,
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::InvalidValue {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.split_whitespace().next()?.to_string();
    let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    if args
        .iter()
        .any(|a| *a == long || a.starts_with(&format!("{long}=")))
    {
        return None;
    }
    let flag = long.trim_start_matches('-');
    let env = env_of(&command(), flag)?;
    let value = std::env::var(&env).ok()?;
    let valid = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(values)) => format!(": one of {}", values.join(", ")),
        _ => String::new(),
    };
    Some(format!(
        "environment variable {env} is {value:?}, which is not a valid value for {long}{valid}; \
         fix or unset the variable"
    ))
}

/// The environment variable of the long option `flag` anywhere in `cmd`'s subcommands.
fn env_of(cmd: &clap::Command, flag: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(flag))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| cmd.get_subcommands().find_map(|sub| env_of(sub, flag)))
}

/// Writes generated text to stdout; a closed pipe (`| head`) is not an error.
fn write_out(bytes: &[u8], what: &str) -> i32 {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write {what}: {e}");
            1
        }
    }
}

fn healthcheck(args: &HealthcheckArgs) -> i32 {
    let url = match (&args.url, &args.config) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => match crate::config::Config::load(path) {
            Ok(config) if config.admin.listen.port() == 0 => {
                eprintln!("error: {}", ephemeral_admin_port(path, config.admin.listen));
                return exit::EXIT_USAGE;
            }
            Ok(config) => readyz_url(config.admin.listen),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::EXIT_USAGE;
            }
        },
        (None, None) => "http://127.0.0.1:9090/readyz".to_string(),
    };
    crate::admin::healthcheck(&url, args.timeout)
}

/// Why `healthcheck --config` cannot probe an admin listener on port 0: the port is picked
/// when the sidecar binds it, so the config does not know it (probing `127.0.0.1:0` only ever
/// says "connection refused", issue 20). Names the ways to learn the port.
fn ephemeral_admin_port(config: &std::path::Path, listen: std::net::SocketAddr) -> String {
    format!(
        "{}: `[admin] listen = \"{listen}\"` has port 0 (ephemeral): the sidecar picks the \
         port when it starts, so healthcheck cannot know it from the config. Pass the address \
         instead, --url http://127.0.0.1:PORT/readyz (`run --ready-file FILE` writes the bound \
         address of each listener to FILE), or give [admin] listen a fixed port",
        config.display()
    )
}

/// `/readyz` on the admin listener; a wildcard listen address is probed on loopback.
fn readyz_url(listen: std::net::SocketAddr) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn wildcard_admin_addresses_are_probed_on_loopback() {
        assert_eq!(
            readyz_url("0.0.0.0:9091".parse().unwrap()),
            "http://127.0.0.1:9091/readyz"
        );
        assert_eq!(
            readyz_url("[::]:9090".parse().unwrap()),
            "http://[::1]:9090/readyz"
        );
        assert_eq!(
            readyz_url("10.0.0.5:9090".parse().unwrap()),
            "http://10.0.0.5:9090/readyz"
        );
    }
}
