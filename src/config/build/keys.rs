//! `[keys]`: the merchant's credential file and Alipay's public keys by version.

use std::collections::BTreeMap;

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx};
use crate::config::raw::{default, RawKeys};
use crate::config::typed::*;

impl Ctx<'_> {
    /// `[keys]` (or `[merchants.keys]`, when `at` is `merchants.N.keys`).
    pub(in crate::config) fn build_keys(
        &self,
        raw: Spanned<RawKeys>,
        at: &str,
    ) -> Result<KeysConfig, ConfigError> {
        let section = raw.span();
        let raw = raw.into_inner();
        let credential = match (&raw.merchant_private_key, &raw.api_key) {
            (Some(k), None) if crate::config::pkcs11::is_pkcs11_uri(k.get_ref()) => {
                CredentialFile::Pkcs11(self.pkcs11_key(k, &raw, at)?)
            }
            (Some(k), None) => {
                self.no_pkcs11_options(&raw, at)?;
                CredentialFile::PrivateKey(
                    self.path_value(k, &format!("{at}.merchant_private_key"))?,
                )
            }
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
}
