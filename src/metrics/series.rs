//! The per-request metric handles, resolved once instead of on every request (issue 23).
//!
//! Why: `MetricVec::with_label_values` hashes every label value, takes the vector's lock and
//! clones the child's `Arc`; a request used to do that ten times (body sizes, verify time,
//! verification result, upstream time, result status, request count and duration, the
//! in-flight gauge). The handles of a (direction, merchant, API) combination are kept in a
//! table indexed by the API's dense number ([`crate::protocol::api_label_index`]) and
//! the merchant's row, found by pointer first (the report's merchant name is the config's
//! `Arc`), by name otherwise.
//! Each handle is resolved on its first use, so a series still appears in `/metrics` when it
//! is first recorded, as before: nothing new is created at zero.
//!
//! The request counter keeps its one lookup per request: its `status` label is open (any
//! status the sidecar answered with).

use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};

use crate::protocol::{api_label_index, API_LABEL_COUNT};
use crate::report::Direction;

/// Merchants with a row of handles; requests for more (a config cannot have that many) are
/// recorded through the label lookups, as before.
const MAX_MERCHANTS: usize = 64;

/// The handles of one (direction, merchant, API) combination.
#[derive(Default)]
pub(super) struct Series {
    pub(super) request_duration: OnceLock<Histogram>,
    pub(super) upstream_duration: OnceLock<Histogram>,
    /// `S`, `F`, `U`, `none` (see [`super::result_status_label`]).
    pub(super) result_status: [OnceLock<IntCounter>; 4],
}

/// One merchant's handles: `[direction][api index]`.
pub(super) struct MerchantSeries {
    name: Arc<str>,
    by_api: [Box<[Series]>; 2],
}

impl MerchantSeries {
    fn new(name: Arc<str>) -> Self {
        let row = || (0..API_LABEL_COUNT).map(|_| Series::default()).collect();
        MerchantSeries {
            name,
            by_api: [row(), row()],
        }
    }

    /// The handles of `direction` and `api`; `None` for a label outside the API list.
    pub(super) fn get(&self, direction: Direction, api: &str) -> Option<&Series> {
        let d = usize::from(direction == Direction::Inbound);
        self.by_api[d].get(api_label_index(api)?)
    }
}

/// The merchants' rows, grown when a merchant is first seen (at most [`MAX_MERCHANTS`]);
/// readers never wait on a lock.
#[derive(Default)]
pub(super) struct SeriesTable {
    rows: ArcSwap<Vec<Arc<MerchantSeries>>>,
    grow: Mutex<()>,
}

impl std::fmt::Debug for SeriesTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesTable")
            .field("merchants", &self.rows.load().len())
            .finish()
    }
}

impl SeriesTable {
    /// `merchant`'s row, made on first use (named by `owned()`, the caller's `Arc` of the
    /// name when it has one, so later look-ups match by pointer); `None` past
    /// [`MAX_MERCHANTS`].
    pub(super) fn merchant(
        &self,
        merchant: &str,
        owned: impl FnOnce() -> Arc<str>,
    ) -> Option<Arc<MerchantSeries>> {
        // the report's name is usually the config's own `Arc<str>`: same pointer
        let same = |r: &&Arc<MerchantSeries>| std::ptr::eq(r.name.as_ptr(), merchant.as_ptr());
        let find = |rows: &[Arc<MerchantSeries>]| {
            rows.iter()
                .find(|r| same(r) && r.name.len() == merchant.len())
                .or_else(|| rows.iter().find(|r| &*r.name == merchant))
                .cloned()
        };
        if let Some(row) = find(&self.rows.load()) {
            return Some(row);
        }
        let _one = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let rows = self.rows.load_full();
        if let Some(row) = find(&rows) {
            return Some(row);
        }
        if rows.len() >= MAX_MERCHANTS {
            return None;
        }
        let row = Arc::new(MerchantSeries::new(owned()));
        let mut grown = Vec::with_capacity(rows.len() + 1);
        grown.extend(rows.iter().cloned());
        grown.push(row.clone());
        self.rows.store(Arc::new(grown));
        Some(row)
    }
}
