//! `[outbound]`: the signing proxy's listeners, its TLS termination and the Alipay gateway
//! (a URL or a region shortcut).

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx};
use crate::config::raw::{default, RawOutbound};
use crate::config::typed::*;
use crate::config::url::parse_url;

impl Ctx<'_> {
    pub(in crate::config) fn build_outbound(
        &self,
        raw: RawOutbound,
    ) -> Result<OutboundConfig, ConfigError> {
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
                    format!(
                        "[outbound] needs the Alipay gateway: set `gateway = \"https://{}\"` \
                         (a full https URL) or `region = {}`",
                        Region::Sea.host(),
                        Region::NAMES
                            .iter()
                            .map(|n| format!("\"{n}\""))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ),
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
    pub(in crate::config) fn build_outbound_tls(
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
    pub(in crate::config) fn gateway_or_region(
        &self,
        gateway: Option<Spanned<String>>,
        region: Option<Spanned<String>>,
        at: &str,
    ) -> Result<Option<Gateway>, ConfigError> {
        Ok(Some(match (gateway, region) {
            (Some(g), Some(r)) => {
                let later = if g.span().start > r.span().start {
                    g.span()
                } else {
                    r.span()
                };
                return self.err(
                    later,
                    &format!("{at}.gateway"),
                    "both `gateway` and `region` are set; keep exactly one (region is a shortcut \
                     for a gateway URL)",
                );
            }
            (None, None) => return Ok(None),
            (Some(g), None) => self.gateway(&g, &format!("{at}.gateway"))?,
            (None, Some(r)) => match Region::ALL
                .iter()
                .find(|x| x.as_str() == r.get_ref().trim())
            {
                Some(region) => Gateway {
                    host: region.host().to_string(),
                    port: 443,
                },
                None => {
                    let choices: Vec<String> = Region::ALL
                        .iter()
                        .map(|x| format!("\"{x}\" ({}, {})", x.help(), x.host()))
                        .collect();
                    return self.err(
                        r.span(),
                        &format!("{at}.region"),
                        format!(
                            "unknown region \"{}\"; write {}, or set `gateway` to a full URL instead",
                            r.get_ref(),
                            one_of(&choices),
                        ),
                    );
                }
            },
        }))
    }

    /// `product/uploadImage` needs an upload gateway where the app may call it: refused when
    /// `upload_gateway` is unset, the route is inside `allowed_path_prefixes` and `gateway`
    /// is an Alipay host the SDKs' table does not map ([`crate::upload::derive_upload_gateway`];
    /// a non-Alipay gateway — the fake one, a proxy — takes uploads itself).
    pub(in crate::config) fn upload_gateway_known(
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

    pub(in crate::config) fn gateway(
        &self,
        g: &Spanned<String>,
        key: &str,
    ) -> Result<Gateway, ConfigError> {
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
}

/// `a, b or c`.
fn one_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
