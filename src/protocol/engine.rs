//! The RSA engine behind the protocol's key types: ring 0.17.
//!
//! Why ring: signing is almost the whole CPU cost of the sidecar; ring signs at the OpenSSL
//! limit (≈ 4.5× the `rsa` crate on this hardware, see `benches/signature.rs`) in constant
//! time, and rustls already brings it in through pingora, so the binary carries one crypto
//! library for TLS and signatures. Everything ring-specific lives in this file.

use ring::rand::SystemRandom;
use ring::signature::{
    RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};

/// A parsed private key, ready to sign (parsed once at load/reload, never per request).
pub(crate) struct EngineSigner {
    pair: RsaKeyPair,
    rng: SystemRandom,
}

impl EngineSigner {
    /// `pkcs1_der` is an `RSAPrivateKey` (PKCS#1) DER document.
    pub(crate) fn from_pkcs1_der(pkcs1_der: &[u8]) -> Result<Self, String> {
        let pair = RsaKeyPair::from_der(pkcs1_der).map_err(|e| e.to_string())?;
        Ok(Self {
            pair,
            rng: SystemRandom::new(),
        })
    }

    pub(crate) fn sign(&self, content: &[u8]) -> Result<Vec<u8>, String> {
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, content, &mut sig)
            .map_err(|_| "ring refused to sign".to_string())?;
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
