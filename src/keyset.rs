//! The immutable set of loaded keys, and the preflight that catches the classic key mix-ups.
//!
//! Why one immutable value: every request signs and verifies with one snapshot of the keys
//! (swapped atomically by [`crate::reload`]), so a reload can never mix an old merchant key
//! with a new Alipay key inside one request. Why the preflight lives here: a reload must
//! refuse exactly what `check-config` refuses, so both call [`KeySet::load`], which reads and
//! parses every key file and then runs [`preflight`]; any [`Severity::Error`] finding keeps the
//! old key set serving.
//!
//! The mistakes the preflight catches are the ones behind most "signature verify fail" tickets:
//! the merchant's own public key configured where Alipay's belongs, a `SANDBOX_` client id
//! against live-only settings (or the reverse), and PKCS#1 keys where Alipay's tooling expects
//! PKCS#8.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, CredentialFile, InboundMode, MerchantConfig, Origin};
use crate::protocol::{
    ApiKey, ApiKeyEnv, ApiKeyError, KeyEncoding, KeyError, PrivateKey, PublicKey, Verifier,
};

/// Everything needed to sign and verify, loaded and checked together. Cheap to clone (keys are
/// reference-counted); hold it in an `Arc`/`ArcSwap` for hot reload.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// The merchant's client id (signed into every message); [`preflight`] finds the
    /// merchant of a set by it.
    pub client_id: String,
    /// How outgoing requests authenticate: the merchant private key that signs them (and
    /// acknowledgements), or the merchant's API key.
    pub credential: Credential,
    /// `keyVersion` written into outgoing `Signature` headers.
    pub merchant_key_version: String,
    /// Alipay's public keys by `keyVersion`.
    pub alipay: Verifier,
    /// The files the keys came from (for logs, metrics and the reload watcher).
    pub sources: KeySources,
    /// Non-fatal preflight findings, to log once when the set goes live.
    pub warnings: Vec<Finding>,
    /// How the merchant private key file was protected when it was read, for the preflight's
    /// "readable by others" warning (`None` off Unix).
    pub merchant_key_file: Option<FileAccess>,
}

/// The merchant's credential toward the gateway.
#[derive(Clone, Debug)]
pub enum Credential {
    /// RSA signing with the merchant private key (`merchant_private_key`).
    Signing(PrivateKey),
    /// `Authorization: Bearer <key>` (`api_key`); there is no merchant private key.
    ApiKey(ApiKey),
}

impl Credential {
    /// The merchant private key, in signing mode.
    pub fn signing_key(&self) -> Option<&PrivateKey> {
        match self {
            Credential::Signing(k) => Some(k),
            Credential::ApiKey(_) => None,
        }
    }

    /// The API key, in API-key mode.
    pub fn api_key(&self) -> Option<&ApiKey> {
        match self {
            Credential::Signing(_) => None,
            Credential::ApiKey(k) => Some(k),
        }
    }

    /// What identifies the credential in logs and metrics without revealing it: the private
    /// key's public-key fingerprint, or the API key's SHA-256 prefix.
    pub fn fingerprint(&self) -> &str {
        match self {
            Credential::Signing(k) => k.fingerprint(),
            Credential::ApiKey(k) => k.fingerprint(),
        }
    }
}

/// Ownership and mode of a key file, and the group the sidecar runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAccess {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The file's group.
    pub gid: u32,
    /// The sidecar's effective group.
    pub process_gid: u32,
}

impl FileAccess {
    /// Whether someone besides the sidecar's user (and its own group) can read or change the
    /// file: any "other" bit, or group bits for a group the sidecar does not run as. Group bits
    /// for the sidecar's own group are how Kubernetes makes a Secret readable for a non-root
    /// uid (`fsGroup` + `defaultMode: 0440`), so they are not flagged.
    pub fn too_open(&self) -> bool {
        self.mode & 0o007 != 0 || (self.mode & 0o070 != 0 && self.gid != self.process_gid)
    }
}

#[cfg(unix)]
fn file_access(path: &Path) -> Option<FileAccess> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // SAFETY: getegid has no preconditions and cannot fail.
    let process_gid = unsafe { libc::getegid() };
    Some(FileAccess {
        mode: meta.mode() & 0o7777,
        gid: meta.gid(),
        process_gid,
    })
}

#[cfg(not(unix))]
fn file_access(_path: &Path) -> Option<FileAccess> {
    None
}

