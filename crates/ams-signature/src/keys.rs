//! Loading RSA keys in every form merchants actually have (spec §7), and keygen.
//!
//! Accepted: PEM (`PRIVATE KEY` = PKCS#8, `RSA PRIVATE KEY` = PKCS#1, `PUBLIC KEY` = SPKI,
//! `RSA PUBLIC KEY` = PKCS#1) and the one-line base64 DER the Alipay dashboard and SDKs use
//! (tried as PKCS#8 then PKCS#1 for private keys, SPKI then PKCS#1 for public keys). All
//! whitespace is ignored, so wrapped, indented or CRLF text loads. Keys under 2048 bits are
//! refused. The `rsa` crate parses and converts; the parsed key is handed to the engine once.
//!
//! Key material never leaves this module in text form except through [`generate_keypair`]:
//! `Debug` shows only the SHA-256 fingerprint of the public key (SPKI DER).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rsa::pkcs1::{
    DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey,
};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;

use super::content::hex;
use super::content::ContentDigest;
use super::engine::{EngineSigner, EngineVerifier};
use super::SignError;

/// Smallest modulus accepted. Alipay issues RSA-2048; anything smaller is breakable.
const MIN_BITS: usize = 2048;
/// The largest private key the signing engines (ring; aws-lc-rs) sign with.
const MAX_SIGNING_BITS: usize = 4096;

/// Which textual form a key was loaded from; `check-config` uses it to flag the PKCS#1 vs
/// PKCS#8 confusion that breaks the Java/Go/.NET SDKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// `-----BEGIN PRIVATE KEY-----`
    Pkcs8Pem,
    /// `-----BEGIN RSA PRIVATE KEY-----` (or `RSA PUBLIC KEY`)
    Pkcs1Pem,
    /// `-----BEGIN PUBLIC KEY-----`
    SpkiPem,
    /// one-line base64 of PKCS#8 DER (the SDK / dashboard form for private keys)
    Pkcs8Base64,
    /// one-line base64 of PKCS#1 DER
    Pkcs1Base64,
    /// one-line base64 of SPKI DER (the SDK / dashboard form for public keys)
    SpkiBase64,
}

impl fmt::Display for KeyEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyEncoding::Pkcs8Pem => "PKCS#8 PEM",
            KeyEncoding::Pkcs1Pem => "PKCS#1 PEM",
            KeyEncoding::SpkiPem => "SPKI (X.509 public key) PEM",
            KeyEncoding::Pkcs8Base64 => "one-line base64 PKCS#8",
            KeyEncoding::Pkcs1Base64 => "one-line base64 PKCS#1",
            KeyEncoding::SpkiBase64 => "one-line base64 SPKI",
        })
    }
}

/// Why a key did not load, phrased so the user knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing but whitespace.
    #[error(
        "the key is empty; put a PEM key or the one-line base64 key from the Alipay dashboard here"
    )]
    Empty,
    /// PEM armour that is not a supported key type.
    #[error("unsupported PEM block '{label}'; expected PRIVATE KEY, RSA PRIVATE KEY, PUBLIC KEY or RSA PUBLIC KEY")]
    UnsupportedPem {
        /// The label after `BEGIN`.
        label: String,
    },
    /// Password-protected keys cannot be loaded unattended.
    #[error("the private key is encrypted; decrypt it first: openssl pkcs8 -in key.pem -out key-plain.pem (and protect the file instead)")]
    Encrypted,
    /// Text that is neither PEM nor base64, or a truncated/corrupt key.
    #[error("not a readable RSA key ({detail}); the file may be truncated or not a key at all")]
    NotAKey {
        /// What the parser said.
        detail: String,
    },
    /// A public key where the private key belongs, or the reverse.
    #[error("this is {found}, but {expected} belongs here")]
    WrongKind {
        /// What this slot needs.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
    /// Under 2048 bits.
    #[error("the RSA key has {bits} bits; at least 2048 are required (Alipay uses RSA-2048); generate a new pair with `alipay-sidecar keygen`")]
    TooSmall {
        /// Modulus size.
        bits: usize,
    },
    /// Larger than the signing engine supports.
    #[error("the RSA private key has {bits} bits; the sidecar signs with keys of 2048 to 4096 bits (Alipay uses RSA-2048); generate a new pair with `alipay-sidecar keygen`")]
    TooLarge {
        /// Modulus size.
        bits: usize,
    },
    /// The RSA engine refused the parsed key (inconsistent private key parameters).
    #[error("the private key is inconsistent and cannot sign ({detail})")]
    Inconsistent {
        /// What the engine said.
        detail: String,
    },
    /// Key generation failed (no system randomness).
    #[error("key generation failed: {0}")]
    Generate(String),
}

