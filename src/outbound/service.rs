//! The outbound listeners as pingora services: one gateway client per merchant, one proxy
//! per group of listeners (the shared ones, each merchant's own), plain HTTP and HTTPS, and
//! the HTTPS listeners' one certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use super::{Outbound, OutboundMerchant, OutboundPolicy};
use crate::adapter::Adapter;
use crate::config::{Config, ConfigError, MerchantConfig, OutboundConfig};
use crate::hooks::PayHook;
use crate::limits::Limited;
use crate::merchants::LiveKeys;
use crate::reload::ListenerCert;
use crate::state::SidecarState;
use crate::tls::{CertSource, ListenerTls};
use crate::upstream::Upstream;
use crate::wiring::{Wanted, Wiring};

/// The listeners `[outbound]` wants (shared plain and HTTPS, then each merchant's own), with
/// the config key that names each address; none without `[outbound]`.
pub fn listeners(config: &Config) -> Vec<Wanted> {
    let mut wanted = Vec::new();
    let Some(o) = &config.outbound else {
        return wanted;
    };
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
    wanted
}

/// What [`services`] built.
pub struct OutboundServices {
    /// The listeners' services, to add to the server.
    pub services: Vec<Box<dyn ServiceWithDependents>>,
    /// The HTTPS listeners' certificate when it comes from files (configured or issued), for
    /// the reloader; `None` when generated or without HTTPS listeners.
    pub reload_tls: Option<ListenerCert>,
    /// The process's private folders (mode 0700, random name, removed on drop) holding the
    /// merged CA bundles (one per distinct `ca_file`); keep them until the server stopped.
    pub private_dirs: Vec<tempfile::TempDir>,
    /// One gateway client per merchant (by index), shared by every listener of the merchant.
    upstreams: Vec<Arc<Upstream>>,
}

impl OutboundServices {
    /// A handler of every merchant on the listeners' gateway clients, for the sidecar's own
    /// calls (the reconciler's): signed, verified, counted like the app's.
    pub fn own_calls(
        &self,
        config: &Config,
        o: &OutboundConfig,
        state: &Arc<SidecarState>,
    ) -> Outbound<Arc<Upstream>> {
        let all = (0..config.merchants.len())
            .map(|i| merchant(config, o, state, &self.upstreams, i))
            .collect();
        Outbound::shared(OutboundPolicy::from_config(config, o, &[]), all)
    }
}

/// The `index`-th merchant of `config` on its gateway client.
fn merchant(
    config: &Config,
    o: &OutboundConfig,
    state: &Arc<SidecarState>,
    upstreams: &[Arc<Upstream>],
    index: usize,
) -> OutboundMerchant<Arc<Upstream>> {
    let m = &config.merchants[index];
    let gateway = m.gateway.as_ref().unwrap_or(&o.gateway);
    OutboundMerchant::from_config(state, index, m, gateway, upstreams[index].clone())
        .with_upload_from(o, gateway)
}

/// The services of `[outbound]` (`o`): every outbound listener of [`listeners`], each with
/// the proxy of its group (the shared listeners serve every merchant, several chosen by
/// `X-Alipay-Sidecar-Merchant`; a merchant's own serve that merchant only). `pay_recording`:
/// what `[reconcile]` records of verified pays, given to every listener's handler.
pub fn services<P: PayHook + Clone>(
    config: &Config,
    o: &OutboundConfig,
    state: &Arc<SidecarState>,
    pay_recording: Option<P>,
    wiring: &Wiring,
) -> Result<OutboundServices, ConfigError> {
    // one gateway client (one connection pool) per merchant, shared by every listener
    // that serves the merchant; one merged CA bundle per distinct ca_file
    let mut private_dirs = Vec::new();
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
                    let written = crate::tls::ca_bundle(path).and_then(|pem| write_private(&pem));
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
    let merchant = |i: usize| merchant(config, o, state, &upstreams, i);
    let max = o.max_connections;
    // The shared listeners (every merchant; several → by X-Alipay-Sidecar-Merchant), then
    // each merchant's own (that merchant only). One proxy behind a group's listeners.
    let mut groups = Vec::new();
    let shared_listeners = o.listen_addrs();
    if !shared_listeners.is_empty() {
        let all = (0..config.merchants.len()).map(merchant).collect();
        let mut handler = Outbound::shared(
            OutboundPolicy::from_config(config, o, &shared_listeners),
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
            OutboundPolicy::from_config(config, o, &m.listen_addrs()),
            merchant(i),
        );
        if let Some(recording) = &pay_recording {
            handler = handler.with_pay_recording(recording.clone());
        }
        groups.push((Some(m), m.listen, m.tls_listen, handler, m.name.clone()));
    }
    let mut services: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
    let mut reload_tls = None;
    let mut shared_tls: Option<(Arc<ListenerTls>, String, &'static str)> = None;
    for (owner, plain, tls, handler, serves) in groups {
        let mut proxy =
            pingora::proxy::http_proxy(&wiring.conf, Adapter::new(handler, state.clone()));
        // HTTP/2 (ALPN h2 on the HTTPS listener): its limits, crate::h2
        proxy.h2_options = Some(crate::h2::options(config.server.max_header_bytes));
        proxy.server_options = Some(crate::h2::server_options(config.server.idle_timeout));
        let proxy = Arc::new(proxy);
        if plain.is_some() {
            let name = listener_name("outbound", owner);
            let mut svc = Service::new(
                name.to_string(),
                Limited::shared(proxy.clone(), name, wiring.limits(max), None),
            );
            let listen = wiring.listen(name, &mut svc);
            services.push(Box::new(svc));
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
            Limited::shared(proxy, name, wiring.limits(max), Some(listener_tls)),
        );
        let listen: SocketAddr = wiring.listen_tls(name, &mut svc);
        services.push(Box::new(svc));
        tracing::info!(
            %listen,
            listener = name,
            merchants = %serves,
            certificate_sha256 = %fingerprint,
            certificate = kind,
            "outbound signing proxy (https)"
        );
    }
    Ok(OutboundServices {
        services,
        reload_tls,
        private_dirs,
        upstreams,
    })
}

impl OutboundMerchant<Arc<Upstream>> {
    /// The production form of the `index`-th merchant of the config: its live keys from
    /// `state`, its gateway through `upstream` (pingora's connector, shared by every listener
    /// that serves this merchant, so they share one connection pool).
    pub fn from_config(
        state: &Arc<SidecarState>,
        index: usize,
        merchant: &MerchantConfig,
        gateway: &crate::config::Gateway,
        upstream: Arc<Upstream>,
    ) -> Self {
        OutboundMerchant::new(
            &merchant.name,
            &merchant.client_id,
            merchant.agent_token.clone(),
            LiveKeys::new(state.merchants(), index),
            upstream,
            (&gateway.host, gateway.port),
        )
    }
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
fn outbound_identity(t: &crate::config::OutboundTls) -> Result<crate::tls::Identity, String> {
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
