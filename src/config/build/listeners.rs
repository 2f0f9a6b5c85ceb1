//! Rules across listeners: distinct addresses, no listener that forwards to itself, and the
//! signing-oracle rule (an outbound listener off loopback needs `allow_remote_clients`).

use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use crate::config::error::{ConfigError, Ctx};
use crate::config::typed::*;

impl Ctx<'_> {
    /// Two listeners cannot share an address (the second bind would fail at start, or on
    /// some systems both would bind and split the traffic).
    pub(in crate::config) fn distinct_listeners(
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
    pub(in crate::config) fn no_self_loops(
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

    /// The signing-oracle rule: an outbound listener on a non-loopback address needs
    /// `allow_remote_clients = true`.
    pub(in crate::config) fn local_only(
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
    pub(in crate::config) fn host_names(
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
