//! Merchants: `[[merchants]]`, or the single-merchant form (top-level `client_id` and
//! `[keys]`), normalised into one list of fully resolved [`MerchantConfig`]s.
//!
//! Inheritance: a merchant's `gateway`/`region` and `ca_file` default to the shared
//! `[outbound]` values, its `forward_to` and `path_map` to the shared `[inbound]` ones; its
//! own `listen`/`tls_listen` are extra listeners besides the shared ones. The limits, timeouts
//! and policies of `[outbound]`/`[inbound]` are shared by all merchants.

use std::ops::Range;

use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::raw::{
    RawKeys, RawMerchant, RawMerchantInbound, RawMerchantOutbound, RawMerchantReconcile,
};
use super::typed::{InboundConfig, KeysConfig, MerchantConfig, OutboundConfig, DEFAULT_MERCHANT};

/// Longest merchant name: it is a metrics label and a header value.
const MAX_NAME_LEN: usize = 64;

/// A merchant as read, before the shared sections it inherits from are built.
pub(super) struct Draft {
    name: String,
    client_id: String,
    agent_token: Option<Spanned<String>>,
    keys: KeysConfig,
    outbound: Option<Spanned<RawMerchantOutbound>>,
    inbound: Option<Spanned<RawMerchantInbound>>,
    reconcile: Option<Spanned<RawMerchantReconcile>>,
    /// `""` (single-merchant form) or `merchants.N`.
    at: String,
}

