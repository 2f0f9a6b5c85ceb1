//! Hot key reload: re-read the `[keys]` sections and the key files, check everything, swap
//! atomically per merchant — or keep that merchant's old set and say why.
//!
//! Triggers: a change in any folder holding a key file (watched with `notify`; Kubernetes
//! Secret volumes replace files by swapping a `..data` symlink, which shows up as events in
//! that folder), `SIGHUP`, and `POST /admin/reload`. Bursts are debounced. A reload loads and
//! checks the whole set first (parse, ≥ 2048 bits, preflight) and swaps only when all of it
//! is good; a missing, truncated or wrong key keeps the old set serving and is logged with
//! the file and the problem and counted as a failed reload. Each merchant's set loads and is
//! checked on its own: one merchant's broken key keeps that merchant's old set and does not
//! hold back the others, which are swapped; the reload then fails naming the merchants that
//! kept their old keys. The checks are [`crate::preflight::run`], as at start-up and in
//! `check-config`, so the warnings across merchants (one key file for two merchants) are
//! logged as there and do not stop the swap. Settings outside `[keys]` need a
//! restart; a reload that sees them changed says so in the log.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, Mutex};

use crate::config::Config;
use crate::keyset::{Credential, Finding, KeySet, KeySetError};
use crate::metrics::{self, KeyRole, ReloadResult};
use crate::state::SidecarState;
use crate::tls::{CertSource, Identity, ListenerTls};

/// Quiet time after the last file event before reloading (a Secret update is a burst).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a reload did not swap.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file no longer parses.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// A key failed to load or the preflight found an error.
    #[error("{0}")]
    Keys(#[from] crate::keyset::KeySetError),
    /// The HTTPS listener's `tls_cert`/`tls_key` or `tls_ca_cert`/`tls_ca_key` failed to
    /// load (the old certificate stays), or its trust bundle could not be written.
    #[error("the HTTPS listener's certificate: {0}")]
    Tls(String),
    /// The loading task itself failed (a bug; the old keys stay).
    #[error("the reload task failed: {0}")]
    Task(String),
    /// Some merchants' keys failed to load or preflight (they keep their old sets); the
    /// others were swapped.
    #[error("{}", failed.iter().map(|(name, e)| format!("merchant {name}: {e}")).collect::<Vec<_>>().join("; "))]
    Merchants {
        /// Name and error of each merchant that kept its old keys.
        failed: Vec<(String, crate::keyset::KeySetError)>,
    },
}

impl ReloadError {
    /// The merchants that kept their old keys because of this error (all of them when the
    /// config or the certificate failed).
    pub fn failed_merchants<'a>(&'a self, state: &'a SidecarState) -> Vec<&'a str> {
        match self {
            ReloadError::Merchants { failed } => failed.iter().map(|(n, _)| n.as_str()).collect(),
            _ => state.merchants().names(),
        }
    }
}

/// Performs reloads; shared by the watcher, the signal handler and the admin endpoint.
pub struct Reloader {
    state: Arc<SidecarState>,
    config_path: PathBuf,
    started_with: Config,
    lock: Mutex<()>,
    /// The HTTPS listener's certificate files, re-read with the keys.
    tls: Option<ListenerCert>,
}

/// The outbound HTTPS listener's live certificate, the files it comes from (`tls_cert` /
/// `tls_key`, or `tls_ca_cert` / `tls_ca_key` to issue a new leaf from), and the trust
/// bundle kept current with it (`tls_trust_out`).
pub struct ListenerCert {
    /// What the listener serves now.
    pub live: Arc<ListenerTls>,
    /// Where it comes from (never [`CertSource::Generated`]: nothing to re-read).
    pub source: CertSource,
    /// Extra host names of an issued leaf.
    pub names: Vec<String>,
    /// The trust bundle to rewrite when the CA apps must trust changes.
    pub trust_out: Option<PathBuf>,
    /// For a leaf issued from `tls_ca_cert`: SHA-256 of the CA files it was issued from, so
    /// a reload that finds them unchanged keeps serving that leaf instead of issuing another.
    pub issued_from: std::sync::Mutex<Option<Vec<u8>>>,
}

impl ListenerCert {
    /// SHA-256 over the bytes of the source's files (`None` when one cannot be read).
    pub fn files_digest(source: &CertSource) -> Option<Vec<u8>> {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        for f in source.files() {
            let bytes = crate::files::read_bounded(&f, 4 * 1024 * 1024).ok()?;
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(&bytes);
        }
        Some(hash.finalize().to_vec())
    }
}

