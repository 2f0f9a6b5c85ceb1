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
        if !raw
            .backfill
            .unwrap_or_else(|| default("reconcile.backfill"))
        {
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
        let interval =
            self.duration(raw.backfill_interval.clone(), "reconcile.backfill_interval")?;
        if interval.is_zero() {
            return self.err(
                raw.backfill_interval
                    .as_ref()
                    .map(|v| v.span())
                    .unwrap_or(span),
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::Config;

    const BASE: &str = "client_id = \"SANDBOX_5YBZ2Q2ZAB7C01234\"\n[keys]\nmerchant_private_key = \"k.pem\"\nalipay_public_keys = { \"1\" = \"a.pem\" }\n[outbound]\nregion = \"sea\"\n[inbound]\nforward_to = \"http://127.0.0.1:3000\"\n[store]\npath = \"s.db\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/sc/sidecar.toml"), Vec::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_defaults_when_on() {
        assert_eq!(parse(BASE).unwrap().backfill, None);
        assert_eq!(
            parse(&format!("{BASE}[reconcile]\n")).unwrap().backfill,
            None
        );
        let b = parse(&format!("{BASE}[reconcile]\nbackfill = true\n"))
            .unwrap()
            .backfill
            .expect("on without enabled = true");
        assert_eq!(b.interval, Duration::from_secs(300));
        assert_eq!(b.window, Duration::from_secs(24 * 3600));
        assert_eq!(b.deliver_path, None);
        let b = parse(&format!(
            "{BASE}[reconcile]\nbackfill = true\nbackfill_window = \"30d\"\ndeliver_path = \"/n\"\n"
        ))
        .unwrap()
        .backfill
        .unwrap();
        assert_eq!(b.window, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(b.deliver_path.as_deref(), Some("/n"));
    }

    #[test]
    fn refused_values_name_the_key() {
        let e = parse(&format!(
            "{BASE}[reconcile]\nbackfill = true\nbackfill_window = \"31d\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("backfill_window") && e.contains("30d"), "{e}");
        let e = parse(&format!(
            "{BASE}[reconcile]\nbackfill = true\nbackfill_interval = \"0s\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("backfill_interval"), "{e}");
        let no_store = BASE.replace("[store]\npath = \"s.db\"\n", "");
        let e = parse(&format!("{no_store}[reconcile]\nbackfill = true\n")).unwrap_err();
        assert!(e.contains("backfill") && e.contains("[store]"), "{e}");
    }
}