const A_PRIVATE: &str = "a private key";
const A_PUBLIC: &str = "a public key";
const THE_PRIVATE: &str = "the merchant PRIVATE key (PKCS#8 or PKCS#1)";
const THE_PUBLIC: &str = "a PUBLIC key (SPKI or PKCS#1)";

enum Decoded {
    Pem { label: String, der: Vec<u8> },
    Bare(Vec<u8>),
}

fn decode_text(text: &str) -> Result<Decoded, KeyError> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if let Some(rest) = text.strip_prefix("-----BEGIN ") {
        let (label, rest) = rest.split_once("-----").ok_or_else(|| KeyError::NotAKey {
            detail: "PEM header line is not closed with -----".into(),
        })?;
        let end = format!("-----END {label}-----");
        let body = rest
            .split_once(end.as_str())
            .map(|(b, _)| b)
            .ok_or_else(|| KeyError::NotAKey {
                detail: format!(
                    "no '-----END {}-----' line: the PEM text is truncated",
                    super::echo(label)
                ),
            })?;
        if body.contains(':') {
            return Err(KeyError::Encrypted);
        }
        let der = b64(body)?;
        return Ok(Decoded::Pem {
            label: label.to_string(),
            der,
        });
    }
    Ok(Decoded::Bare(b64(text)?))
}

fn b64(text: &str) -> Result<Vec<u8>, KeyError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(compact.trim_end_matches('=').as_bytes())
        })
        .map_err(|e| KeyError::NotAKey {
            detail: format!("not PEM and not base64: {e}"),
        })
}

fn check_bits(bits: usize) -> Result<(), KeyError> {
    if bits < MIN_BITS {
        return Err(KeyError::TooSmall { bits });
    }
    Ok(())
}

fn fingerprint_of(spki_der: &[u8]) -> String {
    format!("SHA256:{}", hex(super::engine::sha256(spki_der).as_bytes()))
}

fn not_a_key(e: impl fmt::Display) -> KeyError {
    KeyError::NotAKey {
        detail: e.to_string(),
    }
}

/// The merchant's private key, parsed once and ready to sign on the hot path.
#[derive(Clone)]
pub struct PrivateKey(Arc<PrivateInner>);

struct PrivateInner {
    signer: EngineSigner,
    public: PublicKey,
    encoding: KeyEncoding,
}