fn at(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Whether `name` is usable as a merchant name: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Draft {
    /// The merchant's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// `[merchants.reconcile] backfill` when set, with its dotted key for errors.
    pub(super) fn backfill_override(&self) -> Option<(bool, String, Range<usize>)> {
        let r = self.reconcile.as_ref()?;
        let b = r.get_ref().backfill.as_ref()?;
        Some((*b.get_ref(), at(&self.at, "reconcile.backfill"), b.span()))
    }
}

impl Ctx<'_> {
    fn whole_file_error(&self, key: &str, message: String) -> ConfigError {
        self.error_span(None, Some(key), message)
    }

    /// Reads the merchants (either form), checking names, client ids and keys.
    pub(super) fn merchant_drafts(
        &self,
        client_id: Option<Spanned<String>>,
        keys: Option<Spanned<RawKeys>>,
        merchants: Option<Vec<Spanned<RawMerchant>>>,
    ) -> Result<Vec<Draft>, ConfigError> {
        let Some(list) = merchants else {
            let Some(client_id) = client_id else {
                return Err(self.whole_file_error(
                    "client_id",
                    "missing field `client_id` — this option is required; set it to a string in \
                     double quotes (or describe each merchant in a [[merchants]] table)"
                        .to_string(),
                ));
            };
            let client_id = self.client_id(&client_id, "client_id")?;
            let Some(keys) = keys else {
                return Err(self.whole_file_error(
                    "keys",
                    "missing field `keys` — this option is required; add a [keys] section with \
                     merchant_private_key and alipay_public_keys"
                        .to_string(),
                ));
            };
            return Ok(vec![Draft {
                name: DEFAULT_MERCHANT.to_string(),
                client_id,
                agent_token: None,
                keys: self.build_keys(keys, "keys")?,
                outbound: None,
                inbound: None,
                reconcile: None,
                at: String::new(),
            }]);
        };
        let mixed: Option<(Range<usize>, &str)> = client_id
            .as_ref()
            .map(|c| (c.span(), "client_id"))
            .or_else(|| keys.as_ref().map(|k| (k.span(), "keys")));
        if let Some((span, key)) = mixed {
            return self.err(
                span,
                key,
                "a top-level `client_id` or [keys] cannot be combined with [[merchants]]: with \
                 [[merchants]], every merchant has its own client_id and [merchants.keys]; move \
                 this into a [[merchants]] entry, or remove the [[merchants]] tables for a \
                 single merchant",
            );
        }
        if list.is_empty() {
            return Err(self.whole_file_error(
                "merchants",
                "the merchant list is empty; add a [[merchants]] table with name, client_id and \
                 [merchants.keys]"
                    .to_string(),
            ));
        }
        let mut out: Vec<Draft> = Vec::with_capacity(list.len());
        for (i, m) in list.into_iter().enumerate() {
            let prefix = format!("merchants.{i}");
            let m = m.into_inner();
            let name = m.name.get_ref().trim().to_string();
            if !valid_name(&name) {
                return self.err(
                    m.name.span(),
                    &at(&prefix, "name"),
                    format!(
                        "\"{}\" is not a merchant name: use 1 to {MAX_NAME_LEN} characters of \
                         a-z, 0-9, _ and - (it becomes a metrics label and the value of the \
                         X-Alipay-Sidecar-Merchant header), e.g. \"sg\"",
                        crate::exchange::echo(m.name.get_ref())
                    ),
                );
            }
            if let Some(other) = out.iter().find(|d| d.name == name) {
                return self.err(
                    m.name.span(),
                    &at(&prefix, "name"),
                    format!(
                        "the merchant name \"{name}\" is already used by `{}`; every merchant \
                         needs its own name",
                        other.at
                    ),
                );
            }
            let client_id = self.client_id(&m.client_id, &at(&prefix, "client_id"))?;
            if let Some(other) = out.iter().find(|d| d.client_id == client_id) {
                return self.err(
                    m.client_id.span(),
                    &at(&prefix, "client_id"),
                    format!(
                        "the client id \"{client_id}\" is already configured for merchant \
                         \"{}\"; a client id belongs to exactly one merchant",
                        other.name
                    ),
                );
            }
            let keys = self.build_keys(m.keys, &at(&prefix, "keys"))?;
            out.push(Draft {
                name,
                client_id,
                agent_token: m.agent_token,
                keys,
                outbound: m.outbound,
                inbound: m.inbound,
                reconcile: m.reconcile,
                at: prefix,
            });
        }
        Ok(out)
    }

    /// Resolves each merchant against the shared sections (see the module docs).
    pub(super) fn resolve_merchants(
        &self,
        drafts: Vec<Draft>,
        outbound: Option<&OutboundConfig>,
        inbound: Option<&InboundConfig>,
    ) -> Result<Vec<MerchantConfig>, ConfigError> {
        let several_form = drafts.iter().any(|d| !d.at.is_empty());
        if several_form && outbound.is_some_and(|o| o.agent_token.is_some()) {
            return Err(self.whole_file_error(
                "outbound.agent_token",
                "with [[merchants]], the Agent-Token belongs to a merchant: move `agent_token` \
                 from [outbound] into the [[merchants]] entry it was issued for"
                    .to_string(),
            ));
        }
        let mut out = Vec::with_capacity(drafts.len());
        for d in drafts {
            let key = |k: &str| at(&d.at, k);
            let agent_token = match &d.agent_token {
                Some(t) => {
                    self.agent_token(Some(t.get_ref()), Some(t.span()), &key("agent_token"))?;
                    Some(t.get_ref().clone()).filter(|t| !t.is_empty())
                }
                None => outbound.and_then(|o| o.agent_token.clone()),
            };
            let mut m = MerchantConfig {
                name: d.name,
                client_id: d.client_id,
                agent_token,
                keys: d.keys,
                gateway: outbound.map(|o| o.gateway.clone()),
                ca_file: outbound.and_then(|o| o.ca_file.clone()),
                listen: None,
                tls_listen: None,
                forward_to: inbound.map(|i| i.forward_to.clone()),
                path_map: inbound.map(|i| i.path_map.clone()).unwrap_or_default(),
                at: d.at.clone(),
            };
            if let Some(o) = d.outbound {
                let span = o.span();
                let o = o.into_inner();
                let Some(shared) = outbound else {
                    return self.err(
                        span,
                        &key("outbound"),
                        "[merchants.outbound] overrides the shared [outbound] section, which is \
                         missing; add [outbound] (the shared listener and the defaults every \
                         merchant inherits) or remove [merchants.outbound]",
                    );
                };
                let section = key("outbound");
                if let Some(g) = self.gateway_or_region(o.gateway, o.region, &section)? {
                    self.upload_gateway_known(
                        shared.upload_gateway.as_ref(),
                        &g,
                        &shared.allowed_path_prefixes,
                        &section,
                    )?;
                    m.gateway = Some(g);
                }
                if let Some(ca) = &o.ca_file {
                    m.ca_file = Some(self.path_value(ca, &key("outbound.ca_file"))?);
                }
                for (raw, slot, name) in [
                    (o.listen, &mut m.listen, "outbound.listen"),
                    (o.tls_listen, &mut m.tls_listen, "outbound.tls_listen"),
                ] {
                    let Some(raw) = raw else { continue };
                    let span = raw.span();
                    let addr = self.addr(Some(raw), &key(name))?;
                    self.local_only(
                        Some(addr),
                        Some(span),
                        &key(name),
                        shared.allow_remote_clients,
                    )?;
                    *slot = Some(addr);
                }
            }
            if let Some(i) = d.inbound {
                let span = i.span();
                let i = i.into_inner();
                if inbound.is_none() {
                    return self.err(
                        span,
                        &key("inbound"),
                        "[merchants.inbound] overrides the shared [inbound] section, which is \
                         missing; add [inbound] (the shared notification listener) or remove \
                         [merchants.inbound]",
                    );
                }
                if let Some(f) = &i.forward_to {
                    m.forward_to = Some(self.forward_to(f, &key("inbound.forward_to"))?);
                }
                if i.path_map.is_some() {
                    m.path_map = self.path_map(i.path_map, &key("inbound.path_map"))?;
                }
            }
            out.push(m);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, DEFAULT_MERCHANT};

    const SHARED: &str = "[outbound]\nregion = \"sea\"\nca_file = \"ca.pem\"\n\
        [inbound]\nforward_to = \"http://127.0.0.1:3000\"\npath_map = { \"/n\" = \"/app/n\" }\n";

    /// `fields` go into the merchant's table, `tables` after its `[merchants.keys]`.
    fn merchant(name: &str, client_id: &str, fields: &str, tables: &str) -> String {
        format!(
            "[[merchants]]\nname = \"{name}\"\nclient_id = \"{client_id}\"\n{fields}\
             [merchants.keys]\nmerchant_private_key = \"keys/{name}/m.pem\"\n\
             alipay_public_keys = {{ \"1\" = \"keys/{name}/a.pem\" }}\n{tables}"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/sc/sidecar.toml"), Vec::new())
    }

    fn two() -> String {
        format!(
            "{SHARED}{}{}",
            merchant(
                "sg",
                "2188120012345678",
                "agent_token = \"tok\"\n",
                "[merchants.outbound]\nregion = \"na\"\nlisten = \"127.0.0.1:8090\"\n"
            ),
            merchant(
                "eu-1",
                "SANDBOX_2",
                "",
                "[merchants.inbound]\nforward_to = \"http://127.0.0.1:4000/eu\"\n"
            )
        )
    }

    #[test]
    fn single_merchant_form_normalised() {
        let c = parse(&format!(
            "client_id = \"T_1\"\n[keys]\nmerchant_private_key = \"m.pem\"\n\
             alipay_public_keys = {{ \"1\" = \"a.pem\" }}\n{SHARED}"
        ))
        .unwrap();
        assert_eq!(c.merchants.len(), 1);
        let m = &c.merchants[0];
        assert_eq!(
            (m.name.as_str(), m.client_id.as_str()),
            (DEFAULT_MERCHANT, "T_1")
        );
        assert!(m.keys.credential.path().ends_with("m.pem"));
        assert_eq!(
            m.gateway.as_ref().unwrap().host,
            "open-sea-global.alipay.com"
        );
        assert_eq!(m.ca_file.as_deref(), Some(Path::new("/etc/sc/ca.pem")));
        assert_eq!(m.forward_to.as_ref().unwrap().port, 3000);
        assert_eq!(m.path_map["/n"], "/app/n");
        assert_eq!((m.listen, m.tls_listen), (None, None));
        assert_eq!(m.key("client_id"), "client_id");
    }

    #[test]
    fn a_listener_exists_only_where_the_config_names_one() {
        let single = format!(
            "client_id = \"T_1\"\n[keys]\nmerchant_private_key = \"m.pem\"\n\
             alipay_public_keys = {{ \"1\" = \"a.pem\" }}\n{SHARED}"
        );
        // the quick start: [outbound] names the shared listener, at its default address
        let c = parse(&single).unwrap();
        let shared = c.outbound.as_ref().unwrap().listen;
        assert_eq!(shared, Some("127.0.0.1:8080".parse().unwrap()));
        // a merchant with its own listener: no shared one unless written
        let c = parse(&two()).unwrap();
        assert_eq!(c.outbound.as_ref().unwrap().listen, None);
        assert!(c.outbound.as_ref().unwrap().listen_addrs().is_empty());
        let written = two().replace("[outbound]\n", "[outbound]\nlisten = \"127.0.0.1:8085\"\n");
        let c = parse(&written).unwrap();
        let shared = c.outbound.as_ref().unwrap().listen;
        assert_eq!(shared, Some("127.0.0.1:8085".parse().unwrap()));
    }

    #[test]
    fn several_merchants_inherit_and_override() {
        let c = parse(&two()).unwrap();
        let [sg, eu] = &c.merchants[..] else {
            panic!("two merchants")
        };
        assert_eq!(sg.name, "sg");
        assert_eq!(sg.agent_token.as_deref(), Some("tok"));
        assert_eq!(
            sg.gateway.as_ref().unwrap().host,
            "open-na-global.alipay.com"
        );
        assert_eq!(sg.listen, Some("127.0.0.1:8090".parse().unwrap()));
        assert_eq!(sg.forward_to.as_ref().unwrap().port, 3000, "inherited");
        assert_eq!(
            sg.keys.credential.path(),
            Path::new("/etc/sc/keys/sg/m.pem")
        );
        assert_eq!(
            eu.gateway.as_ref().unwrap().host,
            "open-sea-global.alipay.com"
        );
        assert_eq!(
            eu.forward_to.as_ref().unwrap().url(),
            "http://127.0.0.1:4000/eu"
        );
        assert_eq!(eu.agent_token, None);
        assert_eq!(
            eu.key("keys.merchant_private_key"),
            "merchants.1.keys.merchant_private_key"
        );
        // where each value is, for later errors
        assert!(matches!(
            c.origin(&eu.key("keys.merchant_private_key")),
            crate::config::Origin::File { .. }
        ));
    }

    #[test]
    fn merchant_changes_need_a_restart_but_key_changes_do_not() {
        let a = parse(&two()).unwrap();
        let b = parse(&two().replace("keys/eu-1/a.pem", "keys/eu-1/a2.pem")).unwrap();
        assert!(a != b && !a.differs_outside_keys(&b));
        let c = parse(&two().replace("region = \"na\"", "region = \"eu\"")).unwrap();
        assert!(a.differs_outside_keys(&c));
        let d = parse(&two().replace("SANDBOX_2", "SANDBOX_3")).unwrap();
        assert!(a.differs_outside_keys(&d));
    }

    fn refused(text: &str) -> String {
        parse(text).expect_err("refused").to_string()
    }

    #[test]
    fn refusals_name_line_and_key() {
        let e = refused(&two().replace("name = \"eu-1\"", "name = \"EU 1\""));
        assert!(
            e.contains("sidecar.toml:") && e.contains("merchants.1.name") && e.contains("a-z, 0-9"),
            "{e}"
        );
        let e = refused(&two().replace("name = \"eu-1\"", "name = \"sg\""));
        assert!(
            e.contains("already used") && e.contains("merchants.1.name"),
            "{e}"
        );
        let e = refused(&two().replace("SANDBOX_2", "2188120012345678"));
        assert!(e.contains("already configured for merchant \"sg\""), "{e}");
        let e = refused(&format!("client_id = \"T_1\"\n{}", two()));
        assert!(
            e.contains("sidecar.toml:1:") && e.contains("cannot be combined with [[merchants]]"),
            "{e}"
        );
        let e =
            refused(&two().replace("listen = \"127.0.0.1:8090\"", "listen = \"127.0.0.1:9090\""));
        assert!(
            e.contains("also used by `admin.listen`") && e.contains("merchants.0.outbound.listen"),
            "{e}"
        );
        let e = refused(&two().replace("listen = \"127.0.0.1:8090\"", "listen = \"0.0.0.0:8090\""));
        assert!(e.contains("signing oracle"), "{e}");
        let e = refused(&two().replace(
            "region = \"na\"",
            "region = \"na\"\ngateway = \"https://x\"",
        ));
        assert!(e.contains("exactly one"), "{e}");
        let e = refused(&two().replace("[outbound]\nregion = \"sea\"\nca_file = \"ca.pem\"\n", ""));
        assert!(
            e.contains("merchants.0.outbound") && e.contains("shared [outbound]"),
            "{e}"
        );
        let e = refused(&two().replace(
            "region = \"sea\"\n",
            "region = \"sea\"\nagent_token = \"t\"\n",
        ));
        assert!(
            e.contains("outbound.agent_token") && e.contains("belongs to a merchant"),
            "{e}"
        );
        let e = refused(&two().replace("[merchants.outbound]", "[merchants.outbund]"));
        assert!(e.contains("unknown field") && e.contains("outbund"), "{e}");
        let e = refused(&two().replace("agent_token = \"tok\"", "agent_tokn = \"tok\""));
        assert!(e.contains("did you mean `agent_token`"), "{e}");
        let e = refused(&format!("merchants = []\n{SHARED}"));
        assert!(e.contains("merchant list is empty"), "{e}");
    }
}
