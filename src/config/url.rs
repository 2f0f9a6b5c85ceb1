//! URL parsing for `outbound.gateway` and `inbound.forward_to`.

pub(super) struct Url {
    pub(super) scheme: String,
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) path: String,
}

/// `scheme://host[:port][/path]` parsed with `http::Uri` (no user info), host lowercased and
/// IPv6 brackets removed (they are added back where a `Host` header is written).
pub(super) fn parse_url(s: &str) -> Result<Url, String> {
    if s.contains('#') {
        return Err("a #fragment has no meaning here; remove it".into());
    }
    if s.chars().any(|c| c.is_control()) {
        return Err("it contains control characters".into());
    }
    let uri: http::Uri = s.trim().parse().map_err(|e| format!("{e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| "missing scheme, e.g. https://".to_string())?
        .to_ascii_lowercase();
    let authority = uri.authority().ok_or_else(|| "no host".to_string())?;
    if authority.as_str().contains('@') {
        return Err("user names or passwords in the URL are not supported".into());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    // `http` reads an out-of-range port as no port at all (then 443 would be used silently)
    let raw_port = authority
        .as_str()
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.contains(']'));
    let port = match raw_port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "port {} is not a port number (1-65535)",
                    crate::exchange::echo(p)
                ))
            }
        },
    };
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    Ok(Url {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        path: path.to_string(),
    })
}
