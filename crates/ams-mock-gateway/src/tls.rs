//! TLS identity for `--tls`: a private CA plus a server certificate it signed.
//!
//! A self-signed leaf used directly as trust anchor is rejected by rustls/webpki, so the
//! gateway makes a real two-level chain; the CA certificate is what the sidecar trusts via
//! `[outbound] ca_file`. The CA is new at every start, or kept in files by `--out-dir` (see
//! `out_dir.rs`) so a sidecar trusting it keeps working across restarts; the server
//! certificate is always new. Keys, certificates and the TLS itself run on ring (rcgen, rustls), never on the
//! sidecar's aws-lc-rs, so the gateway shares no crypto code with what it tests.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData as _,
};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{crypto::ring, ServerConfig};

/// Name on both certificates.
const COMMON_NAME: &str = "ams-mock-gateway";

/// What `start` needs: the acceptor for connections and the CA certificate to publish.
pub(crate) struct TlsIdentity {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) ca_pem: String,
}

/// The gateway's CA: its certificate (PEM, what the sidecar trusts) and its key, which signs
/// a fresh server certificate at every start.
pub(crate) struct Ca {
    pub(crate) cert_pem: String,
    pub(crate) key: KeyPair,
}

/// The CA's certificate parameters; always the same, so a CA key kept in a file (`--out-dir`)
/// issues under the same name as the certificate it made before.
fn ca_params() -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, format!("{COMMON_NAME} CA"));
    ca
}

/// A new CA (throw-away, or kept by `--out-dir`).
pub(crate) fn new_ca() -> Result<Ca, String> {
    let key = KeyPair::generate().map_err(|e| format!("CA key: {e}"))?;
    let cert_pem = ca_params()
        .self_signed(&key)
        .map_err(|e| format!("CA certificate: {e}"))?
        .pem();
    Ok(Ca { cert_pem, key })
}

/// A CA kept in files: the key must be the one the certificate was made for (its public key
/// stands verbatim in the certificate), else a server certificate signed with it would not
/// chain to the certificate the sidecar trusts.
pub(crate) fn load_ca(cert_pem: String, key_pem: &str) -> Result<Ca, String> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let key =
        KeyPair::from_pem(key_pem).map_err(|e| format!("the CA key is not a PEM key ({e})"))?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("the CA certificate is not a PEM certificate ({e:?})"))?;
    let spki = key.subject_public_key_info();
    if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        return Err("the CA key does not belong to the CA certificate".into());
    }
    Ok(Ca { cert_pem, key })
}

/// A server certificate signed by `ca` for `localhost`, `127.0.0.1`, `::1` and `extra_ip`
/// (the listen address when it is a specific non-loopback address).
pub(crate) fn identity(ca: Ca, extra_ip: Option<IpAddr>) -> Result<TlsIdentity, String> {
    let failed = |what: &'static str| move |e: rcgen::Error| format!("{what}: {e}");
    let ca_pem = ca.cert_pem;
    let issuer = Issuer::new(ca_params(), ca.key);

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
