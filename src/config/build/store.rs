//! `[store]` and `[reconcile]`: where the state lives, how it is used, and the reconciler's
//! schedule.

use std::ops::Range;

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx};
use crate::config::raw::{default, RawReconcile, RawStore};
use crate::config::typed::*;

impl Ctx<'_> {
    /// `[store]`: exactly one of `path` (SQLite) and `url` (PostgreSQL).
    pub(in crate::config) fn build_store(
        &self,
        raw: Spanned<RawStore>,
    ) -> Result<(StoreConfig, StoreOptions), ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let options = self.store_options(raw.timeout, raw.retention)?;
        let location = self.store_location(span, raw.path, raw.url)?;
        Ok((location, options))
    }

    /// `[store] timeout` and `retention`, bounded (see [`STORE_TIMEOUT_RANGE`],
    /// [`MIN_RETENTION`]); the defaults for `None`.
    pub(in crate::config) fn store_options(
        &self,
        timeout: Option<Spanned<String>>,
        retention: Option<Spanned<String>>,
    ) -> Result<StoreOptions, ConfigError> {
        let span = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.span());
        let (timeout_span, retention_span) = (span(&timeout), span(&retention));
        let options = StoreOptions {
            timeout: self.duration(timeout, "store.timeout")?,
            retention: self.duration(retention, "store.retention")?,
        };
        let (low, high) = STORE_TIMEOUT_RANGE;
        if options.timeout < low || options.timeout > high {
            return Err(self.error_span(
                timeout_span,
                Some("store.timeout"),
                format!(
                    "the store timeout must be between {} and {}: shorter and a busy store \
                     looks down, longer and a store that is down stalls every notification",
                    humantime::format_duration(low),
                    humantime::format_duration(high)
                ),
            ));
        }
        if options.retention < MIN_RETENTION {
            return Err(self.error_span(
                retention_span,
                Some("store.retention"),
                format!(
                    "the retention must be at least {}: Alipay re-sends a notification for \
                     24 h, and a re-send of a pruned event would reach the app again",
                    humantime::format_duration(MIN_RETENTION)
                ),
            ));
        }
        Ok(options)
    }

    fn store_location(
        &self,
        span: Range<usize>,
        path: Option<Spanned<String>>,
        url: Option<Spanned<String>>,
    ) -> Result<StoreConfig, ConfigError> {
        match (path, url) {
            (Some(p), None) => Ok(StoreConfig::Sqlite(self.path_value(&p, "store.path")?)),
            (None, Some(u)) => {
                let url = u.get_ref().trim();
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return self.err(
                        u.span(),
                        "store.url",
                        "the store URL must be a PostgreSQL URL (postgres://user@host:5432/db); \
                         for an embedded store use `path = \"…/state.db\"` instead",
                    );
                }
                Ok(StoreConfig::Postgres(url.to_string()))
            }
            (Some(_), Some(u)) => self.err(
                u.span(),
                "store.url",
                "[store] has both `path` (embedded SQLite) and `url` (PostgreSQL); keep one",
            ),
            (None, None) => self.err(
                span,
                "store",
                "[store] needs `path = \"/var/lib/alipay-sidecar/state.db\"` (embedded SQLite) \
                 or `url = \"postgres://…\"` (PostgreSQL shared by replicas)",
            ),
        }
    }

    /// `[reconcile]`: `None` unless `enabled = true`.
    pub(in crate::config) fn build_reconcile(
        &self,
        raw: Spanned<RawReconcile>,
    ) -> Result<Option<ReconcileConfig>, ConfigError> {
        let raw = raw.into_inner();
        if !raw.enabled.unwrap_or_else(|| default("reconcile.enabled")) {
            return Ok(None);
        }
        let deliver_path = match raw.deliver_path {
            None => None,
            Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#', ' ']) => {
                Some(p.into_inner())
            }
            Some(p) => {
                return self.err(
                    p.span(),
                    "reconcile.deliver_path",
                    format!(
                    "\"{}\" is not a path; write the app's notify path, e.g. \"/alipay/notify\"",
                    p.get_ref()
                ),
                )
            }
        };
        Ok(Some(ReconcileConfig {
            reconcile_after: self.duration(raw.reconcile_after, "reconcile.reconcile_after")?,
            inquiry_schedule: self.durations(raw.inquiry_schedule, "reconcile.inquiry_schedule")?,
            default_close_after: self
                .duration(raw.default_close_after, "reconcile.default_close_after")?,
            cancel_on_expiry: raw
                .cancel_on_expiry
                .unwrap_or_else(|| default("reconcile.cancel_on_expiry")),
            deliver_path,
        }))
    }
}
