//! The sidecar's TOML configuration: schema, defaults, environment overrides and validation.
//!
//! The configuration is the product's contract with operators, so a mistake in it must stop
//! the sidecar with a message that says where the mistake is and what to write instead — never
//! be silently ignored. In particular:
//!
//! - **Unknown keys are errors.** A typo such as `verfy_responses = false` would otherwise
//!   silently leave a security setting at a value the operator did not choose.
//! - **Every error names the file, the key and, when known, the line** (also for checks made
//!   after parsing, through the spans the TOML parser keeps), or the environment variable that
//!   supplied the value.
//! - **Values come out resolved and typed**: key paths are resolved against the config file's
//!   folder, durations are [`Duration`]s (humantime syntax: `"5s"`, `"10m"`, `"1h 30m"`),
//!   listen addresses are [`SocketAddr`]s, the gateway is an `https` host and port.
//!
//! # Environment overrides
//!
//! A single value of the file can be overridden by an environment variable named
//! `ALIPAY_SIDECAR_<KEY>` for a top-level key and `ALIPAY_SIDECAR_<SECTION>_<KEY>` for a key
//! in a section, upper-cased: `ALIPAY_SIDECAR_CLIENT_ID`, `ALIPAY_SIDECAR_OUTBOUND_GATEWAY`,
//! `ALIPAY_SIDECAR_KEYS_MERCHANT_PRIVATE_KEY`, `ALIPAY_SIDECAR_SERVER_THREADS`, … The rules:
//!
//! - Only scalar values can be overridden (strings, numbers, booleans, durations, addresses,
//!   paths). Tables and lists (`keys.alipay_public_keys`, `outbound.allowed_path_prefixes`,
//!   `inbound.path_map`) can only be set in the file.
//! - The value is read as an integer or a boolean where the option takes one, and as a string
//!   everywhere else (so a client id made of digits stays a string); it is then checked exactly
//!   like a value written in the file.
//! - A variable that starts with `ALIPAY_SIDECAR_` but names no known key is an error (typo
//!   protection); the exceptions are `ALIPAY_SIDECAR_CONFIG`, which the command line reads as
//!   the path of the config file, and the build-time `ALIPAY_SIDECAR_GIT_COMMIT`
//!   ([`RESERVED_ENV_VARS`]).
//! - Setting a value of a section the file leaves out creates that section.
//! - `outbound.gateway` and `outbound.region` are alternatives: setting one of them from the
//!   environment drops the other one if it came from the file.
//! - Relative paths given by a variable are resolved against the config file's folder, like
//!   paths written in the file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, Deserializer};
use toml::Spanned;

/// Prefix of every environment variable that overrides a config value.
pub const ENV_PREFIX: &str = "ALIPAY_SIDECAR_";

/// Environment variables with the [`ENV_PREFIX`] that are not config overrides (so they are not
/// reported as typos): `ALIPAY_SIDECAR_CONFIG` is the config file path used by the CLI;
/// `ALIPAY_SIDECAR_GIT_COMMIT` stamps the build (it may still be exported in a CI shell).
pub const RESERVED_ENV_VARS: &[&str] = &["ALIPAY_SIDECAR_CONFIG", "ALIPAY_SIDECAR_GIT_COMMIT"];

/// The region shortcuts of `[outbound] region`, and the gateway each one means.
///
/// Kept as a table so the documentation, the example config and the code cannot disagree:
/// `na` = North America, `sea` = Asia (South-East Asia), `eu` = Europe (Alipay's `-de-global`
/// host), as used by Alipay's current SDK samples (spec §8).
pub const REGIONS: &[(&str, &str)] = &[
    ("na", "open-na-global.alipay.com"),
    ("sea", "open-sea-global.alipay.com"),
    ("eu", "open-de-global.alipay.com"),
];

/// The whole, validated configuration. Built only by [`Config::load`] / [`Config::parse`], so
/// every consumer can trust the values (paths resolved, addresses parsed, rules checked).
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file the values came from (absolute when loaded with [`Config::load`]).
    pub path: PathBuf,
    /// The merchant's Alipay client id (`SANDBOX_…` for the sandbox).
    pub client_id: String,
    /// Where the keys are; re-read on reload.
    pub keys: KeysConfig,
    /// The outbound signing proxy; `None` when the file has no `[outbound]` section.
    pub outbound: Option<OutboundConfig>,
    /// The inbound notification verifier; `None` when the file has no `[inbound]` section.
    pub inbound: Option<InboundConfig>,
    /// The admin listener (metrics, health, reload).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Process-level settings.
    pub server: ServerConfig,
    /// Where each value came from (file line or environment variable), for later error
    /// messages such as a key file that cannot be read.
    origins: BTreeMap<String, Origin>,
}

impl PartialEq for Config {
    /// Compares the settings only (not where they came from), so a reload can tell whether
    /// anything other than the keys changed.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.client_id == other.client_id
            && self.keys == other.keys
            && self.outbound == other.outbound
            && self.inbound == other.inbound
            && self.admin == other.admin
            && self.log == other.log
            && self.server == other.server
    }
}

/// `[keys]`: the files holding the merchant private key and Alipay's public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysConfig {
    /// Merchant private key file (PEM or one-line base64), resolved against the config folder.
    pub merchant_private_key: PathBuf,
    /// The `keyVersion` written into outgoing `Signature` headers (digits), default `"1"`.
    pub merchant_key_version: String,
    /// Alipay public key files by `keyVersion` (at least one), resolved against the config
    /// folder. Several at once let Alipay rotate its key without a restart.
    pub alipay_public_keys: BTreeMap<String, PathBuf>,
}

/// `[outbound]`: the signing proxy between the app and Alipay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Where the app sends its AMS calls over plain HTTP (default `127.0.0.1:8080`); `None`
    /// when only `tls_listen` is set.
    pub listen: Option<SocketAddr>,
    /// The HTTPS listener for SDKs that only speak HTTPS (Java, Python, PHP, .NET).
    pub tls: Option<OutboundTls>,
    /// The Alipay gateway, always HTTPS.
    pub gateway: Gateway,
    /// Request paths the proxy forwards; anything else is refused.
    pub allowed_path_prefixes: Vec<String>,
    /// Largest request body accepted from the app (default 1 MiB).
    pub max_body_bytes: usize,
    /// Form of the `Request-Time` header the sidecar writes.
    pub request_time_format: RequestTimeFormat,
    /// Sent as `Agent-Token` when set (ISV / agent mode); an empty string means unset.
    pub agent_token: Option<String>,
    /// Rewrite `/ams/api/` to `/ams/sandbox/api/` before signing, for `SANDBOX_` client ids.
    pub sandbox_path_rewrite: bool,
    /// Extra CA certificate(s) (PEM) trusted for the gateway, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Connect timeout to the gateway (default 5 s).
    pub connect_timeout: Duration,
    /// Whole-exchange timeout to the gateway (default 15 s, as the SDKs use).
    pub request_timeout: Duration,
    /// Verify Alipay's response signatures before the app sees them (default true).
    pub verify_responses: bool,
    /// Allow a non-loopback `listen` address (the listener signs anything it is sent).
    pub allow_remote_clients: bool,
    /// Host names (besides loopback addresses and `localhost`) the app may put in `Host`
    /// on a loopback listener; anything else is refused as DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Connections open at once on the outbound listener (default 256).
    pub max_connections: usize,
}

/// `[outbound] tls_listen` and its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundTls {
    /// The HTTPS listener's address (the Python SDK always connects to port 443).
    pub listen: SocketAddr,
    /// `(tls_cert, tls_key)` PEM files to serve; `None` = a certificate generated at start,
    /// in memory, for localhost, 127.0.0.1, ::1 and `names`.
    pub files: Option<(PathBuf, PathBuf)>,
    /// Extra names for the generated certificate.
    pub names: Vec<String>,
    /// Where to write the generated certificate's CA (public part), for apps that verify.
    pub ca_out: Option<PathBuf>,
}

impl OutboundConfig {
    /// Every outbound listener address (plain, TLS).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .into_iter()
            .chain(self.tls.as_ref().map(|t| t.listen))
            .collect()
    }
}

/// An HTTPS Alipay gateway (TLS is mandatory: the scheme is not stored because it is always
/// `https`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Host name or IP address (IPv6 without brackets); also the TLS server name.
    pub host: String,
    /// TCP port (443 unless the URL says otherwise).
    pub port: u16,
}

