//! alipay-sidecar: signs Alipay Global (AMS / Antom) API calls on the way out and verifies
//! Alipay's signed responses and payment notifications on the way in, so applications never
//! hold the merchant private key or hand-roll RSA signatures.
//!
//! Layout (each concern in the file named after it):
//! - [`protocol`]: the AMS signature protocol, pure (no I/O, no clock): content to sign,
//!   `Signature` header format/parse, key loading, sign and verify.
//! - [`config`]: the TOML configuration schema, environment overrides and validation.
//! - [`keyset`]: the immutable set of loaded keys plus the preflight checks that catch
//!   classic key mix-ups; [`reload`] swaps it atomically at run time.
//! - [`upstream`], [`outbound`], [`inbound`], [`admin`], [`server`], [`listen`]: the running
//!   sidecar.
//! - [`metrics`], [`logging`]: observability.
//! - [`mock_gateway`]: the fake Alipay gateway used by the demo, the tests and users.
//! - [`cli`], [`tools`], [`demo`]: the command-line front end.

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod encoding;
pub mod envelope;
pub mod exchange;
pub mod inbound;
pub mod keyset;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod mock_gateway;
pub mod outbound;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod state;
pub mod tls;
pub mod tools;
pub mod upstream;
