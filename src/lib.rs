//! alipay-sidecar: signs Alipay Global (AMS / Antom) API calls on the way out and verifies
//! Alipay's signed responses and payment notifications on the way in, so applications never
//! hold the merchant private key or hand-roll RSA signatures.
//!
//! Layout (each concern in the file named after it):
//! - [`protocol`]: the `ams-signature` crate (crates/ams-signature), re-exported: the AMS
//!   signature protocol, pure (no I/O, no clock): content to sign, `Signature` header
//!   format/parse, key loading, sign and verify, the acknowledgement's signature headers; and
//!   the AMS domain data (API list and labels, verification reasons).
//! - [`config`]: the TOML configuration schema, environment overrides and validation.
//! - [`keyset`]: the immutable set of loaded keys; [`preflight`]: the checks that catch
//!   classic key mix-ups before a set goes live; [`reload`] swaps it atomically at run time.
//! - [`handler`]: the request-handling core as data in, data out ([`report`]: what a handled
//!   request records, with its closed label sets; [`headers`]: the sidecar's header names); [`outbound`] and
//!   [`inbound`] are its two handlers (pure policy, the gateway and the app behind one client
//!   trait, [`upstream::UpstreamClient`]; what they call after a verified exchange behind the
//!   traits of [`hooks`], so they never import the reconciler); [`merchants`]: the merchants
//!   with their live keys, and what a handler's one selection step yields.
//! - [`adapter`]: the one pingora adapter that reads requests, writes replies and records
//!   metrics and the log line; [`upstream`] is pingora's connector behind the client trait.
//! - Imports run one way, between files too (a unit test, `import_graph`, fails on a cycle).
//! - [`admin`], [`server`], [`listen`]: the running sidecar ([`listen`]: port-0 listeners
//!   and the ready file).
//! - [`store`]: the state store of `[store]` (crate `sidecar-store`) on a runtime of its own.
//! - [`metrics`], [`logging`]: observability; [`credentials`]: the app's credentials the
//!   sidecar drops, and the loud warning when the gateway refuses the merchant's.
//! - `mock_gateway`: the `ams-mock-gateway` crate (crates/ams-mock-gateway), re-exported with
//!   the default `mock-gateway` feature: the fake Alipay gateway used by the demo, the tests
//!   and users.
//! - [`cli`], [`tools`], `demo` (`mock-gateway` feature): the command-line front end.
//!
//! Modules are `pub(crate)` unless `tests/it` or `benches/handlers.rs` use them (or `main.rs`:
//! [`cli`]), so the compiler's dead-code lint sees what nothing in the crate uses.

pub(crate) mod adapter;
pub(crate) mod admin;
#[cfg(feature = "count-allocs")]
pub(crate) mod alloc_count;
pub mod backfill;
pub(crate) mod budget;
pub mod cli;
pub mod config;
pub mod credentials;
pub(crate) mod delivery;
#[cfg(feature = "mock-gateway")]
pub(crate) mod demo;
pub(crate) mod encoding;
pub(crate) mod envelope;
pub(crate) mod exchange;
pub(crate) mod files;
pub(crate) mod h2;
pub mod handler;
pub(crate) mod headers;
pub(crate) mod hooks;
#[cfg(test)]
mod import_graph;
pub mod inbound;
pub mod journal;
pub mod keyset;
pub(crate) mod limits;
pub(crate) mod listen;
pub(crate) mod logging;
pub(crate) mod memory;
pub mod merchants;
pub mod metrics;
pub(crate) mod notifications;
pub mod outbound;
pub mod paylock;
pub mod preflight;
pub mod reconcile;
pub(crate) mod reload;
pub(crate) mod replay;
pub(crate) mod report;
pub mod retention;
pub(crate) mod schedule;
pub(crate) mod server;
pub(crate) mod shutdown;
pub mod signer;
pub(crate) mod state;
pub mod store;
pub(crate) mod table;
#[cfg(test)]
mod testing;
pub mod tls;
pub(crate) mod tools;
pub mod upload;
pub mod upstream;
pub(crate) mod wiring;

/// The fake Alipay gateway (crate `ams-mock-gateway`), under its old path so callers keep
/// `alipay_sidecar::mock_gateway::…`.
#[cfg(feature = "mock-gateway")]
pub use ams_mock_gateway as mock_gateway;
/// The signature protocol and AMS domain data (crate `ams-signature`), under its old path so
/// `crate::protocol::…` keeps working.
pub use ams_signature as protocol;
