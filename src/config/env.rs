//! Environment overrides: `ALIPAY_SIDECAR_<SECTION>_<KEY>` sets one declared option.

use std::borrow::Cow;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{ConfigError, Ctx, InvalidValue};
use super::raw::{declared, Kind};
use super::ENV_PREFIX;

impl<'a> Ctx<'a> {
    /// Applies `ALIPAY_SIDECAR_*` overrides to the parsed document.
    pub(super) fn apply_env<'t>(
        &mut self,
        root: &mut DeTable<'t>,
        env: &'t [(String, String)],
    ) -> Result<(), ConfigError> {
        let mut set_by_env = Vec::new();
        for (name, value) in env {
            let non_scalar = declared()
                .iter()
                .filter(|k| !k.kind().scalar() && !k.in_array)
                .find(|k| {
                    format!(
                        "{ENV_PREFIX}{}",
                        k.dotted().replace('.', "_").to_ascii_uppercase()
                    ) == *name
                });
            if let Some(known) = non_scalar {
                return Err(ConfigError::from(InvalidValue {
                    file: self.path.to_path_buf(),
                    line: None,
                    column: None,
                    env_var: Some(name.clone()),
                    key: Some(known.dotted()),
                    message: format!(
                        "`{}` is {} and cannot be set from the environment; set it in the config \
                         file and unset the variable",
                        known.dotted(),
                        known.kind().hint()
                    ),
                }));
            }
            let Some(known) = declared()
                .iter()
                .find(|k| k.env_var().as_deref() == Some(name.as_str()))
            else {
                let suggestion = declared()
                    .iter()
                    .filter_map(|k| k.env_var())
                    .map(|v| (strsim::damerau_levenshtein(&v, name), v))
                    .min()
                    .filter(|(d, _)| *d <= 4)
                    .map(|(_, v)| format!(" Did you mean {v}?"))
                    .unwrap_or_default();
                return Err(ConfigError::from(InvalidValue {
                    file: self.path.to_path_buf(),
                    line: None,
                    column: None,
                    env_var: Some(name.clone()),
                    key: None,
                    message: format!(
                        "no config option is called that.{suggestion} Variables starting with \
                         {ENV_PREFIX} override one config value each \
                         ({ENV_PREFIX}<SECTION>_<KEY>, e.g. ALIPAY_SIDECAR_OUTBOUND_GATEWAY); \
                         unset it or fix the name"
                    ),
                }));
            };
            let index = self.env_applied.len();
            self.env_applied.push((name.clone(), known.dotted()));
            let span = self.env_base + index..self.env_base + index + 1;
            let parsed = match known.kind() {
                Kind::Int | Kind::Bool => DeValue::parse(value)
                    .ok()
                    .map(Spanned::into_inner)
                    .filter(|v| v.is_integer() || v.is_bool()),
                _ => None,
            };
            let new_value = parsed.unwrap_or(DeValue::String(Cow::Borrowed(value.as_str())));
            let table = if known.section.is_empty() {
                &mut *root
            } else {
                if !root.contains_key(known.section.as_str()) {
                    root.insert(
                        Spanned::new(span.clone(), Cow::Owned(known.section.clone())),
                        Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
                    );
                }
                match root.get_mut(known.section.as_str()).map(Spanned::get_mut) {
                    Some(DeValue::Table(t)) => t,
                    _ => {
                        return Err(ConfigError::from(InvalidValue {
                            file: self.path.to_path_buf(),
                            line: None,
                            column: None,
                            env_var: Some(name.clone()),
                            key: Some(known.section.clone()),
                            message: format!(
                                "the file defines `{}` as a value, not a section, so {name} has \
                                 nothing to override; write it as a [{}] section",
                                known.section, known.section
                            ),
                        }))
                    }
                }
            };
            table.insert(
                Spanned::new(span.clone(), Cow::Borrowed(known.key())),
                Spanned::new(span, new_value),
            );
            set_by_env.push(known.dotted());
        }
        // gateway / region are alternatives: one set by env replaces the other from the file.
        let gw = set_by_env.iter().any(|k| k == "outbound.gateway");
        let region = set_by_env.iter().any(|k| k == "outbound.region");
        if gw != region {
            if let Some(DeValue::Table(t)) = root.get_mut("outbound").map(Spanned::get_mut) {
                t.remove(if gw { "region" } else { "gateway" });
            }
        }
        Ok(())
    }
}
