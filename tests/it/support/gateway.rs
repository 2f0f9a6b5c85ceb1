//! The fake gateway in-process: one tokio runtime for it, a TLS client trusting its CA, and a
//! gateway that signs with the vector Alipay key.

use std::path::Path;
use std::sync::Arc;

use alipay_sidecar::mock_gateway::{MockGateway, MockGatewayConfig};

/// One tokio runtime for every in-process server the tests start (fake gateways).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

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

use super::vectors::key;

/// A fake gateway (TLS, its CA in `dir`) that signs with the vector Alipay key, so a sidecar
/// trusting the vector keys verifies every answer; `edit` adjusts its config.
pub fn vector_gateway(dir: &Path, edit: impl FnOnce(&mut MockGatewayConfig)) -> MockGateway {
    let mut cfg = MockGatewayConfig::new(key("merchant", "public_spki_pem"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls = Some(dir.to_path_buf());
    cfg.alipay_private_key = Some(key("alipay", "private_pkcs8_pem"));
    cfg.notify_backoff = vec![];
    edit(&mut cfg);
    rt().block_on(MockGateway::start(cfg))
        .expect("mock gateway")
}
