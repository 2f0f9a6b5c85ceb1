//! The offline tools behind `sign`, `verify`, `keygen` and `check-config`.
//!
//! These are what a payments engineer reaches for when "signature verify fail" shows up: they
//! use exactly the library code the running sidecar uses, show the exact bytes that are signed,
//! and say which check failed. Each tool takes its parsed options plus the streams it may use
//! and returns the process exit code, so it can be tested without spawning a process; `cli.rs`
//! only parses arguments and dispatches here.
//!
//! One file per tool: [`sign`], [`verify`], `keygen` (also `local-ca`), [`check_config`];
//! what they read and check before signing or verifying is in `input`.

mod check_config;
mod input;
mod keygen;
mod sign;
mod verify;

pub use check_config::{check_config, ConfigArgs};
pub use keygen::{keygen, local_ca, KeygenArgs, LocalCaArgs};
pub use sign::{sign, SignArgs};
pub use verify::{verify, VerifyArgs, VERIFY_HELP};
