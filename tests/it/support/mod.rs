//! Shared helpers for the integration tests, one file per job. The tests import them from
//! `crate::support` (re-exported here), so a helper can move between files without touching
//! a test. The helpers the fake gateway's tests need too (vectors, raw responses, the app
//! stand-in, runtime and TLS client) live in `crates/test-support`, re-exported here.

pub mod files;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod nofile;
pub mod raw;
pub mod rig;
pub mod sidecar;
pub mod skip;
pub mod softhsm;

pub use files::*;
pub use gateway::*;
pub use http::*;
pub use keys::*;
pub use metrics::*;
pub use nofile::*;
pub use raw::*;
pub use rig::*;
pub use sidecar::*;
pub use skip::*;
pub use softhsm::*;
pub use test_support::*;
