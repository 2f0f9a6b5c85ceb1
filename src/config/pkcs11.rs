//! `merchant_private_key = "pkcs11:…"`: the merchant key kept in a PKCS#11 token (HSM, cloud
//! KMS module, SoftHSM), its RFC 7512 URI and the `[keys]` options that go with it.
//!
//! Why here and pure: the URI is configuration; reaching the token is `crate::signer`'s
//! business (at start, reload and `check-config`), so a config build never loads a module.

use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::raw::RawKeys;
use super::typed::Pkcs11Key;

/// Whether a `merchant_private_key` value names a token key rather than a file.
pub fn is_pkcs11_uri(value: &str) -> bool {
    value
        .trim_start()
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"))
}

/// The attributes of an RFC 7512 URI this sidecar uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParsedUri {
    pub token: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub pin_source: Option<String>,
    pub module_path: Option<String>,
}

/// Parses `pkcs11:path-attrs?query-attrs` (RFC 7512 §2.3). Unknown attributes are refused
/// (a typo such as `objet=` must not silently select another key); `pin-value` is refused
/// because a PIN never belongs in the config.
pub fn parse_uri(uri: &str) -> Result<ParsedUri, String> {
    let uri = uri.trim();
    if !is_pkcs11_uri(uri) {
        return Err("a PKCS#11 URI starts with `pkcs11:`".into());
    }
    let rest = &uri[7..];
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut out = ParsedUri::default();
    let attrs = path
        .split(';')
        .map(|a| (a, true))
        .chain(query.split('&').map(|a| (a, false)));
    for (attr, in_path) in attrs {
        if attr.is_empty() {
            continue;
        }
        let (name, value) = attr
            .split_once('=')
            .ok_or_else(|| format!("`{attr}` is not an attribute (write name=value)"))?;
        let bytes = pct_decode(value).ok_or_else(|| {
            format!(
                "`{attr}`: a `%` must be followed by two hex digits (RFC 7512 percent-encoding)"
            )
        })?;
        let text = || {
            String::from_utf8(bytes.clone())
                .map_err(|_| format!("`{name}` is not UTF-8 text after percent-decoding"))
        };
        match (name, in_path) {
            ("token", true) => out.token = Some(text()?),
            ("object", true) => out.object = Some(text()?),
            ("id", true) => out.id = Some(bytes),
            ("type", true) => {
                let t = text()?;
                if t != "private" {
                    return Err(format!(
                        "`type={t}`: the sidecar signs with the private key; write \
                         `type=private` or leave it out"
                    ));
                }
            }
            (
                "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id",
                true,
            ) => {}
            ("pin-source", false) => out.pin_source = Some(text()?),
            ("module-path", false) => out.module_path = Some(text()?),
            ("module-name", false) => {}
            ("pin-value", false) => {
                return Err(
                    "`pin-value` puts the PIN in the configuration; put the PIN in a \
                            file readable only by the sidecar and name it with \
                            `pkcs11_pin_file` (or `?pin-source=file:/path`)"
                        .into(),
                )
            }
            (other, _) => {
                return Err(format!(
                    "`{other}` is not an RFC 7512 attribute the sidecar knows (path: token, \
                     object, id, type; query: pin-source, module-path)"
                ))
            }
        }
    }
    if out.object.is_none() && out.id.is_none() {
        return Err("the URI names no key: add `object=<label>` (or `id=%01…`)".into());
    }
    Ok(out)
}

