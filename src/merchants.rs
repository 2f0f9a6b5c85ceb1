//! The merchants the sidecar serves, each with its live key set.
//!
//! Why a registry: several merchants (client ids) share the listeners, and each one's keys
//! reload on their own — a broken key file of one merchant keeps that merchant's old set and
//! must not hold back the others. Each merchant therefore has its own `ArcSwap<KeySet>`; a
//! request takes one snapshot ([`Merchant::keys`]) and uses it from start to end.
//!
//! Each handler starts with ONE selection step (`Outbound::select`, `Inbound::select`) that
//! yields everything per merchant a request needs ([`Selected`]: the merchant's fixed data and
//! upstream client, and its key snapshot); the policy code after it never asks again.

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use crate::config::DEFAULT_MERCHANT;

/// The `merchant` label of a request refused before its merchant was known (several
/// merchants, and the request named none or an unknown one).
pub const UNSELECTED_MERCHANT: &str = "unknown";
use crate::config::MerchantConfig;
use crate::keyset::KeySet;

/// Where a merchant's live key set comes from. A request takes one snapshot at selection and
/// uses it from start to end, so a concurrent reload never mixes keys inside one request.
pub trait KeySource: Send + Sync {
    /// The current key set.
    fn keys(&self) -> Arc<KeySet>;
}

/// A fixed key set (tests, tools).
impl KeySource for Arc<KeySet> {
    fn keys(&self) -> Arc<KeySet> {
        self.clone()
    }
}

/// The live keys of the merchant at `index` in the process's registry: what the production
/// handlers hold, so a reload of that merchant reaches them and no other. It shares the
/// merchant's own swap cell, so it needs neither the registry nor the process state.
pub struct LiveKeys {
    keys: Arc<ArcSwap<KeySet>>,
}

impl LiveKeys {
    /// The live keys of the `index`-th merchant (config order) of `merchants`.
    pub fn new(merchants: &Merchants, index: usize) -> Arc<Self> {
        assert!(index < merchants.len(), "no merchant #{index}");
        Arc::new(Self {
            keys: merchants.list[index].keys.clone(),
        })
    }
}

impl KeySource for LiveKeys {
    fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }
}

/// The `merchant` label of a request a handler refused before its selection step: the only
/// merchant's name, or [`UNSELECTED_MERCHANT`] when the handler serves several.
///
/// # Panics
/// When `names` is empty (a handler always serves a merchant; a validated config has one).
pub fn unselected_label<'a>(mut names: impl ExactSizeIterator<Item = &'a Arc<str>>) -> Arc<str> {
    match (names.len(), names.next()) {
        (1, Some(only)) => only.clone(),
        (0, _) | (_, None) => panic!("a handler needs a merchant"),
        _ => Arc::from(UNSELECTED_MERCHANT),
    }
}

/// The merchant a request was routed to, with the key snapshot the whole request uses.
pub struct Selected<'a, M> {
    /// The merchant's fixed data and upstream client.
    pub merchant: &'a M,
    /// The key set for this request.
    pub keys: Arc<KeySet>,
}

/// One merchant: its resolved settings and its live key set.
pub struct Merchant {
    config: MerchantConfig,
    /// Shared with the handlers' [`LiveKeys`]: a swap here reaches them.
    keys: Arc<ArcSwap<KeySet>>,
}

impl Merchant {
    /// The merchant's name (`default` for a single-merchant config).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The current key set. A request loads it once (lock-free) and uses that snapshot from
    /// start to end, so a concurrent reload never mixes keys inside one request.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Replaces this merchant's key set for all requests that start from now on.
    pub fn swap_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }
}

/// Every merchant, in config order (never empty).
pub struct Merchants {
    list: Vec<Merchant>,
}

impl Merchants {
    /// Builds the registry from each merchant's settings and its loaded, preflighted key
    /// set. `None` when the list is empty (a validated config always has a merchant).
    pub fn new(sets: Vec<(MerchantConfig, KeySet)>) -> Option<Merchants> {
        if sets.is_empty() {
            return None;
        }
        let list = sets
            .into_iter()
            .map(|(config, keys)| Merchant {
                config,
                keys: Arc::new(ArcSwap::from_pointee(keys)),
            })
            .collect();
        Some(Merchants { list })
    }

    /// The names, in config order (for "unknown merchant" answers).
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(Merchant::name).collect()
    }

    /// Every merchant, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Merchant> {
        self.list.iter()
    }

    /// How many merchants there are (at least one).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: the registry holds at least one merchant.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
