//! From the raw file to the typed [`Config`]: every check that needs more than serde, with
//! defaults taken from the option declarations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Ctx, InvalidValue};
use super::raw::{
    default, Kind, RawConfig, RawInbound, RawKeys, RawOutbound, RawReconcile, RawStore,
};
use super::typed::*;
use super::url::parse_url;
use super::{Config, REGIONS};

impl Ctx<'_> {
    /// A duration, or the declared default of `key`.
    pub(super) fn duration(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => humantime::parse_duration(&default::<String>(key))
                .map_err(|_| self.error_span(None, Some(key), "bad built-in default".into())),
            Some(v) => self.duration_value(&v, key),
        }
    }

    pub(super) fn duration_value(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let d = match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => d,
            Err(e) => {
                return self.err(
                    v.span(),
                    key,
                    format!(
                        "\"{}\" is not a duration ({e}); write {}",
                        v.get_ref(),
                        Kind::Duration.hint()
                    ),
                )
            }
        };
        if d.is_zero() {
            return self.err(v.span(), key, "the duration must be greater than zero");
        }
        self.duration_in_range(d, v, key)
    }

    /// Refuses a duration no timer can honour: below [`MIN_DURATION`] (a `1ns` timeout fires
    /// before any reply can arrive) or above the key's ceiling (`100000000y` overflows the
    /// clock and would panic a timer; a timeout of days is a typo).
    pub(super) fn duration_in_range(
        &self,
        d: Duration,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let max = max_duration(key);
        if d < MIN_DURATION || d > max {
            return self.err(
                v.span(),
                key,
                format!(
                    "\"{}\" is outside {}..={}; write a duration in that range, e.g. the default{}",
                    v.get_ref(),
                    humantime::format_duration(MIN_DURATION),
                    humantime::format_duration(max),
                    super::raw::known(key)
                        .and_then(|d| d.opt.default)
                        .map(|d| format!(" {d}"))
                        .unwrap_or_default()
                ),
            );
        }
        Ok(d)
    }

    /// A time window (`"off"` switches it off), or the declared default of `key`.
    pub(super) fn window(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        match v {
            None => {
                let d: String = default(key);
                Ok(humantime::parse_duration(&d).ok())
            }
            Some(v) if v.get_ref().trim().eq_ignore_ascii_case("off") => Ok(None),
            Some(v) => self.duration_value(&v, key).map(Some),
        }
    }

    /// A listen address, or the declared default of `key`.
    pub(super) fn addr(
        &self,
        v: Option<Spanned<String>>,
        key: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(v) = v else {
            return default::<String>(key)
                .parse()
                .map_err(|_| self.error_span(None, Some(key), "bad built-in default".into()));
        };
        v.get_ref().trim().parse().or_else(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "\"{}\" is not an address to listen on; write {} (host names are not \
                     resolved; use 0.0.0.0 or [::] for all interfaces)",
                    v.get_ref(),
                    Kind::Addr.hint()
                ),
            )
        })
    }

    /// A number greater than zero, or the declared default of `key`.
    pub(super) fn positive(
        &self,
        v: Option<Spanned<i64>>,
        key: &str,
    ) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default::<usize>(key)),
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(n) if n > 0 => Ok(n),
                _ => self.err(
                    v.span(),
                    key,
                    format!(
                        "{} is not allowed; write a number greater than zero",
                        v.get_ref()
                    ),
                ),
            },
        }
    }

    /// A list of durations (`"0s"` allowed), at least one, or the declared default of `key`.
    pub(super) fn durations(
        &self,
        v: Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Result<Vec<Duration>, ConfigError> {
        let Some(v) = v else {
            return default::<Vec<String>>(key)
                .iter()
                .map(|d| {
                    humantime::parse_duration(d).map_err(|_| {
                        self.error_span(None, Some(key), "bad built-in default".into())
                    })
                })
                .collect();
        };
        if v.get_ref().is_empty() {
            return self.err(
                v.span(),
                key,
                "the list is empty; write at least one duration, e.g. [\"3s\", \"1m\"]",
            );
        }
        v.get_ref()
            .iter()
            .map(|d| {
                let parsed = humantime::parse_duration(d.get_ref().trim()).or_else(|e| {
                    self.err(
                        d.span(),
                        key,
                        format!(
                            "\"{}\" is not a duration ({e}); write {}",
                            d.get_ref(),
                            Kind::Duration.hint()
                        ),
                    )
                })?;
                if parsed.is_zero() {
                    return Ok(parsed); // "0s": at once
                }
                self.duration_in_range(parsed, d, key)
            })
            .collect()
    }

    /// `[store]`: exactly one of `path` (SQLite) and `url` (PostgreSQL).
    pub(super) fn build_store(
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
    pub(super) fn store_options(
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
    pub(super) fn build_reconcile(
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

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            let base = self.path.parent().filter(|b| !b.as_os_str().is_empty());
            match base {
                Some(base) => base.join(p),
                None => p.to_path_buf(),
            }
        }
    }

    /// Two paths that only make sense together (a certificate and its key): both, or
    /// neither; one alone is refused with `both_or_neither`, pointing at the one given.
    fn path_pair(
        &self,
        (a, a_key): (&Option<Spanned<String>>, &str),
        (b, b_key): (&Option<Spanned<String>>, &str),
        both_or_neither: &str,
    ) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
        match (a, b) {
            (Some(x), Some(y)) => Ok(Some((
                self.path_value(x, a_key)?,
                self.path_value(y, b_key)?,
            ))),
            (None, None) => Ok(None),
            (Some(v), None) | (None, Some(v)) => self.err(v.span(), a_key, both_or_neither),
        }
    }

    pub(super) fn path_value(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<PathBuf, ConfigError> {
        if v.get_ref().trim().is_empty() {
            return self.err(
                v.span(),
                key,
                "the path is empty; write the path of the file",
            );
        }
        Ok(self.resolve(v.get_ref()))
    }

    /// A client id: not empty, and nothing that cannot go into an HTTP header.
    pub(super) fn client_id(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let client_id = v.get_ref().clone();
        if client_id.trim().is_empty() {
            return self.err(
                v.span(),
                key,
                "the client id is empty; copy your client id from the Alipay/Antom dashboard \
                 (SANDBOX_… for the sandbox)",
            );
        }
        if client_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return self.err(
                v.span(),
                key,
                format!(
                    "\"{}\" contains spaces or characters that cannot go into an HTTP header; \
                     copy the client id exactly as the dashboard shows it",
                    client_id.escape_debug()
                ),
            );
        }

        Ok(client_id)
    }

    pub(super) fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let drafts = self.merchant_drafts(raw.client_id, raw.keys, raw.merchants)?;
        let outbound_listen_named = raw
            .outbound
            .as_ref()
            .is_some_and(|o| o.get_ref().listen.is_some());

        let outbound = match raw.outbound {
            None => None,
            Some(o) => Some(self.build_outbound(o.into_inner())?),
        };
        let (store, store_options) = match raw.store {
            None => (None, self.store_options(None, None)?),
            Some(s) => {
                let (location, options) = self.build_store(s)?;
                (Some(location), options)
            }
        };
        let inbound = match raw.inbound {
            None => None,
            Some(i) => Some(self.build_inbound(i, store.is_some())?),
        };
        let reconcile = match raw.reconcile {
            None => None,
            Some(r) => {
                let span = r.span();
                let built = self.build_reconcile(r)?;
                if built.is_some() {
                    let missing = [
                        ("[store]", store.is_none()),
                        ("[outbound]", outbound.is_none()),
                        ("[inbound]", inbound.is_none()),
                    ];
                    if let Some((section, _)) = missing.iter().find(|(_, absent)| *absent) {
                        return self.err(
                            span,
                            "reconcile.enabled",
                            format!(
                                "the reconciler needs {section}: it records pays in the store, \
                                 inquires through [outbound]'s gateway and delivers results to \
                                 [inbound]'s forward_to; add {section} or set enabled = false"
                            ),
                        );
                    }
                }
                built
            }
        };
        if outbound.is_none() && inbound.is_none() {
            return Err(ConfigError::from(InvalidValue {
                file: self.path.to_path_buf(),
                line: None,
                column: None,
                env_var: None,
                key: None,
                message: "neither an [outbound] nor an [inbound] section is configured, so the \
                          sidecar would do nothing; add [outbound] (with `gateway` or `region`) \
                          to sign API calls and/or [inbound] (with `forward_to`) to verify \
                          notifications"
                    .to_string(),
            }));
        }

        let (admin_listen, admin_max, admin_hosts) = match raw.admin {
            Some(a) => (a.listen, a.max_connections, a.allowed_hosts),
            None => (None, None, None),
        };
        let admin = AdminConfig {
            listen: self.addr(admin_listen, "admin.listen")?,
            max_connections: self.positive(admin_max, "admin.max_connections")?,
            allowed_hosts: self.host_names(admin_hosts, "admin.allowed_hosts")?,
        };

        let log = match raw.log {
            None => LogConfig {
                format: None,
                level: default("log.level"),
            },
            Some(l) => {
                let level = match l.level {
                    None => default("log.level"),
                    Some(level) => {
                        if let Err(e) = tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
                            return self.err(
                                level.span(),
                                "log.level",
                                format!(
                                    "\"{}\" is not a log filter ({e}); write \"error\", \"warn\", \
                                     \"info\", \"debug\" or \"trace\", or a filter such as \
                                     \"alipay_sidecar=debug,info\"",
                                    level.get_ref()
                                ),
                            );
                        }
                        level.into_inner()
                    }
                };
                LogConfig {
                    format: l.format,
                    level,
                }
            }
        };

        let s = raw.server.unwrap_or_default();
        let threads_span = s.threads.as_ref().map(Spanned::span);
        let header_bytes_span = s.max_header_bytes.as_ref().map(Spanned::span);
        let server = ServerConfig {
            threads: self.positive(s.threads, "server.threads")?,
            shutdown_grace: self.duration(s.shutdown_grace, "server.shutdown_grace")?,
            shutdown_timeout: self.duration(s.shutdown_timeout, "server.shutdown_timeout")?,
            max_header_bytes: self.positive(s.max_header_bytes, "server.max_header_bytes")?,
            header_read_timeout: self
                .duration(s.header_read_timeout, "server.header_read_timeout")?,
            idle_timeout: self.duration(s.idle_timeout, "server.idle_timeout")?,
            body_read_timeout: self.duration(s.body_read_timeout, "server.body_read_timeout")?,
        };
        let max_threads = max_threads();
        if server.threads > max_threads {
            return Err(self.error_span(
                threads_span,
                Some("server.threads"),
                format!(
                    "{} worker threads per listener is more than this machine can use (at most \
                     4 per core, {max_threads} here); each listener runs its own pool, so a few \
                     threads are enough — remove the line for the default of 2",
                    server.threads
                ),
            ));
        }
        if !(1024..=1024 * 1024).contains(&server.max_header_bytes) {
            return Err(self.error_span(
                header_bytes_span,
                Some("server.max_header_bytes"),
                format!(
                    "{} is outside 1024..=1048576; AMS requests carry a few hundred bytes of \
                     headers, so the default of 16384 is ample",
                    server.max_header_bytes
                ),
            ));
        }
        let merchants = self.resolve_merchants(drafts, outbound.as_ref(), inbound.as_ref())?;
        let mut outbound = outbound;
        if let Some(o) = outbound.as_mut() {
            // No implicit listener: the shared plain listener's default address applies only
            // to a file that names no outbound listener at all (the single-merchant quick
            // start). Once a merchant has its own, the shared one exists only if written.
            let merchant_listeners = merchants
                .iter()
                .any(|m| m.listen.is_some() || m.tls_listen.is_some());
            if merchant_listeners && !outbound_listen_named {
                o.listen = None;
            }
        }
        self.distinct_listeners(&outbound, &inbound, &admin, &merchants)?;
        self.no_self_loops(&outbound, &inbound, &admin, &merchants)?;

        Ok(Config {
            path: self.path.to_path_buf(),
            keys: merchants[0].keys.clone(),
            merchants,
            outbound,
            inbound,
            admin,
            log,
            server,
            store,
            store_options,
            reconcile,
            origins: BTreeMap::new(),
            settings: Default::default(),
        })
    }

    /// Two listeners cannot share an address (the second bind would fail at start, or on
    /// some systems both would bind and split the traffic).
    pub(super) fn distinct_listeners(
        &self,
        outbound: &Option<OutboundConfig>,
        inbound: &Option<InboundConfig>,
        admin: &AdminConfig,
        merchants: &[MerchantConfig],
    ) -> Result<(), ConfigError> {
        let seen = listener_addresses(outbound, inbound, admin, merchants);
        for (i, (addr, key)) in seen.iter().enumerate() {
            if addr.port() == 0 {
                continue; // an ephemeral port never collides
            }
            let clash = seen[..i].iter().find(|(other, _)| {
                other.port() == addr.port()
                    && (other.ip() == addr.ip()
                        || other.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            });
            if let Some((_, other_key)) = clash {
                return Err(self.error_span(
                    None,
                    Some(key.as_str()),
                    format!(
                        "{addr} is also used by `{other_key}`; every listener needs its own \
                         address (port)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A notification forwarded to one of the sidecar's own listeners (or the gateway being
    /// one of them) loops: each pass makes one more request, until every slot is taken. The
    /// `forward_to` (shared and per merchant) and the gateway (shared and per merchant) must
    /// not name a listener's address. Host names other than `localhost` are not resolved.
    pub(super) fn no_self_loops(
        &self,
        outbound: &Option<OutboundConfig>,
        inbound: &Option<InboundConfig>,
        admin: &AdminConfig,
        merchants: &[MerchantConfig],
    ) -> Result<(), ConfigError> {
        let listeners = listener_addresses(outbound, inbound, admin, merchants);
        let mut targets: Vec<(String, u16, String, &str)> = Vec::new();
        if let Some(i) = inbound {
            let f = &i.forward_to;
            targets.push((f.host.clone(), f.port, "inbound.forward_to".into(), "app"));
        }
        if let Some(o) = outbound {
            let g = &o.gateway;
            targets.push((g.host.clone(), g.port, "outbound.gateway".into(), "gateway"));
        }
        for m in merchants {
            if let Some(f) = &m.forward_to {
                targets.push((f.host.clone(), f.port, m.key("inbound.forward_to"), "app"));
            }
            if let Some(g) = &m.gateway {
                targets.push((g.host.clone(), g.port, m.key("outbound.gateway"), "gateway"));
            }
        }
        for (host, port, key, what) in &targets {
            let hit = listeners
                .iter()
                .find(|(l, _)| l.port() != 0 && l.port() == *port && reaches(host, l.ip()));
            if let Some((addr, listener_key)) = hit {
                return Err(self.error_span(
                    None,
                    Some(key.as_str()),
                    format!(
                        "{host}:{port} is the sidecar's own listener `{listener_key}` ({addr}); \
                         the {what} must be another process, or every request would come \
                         back to the sidecar (and each pass make one more, until every \
                         connection slot is taken)"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn key_version(
        &self,
        v: &str,
        span: Range<usize>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let v = v.trim();
        if v.len() > 1 && v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) {
            return self.err(
                span,
                key,
                format!(
                    "\"{}\" is not written the canonical way: key versions are plain numbers \
                     without leading zeros (write \"{}\"); \"01\" and \"1\" would otherwise be \
                     two different versions of the same key",
                    v,
                    v.trim_start_matches('0').to_string()
                        + if v.trim_start_matches('0').is_empty() {
                            "0"
                        } else {
                            ""
                        }
                ),
            );
        }
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return self.err(
                span,
                key,
                format!(
                    "\"{v}\" is not a key version; key versions are numbers (1, 2, …) as shown \
                     next to the key in the Alipay dashboard"
                ),
            );
        }
        if v.len() > MAX_KEY_VERSION_DIGITS {
            return self.err(
                span,
                key,
                format!(
                    "\"{v}\" has {} digits; key versions are small numbers (1, 2, …) as shown \
                     next to the key in the Alipay dashboard, at most {MAX_KEY_VERSION_DIGITS} \
                     digits",
                    v.len()
                ),
            );
        }
        Ok(v.to_string())
    }

    /// `[keys]` (or `[merchants.keys]`, when `at` is `merchants.N.keys`).
    pub(super) fn build_keys(
        &self,
        raw: Spanned<RawKeys>,
        at: &str,
    ) -> Result<KeysConfig, ConfigError> {
        let section = raw.span();
        let raw = raw.into_inner();
        let credential = match (&raw.merchant_private_key, &raw.api_key) {
            (Some(k), None) => CredentialFile::PrivateKey(
                self.path_value(k, &format!("{at}.merchant_private_key"))?,
            ),
            (None, Some(k)) => {
                CredentialFile::ApiKey(self.path_value(k, &format!("{at}.api_key"))?)
            }
            (Some(_), Some(k)) => {
                return self.err(
                    k.span(),
                    &format!("{at}.api_key"),
                    "`api_key` and `merchant_private_key` are both set; a merchant either signs \
                     its requests with its private key or authenticates with an API key \
                     (Authorization: Bearer), not both: remove one of the two lines",
                );
            }
            (None, None) => {
                return self.err(
                    section,
                    &format!("{at}.merchant_private_key"),
                    "missing field `merchant_private_key` — this option is required (or, for \
                     API-key mode, `api_key`); set it to a file path in double quotes, e.g. \
                     merchant_private_key = \"keys/merchant_private_key.pem\"",
                );
            }
        };
        let merchant_key_version = match raw.merchant_key_version {
            None => default("keys.merchant_key_version"),
            Some(v) => self.key_version(
                &v.get_ref().0,
                v.span(),
                &format!("{at}.merchant_key_version"),
            )?,
        };
        let span = raw.alipay_public_keys.span();
        let map = raw.alipay_public_keys.into_inner();
        if map.is_empty() {
            return self.err(
                span,
                &format!("{at}.alipay_public_keys"),
                "no Alipay public key is configured; add at least one, e.g. \
                 alipay_public_keys = { \"1\" = \"keys/alipay_public_key.pem\" } (download it from \
                 the Alipay dashboard)",
            );
        }
        let mut alipay_public_keys = BTreeMap::new();
        for (version, path) in map {
            let version_key = format!("{at}.alipay_public_keys.{}", version.get_ref());
            let v = self.key_version(version.get_ref(), version.span(), &version_key)?;
            let p = self.path_value(&path, &version_key)?;
            if alipay_public_keys.insert(v.clone(), p).is_some() {
                return self.err(
                    version.span(),
                    &version_key,
                    format!("key version {v} is listed twice; keep one entry per version"),
                );
            }
        }
        Ok(KeysConfig {
            credential,
            merchant_key_version,
            alipay_public_keys,
        })
    }

    pub(super) fn build_outbound(&self, raw: RawOutbound) -> Result<OutboundConfig, ConfigError> {
        let allow_remote_clients = raw
            .allow_remote_clients
            .unwrap_or_else(|| default("outbound.allow_remote_clients"));
        let tls = self.build_outbound_tls(&raw)?;
        let listen_span = raw.listen.as_ref().map(Spanned::span);
        let listen = match (raw.listen, &tls) {
            // only HTTPS when tls_listen is set and listen is left out
            (None, Some(_)) => None,
            (l, _) => Some(self.addr(l, "outbound.listen")?),
        };
        let tls_span = raw.tls_listen.as_ref().map(Spanned::span);
        self.local_only(listen, listen_span, "outbound.listen", allow_remote_clients)?;
        let tls_listen = tls.as_ref().map(|t| t.listen);
        self.local_only(
            tls_listen,
            tls_span,
            "outbound.tls_listen",
            allow_remote_clients,
        )?;

        let gateway = match self.gateway_or_region(raw.gateway, raw.region, "outbound")? {
            Some(g) => g,
            None => {
                return Err(self.error_span(
                    None,
                    Some("outbound.gateway"),
                    "[outbound] needs the Alipay gateway: set `gateway = \"https://open-sea-global.alipay.com\"` \
                     (a full https URL) or `region = \"na\" | \"sea\" | \"eu\"`"
                        .to_string(),
                ));
            }
        };

        let allowed_path_prefixes = match raw.allowed_path_prefixes {
            None => default("outbound.allowed_path_prefixes"),
            Some(list) => {
                let span = list.span();
                let list = list.into_inner();
                if list.is_empty() {
                    return self.err(
                        span,
                        "outbound.allowed_path_prefixes",
                        "the list is empty, so every request would be refused; list the AMS path \
                         prefixes to forward, e.g. [\"/ams/api/\", \"/ams/sandbox/api/\"], or \
                         remove the line for that default",
                    );
                }
                let mut out = Vec::new();
                for p in list {
                    if !p.get_ref().starts_with('/') {
                        return self.err(
                            p.span(),
                            "outbound.allowed_path_prefixes",
                            format!(
                                "\"{}\" does not start with '/'; write request paths only, e.g. \
                                 \"/ams/api/\" (no scheme or host)",
                                p.get_ref()
                            ),
                        );
                    }
                    out.push(p.into_inner());
                }
                out
            }
        };

        let upload_gateway = match &raw.upload_gateway {
            Some(g) => Some(self.gateway(g, "outbound.upload_gateway")?),
            None => None,
        };
        self.upload_gateway_known(
            upload_gateway.as_ref(),
            &gateway,
            &allowed_path_prefixes,
            "outbound",
        )?;

        let allowed_hosts = self.host_names(raw.allowed_hosts, "outbound.allowed_hosts")?;
        self.agent_token(raw.agent_token.as_deref(), None, "outbound.agent_token")?;

        // The SANDBOX_ / live consistency checks live in keyset::preflight, with the other
        // "classic mistake" checks.
        let sandbox_path_rewrite = raw
            .sandbox_path_rewrite
            .unwrap_or_else(|| default("outbound.sandbox_path_rewrite"));

        let ca_file = match raw.ca_file {
            None => None,
            Some(p) => Some(self.path_value(&p, "outbound.ca_file")?),
        };

        Ok(OutboundConfig {
            listen,
            tls,
            gateway,
            upload_gateway,
            allowed_path_prefixes,
            max_body_bytes: self.positive(raw.max_body_bytes, "outbound.max_body_bytes")?,
            request_time_format: raw
                .request_time_format
                .unwrap_or_else(|| default("outbound.request_time_format")),
            agent_token: raw.agent_token.filter(|t| !t.is_empty()),
            sandbox_path_rewrite,
            ca_file,
            connect_timeout: self.duration(raw.connect_timeout, "outbound.connect_timeout")?,
            request_timeout: self.duration(raw.request_timeout, "outbound.request_timeout")?,
            verify_responses: raw
                .verify_responses
                .unwrap_or_else(|| default("outbound.verify_responses")),
            max_response_time_skew: self.window(
                raw.max_response_time_skew,
                "outbound.max_response_time_skew",
            )?,
            allow_remote_clients,
            allowed_hosts,
            max_connections: self.positive(raw.max_connections, "outbound.max_connections")?,
        })
    }

    /// `tls_listen` and what goes with it: one certificate source (`tls_cert` + `tls_key`,
    /// `tls_ca_cert` + `tls_ca_key`, or neither: generated), each pair whole; `tls_ca_out`
    /// only for the generated certificate; `tls_trust_out` with any.
    pub(super) fn build_outbound_tls(
        &self,
        raw: &RawOutbound,
    ) -> Result<Option<OutboundTls>, ConfigError> {
        let Some(l) = raw.tls_listen.clone() else {
            for (v, key) in [
                (&raw.tls_cert, "outbound.tls_cert"),
                (&raw.tls_key, "outbound.tls_key"),
                (&raw.tls_ca_out, "outbound.tls_ca_out"),
                (&raw.tls_ca_cert, "outbound.tls_ca_cert"),
                (&raw.tls_ca_key, "outbound.tls_ca_key"),
                (&raw.tls_trust_out, "outbound.tls_trust_out"),
            ] {
                if let Some(v) = v {
                    return self.err(
                        v.span(),
                        key,
                        "this only applies to the HTTPS listener; set `tls_listen` (e.g. \
                         \"127.0.0.1:443\") or remove the line",
                    );
                }
            }
            return Ok(None);
        };
        let listen = self.addr(Some(l), "outbound.tls_listen")?;
        let files = self.path_pair(
            (&raw.tls_cert, "outbound.tls_cert"),
            (&raw.tls_key, "outbound.tls_key"),
            "set both `tls_cert` and `tls_key` (the certificate chain and its private key, \
             PEM), or neither to have the sidecar generate a certificate at start",
        )?;
        let ca = self.path_pair(
            (&raw.tls_ca_cert, "outbound.tls_ca_cert"),
            (&raw.tls_ca_key, "outbound.tls_ca_key"),
            "set both `tls_ca_cert` and `tls_ca_key` (the CA certificate and its private key, \
             as `alipay-sidecar local-ca --out DIR` writes them: ca.pem and ca.key), or neither",
        )?;
        let source = match (files, ca) {
            (Some(_), Some(_)) => {
                let at = raw.tls_ca_cert.as_ref().or(raw.tls_ca_key.as_ref());
                return self.err(
                    at.expect("tls_ca_cert or tls_ca_key is set").span(),
                    "outbound.tls_ca_cert",
                    "tls_cert/tls_key and tls_ca_cert/tls_ca_key are two different ways to get \
                     the HTTPS listener's certificate; set one pair. tls_cert/tls_key serve a \
                     server certificate issued elsewhere (the chain and its key); \
                     tls_ca_cert/tls_ca_key name a CA (from `alipay-sidecar local-ca`) the \
                     sidecar issues its own certificate from at every start, so apps trust the \
                     CA once",
                );
            }
            (Some((cert, key)), None) => CertSource::Files { cert, key },
            (None, Some((cert, key))) => CertSource::Ca { cert, key },
            (None, None) => CertSource::Generated,
        };
        let mut names = Vec::new();
        for n in raw.tls_names.clone().unwrap_or_default() {
            let name = n.get_ref().trim().to_ascii_lowercase();
            if name.is_empty() || name.contains(['/', ':', ' ', '@']) {
                return self.err(
                    n.span(),
                    "outbound.tls_names",
                    format!(
                        "\"{}\" is not a host name for the certificate; list bare names such as \
                         \"alipay-sidecar\"",
                        crate::exchange::echo(n.get_ref())
                    ),
                );
            }
            names.push(name);
        }
        let ca_out =
            match &raw.tls_ca_out {
                Some(p) if matches!(source, CertSource::Files { .. }) => {
                    return self.err(
                        p.span(),
                        "outbound.tls_ca_out",
                        "tls_ca_out writes the CA of the *generated* certificate; with tls_cert \
                     and tls_key configured, give apps your own CA (or `tls_trust_out`) instead \
                     and remove the line",
                    )
                }
                Some(p) if matches!(source, CertSource::Ca { .. }) => return self.err(
                    p.span(),
                    "outbound.tls_ca_out",
                    "tls_ca_out writes the CA of the *generated* certificate; with tls_ca_cert \
                     the CA apps trust is that file itself (or use `tls_trust_out` for a bundle \
                     with the system roots): remove the line",
                ),
                Some(p) => Some(self.path_value(p, "outbound.tls_ca_out")?),
                None => None,
            };
        let trust_out = match &raw.tls_trust_out {
            Some(p) => Some(self.path_value(p, "outbound.tls_trust_out")?),
            None => None,
        };
        Ok(Some(OutboundTls {
            listen,
            source,
            names,
            ca_out,
            trust_out,
        }))
    }

    /// `gateway` or `region` of the section at `at` (`outbound`, `merchants.N.outbound`):
    /// `None` when neither is set.
    pub(super) fn gateway_or_region(
        &self,
        gateway: Option<Spanned<String>>,
        region: Option<Spanned<String>>,
        at: &str,
    ) -> Result<Option<Gateway>, ConfigError> {
        Ok(Some(match (gateway, region) {
            (Some(g), Some(r)) => {
                let later = if g.span().start > r.span().start { g.span() } else { r.span() };
                return self.err(
                    later,
                    &format!("{at}.gateway"),
                    "both `gateway` and `region` are set; keep exactly one (region is a shortcut \
                     for a gateway URL)",
                );
            }
            (None, None) => return Ok(None),
            (Some(g), None) => self.gateway(&g, &format!("{at}.gateway"))?,
            (None, Some(r)) => match REGIONS.iter().find(|(name, _)| *name == r.get_ref().trim()) {
                Some((_, host)) => Gateway {
                    host: (*host).to_string(),
                    port: 443,
                },
                None => {
                    return self.err(
                        r.span(),
                        &format!("{at}.region"),
                        format!(
                            "unknown region \"{}\"; write \"na\" (North America, {}), \"sea\" \
                             (Asia, {}) or \"eu\" (Europe, {}), or set `gateway` to a full URL instead",
                            r.get_ref(),
                            REGIONS[0].1,
                            REGIONS[1].1,
                            REGIONS[2].1
                        ),
                    )
                }
            },
        }))
    }

    /// The signing-oracle rule: an outbound listener on a non-loopback address needs
    /// `allow_remote_clients = true`.
    pub(super) fn local_only(
        &self,
        addr: Option<SocketAddr>,
        span: Option<Range<usize>>,
        key: &str,
        allow_remote_clients: bool,
    ) -> Result<(), ConfigError> {
        let Some(listen) = addr else { return Ok(()) };
        if listen.ip().is_loopback() || allow_remote_clients {
            return Ok(());
        }
        Err(self.error_span(
            span,
            Some(key),
            format!(
                "{listen} is not a loopback address: anything that can reach it can get \
                 requests signed with your merchant key (a signing oracle). Listen on \
                 127.0.0.1 (the app runs next to the sidecar), or, if only trusted clients \
                 can reach this address, set `allow_remote_clients = true` in [outbound]"
            ),
        ))
    }

    /// `allowed_hosts`: bare host names, lower-cased.
    pub(super) fn host_names(
        &self,
        raw: Option<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for h in raw.unwrap_or_default() {
            let host = h.get_ref().trim().to_ascii_lowercase();
            if host.is_empty()
                || host.contains(['/', ':', ' ', '@'])
                || host.chars().any(|c| c.is_control())
            {
                return self.err(
                    h.span(),
                    key,
                    format!(
                        "{:?} is not a host name; list bare names such as \"alipay-sidecar\" (no \
                         scheme, port or path)",
                        crate::exchange::echo(h.get_ref())
                    ),
                );
            }
            out.push(host);
        }
        Ok(out)
    }

    /// An `Agent-Token` value: nothing that could break or inject a header.
    pub(super) fn agent_token(
        &self,
        token: Option<&str>,
        span: Option<Range<usize>>,
        key: &str,
    ) -> Result<(), ConfigError> {
        if token.is_some_and(|t| t.chars().any(|c| c.is_control())) {
            return Err(self.error_span(
                span,
                Some(key),
                "the agent token contains control characters (a line break?), which cannot \
                 go into an HTTP header and could inject headers; copy the token again \
                 without the trailing newline"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// `product/uploadImage` needs an upload gateway where the app may call it: refused when
    /// `upload_gateway` is unset, the route is inside `allowed_path_prefixes` and `gateway`
    /// is an Alipay host the SDKs' table does not map ([`crate::upload::derive_upload_gateway`];
    /// a non-Alipay gateway — the fake one, a proxy — takes uploads itself).
    pub(super) fn upload_gateway_known(
        &self,
        explicit: Option<&Gateway>,
        gateway: &Gateway,
        prefixes: &[String],
        at: &str,
    ) -> Result<(), ConfigError> {
        if explicit.is_some() || !crate::upload::upload_route_allowed(prefixes) {
            return Ok(());
        }
        match crate::upload::derive_upload_gateway((&gateway.host, gateway.port)) {
            Ok(_) => Ok(()),
            Err(msg) => Err(self.error_span(None, Some(&format!("{at}.gateway")), msg)),
        }
    }

    pub(super) fn gateway(&self, g: &Spanned<String>, key: &str) -> Result<Gateway, ConfigError> {
        let url = parse_url(g.get_ref()).map_err(|problem| {
            self.error_span(
                Some(g.span()),
                Some(key),
                format!(
                    "\"{}\" is not a gateway URL ({problem}); write the gateway's base URL, e.g. \
                     \"https://open-sea-global.alipay.com\", or use `region` instead",
                    g.get_ref()
                ),
            )
        })?;
        if url.scheme != "https" {
            return self.err(
                g.span(),
                key,
                format!(
                    "the gateway must be reached over https (got \"{}://\"): TLS is mandatory \
                     because requests carry payment data and Alipay's responses are trusted \
                     after verification; write https://… (for a local test gateway, run \
                     `alipay-sidecar mock-gateway --tls` and set `ca_file` to its certificate)",
                    url.scheme
                ),
            );
        }
        if !url.path.is_empty() && url.path != "/" {
            return self.err(
                g.span(),
                key,
                format!(
                    "the gateway URL has a path or query (\"{}\"); write only scheme and host \
                     (and port): the path of each call comes from the app's request",
                    crate::exchange::echo(&url.path)
                ),
            );
        }
        Ok(Gateway {
            host: url.host,
            port: url.port.unwrap_or(443),
        })
    }

    /// The app URL of `forward_to` (plain http, no query).
    pub(super) fn forward_to(
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
    pub(super) fn path_map(
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

    pub(super) fn build_inbound(
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

/// The shortest duration accepted anywhere: a timer below a millisecond fires before any
/// peer can answer.
pub(super) const MIN_DURATION: Duration = Duration::from_millis(1);

/// Longest key version (digits): Alipay numbers key versions 1, 2, …
const MAX_KEY_VERSION_DIGITS: usize = 9;

/// The longest value a duration key takes: timeouts and the shutdown grace at most a day;
/// freshness windows (`*_skew`) at most 30 days (the inbound default is 48 h: Alipay re-sends
/// for about a day, and its event log keeps 30 days); ages, schedules and retention at most
/// ten years (a longer one overflows the clock).
pub(super) fn max_duration(key: &str) -> Duration {
    const DAY: u64 = 24 * 3600;
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.ends_with("_timeout") || last == "shutdown_grace" {
        Duration::from_secs(DAY)
    } else if last.ends_with("_skew") {
        Duration::from_secs(30 * DAY)
    } else {
        Duration::from_secs(3650 * DAY)
    }
}

/// Every listener address the config names, with the key that names it (admin first, then
/// the shared outbound and inbound listeners, then each merchant's own).
fn listener_addresses(
    outbound: &Option<OutboundConfig>,
    inbound: &Option<InboundConfig>,
    admin: &AdminConfig,
    merchants: &[MerchantConfig],
) -> Vec<(SocketAddr, String)> {
    let mut out: Vec<(SocketAddr, String)> = vec![(admin.listen, "admin.listen".into())];
    if let Some(o) = outbound {
        if let Some(l) = o.listen {
            out.push((l, "outbound.listen".into()));
        }
        if let Some(t) = &o.tls {
            out.push((t.listen, "outbound.tls_listen".into()));
        }
    }
    if let Some(i) = inbound {
        out.push((i.listen, "inbound.listen".into()));
    }
    for m in merchants {
        if let Some(l) = m.listen {
            out.push((l, m.key("outbound.listen")));
        }
        if let Some(l) = m.tls_listen {
            out.push((l, m.key("outbound.tls_listen")));
        }
    }
    out
}

/// Whether `host` (a URL host: an IP literal or a name) reaches a listener bound to `ip`.
fn reaches(host: &str, ip: std::net::IpAddr) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let target: Option<std::net::IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        Some(std::net::Ipv4Addr::LOCALHOST.into())
    } else {
        host.parse().ok()
    };
    let Some(target) = target else {
        return false; // a name: not resolved here
    };
    target == ip
        || (ip.is_unspecified() && (target.is_loopback() || target.is_unspecified()))
        || (target.is_unspecified() && ip.is_loopback())
}

/// The most worker threads per listener that make sense here: 4 per core, at most 256.
fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).min(256)
}
