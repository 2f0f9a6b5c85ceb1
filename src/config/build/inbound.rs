//! `[inbound]`: the notification verifier, the app it forwards to and its path map.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx};
use crate::config::raw::{default, RawInbound};
use crate::config::typed::*;
use crate::config::url::parse_url;

impl Ctx<'_> {
    /// The app URL of `forward_to` (plain http, no query).
    pub(in crate::config) fn forward_to(
        &self,
        f: &Spanned<String>,
        key: &str,
    ) -> Result<AppUpstream, ConfigError> {
        let url = parse_url(f.get_ref()).map_err(|problem| {
            self.error_span(
                Some(f.span()),
                Some(key),
                format!(
                    "\"{}\" is not a URL ({problem}); write the app's base URL, e.g. \
                     \"http://127.0.0.1:3000\"",
                    f.get_ref()
                ),
            )
        })?;
        if url.scheme != "http" {
            return self.err(
                f.span(),
                key,
                format!(
                    "only http:// is supported for the app for now (got \"{}://\"); the app runs \
                     next to the sidecar, so use e.g. \"http://127.0.0.1:3000\"",
                    url.scheme
                ),
            );
        }
        if url.path.contains('?') || url.path.contains('#') {
            return self.err(
                f.span(),
                key,
                "forward_to must not contain a query or fragment; write only the base URL (and an optional path prefix)",
            );
        }
        Ok(AppUpstream {
            host: url.host,
            port: url.port.unwrap_or(80),
            base_path: url.path.trim_end_matches('/').to_string(),
        })
    }

    /// `path_map`: notify path → app path, both absolute paths.
    pub(in crate::config) fn path_map(
        &self,
        raw: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
        key: &str,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut path_map = BTreeMap::new();
        for (from, to) in raw.unwrap_or_default() {
            for p in [&from, &to] {
                if !p.get_ref().starts_with('/') {
                    return self.err(
                        p.span(),
                        key,
                        format!(
                            "\"{}\" does not start with '/'; map a notify path to an app path, \
                             e.g. {{ \"/alipay/notify\" = \"/payments/notify\" }}",
                            p.get_ref()
                        ),
                    );
                }
            }
            path_map.insert(from.into_inner(), to.into_inner());
        }
        Ok(path_map)
    }

    pub(in crate::config) fn build_inbound(
        &self,
        raw: Spanned<RawInbound>,
        has_store: bool,
    ) -> Result<InboundConfig, ConfigError> {
        let raw = raw.into_inner();
        let needs_store = |span: Range<usize>, key: &str, what: &str| {
            self.err::<()>(
                span,
                key,
                format!(
                    "{what} needs a state store: add [store] with `path = \"…/state.db\"` \
                     (embedded SQLite) or `url = \"postgres://…\"`"
                ),
            )
        };
        let duplicates = match &raw.duplicates {
            None if has_store => Duplicates::Suppress,
            None => Duplicates::Forward,
            Some(d) => {
                if *d.get_ref() == Duplicates::Suppress && !has_store {
                    needs_store(d.span(), "inbound.duplicates", "duplicates = \"suppress\"")?;
                }
                *d.get_ref()
            }
        };
        let acknowledge = match &raw.acknowledge {
            None => default("inbound.acknowledge"),
            Some(a) => {
                if *a.get_ref() == Acknowledge::AfterStore && !has_store {
                    needs_store(
                        a.span(),
                        "inbound.acknowledge",
                        "acknowledge = \"after-store\"",
                    )?;
                }
                *a.get_ref()
            }
        };
        let delivery_schedule =
            self.durations(raw.delivery_schedule, "inbound.delivery_schedule")?;
        let max_delivery_age = self.duration(raw.max_delivery_age, "inbound.max_delivery_age")?;
        let listen = self.addr(raw.listen, "inbound.listen")?;
        let forward_to = self.forward_to(&raw.forward_to, "inbound.forward_to")?;
        let path_map = self.path_map(raw.path_map, "inbound.path_map")?;

        let max_request_time_skew =
            self.window(raw.max_request_time_skew, "inbound.max_request_time_skew")?;
        let max_body_bytes = self.positive(raw.max_body_bytes.clone(), "inbound.max_body_bytes")?;
        let unverified_body_budget_bytes = self.positive(
            raw.unverified_body_budget_bytes.clone(),
            "inbound.unverified_body_budget_bytes",
        )?;
        if unverified_body_budget_bytes < max_body_bytes {
            let span = raw
                .unverified_body_budget_bytes
                .as_ref()
                .or(raw.max_body_bytes.as_ref())
                .map_or(0..0, Spanned::span);
            self.err::<()>(
                span,
                "inbound.unverified_body_budget_bytes",
                format!(
                    "unverified_body_budget_bytes ({unverified_body_budget_bytes}) is smaller than \
                     max_body_bytes ({max_body_bytes}), so a notification of the largest allowed \
                     size could never be read; make the budget at least max_body_bytes"
                ),
            )?;
        }
        let replay_window_entries = match raw.replay_window_entries {
            None => default::<usize>("inbound.replay_window_entries"),
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(n) if n <= MAX_REPLAY_WINDOW_ENTRIES => n,
                _ => self.err(
                    v.span(),
                    "inbound.replay_window_entries",
                    format!(
                        "{} is not allowed; write 0 (off) or a number up to \
                         {MAX_REPLAY_WINDOW_ENTRIES} (≈ 80 bytes of memory each)",
                        v.get_ref()
                    ),
                )?,
            },
        };

        Ok(InboundConfig {
            listen,
            forward_to,
            path_map,
            max_body_bytes,
            unverified_body_budget_bytes,
            forward_timeout: self.duration(raw.forward_timeout, "inbound.forward_timeout")?,
            max_request_time_skew,
            replay_window_entries,
            acknowledge,
            sign_acknowledgements: raw
                .sign_acknowledgements
                .unwrap_or_else(|| default("inbound.sign_acknowledgements")),
            mode: raw.mode.unwrap_or_else(|| default("inbound.mode")),
            max_connections: self.positive(raw.max_connections, "inbound.max_connections")?,
            duplicates,
            delivery_schedule,
            max_delivery_age,
        })
    }
}

/// The largest `replay_window_entries` accepted: ≈ 80 MiB of digests, far more than any
/// merchant's notifications in Alipay's whole re-send period.
const MAX_REPLAY_WINDOW_ENTRIES: usize = 1 << 20;
