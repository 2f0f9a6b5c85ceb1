//! The file as written: the serde schema with spans, and the one declaration of every option.
//!
//! Each option is declared exactly once, in an [`options!`] block: its name, the raw type the
//! parser reads, its [`Kind`], its default (a TOML literal) and whether a change takes effect
//! on a key reload or needs a restart. From that declaration come the `Raw*` struct serde
//! fills (with `deny_unknown_fields`), the known-key list behind "did you mean", the
//! `ALIPAY_SIDECAR_<SECTION>_<KEY>` environment names, the defaults the typed build uses, and
//! the settings compared for equality and for "restart needed" ([`super::settings`]). So an
//! option cannot be added to the file format without also being known to all of those.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::typed::{Acknowledge, Duplicates, InboundMode, LogFormat, Region, RequestTimeFormat};
use super::ENV_PREFIX;

/// What kind of value an option takes: the hint in error messages, how an environment value
/// is read, and how values are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Path,
    Url,
    Duration,
    Addr,
    Bool,
    Int,
    KeyVersion,
    Choice(&'static [&'static str]),
    Table,
    List,
}

impl Kind {
    /// Whether an environment variable can set it (tables and lists cannot).
    pub(super) fn scalar(self) -> bool {
        !matches!(self, Kind::Table | Kind::List)
    }

    /// How to write a value of this kind, for error messages.
    pub(super) fn hint(self) -> String {
        match self {
            Kind::Str => "a string in double quotes".into(),
            Kind::Path => "a file path in double quotes (relative paths are resolved against the config file's folder)".into(),
            Kind::Url => "a URL in double quotes".into(),
            Kind::Duration => "a duration string such as \"5s\", \"500ms\" or \"10m\"".into(),
            Kind::Addr => "an IP address and port in double quotes, e.g. \"127.0.0.1:8080\"".into(),
            Kind::Bool => "true or false".into(),
            Kind::Int => "a whole number without quotes".into(),
            Kind::KeyVersion => "a key version: a number such as 1, or a string of digits".into(),
            Kind::Choice(values) => format!(
                "one of {}",
                values.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ")
            ),
            Kind::Table => "a table".into(),
            Kind::List => "a list of strings, e.g. [\"/ams/api/\"]".into(),
        }
    }
}

/// Whether a changed value takes effect without a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Apply {
    /// Re-read by every key reload.
    Reload,
    /// Read once at start; a change needs a restart.
    Restart,
}

/// One option as declared in its section's [`options!`] block.
#[derive(Debug)]
pub(super) struct Opt {
    pub(super) key: &'static str,
    pub(super) kind: Kind,
    /// TOML literal of the default (`"256"`, `"\"5s\""`), `None` when there is none.
    pub(super) default: Option<&'static str>,
    pub(super) apply: Apply,
}

/// One option with the section it lives in: the unit of [`declared`].
#[derive(Debug)]
pub(super) struct Declared {
    /// Dotted section path (`""` for the top level, `outbound`, `merchants.keys`).
    pub(super) section: String,
    /// Whether the section sits in an array of tables (`[[merchants]]`): such options have
    /// no environment override (which element would it be?).
    pub(super) in_array: bool,
    pub(super) opt: &'static Opt,
}

impl Declared {
    pub(super) fn key(&self) -> &'static str {
        self.opt.key
    }

    pub(super) fn kind(&self) -> Kind {
        self.opt.kind
    }

    /// `outbound.gateway`, `client_id`.
    pub(super) fn dotted(&self) -> String {
        if self.section.is_empty() {
            self.opt.key.to_string()
        } else {
            format!("{}.{}", self.section, self.opt.key)
        }
    }

    /// `ALIPAY_SIDECAR_OUTBOUND_GATEWAY`; `None` for options that cannot be overridden
    /// (tables, lists, options of an array of tables).
    pub(super) fn env_var(&self) -> Option<String> {
        (self.opt.kind.scalar() && !self.in_array).then(|| {
            format!(
                "{ENV_PREFIX}{}",
                self.dotted().replace('.', "_").to_ascii_uppercase()
            )
        })
    }
}

