//! Helpers for the fake gateway's tests: the published vectors, the gateway's answers parsed
//! from raw bytes, a merchant app stand-in receiving its notifications, a TLS client. (Copies,
//! trimmed, of the sidecar's `tests/it/support/`: this crate does not depend on the sidecar.)

use std::sync::Arc;

pub mod app;
pub mod vectors;
pub mod wire;

pub use app::*;
pub use vectors::*;
pub use wire::*;

/// A TLS client (rustls with ring) trusting the certificates in `ca_pem` (none: nothing).
pub fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