impl Gateway {
    /// The gateway as a URL (`https://host` or `https://host:port`), for logs and summaries.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", self.port)
        }
    }
}

/// How the sidecar writes `Request-Time` (the value is signed verbatim either way, spec §1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestTimeFormat {
    /// Epoch milliseconds (`1714538096000`), what the Java and Go SDKs send. Default.
    EpochMillis,
    /// ISO-8601 UTC with milliseconds (`2024-05-01T04:34:56.123Z`).
    Iso8601,
}

/// `[inbound]`: the listener that verifies Alipay's notifications before the app sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundConfig {
    /// Where Alipay's notifications arrive (default `0.0.0.0:8081`).
    pub listen: SocketAddr,
    /// The app that receives verified notifications.
    pub forward_to: AppUpstream,
    /// Notify path → app path; paths not listed are forwarded unchanged.
    pub path_map: BTreeMap<String, String>,
    /// Largest notification body accepted (default 1 MiB).
    pub max_body_bytes: usize,
    /// How long the app may take to answer a forwarded notification (default 10 s).
    pub forward_timeout: Duration,
    /// Refuse notifications whose `Request-Time` is further than this from now; off when
    /// `None` (default).
    pub max_request_time_skew: Option<Duration>,
    /// Who answers Alipay.
    pub acknowledge: Acknowledge,
    /// Sign the acknowledgement with the merchant key (legacy Java SDK style).
    pub sign_acknowledgements: bool,
    /// Enforce (default) or only record verification results.
    pub mode: InboundMode,
    /// Connections open at once on the inbound listener (default 1024).
    pub max_connections: usize,
}

/// The app behind the inbound listener (plain HTTP: it runs next to the sidecar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppUpstream {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 unless the URL says otherwise).
    pub port: u16,
    /// Path prefix put in front of every forwarded path; empty or `/x` without a trailing `/`.
    pub base_path: String,
}

impl AppUpstream {
    /// The app's base URL, for logs and summaries.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("http://{host}:{}{}", self.port, self.base_path)
    }
}

/// Who answers Alipay's notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acknowledge {
    /// Relay the app's own answer (default).
    App,
    /// Answer with the exact SUCCESS body once the app returned 2xx.
    Sidecar,
}

/// Whether a failed notification verification blocks the notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundMode {
    /// Refuse what does not verify (default).
    Enforce,
    /// Verify and record, but forward anyway (marked unverified), for roll-outs.
    Shadow,
}

/// `[admin]`: the metrics / health / reload listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// Connections open at once on the admin listener (default 64).
    pub max_connections: usize,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `None`: JSON when stdout is not a terminal, text otherwise.
    pub format: Option<LogFormat>,
    /// A tracing filter (`info`, `alipay_sidecar=debug,info`, …); `RUST_LOG` wins when set.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable lines.
    Text,
}

/// `[server]`: process-level settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Worker threads per listener (default 2).
    pub threads: usize,
    /// After SIGTERM, keep accepting for this long so load balancers notice (default 5 s).
    pub shutdown_grace: Duration,
    /// Then wait at most this long for in-flight requests (default 30 s).
    pub shutdown_timeout: Duration,
    /// Largest request head on every listener (default 32 KiB); more gets 431.
    pub max_header_bytes: usize,
    /// The whole request head must arrive within this (default 10 s).
    pub header_read_timeout: Duration,
    /// The whole request body must arrive within this (default 30 s).
    pub body_read_timeout: Duration,
}

/// Where a configuration value came from, so later errors (e.g. a key file that cannot be
/// read) can point at the line or variable to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the config file.
    File {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// An environment variable overriding the file.
    Env {
        /// The config file that was overridden.
        path: PathBuf,
        /// The variable name.
        var: String,
    },
    /// Not written anywhere: the built-in default (or unknown).
    Default {
        /// The config file.
        path: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { path, var } => {
                write!(
                    f,
                    "environment variable {var} (overriding {})",
                    path.display()
                )
            }
            Origin::Default { path } => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration that cannot be used, with where the problem is and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("cannot read config file {}: {source}; check the path given with --config (or ALIPAY_SIDECAR_CONFIG)", path.display())]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A value (or the TOML syntax) is wrong.
    #[error("{0}")]
    Invalid(Box<InvalidValue>),
}

/// Where a bad value is and what to do about it (boxed in [`ConfigError::Invalid`]).
#[derive(Debug)]
pub struct InvalidValue {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when the problem is in the file and the parser knows where.
    pub line: Option<usize>,
    /// 1-based column, with `line`.
    pub column: Option<usize>,
    /// The environment variable that supplied the bad value, if any.
    pub env_var: Option<String>,
    /// Dotted key (`outbound.gateway`), when known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl From<InvalidValue> for ConfigError {
    fn from(v: InvalidValue) -> Self {
        ConfigError::Invalid(Box::new(v))
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_invalid(
            &self.file,
            self.line,
            self.column,
            self.env_var.as_deref(),
            self.key.as_deref(),
            &self.message,
        ))
    }
}

