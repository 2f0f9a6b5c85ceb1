//! The backfill from Alipay's notification event log (`[reconcile] backfill = true`, issue 22).
//!
//! The journal, store-and-forward and the reconciler cover every notification that *reached*
//! the sidecar and every pay made *through* it. A notification Alipay failed to deliver (a
//! REFUND_RESULT, a dispute, a pay made elsewhere) is recovered only from Alipay's own event
//! log, which Antom keeps 30 days and serves as `inquireNotificationList`
//! (global-open-sdk-python 1.7.1, `request/notification/`). Every `backfill_interval` this
//! service walks each merchant's log ([`walk`]) over the time since its last complete walk
//! (a cursor per merchant in the store, minus [`OVERLAP`], at most `backfill_window` back),
//! under a lease row (with PostgreSQL one replica walks a merchant at a time). An event the
//! journal lacks is recorded and delivered by the delivery worker, marked
//! `X-Alipay-Sidecar-Source: inquireNotificationList`; one already journaled is not delivered
//! again. `metrics.rs` has the `alipay_sidecar_backfill_*` families; `raw.rs` finds the exact
//! bytes of `notificationData` in the signed answer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};

use crate::config::{BackfillConfig, Config};
use crate::exchange::now_millis;
use crate::hooks::NotificationHook;
use crate::outbound::Outbound;
use crate::reconcile::{OutboundApi, PayApi};
use crate::store::StateStore;
use crate::upstream::UpstreamClient;

pub mod cli;
mod metrics;
mod raw;
pub mod walk;

pub use metrics::register_metrics;
pub use walk::iso_utc;
use walk::{Merchant, Mode, Walker};

/// A walk starts this long before the end of the last complete one: an event created just
/// before that end but listed only later is still seen (the journal de-duplicates).
pub const OVERLAP: Duration = Duration::from_secs(10 * 60);

/// A walk ends this long (or one interval, when shorter) before now: an event that young is
/// most likely being delivered by Alipay right now; the next walk sees it (see [`OVERLAP`]), so
/// a webhook that is merely in flight is not reported `recovered`.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Antom keeps the event log this long; a window never starts earlier (a minute of margin).
const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600 - 60);

