//! The process's TLS crypto provider, and TLS identities for the listener the sidecar serves
//! itself: the outbound HTTPS listener (for SDKs that only speak HTTPS).
//!
//! Provider: [`install_tls_provider`] makes rustls' aws-lc-rs `CryptoProvider` the process
//! default, so TLS runs on the library that also signs (`ams_signature`'s engine). pingora 0.9
//! builds its connector and listener configs with `builder_with_protocol_versions`, which
//! uses the process default, and only *tries* to install ring's (`let _ =
//! CryptoProvider::install_default(ring…)` in `pingora_rustls::install_default_crypto_provider`),
//! so installing ours first makes the gateway handshakes, certificate checks and record
//! encryption run on aws-lc. ring is still linked: pingora-rustls depends on it directly (it
//! hashes certificates with `ring::digest`, and names ring's provider in the install it
//! attempts), rcgen generates the listener's certificate with it, and the fake gateway
//! (`ams-mock-gateway`, tests and demo only) deliberately uses ring so that it shares no
//! crypto code with the sidecar it tests. None of those is on the request path (`cargo tree
//! -e normal -i ring` shows the chains; docs/performance.md).
//!
//! Three sources of the listener's certificate ([`CertSource`]):
//! - **generated** at start, in memory: a private CA and a leaf it signed; the CA's key is
//!   dropped once the leaf is signed and never touches disk. A new CA at every start, so an
//!   app that verifies must trust a new one after every restart.
//! - **issued from a local CA** (`tls_ca_cert` / `tls_ca_key`, made once by `alipay-sidecar
//!   local-ca`): a fresh leaf at every start and reload, under a CA that lives as long as the
//!   deployment, so apps trust it once.
//! - **files** (`tls_cert` / `tls_key`): a chain issued elsewhere.
//!
//! Every [`Identity`] names the certificate apps must trust for it (its `ca_pem`), which
//! [`trust_bundle`] adds to the system's roots for `tls_trust_out`: the file an app points
//! `SSL_CERT_FILE` at (Python's `ssl.create_default_context()` then trusts the public internet
//! *and* the sidecar). A self-signed leaf used directly as trust anchor is rejected by
//! rustls/webpki, hence the two-level chain in the first two cases. Files are re-read on every
//! key reload; one that fails to load keeps the old certificate serving.
//!
//! Termination (`tls/termination.rs`): [`ListenerTls::accept`] runs the handshake of a
//! connection the HTTPS listener accepted and hands pingora the decrypted stream.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use crate::config::CertSource;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use sha2::Digest;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

mod termination;

pub use termination::Handshake;

/// Installs the aws-lc-rs rustls `CryptoProvider` as the process default, so the TLS
/// configs pingora builds later use it instead of ring. Idempotent; returns whether the
/// process default is now aws-lc-rs (false only if something installed another provider
/// first, which the caller should log).
pub fn install_tls_provider() -> bool {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tls_provider_is_aws_lc()
}

/// Seeds aws-lc's random generator now, before the listeners open, instead of on the first
/// request.
///
/// aws-lc (aws-lc-sys 0.47) seeds one process-wide seed DRBG from CPU Jitter Entropy when any
/// thread first asks for random bytes (≈ 35 ms of CPU here, most of it Jitter Entropy's FIPS
/// start-up health test); every thread's own DRBG is then seeded from that one, and Jitter
/// Entropy runs again only after 2^24 seed requests or a fork / VM snapshot. So it does not
/// run per signature (a profile shows `jent_*` only in the first phase of each process), but
/// without this the first signed request (RSA blinding) or the first gateway handshake paid
/// it. Nothing to configure beyond that: the jitter source stays (aws-lc's default, the one it
/// documents for servers); `DISABLE_CPU_JITTER_ENTROPY` would only move the seed to the OS.
pub fn seed_random() {
    let mut byte = [0u8; 1];
    if rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut byte)
        .is_err()
    {
        tracing::warn!("seeding the random generator at start failed; the first request will");
    }
}

