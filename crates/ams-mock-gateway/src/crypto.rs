//! The gateway's own signature code: key parsing, content building, signing and verifying.
//!
//! Deliberately independent of the sidecar's `ams-signature` (different RSA engine: the `rsa`
//! crate's `pkcs1v15` instead of aws-lc-rs; different header parser; Java-style
//! percent-decoding as Alipay's Java gateway would do it), so a bug in the sidecar's signer shows up as an
//! `INVALID_SIGNATURE` here instead of being mirrored by the same bug on both sides.

use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

/// Smallest RSA key the gateway accepts or generates (Alipay requires RSA-2048).
const MIN_BITS: usize = 2048;

/// Builds `<METHOD> <URI>\n<client-id>.<time>.<body>` (spec §1), written out here on purpose
/// instead of calling the sidecar's helper.
pub(crate) fn content(
    method: &str,
    uri: &str,
    client_id: &str,
    time: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {uri}\n{client_id}.{time}.").into_bytes();
    out.extend_from_slice(body);
    out
}

/// Lowercase hex SHA-256 of `data`, shown in INVALID_SIGNATURE messages so a user can compare
/// it with the content hash their signer logged.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PEM label of the first `-----BEGIN <label>-----` line, if the text is PEM.
fn pem_label(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

/// Decodes the one-line (or wrapped) base64 DER form the Alipay dashboard and SDKs use.
fn bare_base64(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err("the key text is empty".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("neither PEM nor base64 DER ({e})"))
}

fn check_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_BITS {
        return Err(format!(
            "the key has {bits} bits; Alipay requires RSA-{MIN_BITS} or larger"
        ));
    }
    Ok(())
}

/// Parses a public key: SPKI PEM, PKCS#1 PEM, or bare base64 of SPKI / PKCS#1 DER.
pub(crate) fn parse_public_key(text: &str) -> Result<rsa::PublicKey, String> {
    let key = match pem_label(text) {
        Some("PUBLIC KEY") => rsa::PublicKey::from_public_key_pem(text.trim())
            .map_err(|e| format!("bad SPKI PEM public key ({e})"))?,
        Some("RSA PUBLIC KEY") => rsa::PublicKey::from_pkcs1_pem(text.trim())
            .map_err(|e| format!("bad PKCS#1 PEM public key ({e})"))?,
        Some(label) if label.contains("PRIVATE KEY") => {
            return Err(format!(
                "this is a private key (PEM `{label}`), but a public key is expected here"
            ))
        }
        Some(label) => return Err(format!("unsupported PEM block `{label}`")),
        None => {
            let der = bare_base64(text)?;
            if let Ok(k) = rsa::PublicKey::from_public_key_der(&der) {
                k
            } else if let Ok(k) = rsa::PublicKey::from_pkcs1_der(&der) {
                k
            } else if rsa::PrivateKey::from_pkcs8_der(&der).is_ok()
                || rsa::PrivateKey::from_pkcs1_der(&der).is_ok()
            {
                return Err(
                    "this is a private key (base64 DER), but a public key is expected here".into(),
                );
            } else {
                return Err("the base64 text is not an RSA SPKI or PKCS#1 public key".into());
            }
        }
    };
    check_bits(key.size() * 8)?;
    Ok(key)
}

/// Parses a private key: PKCS#8 PEM, PKCS#1 PEM, or bare base64 of PKCS#8 / PKCS#1 DER.
pub(crate) fn parse_private_key(text: &str) -> Result<rsa::PrivateKey, String> {
    let key = match pem_label(text) {
        Some("PRIVATE KEY") => rsa::PrivateKey::from_pkcs8_pem(text.trim())
            .map_err(|e| format!("bad PKCS#8 PEM private key ({e})"))?,
        Some("RSA PRIVATE KEY") => rsa::PrivateKey::from_pkcs1_pem(text.trim())
            .map_err(|e| format!("bad PKCS#1 PEM private key ({e})"))?,
        Some(label) if label.contains("PUBLIC KEY") => {
            return Err(format!(
                "this is a public key (PEM `{label}`), but a private key is expected here"
            ))
        }
        Some(label) => return Err(format!("unsupported PEM block `{label}`")),
        None => {
            let der = bare_base64(text)?;
            if let Ok(k) = rsa::PrivateKey::from_pkcs8_der(&der) {
                k
            } else if let Ok(k) = rsa::PrivateKey::from_pkcs1_der(&der) {
                k
            } else if rsa::PublicKey::from_public_key_der(&der).is_ok()
                || rsa::PublicKey::from_pkcs1_der(&der).is_ok()
            {
                return Err(
                    "this is a public key (base64 DER), but a private key is expected here".into(),
                );
            } else {
                return Err("the base64 text is not an RSA PKCS#8 or PKCS#1 private key".into());
            }
        }
    };
    check_bits(key.size() * 8)?;
    Ok(key)
}

