//! `[reconcile] backfill`, `backfill_interval`, `backfill_window` (issue 22): the backfill
//! from Alipay's notification event log, built apart from the reconciler's options because it
//! does not need the reconciler (`enabled`) to be on.

use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::raw::{default, RawReconcile};
use super::typed::{BackfillConfig, MAX_BACKFILL_WINDOW};

impl Ctx<'_> {
    /// `None` unless `[reconcile] backfill = true`. `wired`: the config has `[store]` (the
    /// cursor and the journal), `[outbound]` (the signed inquiries) and `[inbound]` (the app
    /// the recovered events go to).
    pub(super) fn build_backfill(
        &self,
        raw: Option<&Spanned<RawReconcile>>,
        wired: bool,
    ) -> Result<Option<BackfillConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let span = raw.span();
        let raw = raw.get_ref();
        if !raw.backfill.unwrap_or_else(|| default("reconcile.backfill")) {
            return Ok(None);
        }
        if !wired {
            return self.err(
                span,
                "reconcile.backfill",
                "the backfill needs [store] (its cursor and the journal), [outbound] (it inquires \
                 Alipay's event log through the merchant's gateway) and [inbound] (it delivers \
                 recovered notifications to forward_to); add them or set backfill = false",
            );
        }
        let interval = self.duration(raw.backfill_interval.clone(), "reconcile.backfill_interval")?;
        if interval.is_zero() {
            return self.err(
                raw.backfill_interval.as_ref().map(|v| v.span()).unwrap_or(span),
                "reconcile.backfill_interval",
                "must be longer than 0s, e.g. \"5m\"",
            );
        }
        let window = self.duration(raw.backfill_window.clone(), "reconcile.backfill_window")?;
        if window.is_zero() || window > MAX_BACKFILL_WINDOW {
            return self.err(
                raw.backfill_window.as_ref().map(|v| v.span()).unwrap_or(span),
                "reconcile.backfill_window",
                "must be from 1s to 30d (Antom keeps its notification event log 30 days), e.g. \"24h\"",
            );
        }
        let deliver_path = raw
            .deliver_path
            .as_ref()
            .map(|p| p.get_ref().clone())
            .filter(|p| p.starts_with('/') && !p.contains(['?', '#', ' ']));
        Ok(Some(BackfillConfig {
            interval,
            window,
            deliver_path,
        }))
    }
}
