//! [`MockGatewayError`]: why the gateway could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the gateway could not start; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum MockGatewayError {
    /// The merchant public key could not be used.
    #[error("mock-gateway: the merchant public key is unusable: {reason}. Give the merchant's PUBLIC key as SPKI PEM (-----BEGIN PUBLIC KEY-----), PKCS#1 PEM, or one-line base64 DER")]
    MerchantPublicKey {
        /// What was wrong with it.
        reason: String,
    },
    /// The configured Alipay private key could not be used.
    #[error("mock-gateway: the Alipay private key is unusable: {reason}. Give an RSA-2048+ private key as PKCS#8/PKCS#1 PEM or one-line base64 DER, or omit it to generate one")]
    AlipayPrivateKey {
        /// What was wrong with it.
        reason: String,
    },
    /// Generating the Alipay key pair failed.
    #[error("mock-gateway: generating the Alipay key pair failed: {reason}")]
    KeyGeneration {
        /// The underlying error.
        reason: String,
    },
    /// The key version cannot be put into a Signature header.
    #[error("mock-gateway: key version `{0}` is invalid; use letters and digits only, e.g. 1")]
    KeyVersion(String),
    /// The notify URL override is not a plain http URL.
    #[error("mock-gateway: notify URL `{url}` is unusable: {reason}")]
    NotifyUrl {
        /// The URL as given.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("mock-gateway: cannot listen on {addr}: {source}. Pick another address or port (port 0 = any free port)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Generating the TLS certificates failed.
    #[error("mock-gateway: TLS setup failed: {reason}")]
    Tls {
        /// The underlying error.
        reason: String,
    },
    /// A file could not be written.
    #[error("mock-gateway: cannot write {path}: {source}. Check that the directory is writable")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
