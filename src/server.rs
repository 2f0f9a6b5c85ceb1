//! `alipay-sidecar run`: one pingora server with three listeners — outbound (signing proxy),
//! inbound (notification verifier) and admin — plus the background tasks (key reload, the
//! reconciler, the delivery worker, retention, readiness).
//!
//! Each service is built beside its handler (`outbound::services`, `inbound::service`,
//! `admin::service`) from the [`Wiring`] this file prepares; this file loads the
//! configuration and keys, opens what the services share, adds them and runs the server until
//! [`DrainOnSignal`] (in [`crate::shutdown`]) says to stop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;

use crate::config::{Config, MerchantConfig};
use crate::keyset::KeySet;
use crate::listen::ReadyTask;
use crate::merchants::Merchants;
use crate::reload::{publish_key_metrics, ReloadTask, Reloader};
use crate::shutdown::DrainOnSignal;
use crate::state::SidecarState;
use crate::store::StateStore;
use crate::wiring::{Wanted, Wiring};

/// Entry point of `alipay-sidecar run`; returns the process exit code (see
/// [`crate::cli::exit::EXIT_CODES_HELP`]): 0 after a graceful shutdown, 2 when the config file or the
/// keys are unusable (nothing was started), 1 when a valid configuration could not be started
/// (e.g. an address in use). Each error is printed once, as plain text on stderr: nothing is
/// running yet that a log collector would follow.
/// `ready_file`: written (atomically) once every listener accepts connections, naming the
/// address each one is bound to; see [`crate::listen`].
pub fn run(config_path: &Path, ready_file: Option<&Path>) -> i32 {
    crate::memory::return_freed_buffers();
    let open_files = crate::limits::raise_open_files_limit();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::cli::exit::EXIT_USAGE;
        }
    };
    let loaded = crate::preflight::load(&config);
    let mut sets = Vec::with_capacity(config.merchants.len());
    for (m, keys) in config.merchants.iter().zip(loaded.sets) {
        match keys {
            Ok(k) => sets.push((m.clone(), k)),
            Err(e) if config.merchants.len() > 1 => {
                eprintln!("error: merchant {}: {e}", m.name);
                return crate::cli::exit::EXIT_USAGE;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return crate::cli::exit::EXIT_USAGE;
            }
        }
    }
    if let Some(path) = ready_file {
        if let Err(e) = crate::listen::check_ready_file(path) {
            eprintln!(
                "error: cannot start: cannot write the ready file {} (--ready-file): {e}; pick \
                 an existing, writable folder",
                path.display()
            );
            return crate::cli::exit::EXIT_INVALID;
        }
    }
    // held until the function returns: dropping it writes out the queued log lines
    let _log = match crate::logging::init(&config.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!(
                "error: cannot start: cannot start the log writer thread: {e}; the process is \
                 out of threads or memory: check `ulimit -u` and the container's pids and \
                 memory limits"
            );
            return crate::cli::exit::EXIT_INVALID;
        }
    };
    crate::tls::seed_random();
    if let Some((before, after)) = open_files {
        if after < 2048 {
            tracing::warn!(open_files = after, "the open-files limit (ulimit -n) is low for the listeners' connection caps; raise it to at least 2048");
        } else if before != after {
            tracing::debug!(
                before,
                after,
                "open-files soft limit raised to the hard limit"
            );
        }
    }
    match build(
        config,
        sets,
        loaded.cross,
        ready_file.map(Path::to_path_buf),
    ) {
        Ok(server) => {
            let Built {
                server,
                drain,
                private_dirs,
            } = server;
            server.run(RunArgs {
                shutdown_signal: Box::new(drain),
            });
            drop(private_dirs); // the merged CA bundles go with them
            tracing::info!("stopped");
            crate::cli::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            e.exit_code()
        }
    }
}

/// A server ready to run, with the watch that drains it.
pub struct Built {
    /// The pingora server with all services added.
    pub server: Server,
    /// The shutdown watch to pass to `Server::run`.
    pub drain: DrainOnSignal,
    /// The process's private folders (mode 0700, random name, removed on drop) holding the
    /// merged CA bundles (one per distinct `ca_file`); keep them until the server stopped.
    pub private_dirs: Vec<tempfile::TempDir>,
}

