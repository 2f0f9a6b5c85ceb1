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
//! # Where things are
//!
//! `raw.rs` declares every option once (name, kind, default, reload or restart) and derives
//! the serde structs from it; `typed.rs` holds the resolved sections, `choice.rs` declares
//! each closed set of values once; `build/` checks and converts (a file per section);
//! `env.rs` applies environment overrides; `settings.rs` compares configurations
//! (equality, "restart needed"); `error.rs` turns spans into `file:line:col` messages;
//! `url.rs` parses the gateway and app URLs.
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

mod backfill;
mod build;
mod choice;
mod env;
mod error;
mod merchants;
mod pkcs11;
mod raw;
mod settings;
mod typed;
mod url;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, Deserializer};
use toml::Spanned;

pub use error::{ConfigError, InvalidValue, Origin};
pub use pkcs11::{is_pkcs11_uri, parse_uri as parse_pkcs11_uri};
pub use raw::known_keys;
pub use typed::*;

use error::{Ctx, EXAMPLE_CONFIG_HINT};
use raw::RawConfig;

/// The config path when neither `--config` nor `ALIPAY_SIDECAR_CONFIG` names one: where the
/// container image mounts it (config and keys under `/etc/alipay-sidecar/`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/alipay-sidecar/sidecar.toml";

/// Checks a log filter (`[log] level`, `run --log-level`): what is wrong and what to write.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| {
            format!(
                "\"{filter}\" is not a log filter ({e}); write \"error\", \"warn\", \"info\", \
                 \"debug\" or \"trace\", or a filter such as \"alipay_sidecar=debug,info\""
            )
        })
}

/// Prefix of every environment variable that overrides a config value.
pub const ENV_PREFIX: &str = "ALIPAY_SIDECAR_";

/// Environment variables with the [`ENV_PREFIX`] that are not config overrides (so they are not
/// reported as typos): `ALIPAY_SIDECAR_CONFIG` is the config file path used by the CLI;
/// `ALIPAY_SIDECAR_GIT_COMMIT` stamps the build (it may still be exported in a CI shell).
pub const RESERVED_ENV_VARS: &[&str] = &["ALIPAY_SIDECAR_CONFIG", "ALIPAY_SIDECAR_GIT_COMMIT"];

/// The whole, validated configuration. Built only by [`Config::load`] / [`Config::parse`], so
/// every consumer can trust the values (paths resolved, addresses parsed, rules checked).
#[derive(Clone, Debug)]
pub struct Config {
    /// The config file the values came from (absolute when loaded with [`Config::load`]).
    pub path: PathBuf,
    /// Every merchant, in file order (at least one; a single-merchant file is the merchant
    /// named [`DEFAULT_MERCHANT`]), with its inherited values resolved.
    pub merchants: Vec<MerchantConfig>,
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
    /// The state store; `None` without `[store]` (stateless, as before).
    pub store: Option<StoreConfig>,
    /// `[store] timeout` and `retention` (their defaults without `[store]`).
    pub store_options: StoreOptions,
    /// The missed-notification reconciler; `None` unless `[reconcile] enabled = true`.
    pub reconcile: Option<ReconcileConfig>,
    /// The backfill from Alipay's event log; `None` unless `[reconcile] backfill = true`.
    pub backfill: Option<BackfillConfig>,
    /// Where each value came from (file line or environment variable), for later error
    /// messages such as a key file that cannot be read.
    origins: BTreeMap<String, Origin>,
    /// Every declared option, normalised (see [`settings`]): what equality and
    /// [`Config::differs_outside_keys`] compare.
    settings: settings::Settings,
}

impl PartialEq for Config {
    /// Compares the settings only (not where they came from), so a reload can tell whether
    /// anything other than the keys changed.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.settings == other.settings
    }
}

