//! Error rendering: where a value is (file:line:col, or the environment variable that set it),
//! which key it is, and what to do — for the parser's own errors, for serde's and for checks
//! made after parsing.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::raw::{declared, known, strip_indices};

/// Where a configuration value came from, so later errors (e.g. a key file that cannot be
/// read) can point at the line or variable to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of the config file.
    File {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// An environment variable overriding the file.
    Env {
        /// The config file that was overridden.
        path: PathBuf,
        /// The variable name.
        var: String,
    },
    /// Not written anywhere: the built-in default (or unknown).
    Default {
        /// The config file.
        path: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { path, var } => {
                write!(
                    f,
                    "environment variable {var} (overriding {})",
                    path.display()
                )
            }
            Origin::Default { path } => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration that cannot be used, with where the problem is and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file itself could not be read.
    #[error("cannot read config file {}: {source}; {advice}", path.display())]
    Read {
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
        /// What to do: [`read_advice`].
        advice: String,
    },
    /// A value (or the TOML syntax) is wrong.
    #[error("{0}")]
    Invalid(Box<InvalidValue>),
}

/// Where a bad value is and what to do about it (boxed in [`ConfigError::Invalid`]).
#[derive(Debug)]
pub struct InvalidValue {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when the problem is in the file and the parser knows where.
    pub line: Option<usize>,
    /// 1-based column, with `line`.
    pub column: Option<usize>,
    /// The environment variable that supplied the bad value, if any.
    pub env_var: Option<String>,
    /// Dotted key (`outbound.gateway`), when known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl From<InvalidValue> for ConfigError {
    fn from(v: InvalidValue) -> Self {
        ConfigError::Invalid(Box::new(v))
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_invalid(
            &self.file,
            self.line,
            self.column,
            self.env_var.as_deref(),
            self.key.as_deref(),
            &self.message,
        ))
    }
}

