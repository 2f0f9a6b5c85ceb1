//! The RSA engine behind the protocol's key types: ring 0.17 by default, aws-lc-rs with the
//! `aws-lc` cargo feature. Everything engine-specific lives in this file; the two crates
//! share one API shape, so the switch is the `use` below.
//!
//! Why ring by default: signing is almost the whole CPU cost of the sidecar; ring signs in
//! constant time, about 3.5× faster than the `rsa` crate, and rustls already brings it in
//! through pingora, so the default binary carries one crypto library for TLS and signatures.
//! Why the `aws-lc` option: on CPUs with AVX-512 IFMA (AMD Zen 4/5, recent Xeons) aws-lc-rs
//! has a faster RSA path and signs about 2× faster than ring (figures and the command in the
//! README, "Performance"); it is constant-time and blinds as well.

#[cfg(feature = "aws-lc")]
use aws_lc_rs as engine;
#[cfg(not(feature = "aws-lc"))]
use ring as engine;

use engine::rand::SystemRandom;
use engine::signature::{
    RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};

/// Which engine this build signs with.
pub(crate) const ENGINE: &str = if cfg!(feature = "aws-lc") {
    "aws-lc-rs"
} else {
    "ring"
};

/// A parsed private key, ready to sign (parsed once at load/reload, never per request).
pub(crate) struct EngineSigner {
    pair: RsaKeyPair,
    rng: SystemRandom,
    signature_len: usize,
}

impl EngineSigner {
    /// `pkcs1_der` is an `RSAPrivateKey` (PKCS#1) DER document of a key whose modulus is
    /// `modulus_bytes` long (the signature length).
    pub(crate) fn from_pkcs1_der(pkcs1_der: &[u8], modulus_bytes: usize) -> Result<Self, String> {
        let pair = RsaKeyPair::from_der(pkcs1_der).map_err(|e| e.to_string())?;
        Ok(Self {
            pair,
            rng: SystemRandom::new(),
            signature_len: modulus_bytes,
        })
    }

    pub(crate) fn sign(&self, content: &[u8]) -> Result<Vec<u8>, String> {
        let mut sig = vec![0u8; self.signature_len];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, content, &mut sig)
            .map_err(|_| format!("{ENGINE} refused to sign"))?;
        Ok(sig)
    }
}

/// A parsed public key for PKCS#1 v1.5 / SHA-256 verification only (SHA-256 is pinned:
/// a DigestInfo for another hash never verifies, spec §2).
pub(crate) struct EngineVerifier {
    key: UnparsedPublicKey<Vec<u8>>,
}

impl EngineVerifier {
    /// `pkcs1_der` is an `RSAPublicKey` (PKCS#1) DER document.
    pub(crate) fn from_pkcs1_der(pkcs1_der: Vec<u8>) -> Self {
        Self {
            key: UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pkcs1_der),
        }
    }

    pub(crate) fn verify(&self, content: &[u8], signature: &[u8]) -> bool {
        self.key.verify(content, signature).is_ok()
    }
}