/// Whether the rustls process-default provider is aws-lc-rs's. A `CryptoProvider` carries
/// no name; its `Debug` form names the implementations (e.g. `secure_random: AwsLcRs`).
pub fn tls_provider_is_aws_lc() -> bool {
    rustls::crypto::CryptoProvider::get_default().is_some_and(|installed| {
        format!("{installed:?}") == format!("{:?}", rustls::crypto::aws_lc_rs::default_provider())
    })
}

/// A certificate ready to serve.
pub struct Identity {
    /// The acceptor for new connections.
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate (DER), as `openssl x509 -fingerprint -sha256` prints it.
    pub fingerprint: String,
    /// The certificate (PEM) apps must trust to accept this identity: the generated CA, the
    /// `tls_ca_cert` CA, or the last certificate of a `tls_cert` chain (its root when the
    /// file ends with it, as it should for `tls_trust_out`).
    pub ca_pem: String,
    /// SHA-256 of that certificate.
    pub ca_fingerprint: String,
}

/// Loads (or generates, or issues) the listener's identity from `source`; `names` are the
/// extra host names of a generated or issued leaf.
pub fn load(source: &CertSource, names: &[String]) -> Result<Identity, String> {
    match source {
        CertSource::Generated => generate("alipay-sidecar", names),
        CertSource::Files { cert, key } => from_files(cert, key),
        CertSource::Ca { cert, key } => load_ca(cert, key)?.issue("alipay-sidecar", names),
    }
}