/// Why the server could not start once the configuration and keys loaded: a listener address
/// that cannot be bound, or an unusable `ca_file`. Both are reported against the config key
/// (file and line) that has to change.
///
/// A state store that cannot be opened (other than an unreachable PostgreSQL, which the
/// sidecar starts without) is a configuration error: [`StartError::Config`], exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is valid but cannot be started here (exit 1).
    #[error("{0}")]
    Runtime(#[from] crate::config::ConfigError),
    /// A setting must change (exit 2, as `check-config`'s errors).
    #[error("{0}")]
    Config(crate::config::ConfigError),
}

impl StartError {
    /// The process exit code of this error (see [`run`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Runtime(_) => crate::cli::exit::EXIT_INVALID,
            StartError::Config(_) => crate::cli::exit::EXIT_USAGE,
        }
    }
}

/// Builds the server from a loaded configuration and each merchant's key set (which already
/// passed preflight; `cross`: the preflight's warnings across merchants, logged here with
/// the sets' own). `ready_file`: see [`run`].
///
/// Each service is built by the constructor beside its handler ([`crate::outbound::services`],
/// [`crate::inbound::service`], [`crate::admin::service`]) from the shared [`Wiring`]; this
/// function only opens what they share (the state, the store, the listeners) and adds them.
pub fn build(
    config: Config,
    sets: Vec<(MerchantConfig, KeySet)>,
    cross: Vec<crate::keyset::Finding>,
    ready_file: Option<std::path::PathBuf>,
) -> Result<Built, StartError> {
    // preflight warnings: remote clients allowed, verify_responses = false, shadow mode, …
    for (m, keys) in &sets {
        for w in &keys.warnings {
            tracing::warn!(merchant = %m.name, finding = %w.message, "preflight warning");
        }
        publish_key_metrics(&m.name, keys);
    }
    for w in &cross {
        tracing::warn!(finding = %w.message, "preflight warning");
    }
    let Some(merchants) = Merchants::new(sets) else {
        return Err(StartError::Runtime(config.error_at(
            "merchants",
            "no merchant is configured; add client_id and [keys], or [[merchants]]".to_string(),
        )));
    };
    let state = SidecarState::with_store(merchants, open_store(&config)?);

    // [reconcile] (validated: it has a store, [outbound] and [inbound]): the hooks it gives
    // the handlers, and (below) its service
    let reconcile = crate::reconcile::Wiring::new(config.reconcile.as_ref(), state.store());
    let pay_recording = reconcile.as_ref().map(|r| r.pay_hook());

    // Fail early with a clear message rather than inside pingora's listener setup, and pick
    // the ports of port-0 listeners (held until pingora has bound them). Each listener with
    // the config key that names its address.
    let mut wanted: Vec<Wanted> = vec![(config.admin.listen, "admin", "admin.listen".to_string())];
    wanted.extend(crate::outbound::listeners(&config));
    if let Some(i) = &config.inbound {
        wanted.push((i.listen, "inbound", "inbound.listen".to_string()));
    }
    let listeners = crate::wiring::reserve(&config, &wanted)?;

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    let wiring = Wiring::new(server.configuration.clone(), listeners, &config.server);

    let mut private_dirs = Vec::new();
    let mut reload_tls = None;
    if let Some(o) = &config.outbound {
        let outbound = crate::outbound::services(&config, o, &state, pay_recording, &wiring)?;
        if let Some(r) = &reconcile {
            // the reconciler's calls go through an outbound handler of every merchant, on
            // the merchants' gateway clients: signed, verified, counted like the app's
            let handler = outbound.own_calls(&config, o, &state);
            server.add_service(crate::reconcile::service(r, handler, o.request_timeout));
        }
        if let (Some(b), Some(store)) = (&config.backfill, state.store()) {
            // the backfill's inquireNotificationList calls: the same kind of handler
            let handler = outbound.own_calls(&config, o, &state);
            server.add_service(crate::backfill::service(
                &config,
                b,
                store,
                handler,
                o.request_timeout,
                reconcile.as_ref().map(|r| r.notification_hook()),
            ));
        }
        server.add_services(outbound.services);
        reload_tls = outbound.reload_tls;
        private_dirs = outbound.private_dirs;
    }
    if let Some(i) = &config.inbound {
        let reconcile_hook = reconcile.as_ref().map(|r| r.notification_hook());
        server.add_boxed_service(crate::inbound::service(
            &config,
            i,
            &state,
            reconcile_hook,
            &wiring,
        ));
    }

    let reloader = Reloader::new(
        state.clone(),
        config.path.clone(),
        config.clone(),
        reload_tls,
    );
    // readiness probes the addresses actually bound (a configured port 0 is a picked port)
    let traffic: Vec<(&'static str, SocketAddr)> = wanted
        .iter()
        .filter(|(_, name, _)| *name != "admin")
        .map(|(_, name, _)| (*name, wiring.bound(name).addr()))
        .collect();
    server.add_boxed_service(crate::admin::service(
        &config,
        &state,
        reloader.clone(),
        traffic,
        &wiring,
    ));
    server.add_service(background_service("key reload", ReloadTask::new(reloader)));
    crate::credentials::metrics()
        .register_merchants(config.merchants.iter().map(|m| m.name.as_str()));
    // the delivery worker: queued notifications (store-and-forward, reconciled results,
    // replays) to the app, whatever the acknowledge mode
    if let Some(worker) = crate::delivery::service(&config, state.store()) {
        server.add_service(worker);
    }
    if let Some(store) = state.store() {
        let pruner = crate::retention::Pruner::new(store.clone(), config.store_options.retention);
        server.add_service(background_service("store retention", pruner));
    }
    let admin_listen = wiring.bound("admin").addr();
    server.add_service(background_service(
        "listeners ready",
        ReadyTask::new(wiring.into_listeners(), ready_file),
    ));
    tracing::info!(listen = %admin_listen, merchants = ?config.merchants.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), engine = crate::protocol::ENGINE, "admin listener; sidecar starting");

    let drain = DrainOnSignal::new(
        state,
        config.server.shutdown_grace,
        config.server.shutdown_timeout,
    );
    Ok(Built {
        server,
        drain,
        private_dirs,
    })
}

