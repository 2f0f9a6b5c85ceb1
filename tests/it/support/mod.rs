//! Shared helpers for the integration tests, one file per job. The tests import them from
//! `crate::support` (re-exported here), so a helper can move between files without touching
//! a test.

pub mod app;
pub mod files;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod raw;
pub mod rig;
pub mod sidecar;
pub mod softhsm;
pub mod vectors;

pub use app::*;
pub use files::*;
pub use gateway::*;
pub use http::*;
pub use keys::*;
pub use metrics::*;
pub use raw::*;
pub use rig::*;
pub use sidecar::*;
pub use softhsm::*;
pub use vectors::*;