/// Largest certificate chain file read.
const MAX_CHAIN_BYTES: u64 = 1024 * 1024;
/// Largest TLS private key file read.
const MAX_TLS_KEY_BYTES: u64 = 64 * 1024;

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A fixed serial is still a valid certificate; randomness only avoids clashes in caches.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// The `AB:CD:…` SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = sha2::Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    // the process's provider (aws-lc-rs, installed by `cli::main`), else the same one
    // explicitly (the library used without `cli::main`, e.g. unit tests)
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    // h2 first: the SDKs' meter/uploadEvent client (httpx, http1=False) refuses HTTP/1.1;
    // every other client keeps HTTP/1.1 (crate::h2 has the h2 limits)
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn err(what: &'static str) -> impl Fn(rcgen::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// The parameters of a CA certificate named `common_name`.
fn ca_params(common_name: &str) -> Result<CertificateParams, String> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err("CA params"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.serial_number = Some(random_serial());
    Ok(ca_params)
}

/// A private CA and a leaf for `localhost`, `127.0.0.1`, `::1` and `names`, signed by it.
pub fn generate(common_name: &str, names: &[String]) -> Result<Identity, String> {
    let ca_params = ca_params(&format!("{common_name} CA"))?;
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(err("CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);
    issue_leaf(&issuer, ca_cert.pem(), ca_cert.der(), common_name, names)
}

/// A new CA for `alipay-sidecar local-ca`, valid from the start of this year for 20 years:
/// (certificate PEM, private key PEM (PKCS#8), SHA-256 of the certificate).
pub fn new_local_ca() -> Result<(String, String, String), String> {
    let mut tag = [0u8; 4];
    let _ = getrandom::fill(&mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let mut params = ca_params(&format!("alipay-sidecar local CA {tag}"))?;
    let year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    let key = KeyPair::generate().map_err(err("CA key"))?;
    let cert = params.self_signed(&key).map_err(err("CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem(), fingerprint(cert.der())))
}

/// A CA read from `tls_ca_cert` / `tls_ca_key`, checked, ready to issue the listener's leaf.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: Vec<u8>,
}

impl LocalCa {
    /// SHA-256 of the CA certificate.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// A new leaf under this CA for `localhost`, `127.0.0.1`, `::1` and `names`.
    pub fn issue(&self, common_name: &str, names: &[String]) -> Result<Identity, String> {
        issue_leaf(
            &self.issuer,
            self.pem.clone(),
            &self.der,
            common_name,
            names,
        )
    }
}

/// Reads and checks a CA certificate and its key (read like key files: regular, bounded):
/// the certificate must be a CA that is valid now, and the key its own. Each refusal says
/// what to change, including the classic mix-up of a server certificate given as the CA.
pub fn load_ca(cert: &Path, key: &Path) -> Result<LocalCa, String> {
    let der = first_certificate(cert)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", cert.display()))?;
    let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(format!(
            "{} is not a CA certificate (no basicConstraints CA:TRUE): it looks like a server \
             certificate. To serve a certificate issued elsewhere, set it as `tls_cert` (and \
             its key as `tls_key`) instead of tls_ca_cert/tls_ca_key; to have the sidecar \
             issue its own, make a CA with `alipay-sidecar local-ca --out DIR`",
            cert.display()
        ));
    }
    if let Ok(Some(ku)) = x509.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(format!(
                "{}: this CA certificate's keyUsage does not allow signing certificates \
                 (keyCertSign); use one made by `alipay-sidecar local-ca`",
                cert.display()
            ));
        }
    }
    if !x509.validity().is_valid() {
        return Err(format!(
            "{}: the CA certificate is not valid now (valid from {} to {}); make a new one \
             with `alipay-sidecar local-ca` and have apps trust it",
            cert.display(),
            x509.validity().not_before,
            x509.validity().not_after
        ));
    }
    let key_pem = crate::files::read_bounded(key, MAX_TLS_KEY_BYTES)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let key_pem = String::from_utf8(key_pem)
        .map_err(|_| format!("{}: not a PEM file (not text)", key.display()))?;
    let signing_key = KeyPair::from_pem(&key_pem).map_err(|e| {
        format!(
            "{}: not a private key the sidecar can sign certificates with ({e}); it takes \
             PKCS#8 PEM (-----BEGIN PRIVATE KEY-----) of an ECDSA P-256/P-384, Ed25519 or RSA \
             key, as `alipay-sidecar local-ca` writes",
            key.display()
        )
    })?;
    if rcgen::PublicKeyData::der_bytes(&signing_key)
        != &x509.public_key().subject_public_key.data[..]
    {
        return Err(format!(
            "the key in {} does not belong to the CA certificate in {}: set `tls_ca_key` to \
             that CA's own key (`local-ca` writes them as ca.key next to ca.pem)",
            key.display(),
            cert.display()
        ));
    }
    let cert_der = CertificateDer::from(der.clone());
    let issuer = Issuer::from_ca_cert_der(&cert_der, signing_key)
        .map_err(|e| format!("{}: cannot issue under this CA: {e}", cert.display()))?;
    let mut pem = Vec::new();
    pem_cert(&mut pem, &der);
    Ok(LocalCa {
        issuer,
        pem: String::from_utf8(pem).unwrap_or_default(),
        der,
    })
}

/// The first certificate of a PEM file (bounded read), DER.
fn first_certificate(path: &Path) -> Result<Vec<u8>, String> {
    let chain = read_chain(path)?;
    Ok(chain
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .unwrap_or_default())
}

/// Every certificate of a PEM file (bounded read); an error when there is none.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = crate::files::read_bounded(path, MAX_CHAIN_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(pem.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

/// A leaf for `localhost`, `127.0.0.1`, `::1` and `names`, signed by `issuer` (whose
/// certificate is `ca_pem` / `ca_der`).
fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: String,
    ca_der: &[u8],
    common_name: &str,
    names: &[String],
) -> Result<Identity, String> {
    let mut all = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let mut leaf_params = CertificateParams::new(all).map_err(err("server params"))?;
    leaf_params.distinguished_name = rcgen::DistinguishedName::new();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.serial_number = Some(random_serial());
    let leaf_key = KeyPair::generate().map_err(err("server key"))?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, issuer)
        .map_err(err("server certificate"))?;
    let der = leaf_cert.der().to_vec();
    let config = server_config(
        vec![CertificateDer::from(der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )?;
    Ok(Identity {
        acceptor: TlsAcceptor::from(config),
        fingerprint: fingerprint(&der),
        ca_pem,
        ca_fingerprint: fingerprint(ca_der),
    })
}

/// A certificate chain and its key from PEM files (read like key files: regular, bounded).
/// A CA certificate in place of the server's is refused with the way out (`tls_ca_cert`):
/// served as a leaf, every verifying client would refuse it.
pub fn from_files(cert: &Path, key: &Path) -> Result<Identity, String> {
    let chain = read_chain(cert)?;
    let leaf = &chain[0];
    if let Ok((_, x509)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
        if matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
            return Err(format!(
                "{} starts with a CA certificate (basicConstraints CA:TRUE), not a server \
                 certificate: to have the sidecar issue its certificate from this CA, set it \
                 as `tls_ca_cert` and its key as `tls_ca_key` instead of tls_cert/tls_key",
                cert.display()
            ));
        }
    }
    let fp = fingerprint(leaf.as_ref());
    let top = chain.last().map(|c| c.to_vec()).unwrap_or_default();
    let key_pem = crate::files::read_bounded(key, MAX_TLS_KEY_BYTES)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let private = rustls_pemfile::private_key(&mut std::io::BufReader::new(key_pem.as_slice()))
        .map_err(|e| format!("{}: not PEM: {e}", key.display()))?
        .ok_or_else(|| format!("{}: holds no PEM private key", key.display()))?;
    let config = server_config(chain, private)?;
    let mut ca_pem = Vec::new();
    pem_cert(&mut ca_pem, &top);
    Ok(Identity {
        acceptor: TlsAcceptor::from(config),
        fingerprint: fp,
        ca_pem: String::from_utf8(ca_pem).unwrap_or_default(),
        ca_fingerprint: fingerprint(&top),
    })
}

/// The PEM bundle for `tls_trust_out`: the system's trusted roots (as `rustls-native-certs`
/// finds them: `/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) followed by
/// `ca_pem`, each certificate once. `SSL_CERT_FILE` *replaces* an app's trust store, so the
/// roots keep the public internet working for that app.
pub fn trust_bundle(ca_pem: &str) -> Vec<u8> {
    let mut seen = std::collections::HashSet::new();
    let mut bundle = Vec::new();
    let roots = rustls_native_certs::load_native_certs().unwrap_or_default();
    let mut ca_bytes = ca_pem.as_bytes();
    let ours: Vec<_> = rustls_pemfile::certs(&mut ca_bytes)
        .filter_map(Result::ok)
        .collect();
    for cert in roots.into_iter().chain(ours) {
        if seen.insert(cert.as_ref().to_vec()) {
            pem_cert(&mut bundle, cert.as_ref());
        }
    }
    bundle
}

/// Writes [`trust_bundle`]`(ca_pem)` to `path` (atomically, mode 0644) unless the file
/// already holds exactly that; returns whether it was (re)written.
pub fn write_trust_bundle(path: &Path, ca_pem: &str) -> Result<bool, String> {
    let bundle = trust_bundle(ca_pem);
    if std::fs::read(path).is_ok_and(|old| old == bundle) {
        return Ok(false);
    }
    crate::listen::write_atomically(path, &bundle).map_err(|e| {
        format!(
            "writing the trust bundle to {} (tls_trust_out): {e}; pick a writable folder (in \
             Kubernetes, an emptyDir shared with the app)",
            path.display()
        )
    })?;
    Ok(true)
}

/// Appends `der` to `out` as a PEM `CERTIFICATE` block.
pub fn pem_cert(out: &mut Vec<u8>, der: &[u8]) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
}