/// Opens (and migrates) the state store of `[store]`, before any listener: a store that
/// cannot be used at start is a configuration problem, reported against `[store]` like any
/// other. An unreachable PostgreSQL is not a reason to stay down (issue 18 L5): the sidecar
/// starts without it; anything else (login, database, schema, SQLite file) is a
/// configuration error, exit 2 like check-config's.
fn open_store(config: &Config) -> Result<Option<Arc<StateStore>>, StartError> {
    let Some(cfg) = &config.store else {
        return Ok(None);
    };
    let key = match cfg {
        crate::config::StoreConfig::Sqlite(_) => "store.path",
        crate::config::StoreConfig::Postgres(_) => "store.url",
    };
    let store = StateStore::open_or_later(cfg, config.store_options.timeout)
        .map_err(|e| StartError::Config(config.error_at(key, e.to_string())))?;
    if store.is_up() {
        tracing::info!(store = %store.location(), "state store open");
    }
    crate::store::register_metrics();
    Ok(Some(store))
}

/// pingora's configuration: `[server] threads`, no grace period of its own (the drain
/// happens in [`DrainOnSignal`]), and this process's own upgrade socket and pid file names.
fn server_conf(config: &Config) -> ServerConf {
    let mut conf = ServerConf {
        threads: config.server.threads.max(1),
        ..Default::default()
    };
    conf.grace_period_seconds = Some(0); // the drain happens in DrainOnSignal
    conf.graceful_shutdown_timeout_seconds = Some(1);
    let tmp = std::env::temp_dir();
    conf.upgrade_sock = tmp
        .join(format!(
            "alipay-sidecar-{}-upgrade.sock",
            std::process::id()
        ))
        .display()
        .to_string();
    conf.pid_file = tmp
        .join(format!("alipay-sidecar-{}.pid", std::process::id()))
        .display()
        .to_string();
    conf
}
