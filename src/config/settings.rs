//! Equality and "restart needed", derived from the option declarations.
//!
//! After environment overrides, every declared option of the document is read into a
//! normalised text form (durations, addresses and integers parsed, paths resolved, defaults
//! filled in), keyed by its dotted name. Two configurations are equal when these settings are
//! equal; a reload needs a restart when a setting declared [`Apply::Restart`] differs. Because
//! the walk goes over [`declared`], an option added to a section's declaration is compared
//! without any further code.

use std::collections::BTreeMap;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::raw::{declared, Apply, Declared, Kind};
use super::url::parse_url;

/// Dotted key (array elements by index: `merchants.0.name`) → normalised value (`None`: not
/// set and no default).
pub(super) type Settings = BTreeMap<String, Option<String>>;

/// Reads every declared option of `root` (the document after environment overrides).
pub(super) fn collect(root: &DeTable<'_>, config_path: &Path) -> Settings {
    let mut out = Settings::new();
    for d in declared() {
        for (prefix, table) in tables_at(root, &d.section, d.in_array) {
            let dotted = if prefix.is_empty() {
                d.key().to_string()
            } else {
                format!("{prefix}.{}", d.key())
            };
            let value = table
                .and_then(|t| t.get(d.key()))
                .map(|v| normalise(d.kind(), v.get_ref(), config_path))
                .or_else(|| default_of(d, config_path));
            out.insert(dotted, value);
        }
    }
    out
}

/// Whether `a` and `b` differ in an option that only takes effect after a restart.
pub(super) fn restart_needed(a: &Settings, b: &Settings) -> bool {
    a.keys()
        .chain(b.keys())
        .filter(|k| super::raw::known(k).is_none_or(|d| d.opt.apply == Apply::Restart))
        .any(|k| a.get(k) != b.get(k))
}

fn default_of(d: &Declared, config_path: &Path) -> Option<String> {
    let literal = d.opt.default?;
    let value = DeValue::parse(literal).ok()?;
    Some(normalise(d.kind(), value.get_ref(), config_path))
}