/// The outbound HTTPS listener's live certificate: swapped on reload when it comes from
/// files, so connections always get the newest one that loaded.
pub struct ListenerTls {
    acceptor: ArcSwap<TlsAcceptor>,
}

impl ListenerTls {
    /// Starts serving `identity`.
    pub fn new(identity: &Identity) -> Arc<Self> {
        Arc::new(Self {
            acceptor: ArcSwap::from_pointee(identity.acceptor.clone()),
        })
    }

    /// The acceptor for a connection that starts now.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Serves `identity` to every connection from now on.
    pub fn swap(&self, identity: &Identity) {
        self.acceptor.store(Arc::new(identity.acceptor.clone()));
    }
}

/// System trust roots plus the configured CA file, as one PEM bundle for the connector
/// (pingora's connector takes one file, and replaces the system roots with it). `check-config`
/// runs the same checks. The CA file is read like a key file: a regular file of bounded size.
pub fn ca_bundle(extra: &Path) -> Result<Vec<u8>, String> {
    let extra_pem = crate::files::read_bounded(extra, MAX_CA_FILE_BYTES)?;
    let mut reader = std::io::BufReader::new(extra_pem.as_slice());
    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the file holds no PEM certificate; put the CA certificate \
                    (-----BEGIN CERTIFICATE-----) that issued the gateway's certificate there"
            .into());
    }
    let mut bundle = Vec::new();
    // a machine without system roots still works with the configured CA alone
    if let Ok(roots) = rustls_native_certs::load_native_certs() {
        for cert in roots {
            pem_cert(&mut bundle, cert.as_ref());
        }
    }
    for cert in &certs {
        pem_cert(&mut bundle, cert.as_ref());
    }
    Ok(bundle)
}

