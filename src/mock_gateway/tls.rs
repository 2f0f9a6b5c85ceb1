//! Throw-away TLS identity for `--tls`: a private CA plus a server certificate it signed.
//!
//! A self-signed leaf used directly as trust anchor is rejected by rustls/webpki, so the
//! gateway makes a real two-level chain; the CA certificate is what the sidecar trusts via
//! `[outbound] ca_file`.

use std::net::IpAddr;

/// What `start` needs: the acceptor for connections and the CA certificate to publish.
pub(crate) struct TlsIdentity {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) ca_pem: String,
}

/// Generates the CA and a leaf for `localhost`, `127.0.0.1`, `::1` and `extra_ip` (the listen
/// address when it is a specific non-loopback address).
pub(crate) fn generate(extra_ip: Option<IpAddr>) -> Result<TlsIdentity, String> {
    let extra: Vec<String> = extra_ip
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .into_iter()
        .collect();
    let id = crate::tls::generate("alipay-sidecar mock-gateway", &extra)?;
    Ok(TlsIdentity {
        acceptor: id.acceptor,
        ca_pem: id.ca_pem.unwrap_or_default(),
    })
}