fn render_invalid(
    file: &Path,
    line: Option<usize>,
    column: Option<usize>,
    env_var: Option<&str>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = match (env_var, line, column) {
        (Some(var), _, _) => format!(
            "{}: environment variable {var} (overriding the file)",
            file.display()
        ),
        (None, Some(line), Some(column)) => format!("{}:{line}:{column}", file.display()),
        (None, Some(line), None) => format!("{}:{line}", file.display()),
        (None, None, _) => file.display().to_string(),
    };
    if let Some(key) = key {
        out.push_str(&format!(": `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

impl Config {
    /// Reads and validates the config file at `path`, applying `ALIPAY_SIDECAR_*` environment
    /// overrides. Does not read the key files (that is [`crate::keyset::KeySet::load`]'s job),
    /// but checks that `ca_file`, when set, exists.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let Some(value) = value.to_str() else {
                return Err(ConfigError::from(InvalidValue {
                    file: path.clone(),
                    line: None,
                    column: None,
                    env_var: Some(name.to_string()),
                    key: None,
                    message: "the value is not valid UTF-8; set it to plain text".to_string(),
                }));
            };
            env.push((name.to_string(), value.to_string()));
        }
        let config = Config::parse(&text, &path, env)?;
        if let Some(ca_file) = config.outbound.as_ref().and_then(|o| o.ca_file.as_ref()) {
            if let Err(e) = std::fs::metadata(ca_file) {
                return Err(config.error_at(
                    "outbound.ca_file",
                    format!(
                        "cannot read CA file {}: {e}; point ca_file at a PEM file with the CA \
                         certificate(s) that signed the gateway's certificate, or remove it",
                        ca_file.display()
                    ),
                ));
            }
        }
        Ok(config)
    }

    /// Parses and validates `text` as the config file at `path` (used to resolve relative key
    /// paths and to name the file in errors), with the given environment variables (only
    /// those starting with [`ENV_PREFIX`] are looked at). Touches no file: the testable core
    /// of [`Config::load`].
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !RESERVED_ENV_VARS.contains(&name.as_str())
            })
            .collect();
        env.sort();
        let mut ctx = Ctx {
            text,
            path,
            env_base: text.len() + 1,
            env_applied: Vec::new(),
        };
        let doc = DeTable::parse(text).map_err(|e| {
            let msg = format!(
                "not valid TOML: {}; fix the syntax (see {EXAMPLE_CONFIG_HINT})",
                e.message()
            );
            ctx.error_span(e.span(), None, msg)
        })?;
        let doc_span = doc.span();
        let mut root = doc.into_inner();
        ctx.apply_env(&mut root, &env)?;

        let origins = ctx.collect_origins(&root);
        let root = Spanned::new(doc_span.clone(), root);
        // Keep a copy to find the key a serde error points at.
        let raw = match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) => raw,
            Err(e) => return Err(ctx.serde_error(&e, root.get_ref(), &doc_span)),
        };
        let mut config = ctx.build(raw)?;
        config.origins = origins;
        Ok(config)
    }

    /// Whether anything but `[keys]` differs from `other`: a reload applies only the keys, so
    /// a change elsewhere needs a restart and deserves a log line saying so.
    pub fn differs_outside_keys(&self, other: &Config) -> bool {
        self.path != other.path
            || self.client_id != other.client_id
            || self.outbound != other.outbound
            || self.inbound != other.inbound
            || self.admin != other.admin
            || self.log != other.log
            || self.server != other.server
    }

    /// Where the value of the dotted `key` (e.g. `keys.merchant_private_key` or
    /// `keys.alipay_public_keys.2`) came from, for error messages about that value.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| Origin::Default {
                path: self.path.clone(),
            })
    }

    /// A [`ConfigError`] about the value of `key`, located at its origin: for checks made
    /// after loading (a key file that is missing, a preflight finding).
    pub fn error_at(&self, key: &str, message: String) -> ConfigError {
        let (line, env_var) = match self.origin(key) {
            Origin::File { line, .. } => (Some(line), None),
            Origin::Env { var, .. } => (None, Some(var)),
            Origin::Default { .. } => (None, None),
        };
        ConfigError::from(InvalidValue {
            file: self.path.clone(),
            line,
            column: None,
            env_var,
            key: Some(key.to_string()),
            message,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Known keys: the single list behind environment overrides and type hints.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Path,
    Url,
    Duration,
    Addr,
    Bool,
    Int,
    KeyVersion,
    Choice(&'static [&'static str]),
    Table,
    List,
}

impl Kind {
    fn scalar(self) -> bool {
        !matches!(self, Kind::Table | Kind::List)
    }

    fn hint(self) -> String {
        match self {
            Kind::Str => "a string in double quotes".into(),
            Kind::Path => "a file path in double quotes (relative paths are resolved against the config file's folder)".into(),
            Kind::Url => "a URL in double quotes".into(),
            Kind::Duration => "a duration string such as \"5s\", \"500ms\" or \"10m\"".into(),
            Kind::Addr => "an IP address and port in double quotes, e.g. \"127.0.0.1:8080\"".into(),
            Kind::Bool => "true or false".into(),
            Kind::Int => "a whole number without quotes".into(),
            Kind::KeyVersion => "a key version: a number such as 1, or a string of digits".into(),
            Kind::Choice(values) => format!(
                "one of {}",
                values.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ")
            ),
            Kind::Table => "a table".into(),
            Kind::List => "a list of strings, e.g. [\"/ams/api/\"]".into(),
        }
    }
}

struct KnownKey {
    section: &'static str,
    key: &'static str,
    kind: Kind,
}

const fn k(section: &'static str, key: &'static str, kind: Kind) -> KnownKey {
    KnownKey { section, key, kind }
}

const KNOWN_KEYS: &[KnownKey] = &[
    k("", "client_id", Kind::Str),
    k("keys", "merchant_private_key", Kind::Path),
    k("keys", "merchant_key_version", Kind::KeyVersion),
    k("keys", "alipay_public_keys", Kind::Table),
    k("outbound", "listen", Kind::Addr),
    k("outbound", "tls_listen", Kind::Addr),
    k("outbound", "tls_cert", Kind::Path),
    k("outbound", "tls_key", Kind::Path),
    k("outbound", "tls_names", Kind::List),
    k("outbound", "tls_ca_out", Kind::Path),
    k("outbound", "gateway", Kind::Url),
    k("outbound", "region", Kind::Choice(&["na", "sea", "eu"])),
    k("outbound", "allowed_path_prefixes", Kind::List),
    k("outbound", "max_body_bytes", Kind::Int),
    k(
        "outbound",
        "request_time_format",
        Kind::Choice(&["epoch_millis", "iso8601"]),
    ),
    k("outbound", "agent_token", Kind::Str),
    k("outbound", "sandbox_path_rewrite", Kind::Bool),
    k("outbound", "ca_file", Kind::Path),
    k("outbound", "connect_timeout", Kind::Duration),
    k("outbound", "request_timeout", Kind::Duration),
    k("outbound", "verify_responses", Kind::Bool),
    k("outbound", "allow_remote_clients", Kind::Bool),
    k("outbound", "allowed_hosts", Kind::List),
    k("outbound", "max_connections", Kind::Int),
    k("inbound", "listen", Kind::Addr),
    k("inbound", "forward_to", Kind::Url),
    k("inbound", "path_map", Kind::Table),
    k("inbound", "max_body_bytes", Kind::Int),
    k("inbound", "forward_timeout", Kind::Duration),
    k("inbound", "max_request_time_skew", Kind::Duration),
    k("inbound", "acknowledge", Kind::Choice(&["app", "sidecar"])),
    k("inbound", "sign_acknowledgements", Kind::Bool),
    k("inbound", "mode", Kind::Choice(&["enforce", "shadow"])),
    k("inbound", "max_connections", Kind::Int),
    k("admin", "listen", Kind::Addr),
    k("admin", "max_connections", Kind::Int),
    k("log", "format", Kind::Choice(&["json", "text"])),
    k("log", "level", Kind::Str),
    k("server", "threads", Kind::Int),
    k("server", "shutdown_grace", Kind::Duration),
    k("server", "shutdown_timeout", Kind::Duration),
    k("server", "max_header_bytes", Kind::Int),
    k("server", "header_read_timeout", Kind::Duration),
    k("server", "body_read_timeout", Kind::Duration),
];

impl KnownKey {
    fn dotted(&self) -> String {
        if self.section.is_empty() {
            self.key.to_string()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }

    fn env_var(&self) -> String {
        format!(
            "{ENV_PREFIX}{}",
            self.dotted().replace('.', "_").to_ascii_uppercase()
        )
    }
}

/// Every dotted key the schema knows (`client_id`, `outbound.gateway`, …), so tests and docs
/// can check that the example config covers all of them.
pub fn known_keys() -> Vec<String> {
    KNOWN_KEYS.iter().map(KnownKey::dotted).collect()
}

fn known(dotted: &str) -> Option<&'static KnownKey> {
    KNOWN_KEYS.iter().find(|k| k.dotted() == dotted)
}

/// Where the documented example config is, in the repository and in the container image.
const EXAMPLE_CONFIG_HINT: &str = "config/sidecar.example.toml, or \
     /usr/share/doc/alipay-sidecar/sidecar.example.toml in the container image";

/// " Did you mean `x`?" for an unknown key `field` found at dotted path `at` (its table is
/// everything before the last dot): the closest known key by Damerau-Levenshtein distance
/// (`strsim`, already in the tree through clap), preferring the same table and naming the
/// right table when the key belongs elsewhere.
fn did_you_mean(at: Option<&str>, field: &str) -> Option<String> {
    let table = at
        .and_then(|dotted| dotted.rsplit_once('.'))
        .map_or("", |(table, _)| table);
    let (distance, best) = KNOWN_KEYS
        .iter()
        .map(|k| {
            let d = strsim::damerau_levenshtein(field, k.key);
            (d + usize::from(k.section != table), k)
        })
        .min_by_key(|(d, _)| *d)?;
    if distance > (field.chars().count() / 3).max(2) {
        return None;
    }
    Some(if best.section == table {
        format!(" did you mean `{}`? Otherwise", best.key)
    } else if best.section.is_empty() {
        format!(
            " did you mean `{}` (at the top of the file, before any [section])? Otherwise",
            best.key
        )
    } else {
        format!(
            " did you mean `{}` in the [{}] section? Otherwise",
            best.key, best.section
        )
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) form, deserialized with spans.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    client_id: Spanned<String>,
    keys: Spanned<RawKeys>,
    outbound: Option<Spanned<RawOutbound>>,
    inbound: Option<Spanned<RawInbound>>,
    admin: Option<RawAdmin>,
    log: Option<RawLog>,
    server: Option<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    merchant_private_key: Spanned<String>,
    merchant_key_version: Option<Spanned<RawKeyVersion>>,
    alipay_public_keys: Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    listen: Option<Spanned<String>>,
    tls_listen: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    tls_names: Option<Vec<Spanned<String>>>,
    tls_ca_out: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    allowed_path_prefixes: Option<Spanned<Vec<Spanned<String>>>>,
    max_body_bytes: Option<Spanned<i64>>,
    request_time_format: Option<RequestTimeFormat>,
    agent_token: Option<String>,
    sandbox_path_rewrite: Option<bool>,
    ca_file: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    verify_responses: Option<bool>,
    allow_remote_clients: Option<bool>,
    allowed_hosts: Option<Vec<Spanned<String>>>,
    max_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: Option<Spanned<String>>,
    forward_to: Spanned<String>,
    path_map: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    max_body_bytes: Option<Spanned<i64>>,
    forward_timeout: Option<Spanned<String>>,
    max_request_time_skew: Option<Spanned<String>>,
    acknowledge: Option<Acknowledge>,
    sign_acknowledgements: Option<bool>,
    mode: Option<InboundMode>,
    max_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    threads: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<i64>>,
    header_read_timeout: Option<Spanned<String>>,
    body_read_timeout: Option<Spanned<String>>,
}

/// `merchant_key_version = 1` or `= "1"`.
struct RawKeyVersion(String);

impl<'de> Deserialize<'de> for RawKeyVersion {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawKeyVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key version: an integer such as 1, or a string of digits")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKeyVersion, E> {
                Ok(RawKeyVersion(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKeyVersion, E> {
                Ok(RawKeyVersion(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKeyVersion, E> {
                Ok(RawKeyVersion(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing context: spans → locations, env overrides, validation.

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    /// Spans at or after this offset are sentinels for environment overrides.
    env_base: usize,
    /// (variable, dotted key) of each applied override, indexed by `span.start - env_base`.
    env_applied: Vec<(String, String)>,
}

impl<'a> Ctx<'a> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count() + 1)
            .unwrap_or(1);
        (line, column)
    }

    fn env_var_of(&self, span: &Range<usize>) -> Option<&str> {
        if span.start >= self.env_base {
            self.env_applied
                .get(span.start - self.env_base)
                .map(|(var, _)| var.as_str())
        } else {
            None
        }
    }

    fn origin_of(&self, span: &Range<usize>) -> Origin {
        if let Some(var) = self.env_var_of(span) {
            return Origin::Env {
                path: self.path.to_path_buf(),
                var: var.to_string(),
            };
        }
        Origin::File {
            path: self.path.to_path_buf(),
            line: self.line_col(span.start).0,
        }
    }

    fn error_span(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: String,
    ) -> ConfigError {
        let (line, column, env_var) = match span {
            Some(span) => match self.env_var_of(&span) {
                Some(var) => (None, None, Some(var.to_string())),
                None => {
                    let (l, c) = self.line_col(span.start);
                    (Some(l), Some(c), None)
                }
            },
            None => (None, None, None),
        };
        ConfigError::from(InvalidValue {
            file: self.path.to_path_buf(),
            line,
            column,
            env_var,
            key: key.map(str::to_string),
            message,
        })
    }

    /// An error about a value at `span` (file line or env variable) for `key`.
    fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.error_span(Some(span), Some(key), message.into()))
    }

    fn serde_error(
        &self,
        e: &toml::de::Error,
        root: &DeTable<'_>,
        doc_span: &Range<usize>,
    ) -> ConfigError {
        let message = e.message().to_string();
        let span = e
            .span()
            .filter(|s| s != doc_span && !(s.start == 0 && s.end == 0));
        let mut key = span.as_ref().and_then(|s| {
            if s.start >= self.env_base {
                // An environment override: the variable names the key.
                return self
                    .env_applied
                    .get(s.start - self.env_base)
                    .map(|(_, dotted)| dotted.clone());
            }
            let mut path = Vec::new();
            find_key(root, s.start, &mut path).then(|| path.join("."))
        });
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            key = Some(match key {
                Some(table) => format!("{table}.{field}"),
                None => field.to_string(),
            });
        }
        let advice = if message.starts_with("unknown field") {
            let suggestion = message
                .split('`')
                .nth(1)
                .and_then(|field| did_you_mean(key.as_deref(), field))
                .unwrap_or_default();
            format!(" —{suggestion} remove it or fix the spelling (every option is listed and explained in {EXAMPLE_CONFIG_HINT})")
        } else if message.starts_with("missing field") {
            match key.as_deref().and_then(known) {
                Some(k) => format!(" — this option is required; set it to {}", k.kind.hint()),
                None => " — this option is required".to_string(),
            }
        } else {
            match key.as_deref().and_then(known) {
                Some(k) => format!(" — write {}", k.kind.hint()),
                None => String::new(),
            }
        };
        let span = span.or_else(|| e.span().filter(|s| s.start != 0 || s.end != 0));
        self.error_span(span, key.as_deref(), format!("{message}{advice}"))
    }

    /// Applies `ALIPAY_SIDECAR_*` overrides to the parsed document.
    fn apply_env<'t>(
        &mut self,
        root: &mut DeTable<'t>,
        env: &'t [(String, String)],
    ) -> Result<(), ConfigError> {
        let mut set_by_env = Vec::new();
        for (name, value) in env {
            let Some(known) = KNOWN_KEYS.iter().find(|k| k.env_var() == *name) else {
                let suggestion = KNOWN_KEYS
                    .iter()
                    .filter(|k| k.kind.scalar())
                    .map(|k| (edit_distance(&k.env_var(), name), k.env_var()))
                    .min()
                    .filter(|(d, _)| *d <= 4)
                    .map(|(_, v)| format!(" Did you mean {v}?"))
                    .unwrap_or_default();
                return Err(ConfigError::from(InvalidValue {
                    file: self.path.to_path_buf(),
                    line: None,
                    column: None,
                    env_var: Some(name.clone()),
                    key: None,
                    message: format!(
                        "no config option is called that.{suggestion} Variables starting with \
                         {ENV_PREFIX} override one config value each \
                         ({ENV_PREFIX}<SECTION>_<KEY>, e.g. ALIPAY_SIDECAR_OUTBOUND_GATEWAY); \
                         unset it or fix the name"
                    ),
                }));
            };
            if !known.kind.scalar() {
                return Err(ConfigError::from(InvalidValue {
                    file: self.path.to_path_buf(),
                    line: None,
                    column: None,
                    env_var: Some(name.clone()),
                    key: Some(known.dotted()),
                    message: format!(
                        "`{}` is {} and cannot be set from the environment; set it in the config \
                         file and unset the variable",
                        known.dotted(),
                        known.kind.hint()
                    ),
                }));
            }
            let index = self.env_applied.len();
            self.env_applied.push((name.clone(), known.dotted()));
            let span = self.env_base + index..self.env_base + index + 1;
            let parsed = match known.kind {
                Kind::Int | Kind::Bool => DeValue::parse(value)
                    .ok()
                    .map(Spanned::into_inner)
                    .filter(|v| v.is_integer() || v.is_bool()),
                _ => None,
            };
            let new_value = parsed.unwrap_or(DeValue::String(Cow::Borrowed(value.as_str())));
            let table = if known.section.is_empty() {
                &mut *root
            } else {
                if !root.contains_key(known.section) {
                    root.insert(
                        Spanned::new(span.clone(), Cow::Borrowed(known.section)),
                        Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
                    );
                }
                match root.get_mut(known.section).map(Spanned::get_mut) {
                    Some(DeValue::Table(t)) => t,
                    _ => {
                        return Err(ConfigError::from(InvalidValue {
                            file: self.path.to_path_buf(),
                            line: None,
                            column: None,
                            env_var: Some(name.clone()),
                            key: Some(known.section.to_string()),
                            message: format!(
                                "the file defines `{}` as a value, not a section, so {name} has \
                                 nothing to override; write it as a [{}] section",
                                known.section, known.section
                            ),
                        }))
                    }
                }
            };
            table.insert(
                Spanned::new(span.clone(), Cow::Borrowed(known.key)),
                Spanned::new(span, new_value),
            );
            set_by_env.push(known.dotted());
        }
        // gateway / region are alternatives: one set by env replaces the other from the file.
        let gw = set_by_env.iter().any(|k| k == "outbound.gateway");
        let region = set_by_env.iter().any(|k| k == "outbound.region");
        if gw != region {
            if let Some(DeValue::Table(t)) = root.get_mut("outbound").map(Spanned::get_mut) {
                t.remove(if gw { "region" } else { "gateway" });
            }
        }
        Ok(())
    }

    /// Dotted key → origin of every value in the document.
    fn collect_origins(&self, root: &DeTable<'_>) -> BTreeMap<String, Origin> {
        fn walk(
            ctx: &Ctx<'_>,
            table: &DeTable<'_>,
            prefix: &str,
            out: &mut BTreeMap<String, Origin>,
        ) {
            for (key, value) in table.iter() {
                let dotted = if prefix.is_empty() {
                    key.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", key.get_ref())
                };
                if let DeValue::Table(t) = value.get_ref() {
                    walk(ctx, t, &dotted, out);
                }
                out.insert(dotted, ctx.origin_of(&value.span()));
            }
        }
        let mut out = BTreeMap::new();
        walk(self, root, "", &mut out);
        out
    }

    fn duration(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => self.duration_value(&v, key),
        }
    }

    fn duration_value(&self, v: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        let d = match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => d,
            Err(e) => {
                return self.err(
                    v.span(),
                    key,
                    format!(
                        "\"{}\" is not a duration ({e}); write {}",
                        v.get_ref(),
                        Kind::Duration.hint()
                    ),
                )
            }
        };
        if d.is_zero() {
            return self.err(v.span(), key, "the duration must be greater than zero");
        }
        Ok(d)
    }

    fn addr(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(v) = v else {
            return default
                .parse()
                .map_err(|_| self.error_span(None, Some(key), "bad built-in default".into()));
        };
        v.get_ref().trim().parse().or_else(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "\"{}\" is not an address to listen on; write {} (host names are not \
                     resolved; use 0.0.0.0 or [::] for all interfaces)",
                    v.get_ref(),
                    Kind::Addr.hint()
                ),
            )
        })
    }

    fn positive(
        &self,
        v: Option<Spanned<i64>>,
        key: &str,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(n) if n > 0 => Ok(n),
                _ => self.err(
                    v.span(),
                    key,
                    format!(
                        "{} is not allowed; write a number greater than zero",
                        v.get_ref()
                    ),
                ),
            },
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            let base = self.path.parent().filter(|b| !b.as_os_str().is_empty());
            match base {
                Some(base) => base.join(p),
                None => p.to_path_buf(),
            }
        }
    }

    fn path_value(&self, v: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        if v.get_ref().trim().is_empty() {
            return self.err(
                v.span(),
                key,
                "the path is empty; write the path of the file",
            );
        }
        Ok(self.resolve(v.get_ref()))
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        // client_id
        let client_id = raw.client_id.get_ref().clone();
        if client_id.trim().is_empty() {
            return self.err(
                raw.client_id.span(),
                "client_id",
                "the client id is empty; copy your client id from the Alipay/Antom dashboard \
                 (SANDBOX_… for the sandbox)",
            );
        }
        if client_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return self.err(
                raw.client_id.span(),
                "client_id",
                format!(
                    "\"{}\" contains spaces or characters that cannot go into an HTTP header; \
                     copy the client id exactly as the dashboard shows it",
                    client_id.escape_debug()
                ),
            );
        }

        let keys = self.build_keys(raw.keys.into_inner())?;

        let outbound = match raw.outbound {
            None => None,
            Some(o) => Some(self.build_outbound(o.into_inner())?),
        };
        let inbound = match raw.inbound {
            None => None,
            Some(i) => Some(self.build_inbound(i.into_inner())?),
        };
        if outbound.is_none() && inbound.is_none() {
            return Err(ConfigError::from(InvalidValue {
                file: self.path.to_path_buf(),
                line: None,
                column: None,
                env_var: None,
                key: None,
                message: "neither an [outbound] nor an [inbound] section is configured, so the \
                          sidecar would do nothing; add [outbound] (with `gateway` or `region`) \
                          to sign API calls and/or [inbound] (with `forward_to`) to verify \
                          notifications"
                    .to_string(),
            }));
        }

        let (admin_listen, admin_max) = match raw.admin {
            Some(a) => (a.listen, a.max_connections),
            None => (None, None),
        };
        let admin = AdminConfig {
            listen: self.addr(admin_listen, "admin.listen", "127.0.0.1:9090")?,
            max_connections: self.positive(admin_max, "admin.max_connections", 64)?,
        };

        let log = match raw.log {
            None => LogConfig {
                format: None,
                level: "info".to_string(),
            },
            Some(l) => {
                let level = match l.level {
                    None => "info".to_string(),
                    Some(level) => {
                        if let Err(e) = tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
                            return self.err(
                                level.span(),
                                "log.level",
                                format!(
                                    "\"{}\" is not a log filter ({e}); write \"error\", \"warn\", \
                                     \"info\", \"debug\" or \"trace\", or a filter such as \
                                     \"alipay_sidecar=debug,info\"",
                                    level.get_ref()
                                ),
                            );
                        }
                        level.into_inner()
                    }
                };
                LogConfig {
                    format: l.format,
                    level,
                }
            }
        };

        let s = raw.server.unwrap_or_default();
        let threads_span = s.threads.as_ref().map(Spanned::span);
        let header_bytes_span = s.max_header_bytes.as_ref().map(Spanned::span);
        let server = ServerConfig {
            threads: self.positive(s.threads, "server.threads", 2)?,
            shutdown_grace: self.duration(
                s.shutdown_grace,
                "server.shutdown_grace",
                Duration::from_secs(5),
            )?,
            shutdown_timeout: self.duration(
                s.shutdown_timeout,
                "server.shutdown_timeout",
                Duration::from_secs(30),
            )?,
            max_header_bytes: self.positive(
                s.max_header_bytes,
                "server.max_header_bytes",
                32 * 1024,
            )?,
            header_read_timeout: self.duration(
                s.header_read_timeout,
                "server.header_read_timeout",
                Duration::from_secs(10),
            )?,
            body_read_timeout: self.duration(
                s.body_read_timeout,
                "server.body_read_timeout",
                Duration::from_secs(30),
            )?,
        };
        let max_threads = max_threads();
        if server.threads > max_threads {
            return Err(self.error_span(
                threads_span,
                Some("server.threads"),
                format!(
                    "{} worker threads per listener is more than this machine can use (at most \
                     4 per core, {max_threads} here); each listener runs its own pool, so a few \
                     threads are enough — remove the line for the default of 2",
                    server.threads
                ),
            ));
        }
        if !(1024..=1024 * 1024).contains(&server.max_header_bytes) {
            return Err(self.error_span(
                header_bytes_span,
                Some("server.max_header_bytes"),
                format!(
                    "{} is outside 1024..=1048576; AMS requests carry a few hundred bytes of \
                     headers, so the default of 32768 is ample",
                    server.max_header_bytes
                ),
            ));
        }
        self.distinct_listeners(&outbound, &inbound, &admin)?;

        Ok(Config {
            path: self.path.to_path_buf(),
            client_id,
            keys,
            outbound,
            inbound,
            admin,
            log,
            server,
            origins: BTreeMap::new(),
        })
    }

    /// Two listeners cannot share an address (the second bind would fail at start, or on
    /// some systems both would bind and split the traffic).
    fn distinct_listeners(
        &self,
        outbound: &Option<OutboundConfig>,
        inbound: &Option<InboundConfig>,
        admin: &AdminConfig,
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<(SocketAddr, &str)> = vec![(admin.listen, "admin.listen")];
        if let Some(o) = outbound {
            if let Some(l) = o.listen {
                seen.push((l, "outbound.listen"));
            }
            if let Some(t) = &o.tls {
                seen.push((t.listen, "outbound.tls_listen"));
            }
        }
        if let Some(i) = inbound {
            seen.push((i.listen, "inbound.listen"));
        }
        for (i, (addr, key)) in seen.iter().enumerate() {
            if addr.port() == 0 {
                continue; // an ephemeral port never collides
            }
            let clash = seen[..i].iter().find(|(other, _)| {
                other.port() == addr.port()
                    && (other.ip() == addr.ip()
                        || other.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            });
            if let Some((_, other_key)) = clash {
                return Err(self.error_span(
                    None,
                    Some(key),
                    format!(
                        "{addr} is also used by `{other_key}`; every listener needs its own \
                         address (port)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn key_version(&self, v: &str, span: Range<usize>, key: &str) -> Result<String, ConfigError> {
        let v = v.trim();
        if v.len() > 1 && v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) {
            return self.err(
                span,
                key,
                format!(
                    "\"{}\" is not written the canonical way: key versions are plain numbers \
                     without leading zeros (write \"{}\"); \"01\" and \"1\" would otherwise be \
                     two different versions of the same key",
                    v,
                    v.trim_start_matches('0').to_string()
                        + if v.trim_start_matches('0').is_empty() {
                            "0"
                        } else {
                            ""
                        }
                ),
            );
        }
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return self.err(
                span,
                key,
                format!(
                    "\"{v}\" is not a key version; key versions are numbers (1, 2, …) as shown \
                     next to the key in the Alipay dashboard"
                ),
            );
        }
        Ok(v.to_string())
    }

    fn build_keys(&self, raw: RawKeys) -> Result<KeysConfig, ConfigError> {
        let merchant_private_key =
            self.path_value(&raw.merchant_private_key, "keys.merchant_private_key")?;
        let merchant_key_version = match raw.merchant_key_version {
            None => "1".to_string(),
            Some(v) => self.key_version(&v.get_ref().0, v.span(), "keys.merchant_key_version")?,
        };
        let span = raw.alipay_public_keys.span();
        let map = raw.alipay_public_keys.into_inner();
        if map.is_empty() {
            return self.err(
                span,
                "keys.alipay_public_keys",
                "no Alipay public key is configured; add at least one, e.g. \
                 alipay_public_keys = { \"1\" = \"keys/alipay_public_key.pem\" } (download it from \
                 the Alipay dashboard)",
            );
        }
        let mut alipay_public_keys = BTreeMap::new();
        for (version, path) in map {
            let version_key = format!("keys.alipay_public_keys.{}", version.get_ref());
            let v = self.key_version(version.get_ref(), version.span(), &version_key)?;
            let p = self.path_value(&path, &version_key)?;
            if alipay_public_keys.insert(v.clone(), p).is_some() {
                return self.err(
                    version.span(),
                    &version_key,
                    format!("key version {v} is listed twice; keep one entry per version"),
                );
            }
        }
        Ok(KeysConfig {
            merchant_private_key,
            merchant_key_version,
            alipay_public_keys,
        })
    }

    fn build_outbound(&self, raw: RawOutbound) -> Result<OutboundConfig, ConfigError> {
        let allow_remote_clients = raw.allow_remote_clients.unwrap_or(false);
        let tls = self.build_outbound_tls(&raw)?;
        let listen_span = raw.listen.as_ref().map(Spanned::span);
        let listen = match (raw.listen, &tls) {
            // only HTTPS when tls_listen is set and listen is left out
            (None, Some(_)) => None,
            (l, _) => Some(self.addr(l, "outbound.listen", "127.0.0.1:8080")?),
        };
        let tls_span = raw.tls_listen.as_ref().map(Spanned::span);
        for (addr, span, key) in [
            (listen, listen_span, "outbound.listen"),
            (
                tls.as_ref().map(|t| t.listen),
                tls_span,
                "outbound.tls_listen",
            ),
        ] {
            let Some(listen) = addr else { continue };
            if listen.ip().is_loopback() || allow_remote_clients {
                continue;
            }
            return Err(self.error_span(
                span,
                Some(key),
                format!(
                    "{listen} is not a loopback address: anything that can reach it can get \
                     requests signed with your merchant key (a signing oracle). Listen on \
                     127.0.0.1 (the app runs next to the sidecar), or, if only trusted clients \
                     can reach this address, set `allow_remote_clients = true` in [outbound]"
                ),
            ));
        }

        let gateway = match (raw.gateway, raw.region) {
            (Some(g), Some(r)) => {
                let later = if g.span().start > r.span().start { g.span() } else { r.span() };
                return self.err(
                    later,
                    "outbound.gateway",
                    "both `gateway` and `region` are set; keep exactly one (region is a shortcut \
                     for a gateway URL)",
                );
            }
            (None, None) => {
                return Err(self.error_span(
                    None,
                    Some("outbound.gateway"),
                    "[outbound] needs the Alipay gateway: set `gateway = \"https://open-sea-global.alipay.com\"` \
                     (a full https URL) or `region = \"na\" | \"sea\" | \"eu\"`"
                        .to_string(),
                ));
            }
            (Some(g), None) => self.gateway(&g)?,
            (None, Some(r)) => match REGIONS.iter().find(|(name, _)| *name == r.get_ref().trim()) {
                Some((_, host)) => Gateway {
                    host: (*host).to_string(),
                    port: 443,
                },
                None => {
                    return self.err(
                        r.span(),
                        "outbound.region",
                        format!(
                            "unknown region \"{}\"; write \"na\" (North America, {}), \"sea\" \
                             (Asia, {}) or \"eu\" (Europe, {}), or set `gateway` to a full URL instead",
                            r.get_ref(),
                            REGIONS[0].1,
                            REGIONS[1].1,
                            REGIONS[2].1
                        ),
                    )
                }
            },
        };

        let allowed_path_prefixes = match raw.allowed_path_prefixes {
            None => vec!["/ams/api/".to_string(), "/ams/sandbox/api/".to_string()],
            Some(list) => {
                let span = list.span();
                let list = list.into_inner();
                if list.is_empty() {
                    return self.err(
                        span,
                        "outbound.allowed_path_prefixes",
                        "the list is empty, so every request would be refused; list the AMS path \
                         prefixes to forward, e.g. [\"/ams/api/\", \"/ams/sandbox/api/\"], or \
                         remove the line for that default",
                    );
                }
                let mut out = Vec::new();
                for p in list {
                    if !p.get_ref().starts_with('/') {
                        return self.err(
                            p.span(),
                            "outbound.allowed_path_prefixes",
                            format!(
                                "\"{}\" does not start with '/'; write request paths only, e.g. \
                                 \"/ams/api/\" (no scheme or host)",
                                p.get_ref()
                            ),
                        );
                    }
                    out.push(p.into_inner());
                }
                out
            }
        };

        let mut allowed_hosts = Vec::new();
        for h in raw.allowed_hosts.unwrap_or_default() {
            let host = h.get_ref().trim().to_ascii_lowercase();
            if host.is_empty()
                || host.contains(['/', ':', ' ', '@'])
                || host.chars().any(|c| c.is_control())
            {
                return self.err(
                    h.span(),
                    "outbound.allowed_hosts",
                    format!(
                        "{:?} is not a host name; list bare names such as \"alipay-sidecar\" (no \
                         scheme, port or path)",
                        crate::exchange::echo(h.get_ref())
                    ),
                );
            }
            allowed_hosts.push(host);
        }
        if let Some(token) = raw.agent_token.as_ref() {
            if token.chars().any(|c| c.is_control()) {
                return Err(self.error_span(
                    None,
                    Some("outbound.agent_token"),
                    "the agent token contains control characters (a line break?), which cannot \
                     go into an HTTP header and could inject headers; copy the token again \
                     without the trailing newline"
                        .to_string(),
                ));
            }
        }

        // The SANDBOX_ / live consistency checks live in keyset::preflight, with the other
        // "classic mistake" checks.
        let sandbox_path_rewrite = raw.sandbox_path_rewrite.unwrap_or(false);

        let ca_file = match raw.ca_file {
            None => None,
            Some(p) => Some(self.path_value(&p, "outbound.ca_file")?),
        };

        Ok(OutboundConfig {
            listen,
            tls,
            gateway,
            allowed_path_prefixes,
            max_body_bytes: self.positive(
                raw.max_body_bytes,
                "outbound.max_body_bytes",
                1024 * 1024,
            )?,
            request_time_format: raw
                .request_time_format
                .unwrap_or(RequestTimeFormat::EpochMillis),
            agent_token: raw.agent_token.filter(|t| !t.is_empty()),
            sandbox_path_rewrite,
            ca_file,
            connect_timeout: self.duration(
                raw.connect_timeout,
                "outbound.connect_timeout",
                Duration::from_secs(5),
            )?,
            request_timeout: self.duration(
                raw.request_timeout,
                "outbound.request_timeout",
                Duration::from_secs(15),
            )?,
            verify_responses: raw.verify_responses.unwrap_or(true),
            allow_remote_clients,
            allowed_hosts,
            max_connections: self.positive(raw.max_connections, "outbound.max_connections", 256)?,
        })
    }

    /// `tls_listen` and what goes with it: `tls_cert` and `tls_key` together or not at all;
    /// `tls_names` and `tls_ca_out` only for the generated certificate.
    fn build_outbound_tls(&self, raw: &RawOutbound) -> Result<Option<OutboundTls>, ConfigError> {
        let Some(l) = raw.tls_listen.clone() else {
            for (v, key) in [
                (&raw.tls_cert, "outbound.tls_cert"),
                (&raw.tls_key, "outbound.tls_key"),
                (&raw.tls_ca_out, "outbound.tls_ca_out"),
            ] {
                if let Some(v) = v {
                    return self.err(
                        v.span(),
                        key,
                        "this only applies to the HTTPS listener; set `tls_listen` (e.g. \
                         \"127.0.0.1:443\") or remove the line",
                    );
                }
            }
            return Ok(None);
        };
        let listen = self.addr(Some(l), "outbound.tls_listen", "127.0.0.1:443")?;
        let files = match (&raw.tls_cert, &raw.tls_key) {
            (Some(c), Some(k)) => Some((
                self.path_value(c, "outbound.tls_cert")?,
                self.path_value(k, "outbound.tls_key")?,
            )),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                return self.err(
                    v.span(),
                    "outbound.tls_cert",
                    "set both `tls_cert` and `tls_key` (the certificate chain and its private \
                     key, PEM), or neither to have the sidecar generate a certificate at start",
                )
            }
        };
        let mut names = Vec::new();
        for n in raw.tls_names.clone().unwrap_or_default() {
            let name = n.get_ref().trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ':', ' ', '@']) {
                return self.err(
                    n.span(),
                    "outbound.tls_names",
                    format!(
                        "\"{}\" is not a host name for the certificate; list bare names such as \
                         \"alipay-sidecar\"",
                        crate::exchange::echo(n.get_ref())
                    ),
                );
            }
            names.push(name);
        }
        let ca_out = match &raw.tls_ca_out {
            Some(p) if files.is_some() => {
                return self.err(
                    p.span(),
                    "outbound.tls_ca_out",
                    "tls_ca_out writes the CA of the *generated* certificate; with tls_cert \
                     and tls_key configured, give apps your own CA instead and remove the line",
                )
            }
            Some(p) => Some(self.path_value(p, "outbound.tls_ca_out")?),
            None => None,
        };
        Ok(Some(OutboundTls {
            listen,
            files,
            names,
            ca_out,
        }))
    }

    fn gateway(&self, g: &Spanned<String>) -> Result<Gateway, ConfigError> {
        let key = "outbound.gateway";
        let url = parse_url(g.get_ref()).map_err(|problem| {
            self.error_span(
                Some(g.span()),
                Some(key),
                format!(
                    "\"{}\" is not a gateway URL ({problem}); write the gateway's base URL, e.g. \
                     \"https://open-sea-global.alipay.com\", or use `region` instead",
                    g.get_ref()
                ),
            )
        })?;
        if url.scheme != "https" {
            return self.err(
                g.span(),
                key,
                format!(
                    "the gateway must be reached over https (got \"{}://\"): TLS is mandatory \
                     because requests carry payment data and Alipay's responses are trusted \
                     after verification; write https://… (for a local test gateway, run \
                     `alipay-sidecar mock-gateway --tls` and set `ca_file` to its certificate)",
                    url.scheme
                ),
            );
        }
        if !url.path.is_empty() && url.path != "/" {
            return self.err(
                g.span(),
                key,
                format!(
                    "the gateway URL has a path or query (\"{}\"); write only scheme and host \
                     (and port): the path of each call comes from the app's request",
                    crate::exchange::echo(&url.path)
                ),
            );
        }
        Ok(Gateway {
            host: url.host,
            port: url.port.unwrap_or(443),
        })
    }

    fn build_inbound(&self, raw: RawInbound) -> Result<InboundConfig, ConfigError> {
        let listen = self.addr(raw.listen, "inbound.listen", "0.0.0.0:8081")?;
        let key = "inbound.forward_to";
        let f = &raw.forward_to;
        let url = parse_url(f.get_ref()).map_err(|problem| {
            self.error_span(
                Some(f.span()),
                Some(key),
                format!(
                    "\"{}\" is not a URL ({problem}); write the app's base URL, e.g. \
                     \"http://127.0.0.1:3000\"",
                    f.get_ref()
                ),
            )
        })?;
        if url.scheme != "http" {
            return self.err(
                f.span(),
                key,
                format!(
                    "only http:// is supported for the app for now (got \"{}://\"); the app runs \
                     next to the sidecar, so use e.g. \"http://127.0.0.1:3000\"",
                    url.scheme
                ),
            );
        }
        if url.path.contains('?') || url.path.contains('#') {
            return self.err(
                f.span(),
                key,
                "forward_to must not contain a query or fragment; write only the base URL (and an optional path prefix)",
            );
        }
        let forward_to = AppUpstream {
            host: url.host,
            port: url.port.unwrap_or(80),
            base_path: url.path.trim_end_matches('/').to_string(),
        };

        let mut path_map = BTreeMap::new();
        for (from, to) in raw.path_map.unwrap_or_default() {
            for p in [&from, &to] {
                if !p.get_ref().starts_with('/') {
                    return self.err(
                        p.span(),
                        "inbound.path_map",
                        format!(
                            "\"{}\" does not start with '/'; map a notify path to an app path, \
                             e.g. {{ \"/alipay/notify\" = \"/payments/notify\" }}",
                            p.get_ref()
                        ),
                    );
                }
            }
            path_map.insert(from.into_inner(), to.into_inner());
        }

        let max_request_time_skew = match raw.max_request_time_skew {
            None => None,
            Some(v) => Some(self.duration_value(&v, "inbound.max_request_time_skew")?),
        };

        Ok(InboundConfig {
            listen,
            forward_to,
            path_map,
            max_body_bytes: self.positive(
                raw.max_body_bytes,
                "inbound.max_body_bytes",
                1024 * 1024,
            )?,
            forward_timeout: self.duration(
                raw.forward_timeout,
                "inbound.forward_timeout",
                Duration::from_secs(10),
            )?,
            max_request_time_skew,
            acknowledge: raw.acknowledge.unwrap_or(Acknowledge::App),
            sign_acknowledgements: raw.sign_acknowledgements.unwrap_or(false),
            mode: raw.mode.unwrap_or(InboundMode::Enforce),
            max_connections: self.positive(raw.max_connections, "inbound.max_connections", 1024)?,
        })
    }
}

