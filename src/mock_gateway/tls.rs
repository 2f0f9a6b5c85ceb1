//! Throw-away TLS identity for `--tls`: a private CA plus a server certificate it signed.
//!
//! A self-signed leaf used directly as trust anchor is rejected by rustls/webpki, so the
//! gateway makes a real two-level chain; the CA certificate is what the sidecar trusts via
//! `[outbound] ca_file`.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What `start` needs: the acceptor for connections and the CA certificate to publish.
pub(crate) struct TlsIdentity {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) ca_pem: String,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A fixed serial is still a valid certificate; randomness only avoids clashes in caches.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// Generates the CA and a leaf for `localhost`, `127.0.0.1`, `::1` and `extra_ip` (the listen
/// address when it is a specific non-loopback address), and builds a rustls server config
/// with the ring provider installed explicitly.
pub(crate) fn generate(extra_ip: Option<IpAddr>) -> Result<TlsIdentity, String> {
    fn err(what: &'static str) -> impl Fn(rcgen::Error) -> String {
        move |e| format!("{what}: {e}")
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err("CA params"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "alipay-sidecar mock-gateway test CA");
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

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(ip) = extra_ip {
        if !ip.is_loopback() && !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    let mut leaf_params = CertificateParams::new(names).map_err(err("server params"))?;
    leaf_params.distinguished_name = rcgen::DistinguishedName::new();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "alipay-sidecar mock-gateway");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.serial_number = Some(random_serial());
    let leaf_key = KeyPair::generate().map_err(err("server key"))?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(err("server certificate"))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .map_err(|e| format!("TLS server certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    Ok(TlsIdentity {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem: ca_cert.pem(),
    })
}
