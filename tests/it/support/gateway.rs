//! The fake gateway in-process, signing with the vector Alipay key.

use std::path::Path;

use alipay_sidecar::mock_gateway::{MockGateway, MockGatewayConfig};

use test_support::{key, rt};

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