/// Generates the gateway's throw-away "Alipay" key pair (RSA-2048).
pub(crate) fn generate_private_key() -> Result<rsa::PrivateKey, String> {
    rsa::PrivateKey::new(&mut getrandom::SysRng, MIN_BITS).map_err(|e| e.to_string())
}

/// Form-encodes base64 as Java's `URLEncoder` does: only `+ / =` occur and become
/// uppercase `%2B %2F %3D` (spec §2).
fn url_encode_base64(b64: &str) -> String {
    let mut out = String::with_capacity(b64.len() + 16);
    for c in b64.chars() {
        match c {
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes like Java's `URLDecoder.decode` (what a Java gateway does): `%XX` in either case,
/// and `+` becomes a space, so a raw, not URL-encoded base64 signature containing `+` fails
/// exactly as it would at Alipay.
fn java_url_decode(value: &str) -> Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape at offset {i}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The gateway's signing half: the "Alipay" private key and the keyVersion it announces.
/// Cheap to clone (the key is shared), so a signature can be made on a blocking thread.
#[derive(Clone)]
pub(crate) struct AlipaySigner {
    key: std::sync::Arc<SigningKey<Sha256>>,
    key_version: String,
    public_pem: String,
}

impl AlipaySigner {
    pub(crate) fn new(key: rsa::PrivateKey, key_version: String) -> Result<Self, String> {
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the public key as PEM ({e})"))?;
        Ok(AlipaySigner {
            key: std::sync::Arc::new(SigningKey::<Sha256>::new(key)),
            key_version,
            public_pem,
        })
    }

    pub(crate) fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// [`Self::signature_header`] on tokio's blocking pool (at most one per CPU at a time),
    /// then a blocking thread kept busy `hold` more (fault `slow_sign`).
    ///
    /// Why: an RSA-2048 signature with the `rsa` crate is pure CPU, tens of milliseconds in a
    /// debug build and more on a loaded machine. Made on the async workers (two, shared by
    /// every gateway of the test binary), 64 answers signed at once held them for seconds,
    /// so the TLS handshakes of the sidecar's new connections waited behind them and ran
    /// past its `connect_timeout`: one of 64 concurrent requests came back 504 (issue 20,
    /// item 9). Off the workers, accepting and handshaking never wait for signing.
    pub(crate) async fn signature_header_off_runtime(
        &self,
        content: Vec<u8>,
        hold: Option<std::time::Duration>,
    ) -> Result<String, String> {
        // At most one signature per CPU at a time: 64 signing threads at once would take the
        // CPUs from everything else in the process (the async workers' handshakes included).
        static SIGNING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
        let permits = SIGNING.get_or_init(|| {
            tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
        });
        let permit = permits
            .acquire()
            .await
            .map_err(|e| format!("the signing queue is closed ({e})"))?;
        let signer = self.clone();
        let header = tokio::task::spawn_blocking(move || signer.signature_header(&content))
            .await
            .map_err(|e| format!("the signing task failed ({e})"))?;
        drop(permit);
        if let Some(hold) = hold {
            // the slow CPU of fault `slow_sign`: the thread stays busy, the queue moves on
            tokio::task::spawn_blocking(move || std::thread::sleep(hold))
                .await
                .map_err(|e| format!("the signing task failed ({e})"))?;
        }
        header
    }

    /// Signs `content` and returns the complete `Signature` header value.
    pub(crate) fn signature_header(&self, content: &[u8]) -> Result<String, String> {
        let sig: Signature = self
            .key
            .try_sign(content)
            .map_err(|e| format!("RSA signing failed ({e})"))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_vec());
        Ok(format!(
            "algorithm=RSA256,keyVersion={},signature={}",
            self.key_version,
            url_encode_base64(&b64)
        ))
    }
}

/// The gateway's verifying half: the merchant public key Alipay holds for the client id.
pub(crate) struct MerchantVerifier {
    key: VerifyingKey<Sha256>,
    modulus_len: usize,
}

impl MerchantVerifier {
    pub(crate) fn new(key: rsa::PublicKey) -> Self {
        let modulus_len = key.size();
        MerchantVerifier {
            key: VerifyingKey::<Sha256>::new(key),
            modulus_len,
        }
    }

    /// Checks a `Signature` header against `content`; `Err` says what was wrong, for the
    /// INVALID_SIGNATURE message.
    pub(crate) fn verify(&self, content: &[u8], header: &str) -> Result<(), String> {
        let mut algorithm = None;
        let mut signature = None;
        for item in header.split(',') {
            let item = item.trim();
            if let Some((name, value)) = item.split_once('=') {
                match name.trim() {
                    "algorithm" => algorithm = Some(value.trim()),
                    "signature" => signature = Some(value.trim()),
                    _ => {}
                }
            }
        }
        if let Some(alg) = algorithm {
            if !alg.eq_ignore_ascii_case("RSA256") {
                return Err(format!("unsupported algorithm `{alg}` (only RSA256)"));
            }
        }
        let signature = signature.ok_or("the Signature header has no `signature=` item")?;
        let b64 = java_url_decode(signature)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .map_err(|e| format!("the signature is not valid base64 after URL-decoding ({e})"))?;
        if raw.len() != self.modulus_len {
            return Err(format!(
                "the signature has {} bytes, the merchant key needs {}",
                raw.len(),
                self.modulus_len
            ));
        }
        let sig = Signature::try_from(raw.as_slice())
            .map_err(|e| format!("malformed RSA signature ({e})"))?;
        self.key.verify(content, &sig).map_err(|_| {
            "the signature does not match the content (wrong content or wrong key)".into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_decoding_maps_plus_to_space_and_accepts_both_cases() {
        assert_eq!(java_url_decode("a%2Bb%2fc+d").unwrap(), b"a+b/c d");
        assert!(java_url_decode("abc%2").is_err());
        assert!(java_url_decode("abc%zz").is_err());
    }

    #[test]
    fn base64_encoding_is_uppercase_form_encoding() {
        assert_eq!(url_encode_base64("ab+/=="), "ab%2B%2F%3D%3D");
    }

    fn vectors() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/ams-public.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn content_of(v: &serde_json::Value) -> Vec<u8> {
        let i = &v["inputs"];
        content(
            i["method"].as_str().unwrap(),
            i["uri"].as_str().unwrap(),
            i["client_id"].as_str().unwrap(),
            i["time"].as_str().unwrap(),
            i["body"].as_str().unwrap().as_bytes(),
        )
    }

    /// The gateway's own signer reproduces every published signing vector byte for byte.
    #[test]
    fn signer_matches_the_sign_vectors() {
        let file = vectors();
        for form in [
            "private_pkcs8_pem",
            "private_pkcs1_pem",
            "private_pkcs8_der_b64",
        ] {
            let key = parse_private_key(file["keys"]["merchant"][form].as_str().unwrap()).unwrap();
            let mut n = 0;
            for v in file["vectors"].as_array().unwrap() {
                if v["kind"] != "request_sign" && v["kind"] != "ack_sign" {
                    continue;
                }
                let kv = v["inputs"]["key_version"].as_str().unwrap().to_string();
                let signer = AlipaySigner::new(key.clone(), kv).unwrap();
                assert_eq!(
                    signer.signature_header(&content_of(v)).unwrap(),
                    v["expected_signature_header"].as_str().unwrap(),
                    "{} with {form}",
                    v["id"]
                );
                n += 1;
            }
            assert_eq!(n, 9);
        }
    }

    /// The gateway's own verifier agrees with every published verify vector (Java-style
    /// decoding: the raw base64 of RSP-10 is refused).
    #[test]
    fn verifier_matches_the_verify_vectors() {
        let file = vectors();
        let mut n = 0;
        for form in ["public_spki_pem", "public_spki_der_b64"] {
            let key = parse_public_key(file["keys"]["alipay"][form].as_str().unwrap()).unwrap();
            let verifier = MerchantVerifier::new(key);
            for v in file["vectors"].as_array().unwrap() {
                let Some(header) = v["inputs"]["signature_header"].as_str() else {
                    continue;
                };
                let expected = match &v["expected_valid"] {
                    serde_json::Value::Bool(b) => *b,
                    other => other["form_decode"].as_bool().unwrap(),
                };
                // The vector's content (NTF-04 deliberately omits the `POST <uri>` line); for
                // all others it is what this module's builder produces.
                let content = v["content_to_verify"].as_str().unwrap().as_bytes();
                if v["id"] != "NTF-04" {
                    assert_eq!(content_of(v), content, "{}", v["id"]);
                }
                let ok = verifier.verify(content, header).is_ok();
                assert_eq!(ok, expected, "{}", v["id"]);
                n += 1;
            }
        }
        assert_eq!(n, 30);
    }

    #[test]
    fn key_mix_ups_are_named() {
        let file = vectors();
        let private = file["keys"]["merchant"]["private_pkcs8_pem"]
            .as_str()
            .unwrap();
        let public = file["keys"]["merchant"]["public_spki_der_b64"]
            .as_str()
            .unwrap();
        assert!(parse_public_key(private)
            .unwrap_err()
            .contains("private key"));
        assert!(parse_private_key(public)
            .unwrap_err()
            .contains("public key"));
        assert!(parse_public_key("not a key").is_err());
    }

    #[test]
    fn pem_label_is_found() {
        assert_eq!(
            pem_label("-----BEGIN PUBLIC KEY-----\nxx"),
            Some("PUBLIC KEY")
        );
        assert_eq!(pem_label("MIIB"), None);
    }
}