/// Largest `ca_file` read (a CA bundle of a few hundred certificates).
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_ca_issues_a_new_leaf_each_time_and_the_bundle_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem, fp) = new_local_ca().unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        let ca = load_ca(&cert, &key).unwrap();
        assert_eq!(ca.fingerprint(), fp);
        let one = ca
            .issue("alipay-sidecar", &["sidecar.local".into()])
            .unwrap();
        let two = load(
            &CertSource::Ca {
                cert: cert.clone(),
                key: key.clone(),
            },
            &[],
        )
        .unwrap();
        assert_ne!(one.fingerprint, two.fingerprint, "a new leaf");
        assert_eq!(
            (one.ca_fingerprint.as_str(), two.ca_fingerprint.as_str()),
            (fp.as_str(), fp.as_str())
        );
        // the CA apps trust is the file's certificate, once, at the end of the bundle
        let bundle = trust_bundle(&format!("{}{}", one.ca_pem, one.ca_pem));
        let certs: Vec<_> = rustls_pemfile::certs(&mut bundle.as_slice())
            .map(|c| fingerprint(c.unwrap().as_ref()))
            .collect();
        assert_eq!(certs.last(), Some(&fp));
        assert_eq!(certs.iter().filter(|c| **c == fp).count(), 1);
    }

    #[test]
    fn load_ca_refuses_a_server_certificate_and_a_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca_key, _) = new_local_ca().unwrap();
        let (_, other_key, _) = new_local_ca().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert, key, other) = (
            write("ca.pem", &ca_pem),
            write("ca.key", &ca_key),
            write("other.key", &other_key),
        );
        let err = load_ca(&cert, &other).err().unwrap();
        assert!(
            err.contains("does not belong to the CA certificate"),
            "{err}"
        );
        // a leaf issued by the CA, given as the CA
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key).unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let (leaf_path, leaf_key_path) = (
            write("leaf.pem", &leaf_cert.pem()),
            write("leaf.key", &leaf_key.serialize_pem()),
        );
        let err = load_ca(&leaf_path, &leaf_key_path).err().unwrap();
        assert!(
            err.contains("is not a CA certificate") && err.contains("tls_cert"),
            "{err}"
        );
        // and the CA given as the server certificate
        let err = from_files(&cert, &key).err().unwrap();
        assert!(err.contains("tls_ca_cert"), "{err}");
        // the leaf as a server certificate is fine
        assert!(from_files(&leaf_path, &leaf_key_path).is_ok());
    }

    #[test]
    fn the_tls_provider_becomes_aws_lc() {
        assert!(install_tls_provider());
        // A second install (as pingora attempts with ring's) changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(tls_provider_is_aws_lc());
    }
}
