//! A fake Alipay Global (AMS / Antom) gateway — the "stripe-mock" of Alipay.
//!
//! It exists so the demo, the sidecar's integration tests and users testing their
//! integration offline have a gateway that behaves like the real one where it matters for
//! signatures: it verifies every request exactly as Alipay does, answers with signed
//! responses, and sends signed payment notifications that it re-sends until acknowledged.
//! It runs in-process ([`MockGateway::start`] inside a tokio runtime) or as the
//! `alipay-sidecar mock-gateway` subcommand ([`cli_main`]). It signs and verifies with its own
//! code (the `rsa` crate, ring for TLS), never the sidecar's, so a bug in the sidecar's signer
//! is caught here instead of being mirrored.
//!
//! Around it, what a local setup needs: [`start_receiver`], a stand-in for the merchant app
//! that takes the notifications a sidecar forwards (the demo's and `mock-gateway --out-dir`'s),
//! and [`SidecarToml`], the sidecar config both write.
//!
//! What it checks and answers (requests, routes and state, notifications, the payment-outcome
//! and fault switches) is described in `docs/mock-gateway.md` at the repository root; keep that
//! text in step with this crate.

mod api;
mod cli;
mod clock;
mod config;
mod control;
mod crypto;
mod error;
mod fault;
mod gateway;
mod notify;
mod out_dir;
mod receiver;
mod server;
mod state;
mod switches;
mod tls;

pub use api::events::{
    DeliveryStatus, NotificationEvent, EVENT_NOT_EXIST, EVENT_RETENTION_DAYS, MAX_EVENT_LIMIT,
};
pub use cli::{cli_main, MockGatewayArgs};
pub use clock::STALE_RESPONSE_TIME;
pub use config::{MockGatewayConfig, DEFAULT_NOTIFY_BACKOFF};
pub use error::MockGatewayError;
pub use fault::Fault;
pub use gateway::MockGateway;
pub use out_dir::SidecarToml;
pub use receiver::{start_receiver, Delivered};
pub use state::{NotificationAttempt, ReceivedRequest, RECEIVED_LOG_LIMIT};
pub use switches::{
    ControlError, InquiryAnswer, NotifyMode, PaymentOutcome, PaymentResult, PaymentStatus,
    DEFAULT_FAIL_CODE, MAX_SWITCH_DELAY,
};
