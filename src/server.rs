//! `alipay-sidecar run`: one pingora server with three listeners — outbound (signing proxy),
//! inbound (notification verifier) and admin — plus the key-reload background task.
//!
//! Shutdown: pingora stops accepting the moment its shutdown watch returns, and its grace
//! period is a fixed sleep. The sidecar's own [`ShutdownSignalWatch`] therefore does the
//! draining before it returns: on SIGTERM or SIGINT it turns readiness to 503 at once, keeps
//! serving (including new connections) for `shutdown_grace` so load balancers notice, then
//! waits up to `shutdown_timeout` for in-flight requests to finish, and only then lets pingora
//! stop the listeners. SIGQUIT does the same (pingora's socket hand-over on SIGQUIT needs an
//! `--upgrade` process this binary does not offer).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::adapter::Adapter;
use crate::admin::Admin;
use crate::config::{Config, MerchantConfig};
use crate::inbound::Inbound;
use crate::keyset::KeySet;
use crate::limits::{Limited, ListenerLimits};
use crate::listen::{ReadyTask, Reserved};
use crate::merchants::Merchants;
use crate::outbound::{Outbound, OutboundMerchant, OutboundPolicy};
use crate::reload::{publish_key_metrics, ListenerCert, ReloadTask, Reloader};
use crate::state::SidecarState;
use crate::store::StateStore;
use crate::tls::{CertSource, ListenerTls};
use crate::upstream::Upstream;

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
    crate::logging::init(&config.log);
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
    // the store opens (and migrates) before any listener: a store that cannot be used at start
    // is a configuration problem, reported against [store] like any other
    let store = match &config.store {
        None => None,
        Some(cfg) => {
            let key = match cfg {
                crate::config::StoreConfig::Sqlite(_) => "store.path",
                crate::config::StoreConfig::Postgres(_) => "store.url",
            };
            // an unreachable PostgreSQL is not a reason to stay down (issue 18 L5): start
            // without it; anything else (login, database, schema, SQLite file) is a
            // configuration error, exit 2 like check-config's
            let store = StateStore::open_or_later(cfg, config.store_options.timeout)
                .map_err(|e| StartError::Config(config.error_at(key, e.to_string())))?;
            if store.is_up() {
                tracing::info!(store = %store.location(), "state store open");
            }
            crate::store::register_metrics();
            Some(store)
        }
    };
    let state = SidecarState::with_store(merchants, store);
    // [reconcile] (validated: it has a store, [outbound] and [inbound])
    let reconcile = crate::reconcile::Wiring::new(config.reconcile.as_ref(), state.store());
    let pay_recording = reconcile.as_ref().map(|r| r.pay_hook());

    // Fail early with a clear message rather than inside pingora's listener setup, and pick
    // the ports of port-0 listeners (held until pingora has bound them). Each listener with
    // the config key that names its address.
    let mut wanted: Vec<(SocketAddr, &'static str, String)> =
        vec![(config.admin.listen, "admin", "admin.listen".to_string())];
    if let Some(o) = &config.outbound {
        if let Some(l) = o.listen {
            wanted.push((l, "outbound", "outbound.listen".to_string()));
        }
        if let Some(t) = &o.tls {
            wanted.push((t.listen, "outbound_tls", "outbound.tls_listen".to_string()));
        }
        for m in &config.merchants {
            if let Some(l) = m.listen {
                let name = listener_name("outbound", Some(m));
                wanted.push((l, name, m.key("outbound.listen")));
            }
            if let Some(l) = m.tls_listen {
                let name = listener_name("outbound_tls", Some(m));
                wanted.push((l, name, m.key("outbound.tls_listen")));
            }
        }
    }
    if let Some(i) = &config.inbound {
        wanted.push((i.listen, "inbound", "inbound.listen".to_string()));
    }
    let mut listeners: Vec<Reserved> = Vec::new();
    for (addr, name, key) in &wanted {
        let reserved = crate::listen::reserve(*name, *addr).map_err(|e| {
            config.error_at(
                key,
                format!("cannot listen on {addr}: {e}; pick a free address or stop the process using it"),
            )
        })?;
        listeners.push(reserved);
    }
    let bound = |name: &str| {
        listeners
            .iter()
            .find(|r| r.name() == name)
            .expect("every configured listener is reserved")
    };

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
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();
    let limits = |max_connections: usize| ListenerLimits {
        max_connections,
        max_header_bytes: config.server.max_header_bytes,
        header_read_timeout: config.server.header_read_timeout,
        idle_timeout: config.server.idle_timeout,
    };

    let mut private_dirs = Vec::new();
    let mut reload_tls = None;
    if let Some(o) = config.outbound.clone() {
        // one gateway client (one connection pool) per merchant, shared by every listener
        // that serves the merchant; one merged CA bundle per distinct ca_file
        let mut bundles: Vec<(std::path::PathBuf, String)> = Vec::new();
        let mut upstreams = Vec::with_capacity(config.merchants.len());
        for m in &config.merchants {
            let ca = match &m.ca_file {
                Some(path) => match bundles.iter().find(|(p, _)| p == path) {
                    Some((_, file)) => Some(file.clone()),
                    None => {
                        let key = if o.ca_file.as_ref() == Some(path) {
                            "outbound.ca_file".to_string()
                        } else {
                            m.key("outbound.ca_file")
                        };
                        let written =
                            crate::tls::ca_bundle(path).and_then(|pem| write_private(&pem));
                        let (dir, file) = written.map_err(|msg| {
                            config.error_at(&key, format!("cannot use {}: {msg}", path.display()))
                        })?;
                        let file = file.display().to_string();
                        private_dirs.push(dir);
                        bundles.push((path.clone(), file.clone()));
                        Some(file)
                    }
                },
                None => None,
            };
            let gateway = m.gateway.as_ref().unwrap_or(&o.gateway);
            upstreams.push(Arc::new(Upstream::new(
                &gateway.host,
                gateway.port,
                true,
                ca,
                o.connect_timeout,
            )));
        }
        let merchant = |i: usize| {
            let m = &config.merchants[i];
            let gateway = m.gateway.as_ref().unwrap_or(&o.gateway);
            OutboundMerchant::from_config(&state, i, m, gateway, upstreams[i].clone())
                .with_upload_from(&o, gateway)
        };
        let max = o.max_connections;
        // The shared listeners (every merchant; several → by X-Alipay-Sidecar-Merchant), then
        // each merchant's own (that merchant only). One proxy behind a group's listeners.
        let mut groups = Vec::new();
        let shared_listeners = o.listen_addrs();
        if !shared_listeners.is_empty() {
            let all = (0..config.merchants.len()).map(merchant).collect();
            let mut handler = Outbound::shared(
                OutboundPolicy::from_config(&config, &o, &shared_listeners),
                all,
            );
            if let Some(recording) = &pay_recording {
                handler = handler.with_pay_recording(recording.clone());
            }
            let names: Vec<&str> = config.merchants.iter().map(|m| m.name.as_str()).collect();
            groups.push((
                None,
                o.listen,
                o.tls.as_ref().map(|t| t.listen),
                handler,
                names.join(","),
            ));
        }
        for (i, m) in config.merchants.iter().enumerate() {
            if m.listen.is_none() && m.tls_listen.is_none() {
                continue;
            }
            let mut handler = Outbound::new(
                OutboundPolicy::from_config(&config, &o, &m.listen_addrs()),
                merchant(i),
            );
            if let Some(recording) = &pay_recording {
                handler = handler.with_pay_recording(recording.clone());
            }
            groups.push((Some(m), m.listen, m.tls_listen, handler, m.name.clone()));
        }
        if let Some(r) = &reconcile {
            // the reconciler's calls go through an outbound handler of every merchant, on
            // the merchants' gateway clients: signed, verified, counted like the app's
            let all = (0..config.merchants.len()).map(merchant).collect();
            let handler = Outbound::shared(OutboundPolicy::from_config(&config, &o, &[]), all);
            server.add_service(crate::reconcile::service(r, handler, o.request_timeout));
        }
        let mut shared_tls: Option<(Arc<ListenerTls>, String, &'static str)> = None;
        for (owner, plain, tls, handler, serves) in groups {
            let mut proxy = pingora::proxy::http_proxy(&conf, Adapter::new(handler, state.clone()));
            // HTTP/2 (ALPN h2 on the HTTPS listener): its limits, crate::h2
            proxy.h2_options = Some(crate::h2::options(config.server.max_header_bytes));
            proxy.server_options = Some(crate::h2::server_options(config.server.idle_timeout));
            let proxy = Arc::new(proxy);
            if plain.is_some() {
                let name = listener_name("outbound", owner);
                let mut svc = Service::new(
                    name.to_string(),
                    Limited::shared(proxy.clone(), name, limits(max), None),
                );
                bound(name).add_to(&mut svc);
                server.add_service(svc);
                let listen = bound(name).addr();
                tracing::info!(%listen, listener = name, merchants = %serves, max_connections = max, "outbound signing proxy (http)");
            }
            let Some(configured_listen) = tls else {
                continue;
            };
            // every HTTPS outbound listener serves the one certificate of [outbound]
            // (configured, issued or generated once), so a reload of its files reaches them all
            if shared_tls.is_none() {
                let t = o.tls.clone().unwrap_or_else(|| crate::config::OutboundTls {
                    listen: configured_listen,
                    source: CertSource::Generated,
                    names: Vec::new(),
                    ca_out: None,
                    trust_out: None,
                });
                let identity = outbound_identity(&t).map_err(|msg| {
                    let key = if !matches!(t.source, CertSource::Generated) {
                        t.source.config_key().to_string()
                    } else if o.tls.is_some() {
                        "outbound.tls_listen".to_string()
                    } else {
                        owner.map_or("outbound.tls_listen".to_string(), |m| {
                            m.key("outbound.tls_listen")
                        })
                    };
                    config.error_at(&key, msg)
                })?;
                let listener_tls = ListenerTls::new(&identity);
                if !matches!(t.source, CertSource::Generated) {
                    reload_tls = Some(ListenerCert {
                        live: listener_tls.clone(),
                        source: t.source.clone(),
                        names: t.names.clone(),
                        trust_out: t.trust_out.clone(),
                        issued_from: std::sync::Mutex::new(ListenerCert::files_digest(&t.source)),
                    });
                }
                let kind = match t.source {
                    CertSource::Generated => "generated at start (in memory)",
                    CertSource::Files { .. } => "configured",
                    CertSource::Ca { .. } => "issued at start from tls_ca_cert",
                };
                tracing::info!(
                    certificate_sha256 = %identity.fingerprint,
                    ca_sha256 = %identity.ca_fingerprint,
                    certificate = kind,
                    trust_out = ?t.trust_out.as_ref().map(|p| p.display().to_string()),
                    "HTTPS listener certificate"
                );
                shared_tls = Some((listener_tls, identity.fingerprint.clone(), kind));
            }
            let Some((listener_tls, fingerprint, kind)) = shared_tls.clone() else {
                unreachable!("set above");
            };
            let name = listener_name("outbound_tls", owner);
            let mut svc = Service::new(
                name.to_string(),
                Limited::shared(proxy, name, limits(max), Some(listener_tls)),
            );
            bound(name).add_to(&mut svc);
            server.add_service(svc);
            tracing::info!(
                listen = %bound(name).addr(),
                listener = name,
                merchants = %serves,
                certificate_sha256 = %fingerprint,
                certificate = kind,
                "outbound signing proxy (https)"
            );
        }
    }
    if let Some(i) = config.inbound.clone() {
        let listen = bound("inbound").addr();
        let app = i.forward_to.url();
        let max = i.max_connections;
        let mut handler = Inbound::from_config(state.clone(), &config, &i);
        if let Some(r) = &reconcile {
            handler = handler.with_reconcile(r.notification_hook());
        }
        let proxy = pingora::proxy::http_proxy(&conf, Adapter::new(handler, state.clone()));
        let mut svc = Service::new(
            "inbound".to_string(),
            Limited::new(proxy, "inbound", limits(max)),
        );
        bound("inbound").add_to(&mut svc);
        server.add_service(svc);
        tracing::info!(%listen, forward_to = %app, max_connections = max, "inbound notification verifier");
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
        .map(|(_, name, _)| (*name, bound(name).addr()))
        .collect();
    let admin_app = Admin::new(state.clone(), reloader.clone(), traffic)
        .with_hosts(config.admin.allowed_hosts.clone());
    let mut admin = Service::new(
        "admin".to_string(),
        Limited::new(
            HttpServer::new_app(admin_app),
            "admin",
            limits(config.admin.max_connections),
        ),
    );
    bound("admin").add_to(&mut admin);
    server.add_service(admin);
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
    let admin_listen = bound("admin").addr();
    server.add_service(background_service(
        "listeners ready",
        ReadyTask::new(listeners, ready_file),
    ));
    tracing::info!(listen = %admin_listen, merchants = ?config.merchants.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), engine = crate::protocol::ENGINE, "admin listener; sidecar starting");

    let drain = DrainOnSignal {
        state,
        grace: config.server.shutdown_grace,
        timeout: config.server.shutdown_timeout,
    };
    Ok(Built {
        server,
        drain,
        private_dirs,
    })
}

/// The name of an outbound listener in metrics (`listener` label), logs and readiness:
/// `outbound` / `outbound_tls` for the shared ones, `outbound:<merchant>` /
/// `outbound_tls:<merchant>` for a merchant's own. Leaked once per listener at start-up (the
/// metrics and the listener limits take `&'static str`), bounded by the config.
fn listener_name(kind: &'static str, owner: Option<&MerchantConfig>) -> &'static str {
    match owner {
        None => kind,
        Some(m) => Box::leak(format!("{kind}:{}", m.name).into_boxed_str()),
    }
}

/// The HTTPS outbound listener's certificate from its source (configured files, issued from
/// `tls_ca_cert`, or generated now); writes the generated CA to `tls_ca_out` and the trust
/// bundle to `tls_trust_out` when set.
pub fn outbound_identity(t: &crate::config::OutboundTls) -> Result<crate::tls::Identity, String> {
    let identity = crate::tls::load(&t.source, &t.names)?;
    if let Some(path) = &t.ca_out {
        std::fs::write(path, &identity.ca_pem).map_err(|e| {
            format!(
                "writing the generated CA certificate to {} (tls_ca_out): {e}; pick a \
                 writable path",
                path.display()
            )
        })?;
    }
    if let Some(path) = &t.trust_out {
        crate::tls::write_trust_bundle(path, &identity.ca_pem)?;
    }
    Ok(identity)
}

/// Writes `bundle` into a new private folder (mode 0700, unpredictable name, removed when the
/// returned handle drops), because pingora's connector reads its trust roots from a path.
fn write_private(bundle: &[u8]) -> Result<(tempfile::TempDir, std::path::PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("alipay-sidecar-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|e| {
            format!(
                "creating a private folder for the merged CA bundle in {}: {e} (with a \
                 read-only root filesystem, mount a writable /tmp, e.g. an emptyDir, or set \
                 TMPDIR)",
                std::env::temp_dir().display()
            )
        })?;
    let path = dir.path().join("ca-bundle.pem");
    std::fs::write(&path, bundle)
        .map_err(|e| format!("writing the merged CA bundle {}: {e}", path.display()))?;
    Ok((dir, path))
}

/// Waits for SIGTERM, SIGINT or SIGQUIT, drains, then tells pingora to stop.
pub struct DrainOnSignal {
    state: Arc<SidecarState>,
    grace: Duration,
    timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        // SIGQUIT drains too: pingora's socket hand-over to a new process (`--upgrade`) is
        // not offered by this binary, so an "upgrade" would hand the sockets to nobody.
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        };
        self.state.start_draining();
        tracing::info!(
            signal = which,
            grace_s = self.grace.as_secs_f64(),
            "shutdown: readiness is now 503; still serving during the grace period"
        );
        tokio::time::sleep(self.grace).await;
        let start = Instant::now();
        while self.state.in_flight() > 0 && start.elapsed() < self.timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown_timeout reached with requests still in flight"
            );
        } else {
            tracing::info!("shutdown: all in-flight requests finished");
        }
        ShutdownSignal::GracefulTerminate
    }
}
