//! Verifying a received `Signature` header against configured Alipay public keys (spec §2, §3).

use std::collections::BTreeMap;

use super::content::ContentDigest;
use super::error::VerifyError;
use super::header::{parse_signature_header, ALGORITHM};
use super::keys::PublicKey;

/// What a successful verification used, for the `X-Alipay-Sidecar-*` headers and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key version that verified.
    pub key_version: String,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// Alipay's public keys by `keyVersion`, so a key rotation (two versions live at once) needs
/// no restart and no guessing.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    keys: BTreeMap<String, PublicKey>,
    any_version: Option<PublicKey>,
}

impl Verifier {
    /// Keys bound to explicit versions. A header's `keyVersion` must name one of them; a header
    /// without `keyVersion` uses the only key, or the latest version (the gateway's documented
    /// default) when there are several.
    pub fn new(keys: impl IntoIterator<Item = (String, PublicKey)>) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            any_version: None,
        }
    }

    /// One key that answers for whatever `keyVersion` the header names: for the offline
    /// `verify` tool when the user did not say which version a key is.
    pub fn any_version(key: PublicKey) -> Self {
        Self {
            keys: BTreeMap::new(),
            any_version: Some(key),
        }
    }

    /// The configured versions and keys, in version order.
    pub fn versions(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.keys.iter().map(|(v, k)| (v.as_str(), k))
    }

    fn select(&self, version: Option<&str>) -> Result<(String, &PublicKey), VerifyError> {
        if let Some(key) = &self.any_version {
            return Ok((version.unwrap_or("1").to_string(), key));
        }
        match version {
            Some(v) => self.keys.get(v).map(|k| (v.to_string(), k)).ok_or_else(|| {
                VerifyError::UnknownKeyVersion {
                    key_version: super::echo(v),
                    configured: self.keys.keys().cloned().collect(),
                }
            }),
            None => self
                .keys
                .iter()
                .max_by(|a, b| version_order(a.0, b.0))
                .map(|(v, k)| (v.clone(), k))
                .ok_or_else(|| VerifyError::UnknownKeyVersion {
                    key_version: String::new(),
                    configured: Vec::new(),
                }),
        }
    }

    /// Every check of [`Verifier::verify`] that needs no content: the header parses, the
    /// algorithm is RSA256, the key version names a configured key, the value is strict
    /// base64 of exactly the key's size. Returns the key version that would verify.
    ///
    /// Why: a listener can refuse a forged or junk header from the request head alone,
    /// before it reads (and buffers) a body it would refuse anyway.
    pub fn precheck(&self, signature_header: &str) -> Result<String, VerifyError> {
        self.checked(signature_header)
            .map(|(version, _, _)| version)
    }

    fn checked(
        &self,
        signature_header: &str,
    ) -> Result<(String, &PublicKey, Vec<u8>), VerifyError> {
        let header = parse_signature_header(signature_header)?;
        if let Some(alg) = &header.algorithm {
            if !alg.eq_ignore_ascii_case(ALGORITHM) {
                return Err(VerifyError::UnsupportedAlgorithm {
                    algorithm: super::echo(alg),
                });
            }
        }
        let (key_version, key) = self.select(header.key_version.as_deref())?;
        let signature = header.signature_bytes()?;
        let expected = key.bits() / 8;
        if signature.len() != expected {
            return Err(VerifyError::WrongLength {
                expected,
                actual: signature.len(),
            });
        }
        Ok((key_version, key, signature))
    }

    /// Parses the header tolerantly and verifies strictly: RSA256 only, strict base64, length
    /// equal to the key size, PKCS#1 v1.5 with SHA-256 only.
    pub fn verify(&self, content: &[u8], signature_header: &str) -> Result<Verified, VerifyError> {
        self.verify_digest(&ContentDigest::of(content), signature_header)
    }

    /// [`Verifier::verify`] for content given by its digest ([`super::ContentHasher`]), so
    /// the caller need not assemble the content (a copy of the body) first.
    pub fn verify_digest(
        &self,
        digest: &ContentDigest,
        signature_header: &str,
    ) -> Result<Verified, VerifyError> {
        let (key_version, key, signature) = self.checked(signature_header)?;
        if key.verify_raw_digest(digest, &signature) {
            Ok(Verified {
                key_version,
                fingerprint: key.fingerprint().to_string(),
            })
        } else {
            Err(VerifyError::Mismatch {
                content_sha256: digest.to_hex(),
                key_version,
            })
        }
    }
}

/// Numeric versions compare as numbers ("10" > "9"), others as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;

    #[test]
    fn precheck_refuses_what_cannot_verify_without_the_content() {
        let kp = crate::generate_keypair().expect("key");
        let private = crate::PrivateKey::from_text(&kp.private_pkcs8_pem).expect("private");
        let v = Verifier::new([("1".to_string(), private.public_key())]);
        let sig = crate::sign_content(&private, "1", b"content").expect("sign");
        assert_eq!(v.precheck(&sig).as_deref(), Ok("1"));
        let reason = |h: &str| v.precheck(h).unwrap_err().kind();
        assert_eq!(reason("junk"), Reason::Malformed);
        assert_eq!(
            reason(&sig.replace("keyVersion=1", "keyVersion=2")),
            Reason::UnknownKeyVersion
        );
        assert_eq!(
            reason(&sig.replace("RSA256", "ECC224")),
            Reason::UnsupportedAlgorithm
        );
        assert_eq!(
            reason("algorithm=RSA256,keyVersion=1,signature=AAAA"),
            Reason::WrongLength
        );
        assert_eq!(
            reason("algorithm=RSA256,keyVersion=1,signature=!!"),
            Reason::BadEncoding
        );
        // a header that passes the precheck can still fail the signature itself
        assert!(v.verify(b"other content", &sig).is_err());
    }
}
