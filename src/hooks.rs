//! What the handlers call after a verified exchange, as traits: the handlers sit under the
//! background services that act on these calls, so they name only these traits and never the
//! services' types (the reconciler implements both; the handlers' unit tests use fakes).
//!
//! Why here and not in [`crate::reconcile`]: the reconciler drives [`crate::outbound`]'s
//! handler for its own inquiries and cancels, so a handler importing the reconciler would make
//! the imports run in a circle. Imports run one way: reconcile → outbound/inbound → hooks.

use async_trait::async_trait;

// re-exported for the reconciler, which names it here; the name lives in crate::headers

/// Called by the outbound handler for every `payments/pay` whose answer verified (status 200),
/// once the answer is ready and before it goes back to the app: the reconciler records a pay
/// that is not final (`crate::reconcile::PayRecording`).
#[async_trait]
pub trait PayHook: Send + Sync + 'static {
    /// `merchant` and `client_id` are the selected merchant's; `target` the request's path and
    /// query; `request_body` and `answer` the bytes signed and verified. A failure of the hook
    /// is its own to log: the app gets its answer anyway.
    async fn after_verified_answer(
        &self,
        merchant: &str,
        client_id: &str,
        target: &str,
        request_body: &[u8],
        answer: &[u8],
    );
}

/// Called by the inbound handler for every notification whose signature verified.
#[async_trait]
pub trait NotificationHook: Send + Sync + 'static {
    /// `merchant` is the configured name the notification's client id selected. Returns the
    /// value of [`CONFLICT_HEADER`] when the notification contradicts a recorded outcome: the
    /// delivery to the app carries it.
    async fn verified(&self, merchant: &str, body: &[u8]) -> Option<String>;
}
