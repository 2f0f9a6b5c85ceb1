//! `alipay-sidecar check-config`: loads the config and every key, runs the preflight and
//! prints a summary.

use std::io::Write;
use std::path::PathBuf;

use crate::cli::exit::{EXIT_OK, EXIT_USAGE};
use crate::config::{CertSource, Config};
use crate::keyset::{Credential, KeySet, Severity};

/// Default config path (the container image mounts config and keys under
/// `/etc/alipay-sidecar/`).
pub const DEFAULT_CONFIG: &str = crate::config::DEFAULT_CONFIG_PATH;

/// Options of the commands that read the config file (`check-config`, `run`).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The config file.
    #[arg(long, value_name = "FILE", env = "ALIPAY_SIDECAR_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// Reports an error that makes the configuration unusable; the `check-config` exit code
/// (2, as `run` exits for the same error).
fn not_usable(err: &mut dyn Write, e: &dyn std::fmt::Display) -> i32 {
    let _ = writeln!(err, "error: {e}");
    let _ = writeln!(
        err,
        "NOT USABLE: fix the error above and run check-config again"
    );
    EXIT_USAGE
}

/// One merchant's line of the `check-config` summary (several merchants only): name, client
/// id, gateway, own listeners and where its notifications go.
fn summarise_merchant(out: &mut dyn Write, m: &crate::config::MerchantConfig) {
    let kind = if m.is_sandbox() { "sandbox" } else { "live" };
    let listeners: Vec<String> = m
        .listen
        .map(|a| format!("http://{a}"))
        .into_iter()
        .chain(m.tls_listen.map(|a| format!("https://{a}")))
        .collect();
    let _ =
        writeln!(
        out,
        "merchant {}: client id {} ({kind}); gateway {}; own listeners {}; notifications -> {}{}",
        m.name,
        m.client_id,
        m.gateway.as_ref().map_or("none (no [outbound])".into(), |g| g.url()),
        if listeners.is_empty() {
            "none (the shared listener with X-Alipay-Sidecar-Merchant)".to_string()
        } else {
            listeners.join(" and ")
        },
        m.forward_to.as_ref().map_or("none (no [inbound])".into(), |f| f.url()),
        if m.agent_token.is_some() { "; agent token set" } else { "" }
    );
}

