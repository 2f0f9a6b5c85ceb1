//! The signing step behind one seam: outbound requests and the optional signed inbound
//! acknowledgement both sign through a [`SigningKey`], whatever holds the private key.
//!
//! Why a seam: the merchant key is either read into the process (`merchant_private_key` = a
//! file, the default: aws-lc signs in place, ≈ 1 ms, nothing else on the path) or kept in a
//! PKCS#11 token ([`pkcs11`]: an HSM or a cloud KMS module), where only the SHA-256 digest
//! crosses to the token and a sign can be slow, rationed or stall. The token path therefore
//! runs under a budget ([`budget`]: a concurrency limit, `sign_timeout`, a circuit breaker).
//! Verification stays in process with public keys either way; so does the public half of a
//! token key, read from the token at start and at reload so the preflight checks it exactly
//! like a file key's.

pub mod budget;
mod metrics;
pub mod pkcs11;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use prometheus::Histogram;

use crate::protocol::{format_signature_header, ContentDigest, PrivateKey, PublicKey};

/// Which implementation holds the key (the `backend` metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In process (aws-lc), from `merchant_private_key` = a file.
    File,
    /// A PKCS#11 token.
    Pkcs11,
}

impl Backend {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Pkcs11 => "pkcs11",
        }
    }
}

/// Why a sign did not produce a signature. `reason` is the closed label set of
/// `alipay_sidecar_signer_errors_total`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SignFailure {
    /// The metric label.
    pub reason: FailureReason,
    /// What happened, for the log and the app's `resultMessage`.
    pub message: String,
}

/// The closed set of `reason` label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The token (or the engine) answered with an error.
    TokenError,
    /// No signature within `sign_timeout`.
    Timeout,
    /// The circuit breaker is open; the token was not asked.
    BreakerOpen,
    /// Every sign slot (`max_concurrent_signs`) stayed busy for `sign_timeout`.
    Busy,
}

impl FailureReason {
    /// Every value, so the series exist at zero before the first failure.
    pub const ALL: [FailureReason; 4] = [
        FailureReason::TokenError,
        FailureReason::Timeout,
        FailureReason::BreakerOpen,
        FailureReason::Busy,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::TokenError => "token_error",
            FailureReason::Timeout => "timeout",
            FailureReason::BreakerOpen => "breaker_open",
            FailureReason::Busy => "busy",
        }
    }
}

/// One implementation of the signing step: RSASSA-PKCS1-v1_5 with SHA-256 over content given
/// by its digest.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug {
    /// Which implementation this is.
    fn backend(&self) -> Backend;
    /// The signature bytes over the content whose SHA-256 is `digest`.
    async fn sign(&self, digest: &ContentDigest) -> Result<Vec<u8>, SignFailure>;
}

/// The in-process key: today's signer, unchanged (signs in place, no task hop).
#[derive(Debug)]
struct FileSigner(PrivateKey);

#[async_trait]
impl Signer for FileSigner {
    fn backend(&self) -> Backend {
        Backend::File
    }

    async fn sign(&self, digest: &ContentDigest) -> Result<Vec<u8>, SignFailure> {
        self.0.sign_digest(digest).map_err(|e| SignFailure {
            reason: FailureReason::TokenError,
            message: e.to_string(),
        })
    }
}

/// The merchant's signing key as the request path sees it: the signer, its public half
/// (checked by the preflight, shown in logs and metrics) and, for a file key, the key itself
/// (for file-only checks such as the PKCS#1 warning). Cheap to clone.
#[derive(Clone)]
pub struct SigningKey {
    signer: Arc<dyn Signer>,
    public: PublicKey,
    file: Option<PrivateKey>,
    /// For a token key: where it is (the URI), for messages.
    location: Option<String>,
    merchant: Arc<str>,
    /// `alipay_sidecar_signer_seconds{merchant, backend}`, looked up on the first sign
    /// instead of on every one (shared by the clones).
    seconds: Arc<OnceLock<Histogram>>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("backend", &self.signer.backend())
            .field("fingerprint", &self.public.fingerprint())
            .finish()
    }
}