impl Config {
    /// Reads and validates the config file at `path`, applying `ALIPAY_SIDECAR_*` environment
    /// overrides. Does not read the key files (that is [`crate::preflight::load`]'s job),
    /// but checks that `ca_file`, when set, exists.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            advice: error::read_advice(
                &path,
                source.kind(),
                std::env::var_os("ALIPAY_SIDECAR_CONFIG").as_deref(),
            ),
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
        let shared_ca = config.outbound.as_ref().and_then(|o| o.ca_file.as_ref());
        let merchant_cas = config
            .merchants
            .iter()
            .filter(|m| m.ca_file.as_ref() != shared_ca)
            .filter_map(|m| Some((m.key("outbound.ca_file"), m.ca_file.as_ref()?)));
        let cas = shared_ca
            .map(|ca| ("outbound.ca_file".to_string(), ca))
            .into_iter()
            .chain(merchant_cas);
        for (key, ca_file) in cas {
            if let Err(e) = std::fs::metadata(ca_file) {
                return Err(config.error_at(
                    &key,
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
        let settings = settings::collect(&root, path);
        let root = Spanned::new(doc_span.clone(), root);
        // Keep a copy to find the key a serde error points at.
        let raw = match RawConfig::deserialize(Deserializer::from(root.clone())) {
            Ok(raw) => raw,
            Err(e) => return Err(ctx.serde_error(&e, root.get_ref(), &doc_span)),
        };
        let mut config = ctx.build(raw)?;
        config.origins = origins;
        config.settings = settings;
        Ok(config)
    }

    /// Whether an option declared as needing a restart differs from `other`: a reload applies
    /// only the keys, so a change elsewhere deserves a log line saying so. Compared option by
    /// option from the declarations (values normalised, defaults filled in), so `"5s"` and
    /// `"5000ms"` are the same; `gateway` and the `region` naming the same host are not.
    pub fn differs_outside_keys(&self, other: &Config) -> bool {
        self.path != other.path || settings::restart_needed(&self.settings, &other.settings)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
            c.merchants[0].keys.credential.path(),
            Path::new("/etc/sc/keys/merchant_private_key.pem")
        );
        assert_eq!(c.merchants[0].keys.merchant_key_version, "1");
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
        for r in Region::ALL {
            let c = parse(&BASE.replace("\"sea\"", &format!("\"{r}\""))).unwrap();
            assert_eq!(c.outbound.unwrap().gateway.host, r.host());
        }
        let e = parse(&BASE.replace("\"sea\"", "\"us\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sidecar.toml:6") && e.contains("outbound.region"),
            "{e}"
        );
        // the list comes from `Region`: every shortcut with its area and host
        assert!(
            e.contains(
                "unknown region \"us\"; write \"na\" (North America, open-na-global.alipay.com), \
                 \"sea\" (Asia, open-sea-global.alipay.com) or \"eu\" (Europe, \
                 open-de-global.alipay.com), or set `gateway` to a full URL instead"
            ),
            "{e}"
        );
        let e = parse(&BASE.replace("region = \"sea\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("or `region = \"na\" | \"sea\" | \"eu\"`"), "{e}");
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
        assert_eq!(c.merchants[0].client_id, "12345");
        let o = c.outbound.as_ref().unwrap();
        assert_eq!(o.gateway.url(), "https://gw.example:444");
        assert!(!o.verify_responses);
        assert_eq!(c.server.threads, 4);
        assert_eq!(c.merchants[0].keys.merchant_key_version, "3");
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

    const INBOUND: &str = "[inbound]\nforward_to = \"http://127.0.0.1:3000\"\n";

    #[test]
    fn store_and_reconcile_defaults_and_dependencies() {
        // without [store]: stateless, duplicates forwarded, no reconciler
        let c = parse(&format!("{BASE}{INBOUND}")).unwrap();
        assert_eq!(c.store, None);
        let i = c.inbound.as_ref().unwrap();
        assert_eq!(i.duplicates, Duplicates::Forward);
        assert_eq!(i.delivery_schedule.len(), 8);
        assert_eq!(i.delivery_schedule[0], Duration::ZERO);
        assert_eq!(i.max_delivery_age, Duration::from_secs(7 * 86400));

        // with [store]: duplicates suppressed by default; the reconciler's defaults
        let text = format!(
            "{BASE}{INBOUND}acknowledge = \"after-store\"\n[store]\npath = \"state/s.db\"\n\
             [reconcile]\nenabled = true\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.store,
            Some(StoreConfig::Sqlite(PathBuf::from("/etc/sc/state/s.db")))
        );
        let i = c.inbound.as_ref().unwrap();
        assert_eq!(i.duplicates, Duplicates::Suppress);
        assert_eq!(i.acknowledge, Acknowledge::AfterStore);
        let r = c.reconcile.as_ref().unwrap();
        assert_eq!(r.reconcile_after, Duration::from_secs(60));
        assert_eq!(r.inquiry_schedule[0], Duration::from_secs(3));
        assert_eq!(r.default_close_after, Duration::from_secs(1800));
        assert!(!r.cancel_on_expiry && r.deliver_path.is_none());

        let pg = parse(&format!(
            "{BASE}[store]\nurl = \"postgres://sidecar@db:5432/alipay\"\n"
        ))
        .unwrap();
        assert_eq!(
            pg.store,
            Some(StoreConfig::Postgres(
                "postgres://sidecar@db:5432/alipay".into()
            ))
        );
        let off = parse(&format!("{BASE}[reconcile]\nenabled = false\n")).unwrap();
        assert_eq!(off.reconcile, None);
    }

    #[test]
    fn store_features_without_a_store_are_refused() {
        for (extra, key) in [
            ("duplicates = \"suppress\"\n", "inbound.duplicates"),
            ("acknowledge = \"after-store\"\n", "inbound.acknowledge"),
        ] {
            let e = parse(&format!("{BASE}{INBOUND}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("[store]"), "{e}");
        }
        let e = parse(&format!("{BASE}{INBOUND}[reconcile]\nenabled = true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reconcile.enabled") && e.contains("[store]"),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[store]\npath = \"s.db\"\n[reconcile]\nenabled = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("[inbound]"), "{e}");
        for store in [
            "[store]\n",
            "[store]\npath = \"a.db\"\nurl = \"postgres://x/y\"\n",
            "[store]\nurl = \"mysql://x/y\"\n",
        ] {
            let e = parse(&format!("{BASE}{store}")).unwrap_err().to_string();
            assert!(e.contains("store"), "{store}: {e}");
        }
        for bad in [
            "[reconcile]\nenabled = true\ninquiry_schedule = []\n",
            "[reconcile]\nenabled = true\ninquiry_schedule = [\"soon\"]\n",
            "[reconcile]\nenabled = true\ndeliver_path = \"notify\"\n",
        ] {
            let text = format!("{BASE}{INBOUND}[store]\npath = \"s.db\"\n{bad}");
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    /// A misspelt section gets "did you mean" with the section's own spelling (issue 20):
    /// `[outbond]` → `[outbound]`, `[[merchant]]` → `[[merchants]]`, a nested one with its
    /// path; a misspelt key still gets the key.
    #[test]
    fn misspelt_sections_get_did_you_mean() {
        for (text, want) in [
            (
                BASE.replace("[outbound]", "[outbond]"),
                "did you mean `[outbound]`?",
            ),
            (
                format!("{BASE}[[merchant]]\nname = \"a\"\n"),
                "did you mean `[[merchants]]`?",
            ),
            (
                format!("{BASE}[sever]\nthreads = 2\n"),
                "did you mean `[server]`?",
            ),
            (
                "[[merchants]]\nname = \"a\"\nclient_id = \"T_1\"\n[merchants.key]\nx = 1\n"
                    .to_string(),
                "did you mean `[merchants.keys]`?",
            ),
            (format!("{BASE}regon = \"na\"\n"), "did you mean `region`?"),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// A config that cannot be read at the default path says it is the default path and how
    /// to make a config; another path is blamed on --config or on ALIPAY_SIDECAR_CONFIG.
    #[test]
    fn unreadable_config_advice_names_where_the_path_came_from() {
        use std::ffi::OsStr;
        use std::io::ErrorKind::NotFound;
        let default = Path::new(DEFAULT_CONFIG_PATH);
        let a = error::read_advice(default, NotFound, None);
        assert!(
            a.contains("is the default config path")
                && a.contains("cp config/sidecar.example.toml"),
            "{a}"
        );
        let a = error::read_advice(default, NotFound, Some(OsStr::new(DEFAULT_CONFIG_PATH)));
        assert!(a.contains("ALIPAY_SIDECAR_CONFIG"), "{a}");
        let other = Path::new("/srv/x.toml");
        let a = error::read_advice(other, NotFound, None);
        assert!(a.contains("given with --config"), "{a}");
        let a = error::read_advice(other, NotFound, Some(OsStr::new("/srv/x.toml")));
        assert!(a.contains("check the path in ALIPAY_SIDECAR_CONFIG"), "{a}");
    }
}
