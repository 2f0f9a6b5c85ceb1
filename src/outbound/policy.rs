//! The outbound policy (pure): the settings every merchant's requests are checked against,
//! and the checks of a request's target path and `Host`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, OutboundConfig, RequestTimeFormat};
use crate::exchange;
use crate::handler::BodyPolicy;

/// The outbound policy settings (from `[outbound]` and `[server]`), shared by every merchant.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// Request paths the proxy forwards (whole segments).
    pub allowed_path_prefixes: Vec<String>,
    /// Names besides loopback and `localhost` accepted in `Host` on a loopback listener.
    pub allowed_hosts: Vec<String>,
    /// Every outbound listener is on loopback: then `Host` must name this sidecar.
    pub loopback_only: bool,
    /// Rewrite `/ams/api/` to `/ams/sandbox/api/` for `SANDBOX_` client ids.
    pub sandbox_path_rewrite: bool,
    /// Form of the `Request-Time` header the sidecar writes.
    pub request_time_format: RequestTimeFormat,
    /// Verify Alipay's response signatures before the app sees them.
    pub verify_responses: bool,
    /// Refuse a signed answer whose `response-time` is further than this from now.
    pub max_response_time_skew: Option<Duration>,
    /// Whole-exchange timeout to the gateway.
    pub request_timeout: Duration,
    /// How request bodies are read.
    pub body: BodyPolicy,
}

impl OutboundPolicy {
    /// The policy of `[outbound]` in `config` for a handler serving on `listeners`.
    pub fn from_config(config: &Config, cfg: &OutboundConfig, listeners: &[SocketAddr]) -> Self {
        Self {
            allowed_path_prefixes: cfg.allowed_path_prefixes.clone(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            loopback_only: listeners.iter().all(|a| a.ip().is_loopback()),
            sandbox_path_rewrite: cfg.sandbox_path_rewrite,
            request_time_format: cfg.request_time_format,
            verify_responses: cfg.verify_responses,
            max_response_time_skew: cfg.max_response_time_skew,
            request_timeout: cfg.request_timeout,
            body: BodyPolicy {
                max_bytes: cfg.max_body_bytes,
                limit_key: "[outbound] max_body_bytes",
                timeout: config.server.body_read_timeout,
            },
        }
    }
}

/// The outbound target check (pure): the path (the part before `?`) must not hold a dot
/// segment in any spelling (`.`, `..`, `%2e`, `.%2E`, …), an encoded slash or backslash
/// (`%2f`, `%5c`), a raw backslash, a `;` path parameter or a `#`, and must lie inside one
/// of `prefixes` by whole segments (`/a/b` allows `/a/b` and `/a/b/c`, never `/a/bc`). The
/// bytes that are signed and sent stay exactly those received; this only decides.
pub fn target_allowed(target: &str, prefixes: &[String]) -> Result<(), String> {
    let path = target.split('?').next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    let problem = if path.contains('\\') || lower.contains("%5c") {
        Some("a backslash")
    } else if lower.contains("%2f") {
        Some("an encoded slash (%2F)")
    } else if path.contains(';') {
        Some("a ';' path parameter")
    } else if path.contains('#') {
        Some("a '#'")
    } else if lower
        .split('/')
        .any(|seg| matches!(seg.replace("%2e", ".").as_str(), "." | ".."))
    {
        Some("a dot segment (. or .., also percent-encoded)")
    } else {
        None
    };
    let inside = |p: &String| {
        path.starts_with(p.as_str())
            && (p.ends_with('/') || path.len() == p.len() || path[p.len()..].starts_with('/'))
    };
    match problem {
        None if prefixes.iter().any(inside) => Ok(()),
        None => Err(format!(
            "path \"{}\" is not allowed; allowed prefixes (whole path segments): {}",
            exchange::echo(path),
            prefixes.join(", ")
        )),
        Some(what) => Err(format!(
            "path \"{}\" holds {what}, which the gateway could resolve outside the allowed \
             prefixes; send the plain path",
            exchange::echo(path)
        )),
    }
}

/// Live and sandbox API paths: a `SANDBOX_` client id is answered only on the sandbox ones.
const LIVE_API: &str = "/ams/api/";
const SANDBOX_API: &str = "/ams/sandbox/api/";

/// A refused path that only the other environment would take, told in the client id's terms:
/// "your client id is a sandbox one: use /ams/sandbox/api/…" with the exact path to send
/// (the refusal alone, "not allowed", sent newcomers looking at the policy instead of at
/// their SDK's sandbox setting, issue 20). `None` when the client id is not the cause.
pub fn environment_hint(client_id: &str, target: &str, prefixes: &[String]) -> Option<String> {
    let path = target.split('?').next().unwrap_or("");
    let sandbox = client_id.starts_with("SANDBOX_");
    let (kind, from, to, rule) = if sandbox && path.starts_with(LIVE_API) {
        (
            "a sandbox one",
            LIVE_API,
            SANDBOX_API,
            "Alipay answers SANDBOX_ client ids only on /ams/sandbox/api/…",
        )
    } else if !sandbox && path.starts_with(SANDBOX_API) {
        (
            "a live one (it does not start with SANDBOX_)",
            SANDBOX_API,
            LIVE_API,
            "Alipay rejects sandbox paths for live client ids",
        )
    } else {
        return None;
    };
    let suggested = target.replacen(from, to, 1);
    // a path refused for its spelling (dot segments, encoded slashes) is not about the
    // environment
    target_allowed(&suggested, &[to.to_string()]).ok()?;
    let allow = if target_allowed(&suggested, prefixes).is_ok() {
        String::new()
    } else {
        format!(", and allow \"{to}\" in [outbound] allowed_path_prefixes")
    };
    Some(format!(
        "Your client id \"{}\" is {kind}: use {}{allow} ({rule})",
        exchange::echo(client_id),
        exchange::echo(&suggested)
    ))
}

/// The host of a `Host` header value, without its port and IPv6 brackets.
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    }
}

/// Whether a `Host` header value names this sidecar on a loopback listener: a loopback IP
/// (`127.0.0.1`, `[::1]`, with or without port), `localhost`, or an `allowed_hosts` entry.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || allowed.contains(&name) {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}