/// A raw section: its own options and the sections nested in it.
pub(super) trait Section {
    /// The options of this section, in file order.
    const OPTIONS: &'static [Opt];
    /// Appends this section's options, then its nested sections', under `prefix`.
    fn walk(prefix: &str, in_array: bool, out: &mut Vec<Declared>);
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Declares a section: the raw serde struct and its options, from one list.
///
/// `name: RawType = Kind, default, Apply;` per option; then optionally `tables { name: RawType
/// => Section }` for nested sections and `arrays { name: RawType => Section }` for arrays of
/// tables.
macro_rules! options {
    (
        $(#[$meta:meta])*
        struct $raw:ident {
            $( $field:ident : $ty:ty = $kind:expr, $default:expr, $apply:ident; )*
        }
        $( tables { $( $tfield:ident : $tty:ty => $tsec:ty ),* $(,)? } )?
        $( arrays { $( $afield:ident : $aty:ty => $asec:ty ),* $(,)? } )?
    ) => {
        $(#[$meta])*
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $raw {
            $( pub(super) $field: $ty, )*
            $( $( pub(super) $tfield: $tty, )* )?
            $( $( pub(super) $afield: $aty, )* )?
        }

        impl Section for $raw {
            const OPTIONS: &'static [Opt] = &[
                $( Opt { key: stringify!($field), kind: $kind, default: $default, apply: Apply::$apply }, )*
            ];
            #[allow(unused_variables)]
            fn walk(prefix: &str, in_array: bool, out: &mut Vec<Declared>) {
                for opt in Self::OPTIONS {
                    out.push(Declared { section: prefix.to_string(), in_array, opt });
                }
                $( $( <$tsec>::walk(&join(prefix, stringify!($tfield)), in_array, out); )* )?
                $( $( <$asec>::walk(&join(prefix, stringify!($afield)), true, out); )* )?
            }
        }
    };
}

options! {
    /// The whole file.
    struct RawConfig {
        client_id: Option<Spanned<String>> = Kind::Str, None, Restart;
    }
    tables {
        keys: Option<Spanned<RawKeys>> => RawKeys,
        outbound: Option<Spanned<RawOutbound>> => RawOutbound,
        inbound: Option<Spanned<RawInbound>> => RawInbound,
        admin: Option<RawAdmin> => RawAdmin,
        log: Option<RawLog> => RawLog,
        server: Option<RawServer> => RawServer,
        store: Option<Spanned<RawStore>> => RawStore,
        reconcile: Option<Spanned<RawReconcile>> => RawReconcile,
    }
    arrays {
        merchants: Option<Vec<Spanned<RawMerchant>>> => RawMerchant,
    }
}

options! {
    /// `[[merchants]]`: one merchant of several (instead of the top-level `client_id` and
    /// `[keys]`).
    struct RawMerchant {
        name: Spanned<String> = Kind::Str, None, Restart;
        client_id: Spanned<String> = Kind::Str, None, Restart;
        agent_token: Option<Spanned<String>> = Kind::Str, None, Restart;
    }
    tables {
        keys: Spanned<RawKeys> => RawKeys,
        outbound: Option<Spanned<RawMerchantOutbound>> => RawMerchantOutbound,
        inbound: Option<Spanned<RawMerchantInbound>> => RawMerchantInbound,
        reconcile: Option<Spanned<RawMerchantReconcile>> => RawMerchantReconcile,
    }
}

options! {
    /// `[merchants.outbound]`: what a merchant may override of the shared `[outbound]`.
    #[derive(Default)]
    struct RawMerchantOutbound {
        gateway: Option<Spanned<String>> = Kind::Url, None, Restart;
        region: Option<Spanned<String>> = Kind::Choice(Region::NAMES), None, Restart;
        ca_file: Option<Spanned<String>> = Kind::Path, None, Restart;
        listen: Option<Spanned<String>> = Kind::Addr, None, Restart;
        tls_listen: Option<Spanned<String>> = Kind::Addr, None, Restart;
    }
}

options! {
    /// `[merchants.inbound]`: what a merchant may override of the shared `[inbound]`.
    #[derive(Default)]
    struct RawMerchantInbound {
        forward_to: Option<Spanned<String>> = Kind::Url, None, Restart;
        path_map: Option<BTreeMap<Spanned<String>, Spanned<String>>> = Kind::Table, None, Restart;
    }
}

options! {
    /// `[merchants.reconcile]`: what a merchant may override of the shared `[reconcile]`
    /// (unset: the shared value).
    #[derive(Default)]
    struct RawMerchantReconcile {
        backfill: Option<Spanned<bool>> = Kind::Bool, None, Restart;
    }
}

options! {
    /// `[keys]`: the only section a reload applies. Exactly one of `merchant_private_key`
    /// (RSA signing) and `api_key` (API-key mode: `Authorization: Bearer`).
    struct RawKeys {
        merchant_private_key: Option<Spanned<String>> = Kind::Path, None, Reload;
        api_key: Option<Spanned<String>> = Kind::Path, None, Reload;
        merchant_key_version: Option<Spanned<RawKeyVersion>> = Kind::KeyVersion, Some("\"1\""), Reload;
        alipay_public_keys: Spanned<BTreeMap<Spanned<String>, Spanned<String>>> = Kind::Table, None, Reload;
        // A `pkcs11:` merchant_private_key (src/config/pkcs11.rs, docs/hsm.md): the module,
        // the PIN file, and the signing budget (max_concurrent_signs: the token's session
        // limit, or 8, when unset).
        pkcs11_module: Option<Spanned<String>> = Kind::Path, None, Reload;
        pkcs11_pin_file: Option<Spanned<String>> = Kind::Path, None, Reload;
        max_concurrent_signs: Option<Spanned<i64>> = Kind::Int, None, Restart;
        sign_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"2s\""), Reload;
    }
}

options! {
    /// `[outbound]`.
    struct RawOutbound {
        // the default applies only where no other outbound listener is named (see build_outbound)
        listen: Option<Spanned<String>> = Kind::Addr, Some("\"127.0.0.1:8080\""), Restart;
        tls_listen: Option<Spanned<String>> = Kind::Addr, None, Restart;
        tls_cert: Option<Spanned<String>> = Kind::Path, None, Restart;
        tls_key: Option<Spanned<String>> = Kind::Path, None, Restart;
        tls_names: Option<Vec<Spanned<String>>> = Kind::List, None, Restart;
        tls_ca_out: Option<Spanned<String>> = Kind::Path, None, Restart;
        tls_ca_cert: Option<Spanned<String>> = Kind::Path, None, Restart;
        tls_ca_key: Option<Spanned<String>> = Kind::Path, None, Restart;
        tls_trust_out: Option<Spanned<String>> = Kind::Path, None, Restart;
        gateway: Option<Spanned<String>> = Kind::Url, None, Restart;
        region: Option<Spanned<String>> = Kind::Choice(Region::NAMES), None, Restart;
        upload_gateway: Option<Spanned<String>> = Kind::Url, None, Restart;
        allowed_path_prefixes: Option<Spanned<Vec<Spanned<String>>>> = Kind::List, Some("[\"/ams/api/\", \"/ams/sandbox/api/\"]"), Restart;
        max_body_bytes: Option<Spanned<i64>> = Kind::Int, Some("1048576"), Restart;
        request_time_format: Option<RequestTimeFormat> = Kind::Choice(RequestTimeFormat::NAMES), Some("\"epoch_millis\""), Restart;
        agent_token: Option<String> = Kind::Str, None, Restart;
        sandbox_path_rewrite: Option<bool> = Kind::Bool, Some("false"), Restart;
        ca_file: Option<Spanned<String>> = Kind::Path, None, Restart;
        connect_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"5s\""), Restart;
        request_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"15s\""), Restart;
        verify_responses: Option<bool> = Kind::Bool, Some("true"), Restart;
        max_response_time_skew: Option<Spanned<String>> = Kind::Duration, Some("\"10m\""), Restart;
        allow_remote_clients: Option<bool> = Kind::Bool, Some("false"), Restart;
        allowed_hosts: Option<Vec<Spanned<String>>> = Kind::List, Some("[]"), Restart;
        max_connections: Option<Spanned<i64>> = Kind::Int, Some("256"), Restart;
    }
}

