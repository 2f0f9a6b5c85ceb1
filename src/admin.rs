//! The admin listener (separate from traffic): `GET /metrics`, `GET /healthz`,
//! `GET /readyz`, `POST /admin/reload`; and the `healthcheck` subcommand that container
//! runtimes call (distroless images have no curl).
//!
//! Like the outbound listener, the admin listener refuses what a web page could send it: a
//! request with `Origin`, or with `Sec-Fetch-Site` other than `none` (a browser sends `none`
//! only for an address typed by the user), is refused `403 SIDECAR_BROWSER_REQUEST_REFUSED`
//! (a cross-site form could otherwise `POST /admin/reload`); and a `Host` that is neither an
//! IP literal, `localhost` nor in `[admin] allowed_hosts` is refused `403
//! SIDECAR_HOST_NOT_ALLOWED` (a page whose DNS name re-binds to the sidecar's address would
//! otherwise read `/metrics` as same-origin). IP literals pass on every address: kubelet
//! probes and Prometheus scrape by pod IP, and DNS rebinding needs a name.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use crate::config::Config;
use crate::envelope::SidecarError;
use crate::limits::Limited;
use crate::reload::Reloader;
use crate::state::SidecarState;
use crate::wiring::Wiring;

/// The `admin` listener of `[admin]`: serves `state`, reloads through `reloader`; its
/// readiness checks that every traffic listener (name, address actually bound) accepts
/// connections.
pub fn service(
    config: &Config,
    state: &Arc<SidecarState>,
    reloader: Arc<Reloader>,
    traffic: Vec<(&'static str, SocketAddr)>,
    wiring: &Wiring,
) -> Box<dyn ServiceWithDependents> {
    let app =
        Admin::new(state.clone(), reloader, traffic).with_hosts(config.admin.allowed_hosts.clone());
    let mut admin = Service::new(
        "admin".to_string(),
        Limited::new(
            HttpServer::new_app(app),
            "admin",
            wiring.limits(config.admin.max_connections),
        ),
    );
    wiring.listen("admin", &mut admin);
    Box::new(admin)
}

/// The admin HTTP app.
pub struct Admin {
    state: Arc<SidecarState>,
    reloader: Arc<Reloader>,
    listeners: Vec<(&'static str, SocketAddr)>,
    /// `[admin] allowed_hosts`: names besides IP literals and `localhost`.
    allowed_hosts: Vec<String>,
}

impl Admin {
    /// Serves the given state; reloads go through `reloader`. `listeners` are the traffic
    /// listeners (name, address) that readiness checks are accepting connections.
    pub fn new(
        state: Arc<SidecarState>,
        reloader: Arc<Reloader>,
        listeners: Vec<(&'static str, SocketAddr)>,
    ) -> Self {
        Self {
            state,
            reloader,
            listeners,
            allowed_hosts: Vec::new(),
        }
    }

    /// Answers also to these host names (`[admin] allowed_hosts`).
    pub fn with_hosts(mut self, allowed_hosts: Vec<String>) -> Self {
        self.allowed_hosts = allowed_hosts;
        self
    }

    /// Ready = keys loaded (the process only starts with a usable key set, and a failed
    /// reload keeps it), not draining, and every traffic listener accepting connections.
    async fn readiness(&self) -> Result<(), String> {
        if !self.state.is_ready() {
            return Err("shutting down".into());
        }
        crate::signer::budget::readiness()?;
        listeners_accepting(&self.listeners).await
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if let Err((error, message)) = check_caller(session.req_header(), &self.allowed_hosts) {
            // nothing of the request is read further, and the connection ends
            session.set_keepalive(None);
            return refusal(error, &message);
        }
        let _ = session.drain_request_body().await;
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => reply(200, "text/plain; version=0.0.4; charset=utf-8", crate::metrics::render()),
            ("GET", "/healthz") => reply(200, "text/plain", "ok\n"),
            ("GET", "/readyz") => match self.readiness().await {
                // a store that is down does not take the sidecar out of service (issue 18
                // L5): signing and in-line delivery work without it; the body says so
                Ok(()) if self.state.store().is_some_and(|s| !s.is_up()) => reply(200, "text/plain", "ready; store unavailable: notifications flow in line without the journal (503 with acknowledge = after-store)\n"),
                Ok(()) => reply(200, "text/plain", "ready\n"),
                Err(why) => reply(503, "text/plain", format!("not ready: {why}\n")),
            },
            ("POST", "/admin/reload") => match self.reloader.reload("admin endpoint").await {
                Ok(r) => reply(200, "application/json", serde_json::json!({"reloaded": true, "changed": r.changed, "keys": r.keys}).to_string()),
                Err(e) => reply(500, "application/json", serde_json::json!({"reloaded": false, "error": e.to_string(), "failed_merchants": e.failed_merchants(&self.state), "note": "the merchants named in failed_merchants keep their previous keys; the others were reloaded"}).to_string()),
            },
            (_, "/metrics" | "/healthz" | "/readyz" | "/admin/reload") => reply(405, "text/plain", "method not allowed\n"),
            _ => reply(404, "text/plain", "not found: try /metrics, /healthz, /readyz, POST /admin/reload\n"),
        }
    }
}

/// A 403 in plain text with the error code, also in `X-Alipay-Sidecar-Error`.
fn refusal(error: SidecarError, message: &str) -> Response<Vec<u8>> {
    let mut r = reply(403, "text/plain", format!("{}: {message}\n", error.code()));
    if let Ok(v) = http::HeaderValue::from_str(error.code()) {
        r.headers_mut().insert(crate::headers::ERROR_HEADER, v);
    }
    crate::metrics::metrics().record_error(error.code());
    r
}

/// The browser and Host checks (see the module doc), pure.
fn check_caller(
    head: &pingora::http::RequestHeader,
    allowed_hosts: &[String],
) -> Result<(), (SidecarError, String)> {
    let browser = head.headers.contains_key(http::header::ORIGIN)
        || head
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"none"));
    if browser {
        return Err((
            SidecarError::BrowserRequestRefused,
            "the request carries Origin or a cross-site Sec-Fetch-Site header, so a web page \
             sent it; the admin listener only answers probes, scrapers and operators (open the \
             address directly, or use curl)"
                .into(),
        ));
    }
    let host = head
        .headers
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    if let Some(host) = host {
        if !admin_host_allowed(&host, allowed_hosts) {
            return Err((
                SidecarError::HostNotAllowed,
                format!(
                    "Host \"{}\" is neither an IP address, localhost nor listed in [admin] \
                     allowed_hosts; a page that re-binds its DNS name to this address must not \
                     reach the admin listener. Use the IP address, or add the name your \
                     scraper uses to allowed_hosts",
                    crate::exchange::echo(&host)
                ),
            ));
        }
    }
    Ok(())
}