/// `alipay-sidecar check-config`: loads the config and every key, runs the preflight and
/// prints a summary; exit 0 when the sidecar could start with it.
pub fn check_config(args: &ConfigArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return not_usable(err, &e),
    };
    let mut sets = Vec::with_capacity(config.merchants.len());
    for m in &config.merchants {
        match KeySet::load_unchecked(&config, m) {
            Ok(k) => sets.push((m, k)),
            Err(e) => return not_usable(err, &e),
        }
    }
    let shared_ca = config.outbound.as_ref().and_then(|o| o.ca_file.as_ref());
    let cas = shared_ca
        .map(|ca| ("outbound.ca_file".to_string(), ca))
        .into_iter()
        .chain(config.merchants.iter().filter_map(|m| {
            let ca = m.ca_file.as_ref().filter(|ca| Some(*ca) != shared_ca)?;
            Some((m.key("outbound.ca_file"), ca))
        }));
    for (key, path) in cas {
        if let Err(m) = crate::tls::ca_bundle(path) {
            let e = config.error_at(&key, format!("cannot use {}: {m}", path.display()));
            return not_usable(err, &e);
        }
    }
    let tls_line = match config.outbound.as_ref().and_then(|o| o.tls.as_ref()) {
        None => None,
        Some(t) => {
            let trust = t.trust_out.as_ref().map_or(String::new(), |p| {
                format!("; trust bundle for apps -> {}", p.display())
            });
            match &t.source {
                CertSource::Files { cert, key } => match crate::tls::from_files(cert, key) {
                    Ok(id) => Some(format!(
                        "https listener certificate: {} (SHA-256 {}; apps trust {}){trust}",
                        cert.display(),
                        id.fingerprint,
                        id.ca_fingerprint
                    )),
                    Err(m) => return not_usable(err, &config.error_at("outbound.tls_cert", m)),
                },
                CertSource::Ca { cert, key } => match crate::tls::load_ca(cert, key) {
                    Ok(ca) => Some(format!(
                        "https listener certificate: issued at every start from the CA {} \
                         (CA SHA-256 {}){trust}",
                        cert.display(),
                        ca.fingerprint()
                    )),
                    Err(m) => return not_usable(err, &config.error_at("outbound.tls_ca_cert", m)),
                },
                CertSource::Generated => Some(format!(
                    "https listener certificate: generated at start, in memory, under a new CA \
                     at every start (its SHA-256 is logged by `run`; for a CA that survives \
                     restarts see `alipay-sidecar local-ca`){trust}"
                )),
            }
        }
    };
    let pairs: Vec<_> = sets.iter().map(|(m, k)| (*m, k)).collect();
    let mut findings: Vec<_> = crate::preflight::run(&config, &pairs)
        .all()
        .cloned()
        .collect();
    // the store checks `run` makes before it opens [store] (issue 20, item 6)
    if let Some(store) = &config.store {
        match crate::store::check(store, config.store_options.timeout) {
            Ok(None) => {}
            Ok(Some(warning)) => findings.push(crate::keyset::Finding {
                severity: Severity::Warning,
                message: format!("[store]: {warning}"),
            }),
            Err(e) => {
                let key = match store {
                    crate::config::StoreConfig::Sqlite(_) => "store.path",
                    crate::config::StoreConfig::Postgres(_) => "store.url",
                };
                return not_usable(err, &config.error_at(key, e.to_string()));
            }
        }
    }

    let _ = writeln!(out, "config: {}", config.path.display());
    let several = sets.len() > 1;
    if !several {
        let m = &config.merchants[0];
        let kind = if crate::preflight::is_placeholder_client_id(&m.client_id) {
            "a placeholder, neither sandbox nor live"
        } else if m.is_sandbox() {
            "sandbox"
        } else {
            "live"
        };
        let _ = writeln!(out, "client id: {} ({kind})", m.client_id);
    }
    match &config.outbound {
        Some(o) => {
            let _ = writeln!(
                out,
                "outbound: listening on {} -> gateway {} (allowed paths: {}; response verification {})",
                o.listen_addrs()
                    .iter()
                    .zip(o.listen.map_or(vec!["https"], |_| vec!["http", "https"]))
                    .map(|(a, scheme)| format!("{scheme}://{a}"))
                    .collect::<Vec<_>>()
                    .join(" and "),
                o.gateway.url(),
                o.allowed_path_prefixes.join(" "),
                if o.verify_responses { "on" } else { "OFF" }
            );
        }
        None => {
            let _ = writeln!(out, "outbound: off (no [outbound] section)");
        }
    }
    match &config.inbound {
        Some(i) => {
            let _ = writeln!(
                out,
                "inbound: listening on {} -> app {} (mode {}, acknowledge {})",
                i.listen,
                i.forward_to.url(),
                i.mode,
                i.acknowledge
            );
        }
        None => {
            let _ = writeln!(out, "inbound: off (no [inbound] section)");
        }
    }
    if let Some(line) = tls_line {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "admin: listening on {}", config.admin.listen);
    for (m, keys) in &sets {
        let indent = if several {
            summarise_merchant(out, m);
            "  "
        } else {
            ""
        };
        match &keys.credential {
            Credential::Signing(private) => {
                let _ = writeln!(
                    out,
                    "{indent}merchant private key: keyVersion {}, {} ({}-bit {}) from {}",
                    keys.merchant_key_version,
                    private.fingerprint(),
                    private.bits(),
                    private.encoding_label(),
                    keys.sources.credential.display()
                );
            }
            Credential::ApiKey(api_key) => {
                // the kind, environment and a SHA-256 prefix: never the key
                let _ = writeln!(
                    out,
                    "{indent}API key: {} {}, {} (client id {}) from {}; requests carry \
                     Authorization: Bearer instead of a signature",
                    api_key.kind().as_str(),
                    api_key.env().as_str(),
                    api_key.fingerprint(),
                    crate::exchange::echo(api_key.client_id()),
                    keys.sources.credential.display()
                );
            }
        }
        for (version, key) in keys.alipay.versions() {
            let source = keys
                .sources
                .alipay_public_keys
                .get(version)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{indent}Alipay public key: keyVersion {version}, {} ({}-bit {}) from {source}",
                key.fingerprint(),
                key.bits(),
                key.encoding()
            );
        }
    }
    for f in &findings {
        let _ = writeln!(err, "{f}");
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        let _ = writeln!(
            err,
            "NOT USABLE: fix the errors above and run check-config again"
        );
        EXIT_USAGE
    } else {
        let warnings = findings.len();
        let _ = writeln!(
            out,
            "OK: the configuration is usable{}",
            if warnings > 0 {
                format!(" ({warnings} warning(s) above)")
            } else {
                String::new()
            }
        );
        EXIT_OK
    }
}