fn render_invalid(
    file: &Path,
    line: Option<usize>,
    column: Option<usize>,
    env_var: Option<&str>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut out = match (env_var, line, column) {
        (Some(var), _, _) => format!(
            "{}: environment variable {var} (overriding the file)",
            file.display()
        ),
        (None, Some(line), Some(column)) => format!("{}:{line}:{column}", file.display()),
        (None, Some(line), None) => format!("{}:{line}", file.display()),
        (None, None, _) => file.display().to_string(),
    };
    if let Some(key) = key {
        out.push_str(&format!(": `{key}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

/// What to do about a config file that cannot be read at `path`. The default path
/// ([`super::DEFAULT_CONFIG_PATH`], where the container image expects the file) is named as
/// such: a newcomer who ran `check-config` without `--config` never typed it, so "check the
/// path given with --config" would send them looking for a flag they did not give (issue 20).
/// `config_env` is the value of `ALIPAY_SIDECAR_CONFIG`, if set.
pub(super) fn read_advice(
    path: &Path,
    kind: std::io::ErrorKind,
    config_env: Option<&std::ffi::OsStr>,
) -> String {
    let named_by_env = config_env
        .map(|v| std::path::absolute(Path::new(v)).unwrap_or_else(|_| PathBuf::from(v)))
        .is_some_and(|v| v == path);
    if path == Path::new(super::DEFAULT_CONFIG_PATH) && !named_by_env {
        let missing = if kind == std::io::ErrorKind::NotFound {
            "there is no file there"
        } else {
            "it cannot be read"
        };
        return format!(
            "{} is the default config path (the container image's), used when neither \
             --config nor ALIPAY_SIDECAR_CONFIG names a file, and {missing}. Pass your file \
             with --config FILE, or make one: `alipay-sidecar keygen --out keys/`, then \
             `cp config/sidecar.example.toml sidecar.toml`, edit it (README, \"Running it for \
             real\") and run `alipay-sidecar check-config --config sidecar.toml`; \
             `alipay-sidecar demo` runs without any config",
            path.display()
        );
    }
    if named_by_env {
        "check the path in ALIPAY_SIDECAR_CONFIG (it names this file; --config would win over \
         it)"
        .to_string()
    } else {
        "check the path given with --config (or ALIPAY_SIDECAR_CONFIG)".to_string()
    }
}

/// Where the documented example config is, in the repository and in the container image.
pub(super) const EXAMPLE_CONFIG_HINT: &str = "config/sidecar.example.toml, or \
     /usr/share/doc/alipay-sidecar/sidecar.example.toml in the container image";

/// Parsing context: spans → locations (file:line:col or the environment variable).
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    /// Spans at or after this offset are sentinels for environment overrides.
    pub(super) env_base: usize,
    /// (variable, dotted key) of each applied override, indexed by `span.start - env_base`.
    pub(super) env_applied: Vec<(String, String)>,
}

impl<'a> Ctx<'a> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count() + 1)
            .unwrap_or(1);
        (line, column)
    }

    pub(super) fn env_var_of(&self, span: &Range<usize>) -> Option<&str> {
        if span.start >= self.env_base {
            self.env_applied
                .get(span.start - self.env_base)
                .map(|(var, _)| var.as_str())
        } else {
            None
        }
    }

    pub(super) fn origin_of(&self, span: &Range<usize>) -> Origin {
        if let Some(var) = self.env_var_of(span) {
            return Origin::Env {
                path: self.path.to_path_buf(),
                var: var.to_string(),
            };
        }
        Origin::File {
            path: self.path.to_path_buf(),
            line: self.line_col(span.start).0,
        }
    }

    pub(super) fn error_span(
        &self,
        span: Option<Range<usize>>,
        key: Option<&str>,
        message: String,
    ) -> ConfigError {
        let (line, column, env_var) = match span {
            Some(span) => match self.env_var_of(&span) {
                Some(var) => (None, None, Some(var.to_string())),
                None => {
                    let (l, c) = self.line_col(span.start);
                    (Some(l), Some(c), None)
                }
            },
            None => (None, None, None),
        };
        ConfigError::from(InvalidValue {
            file: self.path.to_path_buf(),
            line,
            column,
            env_var,
            key: key.map(str::to_string),
            message,
        })
    }

    /// An error about a value at `span` (file line or env variable) for `key`.
    pub(super) fn err<T>(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(self.error_span(Some(span), Some(key), message.into()))
    }

    pub(super) fn serde_error(
        &self,
        e: &toml::de::Error,
        root: &DeTable<'_>,
        doc_span: &Range<usize>,
    ) -> ConfigError {
        let message = e.message().to_string();
        let span = e
            .span()
            .filter(|s| s != doc_span && !(s.start == 0 && s.end == 0));
        let mut key = span.as_ref().and_then(|s| {
            if s.start >= self.env_base {
                // An environment override: the variable names the key.
                return self
                    .env_applied
                    .get(s.start - self.env_base)
                    .map(|(_, dotted)| dotted.clone());
            }
            let mut path = Vec::new();
            find_key(root, s.start, &mut path).then(|| path.join("."))
        });
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            key = Some(match key {
                Some(table) => format!("{table}.{field}"),
                None => field.to_string(),
            });
        }
        let advice = if message.starts_with("unknown field") {
            let suggestion = message
                .split('`')
                .nth(1)
                .and_then(|field| did_you_mean(key.as_deref(), field))
                .unwrap_or_default();
            format!(" —{suggestion} remove it or fix the spelling (every option is listed and explained in {EXAMPLE_CONFIG_HINT})")
        } else if message.starts_with("missing field") {
            match key.as_deref().and_then(known) {
                Some(k) => format!(" — this option is required; set it to {}", k.kind().hint()),
                None => " — this option is required".to_string(),
            }
        } else {
            match key.as_deref().and_then(known) {
                Some(k) => format!(" — write {}", k.kind().hint()),
                None => String::new(),
            }
        };
        let span = span.or_else(|| e.span().filter(|s| s.start != 0 || s.end != 0));
        self.error_span(span, key.as_deref(), format!("{message}{advice}"))
    }

    /// Dotted key → origin of every value in the document.
    pub(super) fn collect_origins(&self, root: &DeTable<'_>) -> BTreeMap<String, Origin> {
        fn walk(
            ctx: &Ctx<'_>,
            table: &DeTable<'_>,
            prefix: &str,
            out: &mut BTreeMap<String, Origin>,
        ) {
            for (key, value) in table.iter() {
                let dotted = if prefix.is_empty() {
                    key.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", key.get_ref())
                };
                match value.get_ref() {
                    DeValue::Table(t) => walk(ctx, t, &dotted, out),
                    // `[[merchants]]`: element i is `merchants.i`
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if let DeValue::Table(t) = item.get_ref() {
                                let element = format!("{dotted}.{i}");
                                walk(ctx, t, &element, out);
                                out.insert(element, ctx.origin_of(&item.span()));
                            }
                        }
                    }
                    _ => {}
                }
                out.insert(dotted, ctx.origin_of(&value.span()));
            }
        }
        let mut out = BTreeMap::new();
        walk(self, root, "", &mut out);
        out
    }
}