/// An IP literal (any address: probes and scrapers use the pod IP), `localhost`, or a listed
/// name, with or without port.
fn admin_host_allowed(host: &str, allowed: &[String]) -> bool {
    if crate::outbound::host_allowed(host, allowed) {
        return true;
    }
    crate::outbound::host_name(host)
        .parse::<std::net::IpAddr>()
        .is_ok()
}

/// Connects to each listener (a wildcard address on loopback); the first that does not
/// accept within 500 ms is named in the error.
async fn listeners_accepting(listeners: &[(&'static str, SocketAddr)]) -> Result<(), String> {
    for (name, addr) in listeners {
        let target = if addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            *addr
        };
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(format!(
                    "the {name} listener on {addr} is not accepting connections: {e}"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "the {name} listener on {addr} did not accept a connection within 500 ms"
                ))
            }
        }
    }
    Ok(())
}

/// `alipay-sidecar healthcheck`: exit 0 when the URL answers 200 within `timeout`, else 1.
pub fn healthcheck(url: &str, timeout: Duration) -> i32 {
    match probe(url, timeout) {
        Ok(200) => 0,
        Ok(status) => {
            eprintln!("{url} answered {status}");
            1
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            1
        }
    }
}

/// True when `url` answers 200; for callers that poll readiness themselves (the demo, so
/// only in builds that have it).
#[cfg(feature = "mock-gateway")]
pub fn healthcheck_quiet(url: &str) -> bool {
    matches!(probe(url, Duration::from_secs(3)), Ok(200))
}

fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported (the admin listener is plain HTTP)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {authority}"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // One write: a server may answer (and close) after the first segment it reads.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .map_err(|e| format!("no answer: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> pingora::http::RequestHeader {
        let mut h = pingora::http::RequestHeader::build("GET", b"/metrics", None).unwrap();
        for (k, v) in headers {
            h.insert_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn browsers_and_foreign_hosts_are_refused() {
        let ok = |h: &[(&str, &str)]| check_caller(&head(h), &["sidecar.internal".into()]);
        assert!(ok(&[("Host", "127.0.0.1:9090")]).is_ok());
        assert!(
            ok(&[("Host", "10.1.2.3:9090")]).is_ok(),
            "pod IP (kubelet, Prometheus)"
        );
        assert!(ok(&[("Host", "[::1]:9090")]).is_ok());
        assert!(ok(&[("Host", "localhost")]).is_ok());
        assert!(ok(&[("Host", "Sidecar.Internal:9090")]).is_ok());
        assert!(ok(&[]).is_ok(), "HTTP/1.0 without Host");
        assert!(ok(&[("Host", "127.0.0.1"), ("Sec-Fetch-Site", "none")]).is_ok());
        let code = |h: &[(&str, &str)]| ok(h).unwrap_err().0.code();
        assert_eq!(
            code(&[("Host", "evil.example:9090")]),
            "SIDECAR_HOST_NOT_ALLOWED"
        );
        assert_eq!(
            code(&[("Host", "127.0.0.1.evil.example")]),
            "SIDECAR_HOST_NOT_ALLOWED"
        );
        assert_eq!(
            code(&[("Host", "127.0.0.1"), ("Origin", "https://evil.example")]),
            "SIDECAR_BROWSER_REQUEST_REFUSED"
        );
        assert_eq!(
            code(&[("Host", "127.0.0.1"), ("Sec-Fetch-Site", "cross-site")]),
            "SIDECAR_BROWSER_REQUEST_REFUSED"
        );
    }

    #[tokio::test]
    async fn readiness_names_a_listener_that_is_down() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let down_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        }; // closed again: nothing listens there now
        assert_eq!(listeners_accepting(&[("outbound", up_addr)]).await, Ok(()));
        let wildcard = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), up_addr.port());
        assert_eq!(listeners_accepting(&[("inbound", wildcard)]).await, Ok(()));
        let err = listeners_accepting(&[("outbound", up_addr), ("inbound", down_addr)])
            .await
            .unwrap_err();
        assert!(err.contains("inbound listener"), "{err}");
    }
}