options! {
    /// `[inbound]`.
    struct RawInbound {
        listen: Option<Spanned<String>> = Kind::Addr, Some("\"0.0.0.0:8081\""), Restart;
        forward_to: Spanned<String> = Kind::Url, None, Restart;
        path_map: Option<BTreeMap<Spanned<String>, Spanned<String>>> = Kind::Table, Some("{}"), Restart;
        max_body_bytes: Option<Spanned<i64>> = Kind::Int, Some("65536"), Restart;
        unverified_body_budget_bytes: Option<Spanned<i64>> = Kind::Int, Some("8388608"), Restart;
        forward_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"10s\""), Restart;
        max_request_time_skew: Option<Spanned<String>> = Kind::Duration, Some("\"48h\""), Restart;
        replay_window_entries: Option<Spanned<i64>> = Kind::Int, Some("16384"), Restart;
        acknowledge: Option<Spanned<Acknowledge>> = Kind::Choice(Acknowledge::NAMES), Some("\"app\""), Restart;
        sign_acknowledgements: Option<bool> = Kind::Bool, Some("false"), Restart;
        mode: Option<InboundMode> = Kind::Choice(InboundMode::NAMES), Some("\"enforce\""), Restart;
        max_connections: Option<Spanned<i64>> = Kind::Int, Some("1024"), Restart;
        duplicates: Option<Spanned<Duplicates>> = Kind::Choice(Duplicates::NAMES), None, Restart;
        delivery_schedule: Option<Spanned<Vec<Spanned<String>>>> = Kind::List, Some(DEFAULT_DELIVERY_SCHEDULE), Restart;
        max_delivery_age: Option<Spanned<String>> = Kind::Duration, Some("\"7d\""), Restart;
    }
}