impl PrivateKey {
    /// Loads a private key from PEM or one-line base64 text (see the module doc).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (key, encoding) = match decode_text(text)? {
            Decoded::Pem { label, der } => match label.as_str() {
                "PRIVATE KEY" => (
                    rsa::PrivateKey::from_pkcs8_der(&der).map_err(not_a_key)?,
                    KeyEncoding::Pkcs8Pem,
                ),
                "RSA PRIVATE KEY" => (
                    rsa::PrivateKey::from_pkcs1_der(&der).map_err(not_a_key)?,
                    KeyEncoding::Pkcs1Pem,
                ),
                "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
                "PUBLIC KEY" | "RSA PUBLIC KEY" => {
                    return Err(KeyError::WrongKind {
                        expected: THE_PRIVATE,
                        found: A_PUBLIC,
                    })
                }
                _ => {
                    return Err(KeyError::UnsupportedPem {
                        label: super::echo(&label),
                    })
                }
            },
            Decoded::Bare(der) => {
                if let Ok(k) = rsa::PrivateKey::from_pkcs8_der(&der) {
                    (k, KeyEncoding::Pkcs8Base64)
                } else if let Ok(k) = rsa::PrivateKey::from_pkcs1_der(&der) {
                    (k, KeyEncoding::Pkcs1Base64)
                } else if rsa::PublicKey::from_public_key_der(&der).is_ok()
                    || rsa::PublicKey::from_pkcs1_der(&der).is_ok()
                {
                    return Err(KeyError::WrongKind {
                        expected: THE_PRIVATE,
                        found: A_PUBLIC,
                    });
                } else {
                    return Err(KeyError::NotAKey {
                        detail: "base64 decodes, but not to a PKCS#8 or PKCS#1 RSA private key"
                            .into(),
                    });
                }
            }
        };
        Self::from_rsa(&key, encoding)
    }

    fn from_rsa(key: &rsa::PrivateKey, encoding: KeyEncoding) -> Result<Self, KeyError> {
        check_bits(key.size() * 8)?;
        if key.size() * 8 > MAX_SIGNING_BITS {
            return Err(KeyError::TooLarge {
                bits: key.size() * 8,
            });
        }
        let pkcs1 = key.to_pkcs1_der().map_err(not_a_key)?;
        let signer = EngineSigner::from_pkcs1_der(pkcs1.as_bytes(), key.size())
            .map_err(|detail| KeyError::Inconsistent { detail })?;
        let public = PublicKey::from_rsa(&key.to_public_key(), encoding)?;
        Ok(Self(Arc::new(PrivateInner {
            signer,
            public,
            encoding,
        })))
    }

    /// The form the key was loaded from.
    pub fn encoding(&self) -> KeyEncoding {
        self.0.encoding
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.0.public.bits()
    }

    /// `SHA256:<hex>` of the public half's SPKI DER: safe to log, and equal to the
    /// fingerprint of the public key uploaded to Alipay, so the two can be matched.
    pub fn fingerprint(&self) -> &str {
        self.0.public.fingerprint()
    }

    /// The public half, e.g. to detect it configured by mistake as Alipay's key.
    pub fn public_key(&self) -> PublicKey {
        self.0.public.clone()
    }

    /// RSASSA-PKCS1-v1_5 / SHA-256 over `content`; the raw signature bytes.
    pub fn sign(&self, content: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_digest(&ContentDigest::of(content))
    }

    /// Raw PKCS#1 v1.5 / SHA-256 signature over content given by its digest
    /// ([`super::ContentHasher`]): the same bytes as [`PrivateKey::sign`] of the content.
    pub fn sign_digest(&self, digest: &ContentDigest) -> Result<Vec<u8>, SignError> {
        self.0.signer.sign_digest(&digest.0).map_err(SignError)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.fingerprint())
    }
}

/// An RSA public key used to verify Alipay's signatures (or the merchant's, in tests and the
/// offline `verify` tool).
#[derive(Clone)]
pub struct PublicKey(Arc<PublicInner>);

struct PublicInner {
    verifier: EngineVerifier,
    spki_der: Vec<u8>,
    fingerprint: String,
    bits: usize,
    encoding: KeyEncoding,
}