/// The uid:gid of the container image's user (distroless `nonroot`); key files mounted into
/// the container must be readable by it.
pub const CONTAINER_UID: u32 = 65532;

/// Which file each key was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySources {
    /// The merchant's credential file (private key or API key).
    pub credential: PathBuf,
    /// Alipay public key files by `keyVersion`.
    pub alipay_public_keys: BTreeMap<String, PathBuf>,
}

impl KeySources {
    /// Every key file, so a watcher knows which folders to watch.
    pub fn files(&self) -> Vec<&Path> {
        std::iter::once(self.credential.as_path())
            .chain(self.alipay_public_keys.values().map(PathBuf::as_path))
            .collect()
    }
}

/// How bad a preflight finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Works, but likely to bite (e.g. interoperability with Alipay's SDKs).
    Warning,
    /// Cannot work as configured: the key set is refused.
    Error,
}

/// One problem found by [`preflight`], with what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error (refuses the key set) or warning.
    pub severity: Severity,
    /// What is wrong, where, and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "error: {}", self.message),
            Severity::Warning => write!(f, "warning: {}", self.message),
        }
    }
}

/// A key set that cannot be used; the message names the file, the config line that points at
/// it, and the problem.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// The key file could not be read.
    #[error("{location}: cannot read the {role} file {}: {reason}", path.display())]
    Unreadable {
        /// Config file and line (or environment variable) naming the file, and the key.
        location: String,
        /// "merchant private key" / "Alipay public key (keyVersion N)".
        role: String,
        /// The key file.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The API key file does not hold an API key. The message never contains the file's text.
    #[error("{location}: the API key file {} is not usable: {source}", path.display())]
    BadApiKey {
        /// Config file and line (or environment variable) naming the file, and the key.
        location: String,
        /// The key file.
        path: PathBuf,
        /// What is wrong with the format.
        source: ApiKeyError,
    },
    /// The file was read but does not hold a usable key for its slot.
    #[error("{location}: the {role} file {} is not usable: {source}", path.display())]
    BadKey {
        /// Config file and line (or environment variable) naming the file, and the key.
        location: String,
        /// Which key slot.
        role: String,
        /// The key file.
        path: PathBuf,
        /// The parser's verdict (missing, empty, truncated, wrong kind, too small …).
        source: KeyError,
    },
    /// The keys loaded but the preflight found errors.
    #[error("the keys are not usable as configured:\n{}", findings.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Preflight {
        /// The error findings (warnings are not included).
        findings: Vec<Finding>,
    },
}

fn location(config: &Config, key: &str) -> String {
    match config.origin(key) {
        Origin::File { path, line } => format!("{}:{line}: `{key}`", path.display()),
        Origin::Env { path, var } => {
            format!("{}: environment variable {var}: `{key}`", path.display())
        }
        Origin::Default { path } => format!("{}: `{key}`", path.display()),
    }
}

/// Largest key file read: a PEM RSA-4096 private key is about 3.3 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Why a bounded file read failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("{0}; check the path and the file's permissions")]
    Io(std::io::Error),
    /// Not a regular file (a FIFO, device, socket or folder).
    #[error("it is {0}, not a regular file; point the setting at the file itself")]
    NotRegular(&'static str),
    /// Larger than a file of this kind can be.
    #[error("it is larger than {0} bytes, so it is not a key or certificate file; check the path")]
    TooLarge(u64),
}

/// Reads a small configuration file (key, certificate) safely: opened non-blocking so a FIFO
/// cannot hang the caller (a reload holds its lock while reading), refused unless it is a
/// regular file (after symlinks), and never more than `max` bytes (`/dev/zero` cannot
/// exhaust memory).
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::IsADirectory => FileError::NotRegular("a folder"),
            _ => FileError::Io(e),
        })?;
    let meta = file.metadata().map_err(FileError::Io)?;
    let t = meta.file_type();
    if !t.is_file() {
        return Err(FileError::NotRegular(if t.is_dir() {
            "a folder"
        } else if t.is_fifo() {
            "a named pipe (FIFO)"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "a special file"
        }));
    }
    if meta.len() > max {
        return Err(FileError::TooLarge(max));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::Io)?;
    if bytes.len() as u64 > max {
        return Err(FileError::TooLarge(max));
    }
    Ok(bytes)
}

/// [`read_file`] with the error as text, for callers that only report it.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    read_file(path, max).map_err(|e| e.to_string())
}

