//! The immutable set of loaded keys: what every request signs and verifies with.
//!
//! Why one immutable value: every request signs and verifies with one snapshot of the keys
//! (swapped atomically by [`crate::reload`]), so a reload can never mix an old merchant key
//! with a new Alipay key inside one request. Reading and parsing the key files is here; the
//! checks a set must pass before it goes live are [`crate::preflight`]'s, whose
//! [`crate::preflight::load`] (start-up and reload) builds checked sets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, CredentialFile, MerchantConfig, Origin};
use crate::files::{file_access, permission_denied_hint, read_file, FileAccess, FileError};
use crate::protocol::{ApiKey, ApiKeyError, KeyError, PrivateKey, PublicKey, Verifier};
use crate::signer::SigningKey;

/// Everything needed to sign and verify, loaded and checked together. Cheap to clone (keys are
/// reference-counted); hold it in an `Arc`/`ArcSwap` for hot reload.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// The merchant's client id (signed into every message).
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
    /// RSA signing with the merchant private key (`merchant_private_key`): a key file read
    /// into the process, or a key kept in a PKCS#11 token ([`crate::signer`]).
    Signing(SigningKey),
    /// `Authorization: Bearer <key>` (`api_key`); there is no merchant private key.
    ApiKey(ApiKey),
}

impl Credential {
    /// The merchant private key, in signing mode.
    pub fn signing_key(&self) -> Option<&SigningKey> {
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

/// One problem found by [`crate::preflight`], with what to change (here, beside the set
/// whose warnings it is, so the key set does not depend on the checks).
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
    /// The merchant key is in a PKCS#11 token that cannot be used (module missing, token not
    /// found, wrong PIN, no such object, not RSA 2048–4096, no sign permission).
    #[error("{location}: the merchant key in the PKCS#11 token ({uri}) is not usable: {reason}")]
    Token {
        /// Config file and line (or environment variable) naming the key.
        location: String,
        /// The URI as configured.
        uri: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// The keys loaded but the preflight found errors.
    #[error("the keys are not usable as configured:\n{}", findings.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Preflight {
        /// The error findings (warnings are not included).
        findings: Vec<Finding>,
    },
}

/// Where `key` was set (file and line, or environment variable), for messages.
pub(crate) fn location(config: &Config, key: &str) -> String {
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

impl KeySet {
    /// Reads and parses the keys of `merchant` without the preflight: [`crate::preflight`]
    /// checks the sets of every merchant together (`check-config` reports every finding
    /// itself).
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
                Credential::Signing(SigningKey::file(
                    &merchant.name,
                    PrivateKey::from_text(&text).map_err(|source| KeySetError::BadKey {
                        location: location(config, key),
                        role: role.to_string(),
                        path: path.clone(),
                        source,
                    })?,
                ))
            }
            CredentialFile::Pkcs11(token) => {
                Credential::Signing(crate::signer::pkcs11::load(&merchant.name, token).map_err(
                    |e| KeySetError::Token {
                        location: location(config, key),
                        uri: token.uri.clone(),
                        reason: e.0,
                    },
                )?)
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
