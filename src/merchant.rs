//! Which merchant a request is for, and where that merchant's current keys come from.
//!
//! Each handler starts with ONE selection step that yields everything per merchant a request
//! needs (name, client id, keys snapshot, the upstream client); today it returns the single
//! configured merchant, named [`DEFAULT_MERCHANT`]. Routing among several merchants (by
//! listener, header or `client-id`) is added in the handlers' `select` without touching the
//! policy code after it.

use std::sync::Arc;

use crate::keyset::KeySet;
use crate::state::SidecarState;

/// The merchant name of a single-merchant config (metric label and log field).
pub const DEFAULT_MERCHANT: &str = "default";

/// Where a merchant's live key set comes from. A request takes one snapshot at selection and
/// uses it from start to end, so a concurrent reload never mixes keys inside one request.
pub trait KeySource: Send + Sync {
    /// The current key set.
    fn keys(&self) -> Arc<KeySet>;
}

impl KeySource for SidecarState {
    fn keys(&self) -> Arc<KeySet> {
        SidecarState::keys(self)
    }
}

/// A fixed key set (tests, tools).
impl KeySource for Arc<KeySet> {
    fn keys(&self) -> Arc<KeySet> {
        self.clone()
    }
}

/// The merchant a request was routed to, with the key snapshot the whole request uses.
pub struct Selected<'a, M> {
    /// The merchant's fixed data and upstream client.
    pub merchant: &'a M,
    /// The key set for this request.
    pub keys: Arc<KeySet>,
}