fn read_key_file(
    config: &Config,
    key: &str,
    role: &str,
    path: &Path,
) -> Result<String, KeySetError> {
    let unreadable = |reason: String| KeySetError::Unreadable {
        location: location(config, key),
        role: role.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_file(path, MAX_KEY_FILE_BYTES).map_err(|e| {
        unreadable(match e {
            FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "the file does not exist; check the path (relative paths are resolved against \
                 the config file's folder{})",
                config
                    .path
                    .parent()
                    .map(|p| format!(", {}", p.display()))
                    .unwrap_or_default()
            ),
            FileError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                permission_denied_hint(path)
            }
            other => other.to_string(),
        })
    })?;
    String::from_utf8(bytes).map_err(|_| {
        unreadable(
            "the file is not text (a binary DER key?); convert it to PEM, e.g. \
             `openssl pkey -inform DER -in key.der -out key.pem` (public key: add -pubin)"
                .to_string(),
        )
    })
}

/// What to do when a key file cannot be read: who the sidecar runs as, and the ownership and
/// mode that work (in the container image that is uid/gid 65532).
fn permission_denied_hint(path: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let owner = std::fs::metadata(path)
            .map(|m| {
                format!(
                    " (the file is owned by {}:{} with mode {:04o})",
                    m.uid(),
                    m.gid(),
                    m.mode() & 0o7777
                )
            })
            .unwrap_or_default();
        let container = if uid == CONTAINER_UID {
            format!(
                "; in the container image the sidecar is uid:gid {CONTAINER_UID}:{CONTAINER_UID}: \
                 on the host, `sudo chown {CONTAINER_UID}:{CONTAINER_UID}` the key files with \
                 mode 0400 (or `chgrp {CONTAINER_UID}` with mode 0440) before mounting them; in \
                 Kubernetes set fsGroup: {CONTAINER_UID} and defaultMode: 0440 on the Secret \
                 volume (see config/kubernetes/deployment.yaml)"
            )
        } else {
            format!(
                "; `chown {uid}` the file (mode 0600), or run the sidecar as its owner (in the \
                 container image the sidecar is uid:gid {CONTAINER_UID}:{CONTAINER_UID})"
            )
        };
        format!(
            "permission denied: the sidecar runs as uid {uid}, gid {gid}{owner} and must be \
             able to read the file (and every folder above it){container}"
        )
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        "permission denied; give the user the sidecar runs as read access to the file".into()
    }
}

/// Client ids that are obviously the placeholder of an example config, not a real id.
fn is_placeholder_client_id(id: &str) -> bool {
    let upper = id.to_ascii_uppercase();
    let squeezed: String = upper
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    // Words long enough not to occur by chance in a real (random alphanumeric) id.
    [
        "REPLACE",
        "YOURCLIENTID",
        "CHANGEME",
        "PLACEHOLDER",
        "EXAMPLE",
        "FIXME",
        "XXXXXX",
    ]
    .iter()
    .any(|word| squeezed.contains(word))
        || id.contains(['<', '>', '{', '}', '$'])
}

impl KeySet {
    /// Reads and parses every key file named by `config`, runs [`preflight`], and refuses the
    /// set when any finding is an error (warnings are kept in [`KeySet::warnings`]). Reload and
    /// start-up both go through here, so a bad key never goes live.
    ///
    /// This loads the first merchant's keys (the only merchant's in a single-merchant config);
    /// [`KeySet::load_merchant`] loads any merchant's.
    pub fn load(config: &Config) -> Result<KeySet, KeySetError> {
        Self::load_merchant(config, first(config))
    }

    /// [`KeySet::load`] for one merchant of `config`.
    pub fn load_merchant(
        config: &Config,
        merchant: &MerchantConfig,
    ) -> Result<KeySet, KeySetError> {
        let mut keys = Self::load_unchecked(config, merchant)?;
        let findings = preflight(config, &keys);
        let (errors, warnings): (Vec<Finding>, Vec<Finding>) = findings
            .into_iter()
            .partition(|f| f.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(KeySetError::Preflight { findings: errors });
        }
        keys.warnings = warnings;
        Ok(keys)
    }