/// What a successful reload did.
#[derive(Debug)]
pub struct ReloadReport {
    /// Whether the new set differs from the old one.
    pub changed: bool,
    /// `role keyVersion fingerprint` lines of the live sets (prefixed with `merchant: ` when
    /// there are several merchants).
    pub keys: Vec<String>,
}

impl Reloader {
    /// `started_with` is the configuration the process started with (to detect changes that
    /// need a restart).
    /// `tls`: the HTTPS listener's certificate files, when configured (re-read on every reload).
    pub fn new(
        state: Arc<SidecarState>,
        config_path: PathBuf,
        started_with: Config,
        tls: Option<ListenerCert>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state,
            config_path,
            started_with,
            lock: Mutex::new(()),
            tls,
        })
    }

    /// The files whose change means "reload": the live set's key files and the config file.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        for m in self.state.merchants().iter() {
            files.extend(m.keys().sources.files().into_iter().map(PathBuf::from));
        }
        files.push(self.config_path.clone());
        if let Some(tls) = &self.tls {
            files.extend(tls.source.files());
        }
        files
    }

    /// The folders to watch (those of the watched files) and the file names in them that
    /// count (see [`is_relevant`]).
    pub fn watched(&self) -> (BTreeSet<PathBuf>, BTreeSet<std::ffi::OsString>) {
        let files = self.watched_files();
        let dirs = files
            .iter()
            .filter_map(|f| f.parent())
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                }
            })
            .collect();
        let names = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_os_string()))
            .collect();
        (dirs, names)
    }

    /// Loads and checks everything, then swaps; on any problem keeps the old set.
    pub async fn reload(&self, trigger: &str) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.lock.lock().await;
        let path = self.config_path.clone();
        // a leaf issued from tls_ca_cert is issued again only when the CA files changed
        let tls_source = self.tls.as_ref().and_then(|t| {
            let digest = ListenerCert::files_digest(&t.source);
            let unchanged = matches!(t.source, CertSource::Ca { .. })
                && digest.is_some()
                && *t.issued_from.lock().unwrap_or_else(|p| p.into_inner()) == digest;
            (!unchanged).then(|| {
                (
                    t.source.clone(),
                    t.names.clone(),
                    t.trust_out.clone(),
                    digest,
                )
            })
        });
        type Loaded = (
            Config,
            Vec<(String, Result<KeySet, KeySetError>)>,
            Vec<Finding>,
            Option<(Identity, Option<Vec<u8>>)>,
        );
        let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, ReloadError> {
            let config = Config::load(&path)?;
            let identity = match tls_source {
                Some((source, names, trust_out, digest)) => {
                    let identity = crate::tls::load(&source, &names).map_err(ReloadError::Tls)?;
                    // the bundle first: a certificate apps could not trust is not served
                    if let Some(path) = trust_out {
                        if crate::tls::write_trust_bundle(&path, &identity.ca_pem)
                            .map_err(ReloadError::Tls)?
                        {
                            tracing::info!(trust_out = %path.display(), ca_sha256 = %identity.ca_fingerprint, "trust bundle rewritten: the CA apps must trust changed");
                        }
                    }
                    Some((identity, digest))
                }
                None => None,
            };
            // the whole preflight, as at start-up and in check-config: each merchant's set,
            // and the warnings across merchants
            let loaded = crate::preflight::load(&config);
            let names = config.merchants.iter().map(|m| m.name.clone());
            let sets = names.zip(loaded.sets).collect();
            Ok((config, sets, loaded.cross, identity))
        })
        .await
        .unwrap_or_else(|e| Err(ReloadError::Task(e.to_string())));
        let (config, mut sets, cross, identity) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                metrics::metrics().record_key_reload(ReloadResult::Failure);
                tracing::error!(trigger, error = %e, "key reload failed; the previous keys stay in use");
                return Err(e);
            }
        };
        if let (Some(tls), Some((identity, digest))) = (&self.tls, identity) {
            tls.live.swap(&identity);
            *tls.issued_from.lock().unwrap_or_else(|p| p.into_inner()) = digest;
            tracing::info!(certificate_sha256 = %identity.fingerprint, ca_sha256 = %identity.ca_fingerprint, "HTTPS listener certificate reloaded");
        }
        if self.started_with.differs_outside_keys(&config) {
            tracing::warn!("the configuration changed outside [keys]; those settings take effect only after a restart");
        }
        // warnings, as at start-up: the new sets are served (check-config exits 0 with them)
        for w in &cross {
            tracing::warn!(trigger, finding = %w.message, "preflight warning");
        }
        let mut changed = false;
        let mut failed = Vec::new();
        for merchant in self.state.merchants().iter() {
            let name = merchant.name();
            // a merchant no longer in the file keeps its keys until the restart the
            // warning above asks for
            let Some(i) = sets.iter().position(|(n, _)| n == name) else {
                continue;
            };
            match sets.swap_remove(i).1 {
                Ok(keys) => {
                    for w in &keys.warnings {
                        tracing::warn!(merchant = name, finding = %w.message, "key preflight warning");
                    }
                    changed |= describe(&merchant.keys()) != describe(&keys);
                    publish_key_metrics(name, &keys);
                    merchant.swap_keys(keys);
                }
                Err(e) => {
                    tracing::error!(trigger, merchant = name, error = %e, "key reload failed; the previous keys stay in use");
                    failed.push((name.to_string(), e));
                }
            }
        }
        let report = ReloadReport {
            changed,
            keys: describe_all(&self.state),
        };
        if !failed.is_empty() {
            metrics::metrics().record_key_reload(ReloadResult::Failure);
            return Err(ReloadError::Merchants { failed });
        }
        metrics::metrics().record_key_reload(ReloadResult::Success);
        tracing::info!(trigger, changed, keys = ?report.keys, "key reload succeeded");
        Ok(report)
    }
}

