//! The crypto engine behind the protocol's key types: **aws-lc-rs** for RSA sign/verify and
//! SHA-256. Everything engine-specific lives in this file.
//!
//! Why aws-lc-rs: signing is almost the whole CPU cost of the sidecar. aws-lc (like OpenSSL)
//! has an AVX-512 IFMA RSA path, so on CPUs that have it (AMD Zen 4/5, recent Xeons) it signs
//! about twice as fast as ring, which has none; where IFMA is missing the two were measured
//! even, so ring is not kept as an alternative engine (it was never the faster one). It is
//! constant-time and blinds; `rsa` only parses key formats and generates keys.
//!
//! Why keys are parsed here once: a verify with an unparsed public key re-parses the DER every
//! time (≈ 4 µs with aws-lc-rs, a fifth of the verify), so [`EngineVerifier`] keeps aws-lc's
//! parsed key, built at load/reload.
//!
//! Why digests: signing and verifying take the SHA-256 of the content ([`ContentHasher`]), so
//! the caller can hash `METHOD URI\nCLIENT.TIME.` and the body where they lie, without
//! copying a body of up to 1 MiB into one "content to sign" buffer first. The signature is
//! byte-identical to signing the assembled content (PKCS#1 v1.5 is deterministic).
//!
//! TLS is not this crate's business, but the sidecar makes rustls use the same library for
//! the gateway's TLS (`install_tls_provider` in the sidecar's `src/tls.rs`), so one crypto
//! library serves the request path.

use aws_lc_rs::digest::{Context, Digest, SHA256};
use aws_lc_rs::signature::{
    ParsedPublicKey, RsaKeyPair, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};

/// Which engine this build signs with, for logs and `check-config`.
pub(crate) const ENGINE: &str = "aws-lc-rs";

/// SHA-256 of content to sign, fed in pieces.
pub(crate) struct EngineHasher(Context);

impl EngineHasher {
    pub(crate) fn new() -> Self {
        Self(Context::new(&SHA256))
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(self) -> EngineDigest {
        EngineDigest(self.0.finish())
    }
}

/// A finished SHA-256.
#[derive(Clone)]
pub(crate) struct EngineDigest(Digest);

impl EngineDigest {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

/// One-shot SHA-256 (fingerprints, `sha256_hex`).
pub(crate) fn sha256(data: &[u8]) -> EngineDigest {
    EngineDigest(aws_lc_rs::digest::digest(&SHA256, data))
}

/// A parsed private key, ready to sign (parsed once at load/reload, never per request).
pub(crate) struct EngineSigner {
    pair: RsaKeyPair,
    signature_len: usize,
}

impl EngineSigner {
    /// `pkcs1_der` is an `RSAPrivateKey` (PKCS#1) DER document of a key whose modulus is
    /// `modulus_bytes` long (the signature length).
    pub(crate) fn from_pkcs1_der(pkcs1_der: &[u8], modulus_bytes: usize) -> Result<Self, String> {
        let pair = RsaKeyPair::from_der(pkcs1_der).map_err(|e| e.to_string())?;
        if pair.public_modulus_len() != modulus_bytes {
            return Err(format!(
                "{ENGINE} sees a modulus of {} bytes, expected {modulus_bytes}",
                pair.public_modulus_len()
            ));
        }
        Ok(Self {
            pair,
            signature_len: modulus_bytes,
        })
    }

    /// RSASSA-PKCS1-v1_5 over a SHA-256 digest of the content.
    pub(crate) fn sign_digest(&self, digest: &EngineDigest) -> Result<Vec<u8>, String> {
        let mut sig = vec![0u8; self.signature_len];
        self.pair
            .sign_digest(&RSA_PKCS1_SHA256, &digest.0, &mut sig)
            .map_err(|_| format!("{ENGINE} refused to sign"))?;
        Ok(sig)
    }
}

/// A parsed public key for PKCS#1 v1.5 / SHA-256 verification only (SHA-256 is pinned:
/// a DigestInfo for another hash never verifies, spec §2).
pub(crate) struct EngineVerifier {
    key: ParsedPublicKey,
}

impl EngineVerifier {
    /// `pkcs1_der` is an `RSAPublicKey` (PKCS#1) DER document.
    pub(crate) fn from_pkcs1_der(pkcs1_der: &[u8]) -> Result<Self, String> {
        let key = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pkcs1_der)
            .map_err(|e| format!("{ENGINE} refused the public key: {e}"))?;
        Ok(Self { key })
    }

    pub(crate) fn verify_digest(&self, digest: &EngineDigest, signature: &[u8]) -> bool {
        self.key.verify_digest_sig(&digest.0, signature).is_ok()
    }
}