/// Gaps between deliveries of a stored notification to the app (store-and-forward): close to
/// Alipay's own re-send schedule (0 s, 2 min, 10 min, 10 min, 1 h, 2 h, 6 h, 15 h), the last
/// gap repeating until `max_delivery_age`.
const DEFAULT_DELIVERY_SCHEDULE: &str =
    "[\"0s\", \"2m\", \"10m\", \"10m\", \"1h\", \"2h\", \"6h\", \"15h\"]";

options! {
    /// `[store]`: the state store (notification journal, pay records); exactly one of `path`
    /// (embedded SQLite) and `url` (PostgreSQL, shared by several replicas).
    struct RawStore {
        path: Option<Spanned<String>> = Kind::Path, None, Restart;
        url: Option<Spanned<String>> = Kind::Str, None, Restart;
        timeout: Option<Spanned<String>> = Kind::Duration, Some("\"2s\""), Restart;
        retention: Option<Spanned<String>> = Kind::Duration, Some("\"30d\""), Restart;
    }
}

options! {
    /// `[reconcile]`: the missed-notification reconciler (inquiryPayment, then cancel).
    #[derive(Default)]
    struct RawReconcile {
        enabled: Option<bool> = Kind::Bool, Some("false"), Restart;
        reconcile_after: Option<Spanned<String>> = Kind::Duration, Some("\"60s\""), Restart;
        inquiry_schedule: Option<Spanned<Vec<Spanned<String>>>> = Kind::List, Some("[\"3s\", \"5s\", \"10s\", \"30s\", \"1m\", \"5m\"]"), Restart;
        default_close_after: Option<Spanned<String>> = Kind::Duration, Some("\"30m\""), Restart;
        cancel_on_expiry: Option<bool> = Kind::Bool, Some("false"), Restart;
        deliver_path: Option<Spanned<String>> = Kind::Str, None, Restart;
        backfill: Option<bool> = Kind::Bool, Some("false"), Restart;
        backfill_interval: Option<Spanned<String>> = Kind::Duration, Some("\"5m\""), Restart;
        backfill_window: Option<Spanned<String>> = Kind::Duration, Some("\"24h\""), Restart;
    }
}

options! {
    /// `[admin]`.
    #[derive(Default)]
    struct RawAdmin {
        listen: Option<Spanned<String>> = Kind::Addr, Some("\"127.0.0.1:9090\""), Restart;
        max_connections: Option<Spanned<i64>> = Kind::Int, Some("64"), Restart;
        allowed_hosts: Option<Vec<Spanned<String>>> = Kind::List, Some("[]"), Restart;
    }
}

options! {
    /// `[log]`.
    #[derive(Default)]
    struct RawLog {
        format: Option<LogFormat> = Kind::Choice(LogFormat::NAMES), None, Restart;
        level: Option<Spanned<String>> = Kind::Str, Some("\"info\""), Restart;
    }
}

options! {
    /// `[server]`.
    #[derive(Default)]
    struct RawServer {
        threads: Option<Spanned<i64>> = Kind::Int, Some("2"), Restart;
        shutdown_grace: Option<Spanned<String>> = Kind::Duration, Some("\"5s\""), Restart;
        shutdown_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"30s\""), Restart;
        max_header_bytes: Option<Spanned<i64>> = Kind::Int, Some("16384"), Restart;
        header_read_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"10s\""), Restart;
        idle_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"5s\""), Restart;
        body_read_timeout: Option<Spanned<String>> = Kind::Duration, Some("\"30s\""), Restart;
    }
}

