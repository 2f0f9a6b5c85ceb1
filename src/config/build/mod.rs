//! From the raw file to the typed [`Config`]: every check that needs more than serde, with
//! defaults taken from the option declarations.
//!
//! One file per section (`keys`, `outbound`, `inbound`, `store` with `[reconcile]`), the
//! rules across listeners in `listeners`, the checks of single values in `values`; this file
//! puts the sections together.

mod inbound;
mod keys;
mod listeners;
mod outbound;
mod store;
mod values;

use std::collections::BTreeMap;

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx, InvalidValue};
use crate::config::raw::{default, RawConfig};
use crate::config::typed::*;
use crate::config::Config;

/// For the option declarations' tests (every duration default is within its key's range).
#[cfg(test)]
pub(super) use values::{max_duration, MIN_DURATION};

impl Ctx<'_> {
    pub(super) fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let drafts = self.merchant_drafts(raw.client_id, raw.keys, raw.merchants)?;
        let outbound_listen_named = raw
            .outbound
            .as_ref()
            .is_some_and(|o| o.get_ref().listen.is_some());

        let outbound = match raw.outbound {
            None => None,
            Some(o) => Some(self.build_outbound(o.into_inner())?),
        };
        let (store, store_options) = match raw.store {
            None => (None, self.store_options(None, None)?),
            Some(s) => {
                let (location, options) = self.build_store(s)?;
                (Some(location), options)
            }
        };
        let inbound = match raw.inbound {
            None => None,
            Some(i) => Some(self.build_inbound(i, store.is_some())?),
        };
        let backfill = self.build_backfill(
            raw.reconcile.as_ref(),
            &drafts,
            store.is_some() && outbound.is_some() && inbound.is_some(),
        )?;
        let reconcile = match raw.reconcile {
            None => None,
            Some(r) => {
                let span = r.span();
                let built = self.build_reconcile(r)?;
                if built.is_some() {
                    let missing = [
                        ("[store]", store.is_none()),
                        ("[outbound]", outbound.is_none()),
                        ("[inbound]", inbound.is_none()),
                    ];
                    if let Some((section, _)) = missing.iter().find(|(_, absent)| *absent) {
                        return self.err(
                            span,
                            "reconcile.enabled",
                            format!(
                                "the reconciler needs {section}: it records pays in the store, \
                                 inquires through [outbound]'s gateway and delivers results to \
                                 [inbound]'s forward_to; add {section} or set enabled = false"
                            ),
                        );
                    }
                }
                built
            }
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

        let (admin_listen, admin_max, admin_hosts) = match raw.admin {
            Some(a) => (a.listen, a.max_connections, a.allowed_hosts),
            None => (None, None, None),
        };
        let admin = AdminConfig {
            listen: self.addr(admin_listen, "admin.listen")?,
            max_connections: self.positive(admin_max, "admin.max_connections")?,
            allowed_hosts: self.host_names(admin_hosts, "admin.allowed_hosts")?,
        };

        let log = match raw.log {
            None => LogConfig {
                format: None,
                level: default("log.level"),
            },
            Some(l) => {
                let level = match l.level {
                    None => default("log.level"),
                    Some(level) => {
                        if let Err(message) = super::check_log_filter(level.get_ref()) {
                            return self.err(level.span(), "log.level", message);
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
            threads: self.positive(s.threads, "server.threads")?,
            shutdown_grace: self.duration(s.shutdown_grace, "server.shutdown_grace")?,
            shutdown_timeout: self.duration(s.shutdown_timeout, "server.shutdown_timeout")?,
            max_header_bytes: self.positive(s.max_header_bytes, "server.max_header_bytes")?,
            header_read_timeout: self
                .duration(s.header_read_timeout, "server.header_read_timeout")?,
            idle_timeout: self.duration(s.idle_timeout, "server.idle_timeout")?,
            body_read_timeout: self.duration(s.body_read_timeout, "server.body_read_timeout")?,
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
                     headers, so the default of 16384 is ample",
                    server.max_header_bytes
                ),
            ));
        }
        let merchants = self.resolve_merchants(drafts, outbound.as_ref(), inbound.as_ref())?;
        let mut outbound = outbound;
        if let Some(o) = outbound.as_mut() {
            // No implicit listener: the shared plain listener's default address applies only
            // to a file that names no outbound listener at all (the single-merchant quick
            // start). Once a merchant has its own, the shared one exists only if written.
            let merchant_listeners = merchants
                .iter()
                .any(|m| m.listen.is_some() || m.tls_listen.is_some());
            if merchant_listeners && !outbound_listen_named {
                o.listen = None;
            }
        }
        self.distinct_listeners(&outbound, &inbound, &admin, &merchants)?;
        self.no_self_loops(&outbound, &inbound, &admin, &merchants)?;

        Ok(Config {
            path: self.path.to_path_buf(),
            merchants,
            outbound,
            inbound,
            admin,
            log,
            server,
            store,
            store_options,
            reconcile,
            backfill,
            origins: BTreeMap::new(),
            settings: Default::default(),
        })
    }
}

/// The most worker threads per listener that make sense here: 4 per core, at most 256.
fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).min(256)
}
