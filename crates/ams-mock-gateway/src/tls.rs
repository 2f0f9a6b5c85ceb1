//! Throw-away TLS identity for `--tls`: a private CA plus a server certificate it signed.
//!
//! A self-signed leaf used directly as trust anchor is rejected by rustls/webpki, so the
//! gateway makes a real two-level chain; the CA certificate is what the sidecar trusts via
//! `[outbound] ca_file`. The CA key lives only in this function and is dropped once the leaf
//! is signed. Keys, certificates and the TLS itself run on ring (rcgen, rustls), never on the
//! sidecar's aws-lc-rs, so the gateway shares no crypto code with what it tests.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{crypto::ring, ServerConfig};

/// Name on both certificates.
const COMMON_NAME: &str = "ams-mock-gateway";

/// What `start` needs: the acceptor for connections and the CA certificate to publish.
pub(crate) struct TlsIdentity {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) ca_pem: String,
}

/// Generates the CA and a leaf for `localhost`, `127.0.0.1`, `::1` and `extra_ip` (the listen
/// address when it is a specific non-loopback address).
pub(crate) fn generate(extra_ip: Option<IpAddr>) -> Result<TlsIdentity, String> {
    let failed = |what: &'static str| move |e: rcgen::Error| format!("{what}: {e}");

    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("{COMMON_NAME} CA"));
    let ca_key = KeyPair::generate().map_err(failed("CA key"))?;
    let ca_pem = ca
        .self_signed(&ca_key)
        .map_err(failed("CA certificate"))?
        .pem();
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(
        extra_ip
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .map(|ip| ip.to_string()),
    );
    let mut leaf = CertificateParams::new(names).map_err(failed("server names"))?;
    leaf.distinguished_name
        .push(DnType::CommonName, COMMON_NAME);
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(failed("server key"))?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(failed("server certificate"))?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .map_err(|e| format!("TLS server config: {e}"))?;
    // h2 for meter/uploadEvent (HTTP/2 only, as Alipay serves it); http/1.1 for the rest
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsIdentity {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_pem,
    })
}