/// Finds the dotted key whose key or value span contains `pos`.
fn find_key(table: &DeTable<'_>, pos: usize, path: &mut Vec<String>) -> bool {
    let contains = |s: Range<usize>| s.start <= pos && (pos < s.end || s.start == s.end);
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if contains(key.span()) {
            return true;
        }
        match value.get_ref() {
            DeValue::Table(t) if find_key(t, pos, path) => return true,
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        path.push(i.to_string());
                        if find_key(t, pos, path) {
                            return true;
                        }
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        if contains(value.span()) {
            return true;
        }
        path.pop();
    }
    false
}

/// " Did you mean `x`?" for an unknown key `field` found at dotted path `at` (its table is
/// everything before the last dot): the closest known key by Damerau-Levenshtein distance
/// (`strsim`, already in the tree through clap), preferring the same table and naming the
/// right table when the key belongs elsewhere.
fn did_you_mean(at: Option<&str>, field: &str) -> Option<String> {
    let at = at.map(strip_indices);
    let table = at
        .as_deref()
        .and_then(|dotted| dotted.rsplit_once('.'))
        .map_or("", |(table, _)| table);
    let (distance, best) = declared()
        .iter()
        .map(|k| {
            let d = strsim::damerau_levenshtein(field, k.key());
            (d + usize::from(k.section != table), k)
        })
        // on a tie, a key of a related table (`merchants.keys` → `merchants`) wins
        .min_by_key(|(d, k)| (*d, k.section.split('.').next() != table.split('.').next()))?;
    let limit = (field.chars().count() / 3).max(2);
    // A misspelt section (`[outbond]`) is an unknown field of the table above it: compare it
    // with the sections that table holds, too; a section wins a tie over a key.
    if let Some(section) = sections_in(table)
        .map(|s| (strsim::damerau_levenshtein(field, s.name), s))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= distance && *d <= limit)
        .map(|(_, s)| s)
    {
        let header = if section.array {
            format!("[[{}]]", section.dotted)
        } else {
            format!("[{}]", section.dotted)
        };
        return Some(format!(" did you mean `{header}`? Otherwise"));
    }
    if distance > limit {
        return None;
    }
    Some(if best.section == table {
        format!(" did you mean `{}`? Otherwise", best.key())
    } else if best.section.is_empty() {
        format!(
            " did you mean `{}` (at the top of the file, before any [section])? Otherwise",
            best.key()
        )
    } else {
        format!(
            " did you mean `{}` in the [{}] section? Otherwise",
            best.key(),
            best.section
        )
    })
}

/// A section the schema knows, as a candidate for "did you mean".
struct KnownSection {
    /// Its last name (`outbound`).
    name: &'static str,
    /// Its dotted path without array indices (`merchants.outbound`).
    dotted: &'static str,
    /// Written `[[name]]` (an array of tables).
    array: bool,
}

/// The sections directly inside `table` (`""`: the top level), from the declared options.
fn sections_in(table: &str) -> impl Iterator<Item = KnownSection> {
    let mut out: Vec<KnownSection> = Vec::new();
    for k in declared().iter().filter(|k| !k.section.is_empty()) {
        let dotted: &'static str = k.section.as_str();
        let (parent, name) = dotted.rsplit_once('.').unwrap_or(("", dotted));
        if parent != table || out.iter().any(|s| s.dotted == dotted) {
            continue;
        }
        // an array's own options are `in_array`; so are those of the sections inside it
        // (`merchants.keys`), which are written `[merchants.keys]`
        let parent_in_array = declared().iter().any(|d| d.section == parent && d.in_array);
        out.push(KnownSection {
            name,
            dotted,
            array: k.in_array && !parent_in_array,
        });
    }
    out.into_iter()
}
