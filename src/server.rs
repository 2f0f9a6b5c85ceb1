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
use crate::config::Config;
use crate::inbound::Inbound;
use crate::keyset::KeySet;
use crate::limits::{Limited, ListenerLimits};
use crate::outbound::Outbound;
use crate::reload::{publish_key_metrics, ReloadTask, Reloader};
use crate::state::SidecarState;
use crate::tls::ListenerTls;

/// Entry point of `alipay-sidecar run`; returns the process exit code (see
/// [`crate::cli::EXIT_CODES_HELP`]): 0 after a graceful shutdown, 2 when the config file or the
/// keys are unusable (nothing was started), 1 when a valid configuration could not be started
/// (e.g. an address in use). Each error is printed once, as plain text on stderr: nothing is
/// running yet that a log collector would follow.
pub fn run(config_path: &Path) -> i32 {
    crate::limits::return_freed_buffers();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::tools::EXIT_USAGE;
        }
    };
    let keys = match KeySet::load(&config) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::tools::EXIT_USAGE;
        }
    };
    crate::logging::init(&config.log);
    match build(config, keys) {
        Ok(server) => {
            let Built {
                server,
                drain,
                private_dir,
            } = server;
            server.run(RunArgs {
                shutdown_signal: Box::new(drain),
            });
            drop(private_dir); // the merged CA bundle goes with it
            tracing::info!("stopped");
            crate::tools::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            crate::tools::EXIT_INVALID
        }
    }
}

/// A server ready to run, with the watch that drains it.
pub struct Built {
    /// The pingora server with all services added.
    pub server: Server,
    /// The shutdown watch to pass to `Server::run`.
    pub drain: DrainOnSignal,
    /// The process's private folder (mode 0700, random name, removed on drop) holding the
    /// merged CA bundle, when one is needed; keep it until the server stopped.
    pub private_dir: Option<tempfile::TempDir>,
}

/// Why the server could not start once the configuration and keys loaded: a listener address
/// that cannot be bound, or an unusable `ca_file`. Both are reported against the config key
/// (file and line) that has to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(#[from] crate::config::ConfigError);

