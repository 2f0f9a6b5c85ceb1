//! One HTTP client (ureq) for well-formed requests.

use std::net::SocketAddr;
use std::time::Duration;

use test_support::Response;

/// The tests' HTTP client: no redirects, no added `User-Agent`/`Accept`, no pooled
/// connections (each request its own connection, as a listener limit test expects), any
/// status is an answer, not an error.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .accept(ureq::config::AutoHeaderValue::None)
            .allow_non_standard_methods(true)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent()
    })
}

/// Sends one well-formed request (over a new connection) and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req
        .body(body.to_vec())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut resp = agent().run(req).map_err(ureq::Error::into_io)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .map_err(ureq::Error::into_io)?;
    Ok(Response {
        status,
        headers,
        body,
        complete: true,
    })
}