/// The tables at dotted `section` (`""` is the root), with their concrete dotted prefix; an
/// array of tables yields one entry per element (`merchants.0`, `merchants.1`), an absent
/// section one `None` (so its defaults still count).
fn tables_at<'d, 'i>(
    root: &'d DeTable<'i>,
    section: &str,
    in_array: bool,
) -> Vec<(String, Option<&'d DeTable<'i>>)> {
    let mut current: Vec<(String, Option<&DeTable<'i>>)> = vec![(String::new(), Some(root))];
    if section.is_empty() {
        return current;
    }
    for part in section.split('.') {
        let mut next = Vec::new();
        for (prefix, table) in current {
            let name = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}.{part}")
            };
            match table.and_then(|t| t.get(part)).map(|v| v.get_ref()) {
                Some(DeValue::Table(t)) => next.push((name, Some(t))),
                Some(DeValue::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref() {
                            next.push((format!("{name}.{i}"), Some(t)));
                        }
                    }
                }
                // a missing section; but a missing array of tables has no element at all
                None if !in_array || name.contains(|c: char| c.is_ascii_digit()) => {
                    next.push((name, None))
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// One value in the form compared: equal meaning, equal text.
fn normalise(kind: Kind, value: &DeValue<'_>, config_path: &Path) -> String {
    match value {
        DeValue::String(s) => normalise_str(kind, s, config_path),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map_or_else(|_| i.as_str().to_string(), |n| n.to_string()),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| normalise(Kind::Str, v.get_ref(), config_path))
                .collect();
            format!("{items:?}")
        }
        DeValue::Table(t) => {
            let mut entries: Vec<(String, String)> = t
                .iter()
                .map(|(k, v)| {
                    (
                        k.get_ref().to_string(),
                        normalise(Kind::Str, v.get_ref(), config_path),
                    )
                })
                .collect();
            entries.sort();
            format!("{entries:?}")
        }
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Datetime(d) => d.to_string(),
    }
}

fn normalise_str(kind: Kind, s: &str, config_path: &Path) -> String {
    let t = s.trim();
    match kind {
        Kind::Duration => {
            humantime::parse_duration(t).map_or_else(|_| s.to_string(), |d| format!("{d:?}"))
        }
        Kind::Addr => t
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| s.to_string(), |a| a.to_string()),
        Kind::Path => {
            let p = Path::new(s);
            match config_path.parent() {
                Some(base) if !p.is_absolute() => base.join(p).display().to_string(),
                _ => s.to_string(),
            }
        }
        Kind::Url => parse_url(s).map_or_else(
            |_| s.to_string(),
            |u| format!("{}://{}:{:?}{}", u.scheme, u.host, u.port, u.path),
        ),
        Kind::KeyVersion | Kind::Choice(_) => t.to_string(),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::Ctx;
    use toml::Spanned;

    const BASE: &str = "client_id = \"SANDBOX_1\"\n[keys]\nmerchant_private_key = \"m.pem\"\n\
        alipay_public_keys = { \"1\" = \"a.pem\" }\n[outbound]\nregion = \"sea\"\n";

    /// A value of `kind` that differs from the declared default.
    fn sample(d: &Declared) -> String {
        match d.kind() {
            Kind::Str => "sample".into(),
            Kind::Path => "sample.pem".into(),
            Kind::Url => "https://sample.example".into(),
            Kind::Duration => "7s".into(),
            Kind::Addr => "127.0.0.1:7".into(),
            Kind::Bool if d.opt.default == Some("true") => "false".into(),
            Kind::Bool => "true".into(),
            Kind::Int | Kind::KeyVersion => "7".into(),
            Kind::Choice(values) => values
                .iter()
                .find(|v| d.opt.default != Some(&format!("\"{v}\"")) && **v != "sea")
                .unwrap()
                .to_string(),
            Kind::Table => "{ \"7\" = \"/x\" }".into(),
            Kind::List => "[\"/x/\"]".into(),
        }
    }

    /// Every declared option (outside arrays of tables) can be set by its environment
    /// variable or, for tables and lists, in the file; the value lands under its declared key,
    /// and the "restart needed" check reports the change exactly when the declaration says
    /// so. An option added to a declaration is covered without touching this test.
    #[test]
    fn every_declared_option_round_trips_through_env_and_restart_check() {
        let path = Path::new("/etc/sc/sidecar.toml");
        let base = collect(DeTable::parse(BASE).unwrap().get_ref(), path);
        let mut checked = 0;
        for d in declared().iter().filter(|d| !d.in_array) {
            let value = sample(d);
            let mut ctx = Ctx {
                text: BASE,
                path,
                env_base: BASE.len() + 1,
                env_applied: Vec::new(),
            };
            let env: Vec<(String, String)> = d
                .env_var()
                .map(|var| (var, value.clone()))
                .into_iter()
                .collect();
            let mut root = DeTable::parse(BASE).unwrap().into_inner();
            match d.env_var() {
                Some(_) => ctx.apply_env(&mut root, &env).unwrap(),
                None => {
                    // tables and lists: written in the file
                    let table = if d.section.is_empty() {
                        &mut root
                    } else {
                        if !root.contains_key(d.section.as_str()) {
                            root.insert(
                                Spanned::new(0..0, d.section.clone().into()),
                                Spanned::new(0..0, DeValue::Table(DeTable::new())),
                            );
                        }
                        match root.get_mut(d.section.as_str()).unwrap().get_mut() {
                            DeValue::Table(t) => t,
                            _ => unreachable!(),
                        }
                    };
                    table.insert(
                        Spanned::new(0..0, d.key().into()),
                        DeValue::parse(&value).unwrap(),
                    );
                }
            }
            let changed = collect(&root, path);
            assert_ne!(
                base.get(&d.dotted()),
                changed.get(&d.dotted()),
                "{} did not arrive at its key",
                d.dotted()
            );
            assert!(changed.get(&d.dotted()).is_some_and(Option::is_some));
            assert_eq!(
                restart_needed(&base, &changed),
                d.opt.apply == Apply::Restart,
                "restart check for {}",
                d.dotted()
            );
            checked += 1;
        }
        assert!(checked >= 40, "{checked}");
    }

    #[test]
    fn equal_meaning_is_equal() {
        let path = Path::new("/etc/sc/sidecar.toml");
        let a = collect(DeTable::parse(BASE).unwrap().get_ref(), path);
        let b = format!("{BASE}connect_timeout = \"5000ms\"\nmax_connections = 256\n");
        let b = collect(DeTable::parse(&b).unwrap().get_ref(), path);
        assert_eq!(a, b);
    }
}
