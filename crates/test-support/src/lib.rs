//! Helpers shared by the sidecar's integration tests (`tests/it/`) and the fake gateway's
//! (`crates/ams-mock-gateway/tests/`), one file per job: the published vectors, responses
//! read from raw bytes, the merchant app stand-in, the tests' tokio runtime and TLS client.
//! A dev-dependency only; it depends on neither crate, so both can use it.

pub mod app;
pub mod runtime;
pub mod vectors;
pub mod wire;

pub use app::*;
pub use runtime::*;
pub use vectors::*;
pub use wire::*;