    /// Loads the keys without the preflight, for `check-config`, which reports every finding
    /// itself.
    pub(crate) fn load_unchecked(
        config: &Config,
        merchant: &MerchantConfig,
    ) -> Result<KeySet, KeySetError> {
        let k = &merchant.keys;
        let key = &merchant.key(&format!("keys.{}", k.credential.option()));
        let credential = match &k.credential {
            CredentialFile::PrivateKey(path) => {
                let role = "merchant private key";
                let text = read_key_file(config, key, role, path)?;
                Credential::Signing(PrivateKey::from_text(&text).map_err(|source| {
                    KeySetError::BadKey {
                        location: location(config, key),
                        role: role.to_string(),
                        path: path.clone(),
                        source,
                    }
                })?)
            }
            CredentialFile::ApiKey(path) => {
                let text = read_key_file(config, key, "API key", path)?;
                Credential::ApiKey(ApiKey::parse(&text).map_err(|source| {
                    KeySetError::BadApiKey {
                        location: location(config, key),
                        path: path.clone(),
                        source,
                    }
                })?)
            }
        };
        let mut alipay = Vec::new();
        for (version, path) in &k.alipay_public_keys {
            let key = merchant.key(&format!("keys.alipay_public_keys.{version}"));
            let role = format!("Alipay public key (keyVersion {version})");
            let text = read_key_file(config, &key, &role, path)?;
            let public = PublicKey::from_text(&text).map_err(|source| KeySetError::BadKey {
                location: location(config, &key),
                role: role.clone(),
                path: path.clone(),
                source,
            })?;
            alipay.push((version.clone(), public));
        }
        Ok(KeySet {
            client_id: merchant.client_id.clone(),
            credential,
            merchant_key_version: k.merchant_key_version.clone(),
            alipay: Verifier::new(alipay),
            sources: KeySources {
                credential: k.credential.path().to_path_buf(),
                alipay_public_keys: k.alipay_public_keys.clone(),
            },
            warnings: Vec::new(),
            merchant_key_file: file_access(k.credential.path()),
        })
    }
}

fn is_pkcs1(encoding: KeyEncoding) -> bool {
    matches!(encoding, KeyEncoding::Pkcs1Pem | KeyEncoding::Pkcs1Base64)
}

/// The first merchant of `config` (a validated config has at least one).
fn first(config: &Config) -> &MerchantConfig {
    // merchant routing: lead wires this (callers that know only one merchant)
    &config.merchants[0]
}

/// Checks the loaded keys against each other and the settings for the classic mistakes, each
/// with what to change. Pure (no I/O), so `check-config`, start-up and reload agree.
///
/// The merchant is the one whose client id the set was loaded for; the findings about shared
/// settings ([`shared_preflight`]) come with the first merchant's set only, so they are logged
/// once.
pub fn preflight(config: &Config, keys: &KeySet) -> Vec<Finding> {
    let merchant = config
        .merchants
        .iter()
        .find(|m| m.client_id == keys.client_id)
        .unwrap_or_else(|| first(config));
    let mut out = merchant_preflight(config, merchant, keys);
    if std::ptr::eq(merchant, first(config)) {
        out.extend(shared_preflight(config));
    }
    out
}

fn error(message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        message,
    }
}

fn warning(message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        message,
    }
}

