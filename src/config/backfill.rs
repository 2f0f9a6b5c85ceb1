//! `[reconcile] backfill`, `backfill_interval`, `backfill_window` and the per-merchant
//! `[merchants.reconcile] backfill` (issue 22): the backfill from Alipay's notification event
//! log, built apart from the reconciler's options because it does not need the reconciler
//! (`enabled`) to be on.

use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::merchants::Draft;
use super::raw::{default, RawReconcile};
use super::typed::{BackfillConfig, MAX_BACKFILL_WINDOW};

impl Ctx<'_> {
    /// `None` unless the backfill is on for at least one merchant: `[reconcile] backfill` is
    /// every merchant's default, a merchant's `[merchants.reconcile] backfill` overrides it
    /// (the way `[merchants.outbound]` and `[merchants.inbound]` override the shared
    /// sections). Per merchant because turning it on is the operator's decision for each
    /// Alipay account (its event log is inquired with that merchant's key). `wired`: the
    /// config has `[store]` (the cursor and the journal), `[outbound]` (the signed inquiries)
    /// and `[inbound]` (the app the recovered events go to).
    pub(super) fn build_backfill(
        &self,
        raw: Option<&Spanned<RawReconcile>>,
        drafts: &[Draft],
        wired: bool,
    ) -> Result<Option<BackfillConfig>, ConfigError> {
        let shared = raw
            .and_then(|r| r.get_ref().backfill)
            .unwrap_or_else(|| default("reconcile.backfill"));
        let mut merchants = Vec::new();
        // where the first "on" is written, for an error about a missing section
        let mut first_on: Option<(String, std::ops::Range<usize>)> = None;
        for d in drafts {
            let on = match d.backfill_override() {
                Some((on, key, span)) => {
                    if on && first_on.is_none() {
                        first_on = Some((key, span));
                    }
                    on
                }
                None => shared,
            };
            if on {
                merchants.push(d.name().to_string());
            }
        }
        if merchants.is_empty() {
            return Ok(None);
        }
        let (key, span) = match raw {
            Some(r) if shared => ("reconcile.backfill".to_string(), r.span()),
            _ => first_on.unwrap_or_else(|| ("reconcile.backfill".to_string(), 0..0)),
        };
        if !wired {
            return self.err(
                span,
                &key,
                "the backfill needs [store] (its cursor and the journal), [outbound] (it inquires \
                 Alipay's event log through the merchant's gateway) and [inbound] (it delivers \
                 recovered notifications to forward_to); add them or set backfill = false",
            );
        }
        let none = RawReconcile::default();
        let (raw, span) = match raw {
            Some(r) => (r.get_ref(), r.span()),
            None => (&none, span),
        };
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
            merchants,
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
        assert_eq!(b.merchants, ["default"]);
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

    const TWO: &str = "[outbound]\nregion = \"sea\"\n[inbound]\nforward_to = \"http://127.0.0.1:3000\"\n[store]\npath = \"s.db\"\n";

    fn merchant(name: &str, client_id: &str, reconcile: &str) -> String {
        format!(
            "[[merchants]]\nname = \"{name}\"\nclient_id = \"{client_id}\"\n[merchants.keys]\nmerchant_private_key = \"k.pem\"\nalipay_public_keys = {{ \"1\" = \"a.pem\" }}\n{reconcile}"
        )
    }

    #[test]
    fn per_merchant_override_of_the_shared_default() {
        let on = "[merchants.reconcile]\nbackfill = true\n";
        let off = "[merchants.reconcile]\nbackfill = false\n";
        // off by default; one merchant turns it on, without a [reconcile] section
        let text = format!(
            "{TWO}{}{}",
            merchant("sg", "T_1", ""),
            merchant("eu", "T_2", on)
        );
        let b = parse(&text).unwrap().backfill.expect("on for eu");
        assert_eq!(b.merchants, ["eu"]);
        assert_eq!(b.interval, Duration::from_secs(300), "shared defaults");
        // on for all by [reconcile]; one merchant turns it off
        let text = format!(
            "{TWO}[reconcile]\nbackfill = true\nbackfill_interval = \"1m\"\n{}{}",
            merchant("sg", "T_1", off),
            merchant("eu", "T_2", "")
        );
        let b = parse(&text).unwrap().backfill.expect("on for eu");
        assert_eq!(b.merchants, ["eu"]);
        assert_eq!(b.interval, Duration::from_secs(60));
        // every merchant off: no worker
        let text = format!(
            "{TWO}[reconcile]\nbackfill = true\n{}{}",
            merchant("sg", "T_1", off),
            merchant("eu", "T_2", off)
        );
        assert_eq!(parse(&text).unwrap().backfill, None);
        // a merchant's "on" needs the sections too, and the error names its key
        let text = format!(
            "{}{}",
            TWO.replace("[store]\npath = \"s.db\"\n", ""),
            merchant("sg", "T_1", on)
        );
        let e = parse(&text).unwrap_err();
        assert!(
            e.contains("merchants.0.reconcile.backfill") && e.contains("[store]"),
            "{e}"
        );
        // unknown keys in the merchant's table are refused
        let text = format!(
            "{TWO}{}",
            merchant("sg", "T_1", "[merchants.reconcile]\nbackfil = true\n")
        );
        let e = parse(&text).unwrap_err();
        assert!(e.contains("backfil"), "{e}");
        let text = format!(
            "{TWO}{}",
            merchant("sg", "T_1", "[merchants.reconcile]\nbackfill = \"yes\"\n")
        );
        assert!(parse(&text).is_err(), "backfill takes true or false");
    }
}