fn pct_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Ctx<'_> {
    /// `[keys]` with a `pkcs11:` merchant key: the URI and the token options.
    pub(super) fn pkcs11_key(
        &self,
        uri: &Spanned<String>,
        raw: &RawKeys,
        at: &str,
    ) -> Result<Pkcs11Key, ConfigError> {
        let key = format!("{at}.merchant_private_key");
        let parsed = parse_uri(uri.get_ref())
            .or_else(|e| self.err(uri.span(), &key, format!("not a usable PKCS#11 URI: {e}")))?;
        let module = match (&raw.pkcs11_module, &parsed.module_path) {
            (Some(m), _) => self.path_value(m, &format!("{at}.pkcs11_module"))?,
            (None, Some(m)) => self.resolve(m),
            (None, None) => {
                return self.err(
                    uri.span(),
                    &format!("{at}.pkcs11_module"),
                    "the merchant key is in a PKCS#11 token, but no module is configured: set \
                     `pkcs11_module` to the vendor's library, e.g. \
                     pkcs11_module = \"/usr/lib/softhsm/libsofthsm2.so\"",
                )
            }
        };
        let pin_source = parsed.pin_source.as_deref().map(|p| {
            p.strip_prefix("file:")
                .unwrap_or(p)
                .trim_start_matches("//")
        });
        let pin_file = match (&raw.pkcs11_pin_file, pin_source) {
            (Some(p), None) => self.path_value(p, &format!("{at}.pkcs11_pin_file"))?,
            (None, Some(p)) if !p.is_empty() => self.resolve(p),
            (Some(p), Some(_)) => {
                return self.err(
                    p.span(),
                    &format!("{at}.pkcs11_pin_file"),
                    "the PIN file is named twice (`pkcs11_pin_file` and the URI's \
                     `pin-source`); keep one",
                )
            }
            _ => {
                return self.err(
                    uri.span(),
                    &format!("{at}.pkcs11_pin_file"),
                    "the token needs the user PIN: set `pkcs11_pin_file` to a file holding it \
                     (mode 0600; never the PIN itself in the config), or add \
                     `?pin-source=file:/path` to the URI",
                )
            }
        };
        let max_concurrent_signs = match &raw.max_concurrent_signs {
            None => None,
            Some(v) => Some(self.positive(Some(v.clone()), &format!("{at}.max_concurrent_signs"))?),
        };
        let sign_timeout = match &raw.sign_timeout {
            None => self.duration(None, "keys.sign_timeout")?,
            Some(v) => self.duration_value(v, &format!("{at}.sign_timeout"))?,
        };
        Ok(Pkcs11Key {
            uri: uri.get_ref().trim().to_string(),
            token: parsed.token,
            object: parsed.object,
            id: parsed.id,
            module,
            pin_file,
            max_concurrent_signs,
            sign_timeout,
        })
    }

    /// The token options are refused next to a key file: they would silently do nothing.
    pub(super) fn no_pkcs11_options(&self, raw: &RawKeys, at: &str) -> Result<(), ConfigError> {
        let set = [
            (
                "pkcs11_module",
                raw.pkcs11_module.as_ref().map(Spanned::span),
            ),
            (
                "pkcs11_pin_file",
                raw.pkcs11_pin_file.as_ref().map(Spanned::span),
            ),
            (
                "max_concurrent_signs",
                raw.max_concurrent_signs.as_ref().map(Spanned::span),
            ),
            ("sign_timeout", raw.sign_timeout.as_ref().map(Spanned::span)),
        ];
        if let Some((name, Some(span))) = set.into_iter().find(|(_, s)| s.is_some()) {
            return self.err(
                span,
                &format!("{at}.{name}"),
                format!(
                    "`{name}` applies to a merchant key kept in a PKCS#11 token, but \
                     `merchant_private_key` is not a `pkcs11:` URI: remove the line, or point \
                     `merchant_private_key` at the token key"
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issues_uri() {
        let u = parse_uri("pkcs11:token=alipay;object=merchant-2026;type=private").unwrap();
        assert_eq!(u.token.as_deref(), Some("alipay"));
        assert_eq!(u.object.as_deref(), Some("merchant-2026"));
        assert_eq!(u.pin_source, None);
    }

    #[test]
    fn percent_encoding_id_and_query() {
        let u = parse_uri("pkcs11:token=my%20token;id=%01%02?pin-source=file:/run/pin").unwrap();
        assert_eq!(u.token.as_deref(), Some("my token"));
        assert_eq!(u.id, Some(vec![1, 2]));
        assert_eq!(u.pin_source.as_deref(), Some("file:/run/pin"));
    }

    #[test]
    fn refuses_pin_value_unknown_attributes_and_no_key() {
        assert!(parse_uri("pkcs11:object=k?pin-value=1234")
            .unwrap_err()
            .contains("PIN"));
        assert!(parse_uri("pkcs11:objet=k").unwrap_err().contains("objet"));
        assert!(parse_uri("pkcs11:token=t")
            .unwrap_err()
            .contains("names no key"));
        assert!(parse_uri("pkcs11:object=k;type=public").is_err());
        assert!(parse_uri("pkcs11:object=%zz").is_err());
    }
}