/// The findings about one merchant: its client id, its keys, and its client id against the
/// shared outbound settings (sandbox/live).
pub fn merchant_preflight(
    config: &Config,
    merchant: &MerchantConfig,
    keys: &KeySet,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let client_id = &merchant.client_id;
    let env_hint = if merchant.key("client_id") == "client_id" {
        ", or set ALIPAY_SIDECAR_CLIENT_ID"
    } else {
        ""
    };

    // 0. The example config's placeholder client id, and a private key others can read.
    if is_placeholder_client_id(client_id) {
        out.push(error(format!(
            "{}: \"{}\" is a placeholder, not a client id: every request would be signed for \
             a merchant that does not exist. Put the Client ID from the Alipay (Antom) developer \
             dashboard here (SANDBOX_… for the sandbox){env_hint}",
            location(config, &merchant.key("client_id")),
            client_id
        )));
    }
    let credential_key = merchant.key(&format!("keys.{}", merchant.keys.credential.option()));
    if let Some(access) = keys.merchant_key_file.filter(FileAccess::too_open) {
        let path = keys.sources.credential.display();
        let what = match keys.credential {
            Credential::Signing(_) => "merchant private key",
            Credential::ApiKey(_) => "API key",
        };
        out.push(warning(format!(
            "{}: the {what} file {path} has mode {:04o}: it is readable by \
             users other than the sidecar's (as ssh would say: UNPROTECTED PRIVATE KEY FILE). \
             Anyone who can read it can sign payments as you. Run `chmod 600 {path}` (or 0440 \
             with the file's group set to the sidecar's group, as Kubernetes' fsGroup does)",
            location(config, &credential_key),
            access.mode
        )));
    }

    // API-key mode: the key's client id and environment against the merchant's settings.
    if let Credential::ApiKey(api_key) = &keys.credential {
        out.extend(api_key_preflight(
            config,
            merchant,
            api_key,
            &credential_key,
        ));
    }

    // 1. The merchant's own public key configured as Alipay's.
    let own = keys.credential.signing_key().map(PrivateKey::public_key);
    for (version, public) in keys.alipay.versions() {
        if let Some(own) = own.as_ref().filter(|own| *own == public) {
            out.push(error(format!(
                "{}: this \"Alipay\" public key is the public half of your own merchant private \
                 key ({}): you configured your own public key as Alipay's; download Alipay's \
                 public key from the dashboard and put that file here",
                location(
                    config,
                    &merchant.key(&format!("keys.alipay_public_keys.{version}"))
                ),
                own.fingerprint()
            )));
        }
    }

    // 2. The same Alipay key under two versions.
    let versions: Vec<(&str, &PublicKey)> = keys.alipay.versions().collect();
    for (i, (v1, k1)) in versions.iter().enumerate() {
        for (v2, k2) in versions.iter().skip(i + 1) {
            if k1 == k2 {
                out.push(warning(format!(
                    "`{}` versions {v1} and {v2} hold the same key ({}); \
                     during a rotation the new version should hold Alipay's new key — check \
                     that you downloaded the right file for version {v2}",
                    merchant.key("keys.alipay_public_keys"),
                    k1.fingerprint()
                )));
            }
        }
    }

    // 3. PKCS#1 merchant key.
    if let Some(private) = keys
        .credential
        .signing_key()
        .filter(|k| is_pkcs1(k.encoding()))
    {
        out.push(warning(format!(
            "{}: the merchant private key is {}; the sidecar accepts it, but Alipay's SDKs \
             (Java, Go, .NET) and dashboard tooling use PKCS#8, so a copy shared with them will \
             not load. Convert it: `openssl pkcs8 -topk8 -nocrypt -in {} -out \
             merchant_private_key.pkcs8.pem` (the key itself, and its public half, stay the same)",
            location(config, &merchant.key("keys.merchant_private_key")),
            private.encoding(),
            keys.sources.credential.display()
        )));
    }

    // 4. SANDBOX_ client id against live settings, and the reverse.
    let sandbox = merchant.is_sandbox();
    if let Some(o) = &config.outbound {
        let has_sandbox_prefix = o
            .allowed_path_prefixes
            .iter()
            .any(|p| p.starts_with("/ams/sandbox/"));
        let only_sandbox = o
            .allowed_path_prefixes
            .iter()
            .all(|p| p.starts_with("/ams/sandbox/"));
        if !sandbox && o.sandbox_path_rewrite {
            out.push(error(format!(
                "{}: `sandbox_path_rewrite = true` with the live client id \"{}\": the rewrite \
                 only applies to SANDBOX_ client ids, so this mixes sandbox and live settings. \
                 Remove sandbox_path_rewrite for live traffic, or use your SANDBOX_ client id \
                 (and sandbox keys) for sandbox testing",
                location(config, "outbound.sandbox_path_rewrite"),
                client_id
            )));
        }
        if !sandbox && only_sandbox {
            out.push(error(format!(
                "{}: only sandbox paths (/ams/sandbox/…) are allowed, but the client id \"{}\" \
                 is a live one (it does not start with SANDBOX_): every live call would be \
                 refused, and Alipay rejects sandbox paths for live client ids. Allow \
                 \"/ams/api/\", or use your SANDBOX_ client id",
                location(config, "outbound.allowed_path_prefixes"),
                client_id
            )));
        }
        if sandbox && !has_sandbox_prefix && !o.sandbox_path_rewrite {
            out.push(error(format!(
                "{}: the client id \"{}\" is a sandbox one, and sandbox calls must go to \
                 /ams/sandbox/api/…, but no /ams/sandbox/ path is allowed and \
                 sandbox_path_rewrite is off. Add \"/ams/sandbox/api/\" to \
                 allowed_path_prefixes, or set `sandbox_path_rewrite = true` to rewrite \
                 /ams/api/ paths as the SDKs do",
                location(config, "outbound.allowed_path_prefixes"),
                client_id
            )));
        }
        let live_prefixes: Vec<&str> = o
            .allowed_path_prefixes
            .iter()
            .map(String::as_str)
            .filter(|p| p.starts_with("/ams/api"))
            .collect();
        if sandbox && !o.sandbox_path_rewrite && !live_prefixes.is_empty() {
            out.push(warning(format!(
                "{}: the client id \"{}\" is a sandbox one, but live paths ({}) are allowed: \
                 Alipay answers SANDBOX_ client ids only on /ams/sandbox/api/…, so a call to a \
                 live path fails at the gateway. Allow only [\"/ams/sandbox/api/\"], or set \
                 `sandbox_path_rewrite = true` to rewrite /ams/api/ paths as the SDKs do",
                location(config, "outbound.allowed_path_prefixes"),
                client_id,
                live_prefixes.join(", ")
            )));
        }
    }
    out
}