impl PublicKey {
    /// Loads a public key from PEM or one-line base64 text (see the module doc).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let (key, encoding) = match decode_text(text)? {
            Decoded::Pem { label, der } => match label.as_str() {
                "PUBLIC KEY" => (
                    rsa::PublicKey::from_public_key_der(&der).map_err(not_a_key)?,
                    KeyEncoding::SpkiPem,
                ),
                "RSA PUBLIC KEY" => (
                    rsa::PublicKey::from_pkcs1_der(&der).map_err(not_a_key)?,
                    KeyEncoding::Pkcs1Pem,
                ),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                    return Err(KeyError::WrongKind {
                        expected: THE_PUBLIC,
                        found: A_PRIVATE,
                    })
                }
                _ => {
                    return Err(KeyError::UnsupportedPem {
                        label: super::echo(&label),
                    })
                }
            },
            Decoded::Bare(der) => {
                if let Ok(k) = rsa::PublicKey::from_public_key_der(&der) {
                    (k, KeyEncoding::SpkiBase64)
                } else if let Ok(k) = rsa::PublicKey::from_pkcs1_der(&der) {
                    (k, KeyEncoding::Pkcs1Base64)
                } else if rsa::PrivateKey::from_pkcs8_der(&der).is_ok()
                    || rsa::PrivateKey::from_pkcs1_der(&der).is_ok()
                {
                    return Err(KeyError::WrongKind {
                        expected: THE_PUBLIC,
                        found: A_PRIVATE,
                    });
                } else {
                    return Err(KeyError::NotAKey {
                        detail: "base64 decodes, but not to an SPKI or PKCS#1 RSA public key"
                            .into(),
                    });
                }
            }
        };
        Self::from_rsa(&key, encoding)
    }

    fn from_rsa(key: &rsa::PublicKey, encoding: KeyEncoding) -> Result<Self, KeyError> {
        let bits = key.size() * 8;
        check_bits(bits)?;
        let spki_der = key
            .to_public_key_der()
            .map_err(not_a_key)?
            .as_bytes()
            .to_vec();
        let pkcs1 = key.to_pkcs1_der().map_err(not_a_key)?.as_bytes().to_vec();
        Ok(Self(Arc::new(PublicInner {
            verifier: EngineVerifier::from_pkcs1_der(&pkcs1).map_err(not_a_key)?,
            fingerprint: fingerprint_of(&spki_der),
            spki_der,
            bits,
            encoding,
        })))
    }

    /// The form the key was loaded from.
    pub fn encoding(&self) -> KeyEncoding {
        self.0.encoding
    }

    /// Modulus size in bits; also the exact signature length in bytes × 8.
    pub fn bits(&self) -> usize {
        self.0.bits
    }

    /// `SHA256:<hex>` of the SPKI DER: identifies the key in logs, metrics and `check-config`.
    pub fn fingerprint(&self) -> &str {
        &self.0.fingerprint
    }

    /// Checks a raw PKCS#1 v1.5 / SHA-256 signature. Most callers want [`super::Verifier`],
    /// which also decodes the header and names the failure.
    pub fn verify_raw(&self, content: &[u8], signature: &[u8]) -> bool {
        self.verify_raw_digest(&ContentDigest::of(content), signature)
    }

    /// [`PublicKey::verify_raw`] for content given by its digest ([`super::ContentHasher`]).
    pub fn verify_raw_digest(&self, digest: &ContentDigest, signature: &[u8]) -> bool {
        self.0.verifier.verify_digest(&digest.0, signature)
    }

    /// SPKI PEM, e.g. to hand the fake gateway's public key to a sidecar config.
    pub fn to_spki_pem(&self) -> String {
        pem("PUBLIC KEY", &self.0.spki_der)
    }

    /// One-line base64 SPKI DER: the form to paste into the Alipay dashboard.
    pub fn to_spki_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0.spki_der)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.spki_der == other.0.spki_der
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A freshly generated merchant key pair in the forms merchants need: PEM for the sidecar,
/// one-line base64 for the Alipay dashboard and SDK-style configuration.
pub struct GeneratedKeyPair {
    /// PKCS#8 PEM; write with mode 0600.
    pub private_pkcs8_pem: String,
    /// SPKI PEM.
    pub public_spki_pem: String,
    /// One-line base64 PKCS#8 DER (what SDKs take as "merchant private key").
    pub private_pkcs8_base64: String,
    /// One-line base64 SPKI DER (what the dashboard takes as "merchant public key").
    pub public_spki_base64: String,
    /// Fingerprint of the public key, to match it later in logs and `check-config`.
    pub fingerprint: String,
}

impl fmt::Debug for GeneratedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GeneratedKeyPair({})", self.fingerprint)
    }
}

/// Generates a new RSA-2048 pair from the operating system's randomness.
pub fn generate_keypair() -> Result<GeneratedKeyPair, KeyError> {
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, MIN_BITS)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let private_der = key
        .to_pkcs8_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let private_pkcs8_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?
        .to_string();
    let public = key.to_public_key();
    let public_spki_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let spki = public
        .to_public_key_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(GeneratedKeyPair {
        private_pkcs8_pem,
        public_spki_pem,
        private_pkcs8_base64: base64::engine::general_purpose::STANDARD
            .encode(private_der.as_bytes()),
        public_spki_base64: base64::engine::general_purpose::STANDARD.encode(spki.as_bytes()),
        fingerprint: fingerprint_of(spki.as_bytes()),
    })
}
