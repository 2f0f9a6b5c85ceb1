//! Structured logs (tracing): JSON when stdout is not a terminal, text otherwise, or as
//! configured; level from `RUST_LOG` when set, else `[log] level`. pingora's own `log`
//! records are bridged into the same output.
//!
//! What is never logged: key material, `Signature` header values, bodies at info level.
//! Request lines carry direction, api, status, outcome, durations and sizes; the content
//! SHA-256 appears with verification failures so two sides can compare.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber once; later calls are no-ops.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},pingora_core=warn,pingora_proxy=warn",
            cfg.level
        ))
    });
    let json = match cfg.format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