/// Builds the server from a loaded configuration and key set (which already passed preflight).
pub fn build(config: Config, keys: KeySet) -> Result<Built, StartError> {
    // preflight warnings: remote clients allowed, verify_responses = false, shadow mode, …
    for w in &keys.warnings {
        tracing::warn!(finding = %w.message, "preflight warning");
    }
    publish_key_metrics(&keys);
    let state = SidecarState::new(keys);

    // Fail early with a clear message rather than inside pingora's listener setup.
    let mut listeners: Vec<(SocketAddr, &'static str)> = vec![(config.admin.listen, "admin")];
    if let Some(o) = &config.outbound {
        if let Some(l) = o.listen {
            listeners.push((l, "outbound"));
        }
        if let Some(t) = &o.tls {
            listeners.push((t.listen, "outbound_tls"));
        }
    }
    if let Some(i) = &config.inbound {
        listeners.push((i.listen, "inbound"));
    }
    for (addr, section) in &listeners {
        std::net::TcpListener::bind(addr).map_err(|e| {
            config.error_at(
                &match *section {
                    "outbound_tls" => "outbound.tls_listen".to_string(),
                    s => format!("{s}.listen"),
                },
                format!("cannot listen on {addr}: {e}; pick a free address or stop the process using it"),
            )
        })?;
    }

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
    };

    let mut private_dir = None;
    let mut reload_tls = None;
    if let Some(o) = config.outbound.clone() {
        let ca_bundle = match &o.ca_file {
            Some(path) => {
                let written = ca_bundle(path).and_then(|pem| write_private(&pem));
                let (dir, file) = written.map_err(|m| {
                    config.error_at(
                        "outbound.ca_file",
                        format!("cannot use {}: {m}", path.display()),
                    )
                })?;
                let file = file.display().to_string();
                private_dir = Some(dir);
                Some(file)
            }
            None => None,
        };
        let gateway = o.gateway.url();
        let max = o.max_connections;
        let (plain, tls_cfg) = (o.listen, o.tls.clone());
        // one proxy (one gateway pool) behind both listeners
        let proxy = Arc::new(pingora::proxy::http_proxy(
            &conf,
            Adapter::new(
                Outbound::from_config(state.clone(), &config, &o, ca_bundle),
                state.clone(),
            ),
        ));
        if let Some(listen) = plain {
            let mut svc = Service::new(
                "outbound".to_string(),
                Limited::shared(proxy.clone(), "outbound", limits(max), None),
            );
            svc.add_tcp(&listen.to_string());
            server.add_service(svc);
            tracing::info!(%listen, %gateway, max_connections = max, "outbound signing proxy (http)");
        }
        if let Some(t) = tls_cfg {
            let identity = outbound_identity(&t).map_err(|m| {
                let key = if t.files.is_some() {
                    "outbound.tls_cert"
                } else {
                    "outbound.tls_listen"
                };
                config.error_at(key, m)
            })?;
            let listener_tls = ListenerTls::new(&identity);
            if let Some((cert, key)) = &t.files {
                reload_tls = Some((listener_tls.clone(), cert.clone(), key.clone()));
            }
            let mut svc = Service::new(
                "outbound_tls".to_string(),
                Limited::shared(proxy, "outbound_tls", limits(max), Some(listener_tls)),
            );
            svc.add_tcp(&t.listen.to_string());
            server.add_service(svc);
            tracing::info!(
                listen = %t.listen,
                %gateway,
                certificate_sha256 = %identity.fingerprint,
                certificate = if t.files.is_some() { "configured" } else { "generated at start (in memory)" },
                "outbound signing proxy (https)"
            );
        }
    }
    if let Some(i) = config.inbound.clone() {
        let listen = i.listen;
        let app = i.forward_to.url();
        let max = i.max_connections;
        let handler = Inbound::from_config(state.clone(), &config, &i);
        let proxy = pingora::proxy::http_proxy(&conf, Adapter::new(handler, state.clone()));
        let mut svc = Service::new(
            "inbound".to_string(),
            Limited::new(proxy, "inbound", limits(max)),
        );
        svc.add_tcp(&listen.to_string());
        server.add_service(svc);
        tracing::info!(%listen, forward_to = %app, max_connections = max, "inbound notification verifier");
    }

    let reloader = Reloader::new(
        state.clone(),
        config.path.clone(),
        config.clone(),
        reload_tls,
    );
    let traffic: Vec<(&'static str, SocketAddr)> = listeners
        .iter()
        .filter(|(_, name)| *name != "admin")
        .map(|(addr, name)| (*name, *addr))
        .collect();
    let admin_app = Admin::new(state.clone(), reloader.clone(), traffic);
    let mut admin = Service::new(
        "admin".to_string(),
        Limited::new(
            HttpServer::new_app(admin_app),
            "admin",
            limits(config.admin.max_connections),
        ),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin);
    server.add_service(background_service("key reload", ReloadTask::new(reloader)));
    tracing::info!(listen = %config.admin.listen, client_id = %config.client_id, engine = crate::protocol::ENGINE, "admin listener; sidecar starting");

    let drain = DrainOnSignal {
        state,
        grace: config.server.shutdown_grace,
        timeout: config.server.shutdown_timeout,
    };
    Ok(Built {
        server,
        drain,
        private_dir,
    })
}

/// The HTTPS outbound listener's certificate: the configured files, or one generated now
/// whose CA certificate goes to `tls_ca_out` when set.
pub fn outbound_identity(t: &crate::config::OutboundTls) -> Result<crate::tls::Identity, String> {
    if let Some((cert, key)) = &t.files {
        return crate::tls::from_files(cert, key);
    }
    let identity = crate::tls::generate("alipay-sidecar", &t.names)?;
    if let (Some(path), Some(ca)) = (&t.ca_out, &identity.ca_pem) {
        std::fs::write(path, ca).map_err(|e| {
            format!(
                "writing the generated CA certificate to {} (tls_ca_out): {e}; pick a \
                 writable path",
                path.display()
            )
        })?;
    }
    Ok(identity)
}

/// System trust roots plus the configured CA file, as one PEM bundle for the connector
/// (pingora's connector takes one file, and replaces the system roots with it). `check-config`
/// runs the same checks. The CA file is read like a key file: a regular file of bounded size.
pub fn ca_bundle(extra: &Path) -> Result<Vec<u8>, String> {
    let extra_pem = crate::keyset::read_bounded(extra, MAX_CA_FILE_BYTES)?;
    let mut reader = std::io::BufReader::new(extra_pem.as_slice());
    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the file holds no PEM certificate; put the CA certificate \
                    (-----BEGIN CERTIFICATE-----) that issued the gateway's certificate there"
            .into());
    }
    let mut bundle = Vec::new();
    // a machine without system roots still works with the configured CA alone
    if let Ok(roots) = rustls_native_certs::load_native_certs() {
        for cert in roots {
            pem_cert(&mut bundle, cert.as_ref());
        }
    }
    for cert in &certs {
        pem_cert(&mut bundle, cert.as_ref());
    }
    Ok(bundle)
}

/// Largest `ca_file` read (a CA bundle of a few hundred certificates).
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

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

fn pem_cert(out: &mut Vec<u8>, der: &[u8]) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
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