/// Where a walk starts: [`OVERLAP`] before the cursor, but never more than `window` (nor the
/// retention) before `now`. All UTC ms.
pub fn walk_from(cursor: Option<i64>, now: i64, window: Duration) -> i64 {
    let earliest = now - ms(window.min(RETENTION));
    cursor
        .map(|c| c - ms(OVERLAP))
        .unwrap_or(earliest)
        .clamp(earliest, now)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The background service (see the module doc).
pub struct Backfill {
    walker: Walker,
    store: Arc<StateStore>,
    merchants: Vec<Merchant>,
    config: BackfillConfig,
    owner: String,
    lease: Duration,
}

/// The backfill as a background service of the server; its calls go through `outbound` (a
/// handler of every merchant, as the reconciler's). It walks the merchants the backfill is on
/// for (`[reconcile] backfill`, or the merchant's `[merchants.reconcile] backfill`); `hook` is
/// the reconciler's closing hook when the reconciler is on.
pub fn service<G: UpstreamClient>(
    config: &Config,
    backfill: &BackfillConfig,
    store: &Arc<StateStore>,
    outbound: Outbound<G>,
    request_timeout: Duration,
    hook: Option<Arc<dyn NotificationHook>>,
) -> GenBackgroundService<Backfill> {
    let api: Arc<dyn PayApi> = Arc::new(OutboundApi::new(outbound));
    let merchants: Vec<Merchant> = config
        .merchants
        .iter()
        .filter(|m| backfill.merchants.contains(&m.name))
        .map(|m| Merchant {
            name: m.name.clone(),
            client_id: m.client_id.clone(),
        })
        .collect();
    register_metrics(merchants.iter().map(|m| m.name.as_str()));
    tracing::info!(interval = %humantime::format_duration(backfill.interval), window = %humantime::format_duration(backfill.window), merchants = %backfill.merchants.join(","), "backfill from Alipay's notification event log on");
    background_service(
        "backfill",
        Backfill {
            walker: Walker::new(store.clone(), api, backfill.deliver_path.clone())
                .with_locks(crate::paylock::for_store(store))
                .with_hook(hook),
            store: store.clone(),
            merchants,
            config: backfill.clone(),
            owner: crate::schedule::claim_owner(),
            lease: (request_timeout * 4 + Duration::from_secs(60)).max(backfill.interval),
        },
    )
}

impl Backfill {
    /// One round: each merchant whose lease this replica gets is walked once.
    pub async fn round(&self) {
        for m in &self.merchants {
            let now = now_millis();
            let (name, owner) = (m.name.clone(), self.owner.clone());
            let until = now + ms(self.lease);
            let claimed = self
                .store
                .run(move |s| async move { s.claim_backfill(&name, &owner, now, until).await })
                .await;
            let cursor = match claimed {
                Ok(Some(c)) => c,
                Ok(None) => continue, // another replica walks it now
                Err(e) => {
                    tracing::warn!(merchant = %m.name, error = %e, "backfill: the store is unavailable; walking later");
                    continue;
                }
            };
            if let Some(at) = cursor.last_complete_at {
                metrics::completed(&m.name, at);
            }
            // A walk (this replica's or another's) completed within half an interval: not
            // due yet.
            if cursor
                .last_complete_at
                .is_some_and(|at| now - at < ms(self.config.interval) / 2)
            {
                self.release(m).await;
                continue;
            }
            let to = now - ms(self.config.interval.min(SETTLE));
            let from = walk_from(cursor.last_complete_to, to, self.config.window);
            let walk = self.walker.walk(m, from, to, Mode::Recover).await;
            if walk.complete {
                let (name, owner) = (m.name.clone(), self.owner.clone());
                let done = now_millis();
                match self
                    .store
                    .run(move |s| async move { s.complete_backfill(&name, &owner, to, done).await })
                    .await
                {
                    Ok(true) => {
                        metrics::completed(&m.name, done);
                        tracing::info!(merchant = %m.name, from = %iso_utc(from), to = %iso_utc(to), events = walk.by_type.values().map(|c| c.at_alipay).sum::<u64>(), missing = walk.missing(), "backfill: walk complete");
                    }
                    Ok(false) => {
                        tracing::warn!(merchant = %m.name, "backfill: the lease was lost during the walk; the cursor is not moved")
                    }
                    Err(e) => {
                        tracing::warn!(merchant = %m.name, error = %e, "backfill: storing the cursor failed")
                    }
                }
            } else {
                tracing::warn!(merchant = %m.name, error = walk.error.as_deref().unwrap_or("-"), "backfill: walk incomplete; the cursor is not moved, the next walk covers this window again");
                self.release(m).await;
            }
        }
    }

    async fn release(&self, m: &Merchant) {
        let (name, owner) = (m.name.clone(), self.owner.clone());
        if let Err(e) = self
            .store
            .run(move |s| async move { s.release_backfill(&name, &owner).await })
            .await
        {
            tracing::debug!(error = %e, "backfill: releasing the lease failed (it expires)");
        }
    }
}

#[async_trait]
impl BackgroundService for Backfill {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tracing::info!(owner = %self.owner, "backfill started");
        let mut interval = tokio::time::interval(self.config.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = interval.tick() => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.round() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_at_the_cursor_minus_overlap_within_the_window() {
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        let w = Duration::from_secs(24 * 3600);
        assert_eq!(walk_from(None, now, w), now - day);
        assert_eq!(
            walk_from(Some(now - 1000), now, w),
            now - 1000 - ms(OVERLAP)
        );
        assert_eq!(walk_from(Some(now - 3 * day), now, w), now - day);
        let month = Duration::from_secs(40 * 24 * 3600);
        assert_eq!(walk_from(None, now, month), now - ms(RETENTION));
    }
}