/// Only writes, creations, removals and renames of a watched file name, or of a `..`-prefixed
/// entry (Kubernetes swaps the `..data` symlink of a Secret volume), trigger a reload. Reads
/// (the reload itself opens the files) and unrelated files in the same folder (logs) do not,
/// or a reload would trigger the next one.
fn is_relevant(event: &notify::Event, names: &BTreeSet<std::ffi::OsString>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, MetadataKind, ModifyKind};
    let kind_ok = match event.kind {
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    };
    kind_ok
        && event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                // `..data` of a Secret volume is a symlink to a folder; a configured name
                // counts only while it is (or links to) a regular file, or is gone
                n.to_string_lossy().starts_with("..")
                    || (names.contains(n) && std::fs::metadata(p).map_or(true, |m| m.is_file()))
            })
        })
}

/// `role keyVersion fingerprint` of every key in the set.
fn describe(keys: &KeySet) -> Vec<String> {
    let mut out = vec![match &keys.credential {
        Credential::Signing(private) => format!(
            "merchant_private {} {}",
            keys.merchant_key_version,
            private.fingerprint()
        ),
        Credential::ApiKey(api_key) => format!(
            "api_key {} {} {}",
            api_key.kind().as_str(),
            api_key.env().as_str(),
            api_key.fingerprint()
        ),
    }];
    out.extend(
        keys.alipay
            .versions()
            .map(|(v, k)| format!("alipay_public {v} {}", k.fingerprint())),
    );
    out
}

/// The `describe` lines of every merchant's live set, prefixed with the merchant's name when
/// there are several.
fn describe_all(state: &SidecarState) -> Vec<String> {
    let merchants = state.merchants();
    if let (1, Some(only)) = (merchants.len(), merchants.iter().next()) {
        return describe(&only.keys());
    }
    merchants
        .iter()
        .flat_map(|m| {
            describe(&m.keys())
                .into_iter()
                .map(move |line| format!("{}: {line}", m.name()))
        })
        .collect()
}

/// Publishes `merchant`'s live key set as `alipay_sidecar_key_info` and its reload timestamp.
pub fn publish_key_metrics(merchant: &str, keys: &KeySet) {
    let mut items: Vec<(KeyRole, &str, &str)> = vec![match &keys.credential {
        Credential::Signing(private) => (
            KeyRole::MerchantPrivate,
            keys.merchant_key_version.as_str(),
            private.fingerprint(),
        ),
        // an API key has no key version; its SHA-256 prefix only, never the key
        Credential::ApiKey(api_key) => (KeyRole::ApiKey, "", api_key.fingerprint()),
    }];
    items.extend(
        keys.alipay
            .versions()
            .map(|(v, k)| (KeyRole::AlipayPublic, v, k.fingerprint())),
    );
    metrics::metrics().set_loaded_keys(merchant, items, SystemTime::now());
}

/// The background task: file watcher + SIGHUP → debounced reloads.
pub struct ReloadTask {
    reloader: Arc<Reloader>,
}

impl ReloadTask {
    /// Wraps a reloader for pingora's background service.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        Self { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
        let file_tx = tx.clone();
        let (dirs, names) = self.reloader.watched();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if is_relevant(&event, &names) {
                    let _ = file_tx.send("file change");
                }
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => {
                for dir in dirs {
                    if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch key folder; use SIGHUP or POST /admin/reload to reload keys");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watching unavailable; use SIGHUP or POST /admin/reload to reload keys");
                None
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                Some(t) = rx.recv() => t,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            };
            // debounce: wait until the burst is over
            // (the first trigger names the reload in the log)
            while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let _ = self.reloader.reload(trigger).await;
        }
    }
}
