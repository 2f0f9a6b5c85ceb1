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
//! Either PEM files (`tls_cert` / `tls_key`, re-read on every key reload) or a private CA
//! and a certificate it signed, generated at start **in memory**: the CA's key is dropped
//! once the leaf is signed and never touches disk; only the CA certificate (public) may be
//! written, to `tls_ca_out`, for apps that verify. A self-signed leaf used directly as trust
//! anchor is rejected by rustls/webpki, hence the two-level chain.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use sha2::Digest;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Installs the aws-lc-rs rustls `CryptoProvider` as the process default, so the TLS
/// configs pingora builds later use it instead of ring. Idempotent; returns whether the
/// process default is now aws-lc-rs (false only if something installed another provider
/// first, which the caller should log).
pub fn install_tls_provider() -> bool {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tls_provider_is_aws_lc()
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
    /// The generating CA's certificate (PEM), for a generated identity.
    pub ca_pem: Option<String>,
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A private CA and a leaf for `localhost`, `127.0.0.1`, `::1` and `names`, signed by it.
pub fn generate(common_name: &str, names: &[String]) -> Result<Identity, String> {
    fn err(what: &'static str) -> impl Fn(rcgen::Error) -> String {
        move |e| format!("{what}: {e}")
    }
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err("CA params"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{common_name} CA"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.serial_number = Some(random_serial());
    let ca_key = KeyPair::generate().map_err(err("CA key"))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(err("CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);

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
        .signed_by(&leaf_key, &issuer)
        .map_err(err("server certificate"))?;
    let der = leaf_cert.der().to_vec();
    let config = server_config(
        vec![CertificateDer::from(der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )?;
    Ok(Identity {
        acceptor: TlsAcceptor::from(config),
        fingerprint: fingerprint(&der),
        ca_pem: Some(ca_cert.pem()),
    })
}

/// A certificate chain and its key from PEM files (read like key files: regular, bounded).
pub fn from_files(cert: &Path, key: &Path) -> Result<Identity, String> {
    let chain_pem = crate::keyset::read_bounded(cert, MAX_CHAIN_BYTES)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(chain_pem.as_slice()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: not PEM: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    };
    let fp = fingerprint(leaf.as_ref());
    let key_pem = crate::keyset::read_bounded(key, MAX_TLS_KEY_BYTES)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let private = rustls_pemfile::private_key(&mut std::io::BufReader::new(key_pem.as_slice()))
        .map_err(|e| format!("{}: not PEM: {e}", key.display()))?
        .ok_or_else(|| format!("{}: holds no PEM private key", key.display()))?;
    let config = server_config(chain, private)?;
    Ok(Identity {
        acceptor: TlsAcceptor::from(config),
        fingerprint: fp,
        ca_pem: None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_provider_becomes_aws_lc() {
        assert!(install_tls_provider());
        // A second install (as pingora attempts with ring's) changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(tls_provider_is_aws_lc());
    }
}