/// The most worker threads per listener that make sense here: 4 per core, at most 256.
fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).min(256)
}

/// Finds the dotted key whose key or value span contains `pos`.
fn find_key(table: &DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
    let contains = |s: Range<usize>| s.start <= pos && (pos < s.end || s.start == s.end);
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if contains(key.span()) {
            return true;
        }
        if let DeValue::Table(t) = value.get_ref() {
            if find_key(t, pos, path) {
                return true;
            }
        }
        if contains(value.span()) {
            return true;
        }
        path.pop();
    }
    false
}

struct Url {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

/// `scheme://host[:port][/path]` parsed with `http::Uri` (no user info), host lowercased and
/// IPv6 brackets removed (they are added back where a `Host` header is written).
fn parse_url(s: &str) -> Result<Url, String> {
    if s.contains('#') {
        return Err("a #fragment has no meaning here; remove it".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("it contains control characters".into());
    }
    let uri: http::Uri = s.trim().parse().map_err(|e| format!("{e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| "missing scheme, e.g. https://".to_string())?
        .to_ascii_lowercase();
    let authority = uri.authority().ok_or_else(|| "no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("user names or passwords in the URL are not supported".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    // `http` reads an out-of-range port as no port at all (then 443 would be used silently)
    let raw_port = authority
        .as_str()
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.contains(']'));
    let port = match raw_port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "port {} is not a port number (1-65535)",
                    crate::exchange::echo(p)
                ))
            }
        },
    };
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    Ok(Url {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"client_id = "SANDBOX_5YBZ2Q2ZAB7C01234"
[keys]
merchant_private_key = "keys/merchant_private_key.pem"
alipay_public_keys = { "1" = "keys/alipay_public_key.pem" }
[outbound]
region = "sea"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sc/sidecar.toml"), Vec::new())
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("/etc/sc/sidecar.toml"),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        )
    }

    #[test]
    fn defaults_and_resolution() {
        let c = parse(BASE).unwrap();
        assert_eq!(
            c.keys.merchant_private_key,
            Path::new("/etc/sc/keys/merchant_private_key.pem")
        );
        assert_eq!(c.keys.merchant_key_version, "1");
        let o = c.outbound.clone().unwrap();
        assert_eq!(o.gateway.url(), "https://open-sea-global.alipay.com");
        assert_eq!(o.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(o.max_body_bytes, 1 << 20);
        assert_eq!(o.request_timeout, Duration::from_secs(15));
        assert!(o.verify_responses);
        assert!(c.inbound.is_none());
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.log.level, "info");
        assert!(matches!(
            c.origin("keys.merchant_private_key"),
            Origin::File { line: 3, .. }
        ));
    }

    #[test]
    fn regions() {
        for (r, host) in REGIONS {
            let c = parse(&BASE.replace("\"sea\"", &format!("\"{r}\""))).unwrap();
            assert_eq!(c.outbound.unwrap().gateway.host, *host);
        }
        let e = parse(&BASE.replace("\"sea\"", "\"us\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sidecar.toml:6") && e.contains("outbound.region"),
            "{e}"
        );
    }

    #[test]
    fn gateway_forms() {
        let t = BASE.replace("region = \"sea\"", "gateway = \"https://127.0.0.1:8443\"");
        let g = parse(&t).unwrap().outbound.unwrap().gateway;
        assert_eq!((g.host.as_str(), g.port), ("127.0.0.1", 8443));
        assert_eq!(g.url(), "https://127.0.0.1:8443");
        let t = BASE.replace("region = \"sea\"", "gateway = \"http://127.0.0.1:8443\"");
        let e = parse(&t).unwrap_err().to_string();
        assert!(e.contains("TLS is mandatory"), "{e}");
        let t = BASE.replace("region = \"sea\"", "gateway = \"https://[::1]:9\"");
        assert_eq!(
            parse(&t).unwrap().outbound.unwrap().gateway.url(),
            "https://[::1]:9"
        );
        let t = BASE.replace("region = \"sea\"", "gateway = \"https://h/ams/api\"");
        assert!(parse(&t).unwrap_err().to_string().contains("has a path"));
        let t = BASE.replace(
            "region = \"sea\"",
            "region = \"sea\"\ngateway = \"https://x\"",
        );
        assert!(parse(&t).unwrap_err().to_string().contains("exactly one"));
        let t = BASE.replace("region = \"sea\"", "");
        assert!(parse(&t)
            .unwrap_err()
            .to_string()
            .contains("needs the Alipay gateway"));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = parse(&format!("{BASE}verfy_responses = false\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/sc/sidecar.toml:7:1: `outbound.verfy_responses`"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn type_errors_name_key_and_hint() {
        let e = parse(&format!("{BASE}connect_timeout = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":7:") && e.contains("outbound.connect_timeout") && e.contains("\"5s\""),
            "{e}"
        );
        let e = parse(&format!("{BASE}connect_timeout = \"5 parsecs\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":7:") && e.contains("not a duration"), "{e}");
        let e = parse(&BASE.replace("[keys]\n", "[keys]\nmerchant_key_version = \"v2\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":3:") && e.contains("keys.merchant_key_version"),
            "{e}"
        );
    }

    #[test]
    fn missing_required() {
        let e = parse(&BASE.replace("client_id = \"SANDBOX_5YBZ2Q2ZAB7C01234\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`client_id`") && e.contains("required"), "{e}");
        let e = parse(&BASE.replace(
            "merchant_private_key = \"keys/merchant_private_key.pem\"\n",
            "",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`keys.merchant_private_key`") && e.contains(":2:"),
            "{e}"
        );
        let e = parse(&BASE.replace("{ \"1\" = \"keys/alipay_public_key.pem\" }", "{}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no Alipay public key"), "{e}");
    }

    #[test]
    fn neither_direction_is_an_error() {
        let e = parse(&BASE.replace("[outbound]\nregion = \"sea\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither"), "{e}");
    }

    #[test]
    fn remote_listen_needs_opt_in() {
        let t = format!("{BASE}listen = \"0.0.0.0:8080\"\n");
        let e = parse(&t).unwrap_err().to_string();
        assert!(
            e.contains("signing oracle")
                && e.contains("allow_remote_clients = true")
                && e.contains(":7:"),
            "{e}"
        );
        assert!(parse(&format!("{t}allow_remote_clients = true\n")).is_ok());
    }

    #[test]
    fn inbound_section() {
        let t = format!(
            "{BASE}[inbound]\nforward_to = \"http://127.0.0.1:3000/app/\"\npath_map = {{ \"/alipay/notify\" = \"/payments/notify\" }}\nmax_request_time_skew = \"10m\"\nacknowledge = \"sidecar\"\nmode = \"shadow\"\n"
        );
        let i = parse(&t).unwrap().inbound.unwrap();
        assert_eq!(
            i.forward_to,
            AppUpstream {
                host: "127.0.0.1".into(),
                port: 3000,
                base_path: "/app".into()
            }
        );
        assert_eq!(i.path_map["/alipay/notify"], "/payments/notify");
        assert_eq!(i.max_request_time_skew, Some(Duration::from_secs(600)));
        assert_eq!(
            (i.acknowledge, i.mode),
            (Acknowledge::Sidecar, InboundMode::Shadow)
        );
        assert_eq!(i.listen, "0.0.0.0:8081".parse().unwrap());
        let e = parse(&t.replace("http://127.0.0.1:3000/app/", "https://app"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http://"), "{e}");
        let e = parse(&t.replace("mode = \"shadow\"", "mode = \"shdow\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inbound.mode") && e.contains("unknown variant"),
            "{e}"
        );
    }

    #[test]
    fn env_overrides() {
        let c = parse_env(
            BASE,
            &[
                ("ALIPAY_SIDECAR_CLIENT_ID", "12345"),
                ("ALIPAY_SIDECAR_OUTBOUND_GATEWAY", "https://gw.example:444"),
                ("ALIPAY_SIDECAR_SERVER_THREADS", "4"),
                ("ALIPAY_SIDECAR_OUTBOUND_VERIFY_RESPONSES", "false"),
                ("ALIPAY_SIDECAR_KEYS_MERCHANT_KEY_VERSION", "3"),
                ("ALIPAY_SIDECAR_CONFIG", "ignored"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.client_id, "12345");
        let o = c.outbound.as_ref().unwrap();
        assert_eq!(o.gateway.url(), "https://gw.example:444");
        assert!(!o.verify_responses);
        assert_eq!(c.server.threads, 4);
        assert_eq!(c.keys.merchant_key_version, "3");
        assert!(
            matches!(c.origin("client_id"), Origin::Env { ref var, .. } if var == "ALIPAY_SIDECAR_CLIENT_ID")
        );
    }

    #[test]
    fn differs_outside_keys() {
        let a = parse(BASE).unwrap();
        let b = parse(&BASE.replace("\"1\" =", "\"2\" =")).unwrap();
        assert!(a != b && !a.differs_outside_keys(&b));
        let c = parse(&BASE.replace("\"sea\"", "\"na\"")).unwrap();
        assert!(a.differs_outside_keys(&c));
    }

    #[test]
    fn env_errors() {
        let e = parse_env(BASE, &[("ALIPAY_SIDECAR_OUTBOUND_GATEWY", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ALIPAY_SIDECAR_OUTBOUND_GATEWY")
                && e.contains("Did you mean ALIPAY_SIDECAR_OUTBOUND_GATEWAY"),
            "{e}"
        );
        let e = parse_env(BASE, &[("ALIPAY_SIDECAR_SERVER_THREADS", "many")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("environment variable ALIPAY_SIDECAR_SERVER_THREADS")
                && e.contains("server.threads"),
            "{e}"
        );
        let e = parse_env(BASE, &[("ALIPAY_SIDECAR_KEYS_ALIPAY_PUBLIC_KEYS", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be set from the environment"), "{e}");
        let e = parse_env(BASE, &[("ALIPAY_SIDECAR_OUTBOUND_GATEWAY", "http://x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("environment variable ALIPAY_SIDECAR_OUTBOUND_GATEWAY") && e.contains("TLS"),
            "{e}"
        );
    }

    #[test]
    fn env_creates_section() {
        let t = BASE.replace("[outbound]\nregion = \"sea\"\n", "");
        let c = parse_env(
            &t,
            &[("ALIPAY_SIDECAR_INBOUND_FORWARD_TO", "http://127.0.0.1:3000")],
        )
        .unwrap();
        assert_eq!(c.inbound.unwrap().forward_to.port, 3000);
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse(&format!("{BASE}[inbound\n")).unwrap_err().to_string();
        assert!(
            e.contains("sidecar.toml:7:") && e.contains("not valid TOML"),
            "{e}"
        );
    }
}