/// The findings about an API-key merchant: the key was issued for another client id, or for
/// an environment none of the allowed paths belongs to; and acknowledgements that cannot be
/// signed without a private key.
fn api_key_preflight(
    config: &Config,
    merchant: &MerchantConfig,
    api_key: &ApiKey,
    key: &str,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if api_key.client_id() != merchant.client_id {
        out.push(error(format!(
            "{}: the API key ({}) was issued for client id \"{}\", but this merchant's \
             client_id is \"{}\": Alipay refuses a key used for another client. Put this \
             merchant's own API key in the file, or correct client_id",
            location(config, key),
            api_key.describe(),
            crate::exchange::echo(api_key.client_id()),
            merchant.client_id
        )));
    }
    if let Some(o) = &config.outbound {
        let rewrite = o.sandbox_path_rewrite && merchant.is_sandbox();
        let usable = o.allowed_path_prefixes.iter().any(|p| {
            api_key.env().owns_path(p)
                || (rewrite && api_key.env() == ApiKeyEnv::Test && p.starts_with("/ams/api/"))
        });
        if !usable {
            let (key_env, paths, fix) = match api_key.env() {
                ApiKeyEnv::Test => (
                    "a TEST key, which Alipay accepts only on sandbox paths (/ams/sandbox/api/…)",
                    "only live paths",
                    "allow \"/ams/sandbox/api/\" (the SDKs send TEST-key calls there), or use \
                     your PROD key for live traffic",
                ),
                ApiKeyEnv::Prod => (
                    "a PROD key, which Alipay accepts only on live paths (/ams/api/…)",
                    "only sandbox paths",
                    "allow \"/ams/api/\", or use your TEST key for sandbox traffic",
                ),
            };
            out.push(error(format!(
                "{}: the API key of merchant \"{}\" is {key_env}, but {paths} are allowed \
                 ({}): every call would fail. In `allowed_path_prefixes`, {fix}",
                location(config, key),
                merchant.name,
                o.allowed_path_prefixes.join(", ")
            )));
        }
    }
    if config
        .inbound
        .as_ref()
        .is_some_and(|i| i.sign_acknowledgements)
    {
        out.push(warning(format!(
            "{}: `sign_acknowledgements = true`, but merchant \"{}\" uses an API key and has no \
             private key to sign with: its acknowledgements go unsigned (Alipay accepts them)",
            location(config, "inbound.sign_acknowledgements"),
            merchant.name
        )));
    }
    out
}