impl SigningKey {
    /// A key read into the process from a file.
    pub fn file(merchant: &str, key: PrivateKey) -> Self {
        SigningKey {
            public: key.public_key(),
            signer: Arc::new(FileSigner(key.clone())),
            file: Some(key),
            location: None,
            merchant: merchant.into(),
            seconds: Arc::default(),
        }
    }

    /// A key held elsewhere (a token), with its public half as read from there.
    pub fn external(
        merchant: &str,
        signer: Arc<dyn Signer>,
        public: PublicKey,
        location: String,
    ) -> Self {
        SigningKey {
            signer,
            public,
            file: None,
            location: Some(location),
            merchant: merchant.into(),
            seconds: Arc::default(),
        }
    }

    /// Which implementation signs.
    pub fn backend(&self) -> Backend {
        self.signer.backend()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// The public key's fingerprint (identifies the key in logs and metrics).
    pub fn fingerprint(&self) -> &str {
        self.public.fingerprint()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.public.bits()
    }

    /// The key itself when it was read from a file; `None` for a token key.
    pub fn file_key(&self) -> Option<&PrivateKey> {
        self.file.as_ref()
    }

    /// The token URI of a token key.
    pub fn token_location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// Signs and returns the complete `Signature` header value (`key_version` goes into the
    /// header only, spec §3), recording the signer metrics.
    pub async fn sign_header(
        &self,
        key_version: &str,
        digest: &ContentDigest,
    ) -> Result<String, SignFailure> {
        let start = Instant::now();
        let backend = self.signer.backend();
        let result = self.signer.sign(digest).await;
        metrics::observe(
            &self.merchant,
            backend,
            &self.seconds,
            start.elapsed(),
            result.as_ref().err(),
        );
        Ok(format_signature_header(key_version, &result?))
    }
}

impl SigningKey {
    /// How the key is held, for `check-config`'s summary ("PKCS#8 PEM", or the token URI).
    pub fn encoding_label(&self) -> String {
        match (&self.file, &self.location) {
            (Some(k), _) => k.encoding().to_string(),
            (None, Some(uri)) => format!("key in the PKCS#11 token {uri}, PIN"),
            (None, None) => "external key".into(),
        }
    }
}

/// The sidecar error for a failed sign: an in-process engine failure is
/// `SIDECAR_SIGNING_FAILED` (as before); a key store that did not sign is
/// `SIDECAR_SIGNER_UNAVAILABLE` (`U`: nothing was sent to Alipay, a retry can succeed).
pub fn refusal_code(key: &SigningKey) -> crate::envelope::SidecarError {
    match key.backend() {
        Backend::File => crate::envelope::SidecarError::SigningFailed,
        Backend::Pkcs11 => crate::envelope::SidecarError::SignerUnavailable,
    }
}

/// Registers the signer metrics with `merchant`'s series at zero, as a token key's load does
/// (for checks of the dashboards and alert rules against what the code exposes).
pub fn register_metrics(merchant: &str) {
    metrics::announce(merchant, Backend::Pkcs11);
    metrics::get()
        .breaker_open
        .with_label_values(&[merchant])
        .set(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sign_digest;

    #[tokio::test]
    async fn the_file_signer_writes_todays_header_and_its_metrics() {
        let key = crate::testing::merchant_key();
        let signing = SigningKey::file("signer-unit", key.clone());
        assert_eq!(signing.backend(), Backend::File);
        assert_eq!(signing.fingerprint(), key.fingerprint());
        assert!(signing.file_key().is_some() && signing.token_location().is_none());
        let digest = ContentDigest::of(b"POST /ams/api/v1/payments/pay\nT_1.1.{}");
        let header = signing.sign_header("7", &digest).await.unwrap();
        assert_eq!(header, sign_digest(&key, "7", &digest).unwrap());
        let m = metrics::get();
        assert_eq!(
            m.seconds
                .with_label_values(&["signer-unit", "file"])
                .get_sample_count(),
            1
        );
        assert_eq!(
            refusal_code(&signing),
            crate::envelope::SidecarError::SigningFailed
        );
    }
}