/// Every declared option, sections in file order.
pub(super) fn declared() -> &'static [Declared] {
    static ALL: OnceLock<Vec<Declared>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Vec::new();
        RawConfig::walk("", false, &mut out);
        out
    })
}

/// The declaration of the dotted `key`; numeric segments (array elements, as in
/// `merchants.0.name`) are skipped.
pub(super) fn known(dotted: &str) -> Option<&'static Declared> {
    let plain = strip_indices(dotted);
    declared().iter().find(|d| d.dotted() == plain)
}

/// `merchants.0.keys.x` → `merchants.keys.x`.
pub(super) fn strip_indices(dotted: &str) -> String {
    dotted
        .split('.')
        .filter(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(".")
}

/// The declared default of `key`, read as `T`. Defaults are static TOML literals, checked by
/// a unit test, so a failure here is a bug in the declaration, not in the user's file.
pub(super) fn default<T: DeserializeOwned>(dotted: &str) -> T {
    #[derive(Deserialize)]
    struct Wrap<T> {
        v: T,
    }
    let literal = known(dotted)
        .and_then(|d| d.opt.default)
        .unwrap_or_else(|| panic!("no default declared for {dotted}"));
    toml::from_str::<Wrap<T>>(&format!("v = {literal}"))
        .unwrap_or_else(|e| panic!("bad default declared for {dotted}: {e}"))
        .v
}

/// Every dotted key the schema knows (`client_id`, `outbound.gateway`, …), so tests and docs
/// can check that the example config covers all of them, and "did you mean" can suggest one.
pub fn known_keys() -> Vec<String> {
    declared().iter().map(Declared::dotted).collect()
}

/// `merchant_key_version = 1` or `= "1"`.
pub(super) struct RawKeyVersion(pub(super) String);

impl<'de> Deserialize<'de> for RawKeyVersion {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawKeyVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key version: an integer such as 1, or a string of digits")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKeyVersion, E> {
                Ok(RawKeyVersion(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawKeyVersion, E> {
                Ok(RawKeyVersion(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKeyVersion, E> {
                Ok(RawKeyVersion(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_as_its_kind() {
        for d in declared() {
            let Some(literal) = d.opt.default else {
                continue;
            };
            let value: toml::Value = default(&d.dotted());
            let ok = match d.kind() {
                Kind::Int => value.is_integer(),
                Kind::Bool => value.is_bool(),
                Kind::List => value.is_array(),
                Kind::Table => value.is_table(),
                Kind::Choice(values) => value.as_str().is_some_and(|v| values.contains(&v)),
                _ => value.is_str(),
            };
            assert!(
                ok,
                "{}: default {literal} is not {:?}",
                d.dotted(),
                d.kind()
            );
        }
    }

    /// An explicit default must pass the same range check as any other value: writing
    /// the documented default may never be refused.
    #[test]
    fn every_duration_default_is_within_its_keys_range() {
        for d in declared()
            .iter()
            .filter(|d| matches!(d.kind(), Kind::Duration))
        {
            let Some(literal) = d.opt.default else {
                continue;
            };
            let text: String = default(&d.dotted());
            let value = humantime::parse_duration(&text)
                .unwrap_or_else(|e| panic!("{}: default {literal}: {e}", d.dotted()));
            let max = super::super::build::max_duration(&d.dotted());
            assert!(
                (super::super::build::MIN_DURATION..=max).contains(&value),
                "{}: default {literal} is outside the range its key accepts (max {max:?})",
                d.dotted()
            );
        }
    }

    #[test]
    fn keys_are_unique_and_env_names_too() {
        let keys = known_keys();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len());
        let mut vars: Vec<String> = declared().iter().filter_map(Declared::env_var).collect();
        let n = vars.len();
        vars.sort();
        vars.dedup();
        assert_eq!(vars.len(), n);
        assert!(vars.contains(&"ALIPAY_SIDECAR_OUTBOUND_GATEWAY".to_string()));
        assert!(vars.contains(&"ALIPAY_SIDECAR_CLIENT_ID".to_string()));
    }
}