/// The findings about settings every merchant shares (listeners, verification, admin).
pub fn shared_preflight(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(o) = &config.outbound {
        if !o.verify_responses {
            out.push(warning(format!(
                "{}: `verify_responses = false`: Alipay's responses reach the app unverified, \
                 so a tampered or forged response would be trusted. Remove the line unless you \
                 are debugging",
                location(config, "outbound.verify_responses")
            )));
        }
        let merchant_listeners = config.merchants.iter().flat_map(|m| m.listen_addrs());
        for listen in o.listen_addrs().into_iter().chain(merchant_listeners) {
            if o.allow_remote_clients && !listen.ip().is_loopback() {
                out.push(warning(format!(
                    "{}: the outbound listener accepts remote clients on {listen}: anyone who \
                     can reach it can have requests signed with your merchant key. Make sure \
                     only your app can reach this address",
                    location(config, "outbound.allow_remote_clients"),
                )));
            }
        }
        if o.sandbox_path_rewrite {
            out.push(warning(format!(
                "{}: `sandbox_path_rewrite = true`: the gateway answers for the rewritten path \
                 (/ams/sandbox/api/...), so an app whose SDK verifies responses itself checks \
                 them against the path it sent and rejects every answer, although the call was \
                 processed (retrying with a new request id could pay twice). Use it only for \
                 apps that do not verify responses, or let the SDK send sandbox paths itself",
                location(config, "outbound.sandbox_path_rewrite")
            )));
        }
    }
    if let Some(o) = &config.outbound {
        if o.allowed_path_prefixes.iter().any(|p| p == "/") {
            out.push(warning(format!(
                "{}: `allowed_path_prefixes` contains \"/\", so the signer signs a request to any \
                 path the app (or anything that reaches the listener) sends; list the AMS \
                 prefixes instead, e.g. [\"/ams/api/\", \"/ams/sandbox/api/\"]",
                location(config, "outbound.allowed_path_prefixes")
            )));
        }
    }
    if !config.admin.listen.ip().is_loopback() {
        out.push(warning(format!(
            "{}: the admin listener is on {}, a non-loopback address: /admin/reload and \
             /metrics have no authentication, so restrict who can reach the port (e.g. a \
             Kubernetes NetworkPolicy), or listen on 127.0.0.1",
            location(config, "admin.listen"),
            config.admin.listen
        )));
    }
    if let Some(i) = &config.inbound {
        if i.max_request_time_skew.is_none()
            && i.replay_window_entries == 0
            && config.store.is_none()
        {
            out.push(warning(format!(
                "{}: no replay protection on notifications: `max_request_time_skew = \"off\"`, \
                 `replay_window_entries = 0` and no [store], so a captured notification can be \
                 sent again at any time and reaches the app each time. Keep the defaults \
                 (\"48h\", 16384) or add a [store]",
                location(config, "inbound.max_request_time_skew")
            )));
        }
        if i.mode == InboundMode::Shadow {
            out.push(warning(format!(
                "{}: inbound `mode = \"shadow\"`: notifications that fail verification are still \
                 forwarded to the app (marked X-Alipay-Sidecar-Verified: false). Switch to \
                 \"enforce\" once the verification results look right",
                location(config, "inbound.mode")
            )));
        }
    }
    out
}

