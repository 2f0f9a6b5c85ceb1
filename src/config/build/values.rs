//! Values of one option: durations and their ranges, addresses, counts, paths, the client id,
//! key versions and the agent token, each checked with an error that names its key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx};
use crate::config::raw::{default, Kind};

impl Ctx<'_> {
    /// A duration, or the declared default of `key`.
    pub(in crate::config) fn duration(
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

    pub(in crate::config) fn duration_value(
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
    pub(in crate::config) fn duration_in_range(
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
                    crate::config::raw::known(key)
                        .and_then(|d| d.opt.default)
                        .map(|d| format!(" {d}"))
                        .unwrap_or_default()
                ),
            );
        }
        Ok(d)
    }

    /// A time window (`"off"` switches it off), or the declared default of `key`.
    pub(in crate::config) fn window(
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
    pub(in crate::config) fn addr(
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
    pub(in crate::config) fn positive(
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
    pub(in crate::config) fn durations(
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

    pub(in crate::config) fn resolve(&self, p: &str) -> PathBuf {
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
    pub(super) fn path_pair(
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

    pub(in crate::config) fn path_value(
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
    pub(in crate::config) fn client_id(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<String, ConfigError> {
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

    pub(in crate::config) fn key_version(
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

    /// An `Agent-Token` value: nothing that could break or inject a header.
    pub(in crate::config) fn agent_token(
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
}

/// The shortest duration accepted anywhere: a timer below a millisecond fires before any
/// peer can answer.
pub(in crate::config) const MIN_DURATION: Duration = Duration::from_millis(1);

/// Longest key version (digits): Alipay numbers key versions 1, 2, …
const MAX_KEY_VERSION_DIGITS: usize = 9;

/// The longest value a duration key takes: timeouts and the shutdown grace at most a day;
/// freshness windows (`*_skew`) at most 30 days (the inbound default is 48 h: Alipay re-sends
/// for about a day, and its event log keeps 30 days); ages, schedules and retention at most
/// ten years (a longer one overflows the clock).
pub(in crate::config) fn max_duration(key: &str) -> Duration {
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