/// Findings across merchants, for `check-config` and start-up: one private key for two client
/// ids, and a sandbox and a live client id sharing a key. Warnings only: the sets work, but
/// most likely a file was copied to the wrong merchant.
pub fn cross_preflight(config: &Config, sets: &[(&MerchantConfig, &KeySet)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, (a, ka)) in sets.iter().enumerate() {
        for (b, kb) in sets.iter().skip(i + 1) {
            let same_private = ka.credential.fingerprint() == kb.credential.fingerprint();
            let shared_alipay: Vec<&str> = ka
                .alipay
                .versions()
                .filter(|(_, k)| kb.alipay.versions().any(|(_, other)| other == *k))
                .map(|(_, k)| k.fingerprint())
                .collect();
            let names = format!(
                "merchants \"{}\" (client id {}) and \"{}\" (client id {})",
                a.name, a.client_id, b.name, b.client_id
            );
            if a.is_sandbox() != b.is_sandbox() && (same_private || !shared_alipay.is_empty()) {
                let what = if same_private {
                    format!("the merchant credential {}", ka.credential.fingerprint())
                } else {
                    format!("the Alipay public key {}", shared_alipay.join(", "))
                };
                out.push(warning(format!(
                    "{}: {names} are a sandbox and a live id sharing keys ({what}): the sandbox \
                     and live environments issue different keys, so one of the two merchants \
                     has the other's key file; download each environment's keys separately",
                    location(config, &b.key("keys"))
                )));
            } else if same_private {
                out.push(warning(format!(
                    "{}: {names} use the same private key for two client ids ({}): each client \
                     id has its own key pair registered with Alipay, so requests of one of them \
                     will fail verification at the gateway; check which key file belongs to \
                     which merchant",
                    location(config, &b.key("keys.merchant_private_key")),
                    ka.credential.fingerprint()
                )));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        for id in [
            "REPLACE_WITH_YOUR_CLIENT_ID",
            "your-client-id",
            "<client id>",
            "${CLIENT_ID}",
            "CHANGE_ME",
            "SANDBOX_XXXXXXXXXX",
        ] {
            assert!(is_placeholder_client_id(id), "{id}");
        }
        for id in [
            "SANDBOX_5YBZ2Q2ZAB7C01234",
            "T_111222333",
            "2188120000000001",
        ] {
            assert!(!is_placeholder_client_id(id), "{id}");
        }
    }

    #[test]
    fn open_modes() {
        let access = |mode, gid| FileAccess {
            mode,
            gid,
            process_gid: 7,
        };
        assert!(!access(0o600, 0).too_open());
        assert!(!access(0o400, 0).too_open());
        assert!(access(0o644, 7).too_open(), "others can read");
        assert!(access(0o640, 0).too_open(), "another group can read");
        assert!(!access(0o440, 7).too_open(), "the sidecar's own group");
    }

    fn vectors() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ams-public.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn setup(extra: &str, merchant: &str, alipay: &str) -> (tempfile::TempDir, Config) {
        let v = vectors();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.pem"),
            v["keys"]["merchant"][merchant].as_str().unwrap(),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.path().join("m.pem"), private).unwrap();
        }
        let (who, form) = alipay.split_once('.').unwrap();
        std::fs::write(
            dir.path().join("a.pem"),
            v["keys"][who][form].as_str().unwrap(),
        )
        .unwrap();
        let text = format!(
            "client_id = \"T_1\"\n[keys]\nmerchant_private_key = \"m.pem\"\nalipay_public_keys = {{ \"1\" = \"a.pem\" }}\n[outbound]\nregion = \"na\"\n{extra}"
        );
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::parse(&text, &path, Vec::new()).unwrap();
        (dir, config)
    }

    #[test]
    fn good_set_loads_and_debug_hides_material() {
        let (_d, c) = setup("", "private_pkcs8_pem", "alipay.public_spki_pem");
        let k = KeySet::load(&c).unwrap();
        assert!(k.warnings.is_empty());
        let dbg = format!("{k:?}");
        assert!(dbg.contains("SHA256:") && !dbg.contains("MII"), "{dbg}");
    }

    #[test]
    fn own_key_as_alipay_key_is_refused() {
        let (_d, c) = setup("", "private_pkcs8_pem", "merchant.public_spki_pem");
        let e = KeySet::load(&c).unwrap_err().to_string();
        assert!(
            e.contains("you configured your own public key as Alipay's"),
            "{e}"
        );
        assert!(e.contains("sidecar.toml:4"), "{e}");
    }

    #[test]
    fn pkcs1_is_a_warning() {
        let (_d, c) = setup("", "private_pkcs1_pem", "alipay.public_spki_pem");
        let k = KeySet::load(&c).unwrap();
        assert_eq!(k.warnings.len(), 1);
        assert!(k.warnings[0].message.contains("openssl pkcs8 -topk8"));
    }

    #[test]
    fn key_file_problems_name_file_and_line() {
        let (d, c) = setup("", "private_pkcs8_pem", "alipay.public_spki_pem");
        std::fs::remove_file(d.path().join("a.pem")).unwrap();
        let e = KeySet::load(&c).unwrap_err().to_string();
        assert!(
            e.contains("sidecar.toml:4") && e.contains("a.pem") && e.contains("does not exist"),
            "{e}"
        );
        std::fs::write(d.path().join("a.pem"), "").unwrap();
        let e = KeySet::load(&c).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let v = vectors();
        std::fs::write(
            d.path().join("a.pem"),
            v["keys"]["alipay"]["private_pkcs8_pem"].as_str().unwrap(),
        )
        .unwrap();
        let e = KeySet::load(&c).unwrap_err().to_string();
        assert!(e.contains("PUBLIC key"), "{e}");
        let pem = v["keys"]["merchant"]["private_pkcs8_pem"].as_str().unwrap();
        std::fs::write(d.path().join("m.pem"), &pem[..pem.len() / 2]).unwrap();
        let e = KeySet::load(&c).unwrap_err().to_string();
        assert!(
            e.contains("sidecar.toml:3") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn sandbox_mixups() {
        let (_d, c) = setup(
            "sandbox_path_rewrite = true\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        let e = KeySet::load(&c).unwrap_err().to_string();
        assert!(
            e.contains("live client id") && e.contains("sidecar.toml:7"),
            "{e}"
        );
        let (_d, c) = setup(
            "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        assert!(KeySet::load(&c)
            .unwrap_err()
            .to_string()
            .contains("live one"));
        let (_d, mut c) = setup(
            "allowed_path_prefixes = [\"/ams/api/\"]\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        c.merchants[0].client_id = "SANDBOX_1".into();
        assert!(KeySet::load(&c)
            .unwrap_err()
            .to_string()
            .contains("sandbox one"));
        c.outbound.as_mut().unwrap().sandbox_path_rewrite = true;
        assert!(KeySet::load(&c).is_ok());
    }
}
