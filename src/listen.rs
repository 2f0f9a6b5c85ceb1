//! Listener addresses, including port 0, and the `run --ready-file` that reports them.
//!
//! pingora binds its listeners itself, from an address string, and does not tell the caller
//! which port the kernel picked for `…:0`. So for a port-0 listener the sidecar picks the port
//! first, without ever letting it go until pingora holds it:
//!
//! 1. [`reserve`] binds (but never `listen`s) a socket on `ip:0` with `SO_REUSEPORT` and reads
//!    back the port the kernel gave it. While that socket is bound, no other socket can bind
//!    the port unless it too sets `SO_REUSEPORT` *and* runs under the same user (Linux); and
//!    the kernel never hands the port out again to another `…:0` bind. Nothing is accepted
//!    on it: a socket that does not listen takes no connections.
//! 2. pingora gets the concrete `ip:port` with [`TcpSocketOptions::so_reuseport`] set, so its
//!    own bind joins the reservation instead of failing with "address in use".
//! 3. [`ReadyTask`] connects to every listener until each accepts (only pingora's socket can
//!    accept), then drops the reservations, then writes the ready file.
//!
//! The price: a port-0 listener keeps `SO_REUSEPORT`, so another process *of the same user*
//! could join it and take a share of its connections. A process running as the sidecar's
//! user can read its keys anyway; use fixed ports where even that matters.
//!
//! The alternative, binding `:0`, learning the port and binding again later (what the tests'
//! old `free_port()` did), leaves a window in which any process can take the port. Handing
//! pingora a ready file descriptor would also work, but its fd table is private to
//! `Server`. Listeners with a fixed port are bound by pingora exactly as before (no
//! `SO_REUSEPORT`), after a test bind that turns "address in use" into a config error.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::listening::Service;

/// The write buffer of a plain listener's connections. pingora buffers the answer's head
/// (it does not flush a `Content-Length` head) and the body write flushes both, so an answer
/// that fits goes out in one `sendto`; with pingora's default (1,460 bytes) any answer over
/// it went out as two writes, the head and then the body (issue 23). 8 KiB holds the AMS
/// answers the sidecar relays (a pay or inquiry answer is 0.5-3 KiB with its head); only
/// what an answer writes into it is touched.
const ANSWER_WRITE_BUFFER: usize = 8 * 1024;

/// One listener: its name (the metrics `listener` label, e.g. `outbound`, `outbound_tls`,
/// `inbound`, `admin`; room for per-merchant names such as `outbound:sg`) and the address
/// it accepts on, with the port-0 reservation held until pingora has bound it.
pub struct Reserved {
    name: String,
    addr: SocketAddr,
    /// The bound, never-listening `SO_REUSEPORT` socket that holds a picked port.
    hold: Option<tokio::net::TcpSocket>,
}

impl Reserved {
    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the listener accepts on (the picked port for a configured port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds this listener to a pingora service, so that its bind joins the reservation.
    ///
    /// `plain`: the service reads plain HTTP from the socket (not TLS terminated on top of
    /// it). Such a listener gets no L4 read buffer: pingora reads the request head into its
    /// own buffer and the body into the body reader's, so its 64 KiB buffer in front of the
    /// socket only added a copy of every body and 64 KiB resident per connection (6 % of
    /// each 1 MiB body in flight: issue 23). Small requests still arrive in one `recvfrom`.
    /// TLS keeps the buffer: rustls reads in 4 KiB steps, and the buffer turns those into
    /// one read of up to 64 KiB. The write buffer is [`ANSWER_WRITE_BUFFER`].
    pub fn add_to<A>(&self, service: &mut Service<A>, plain: bool) {
        let mut endpoint = ListenerConfig::tcp(self.addr.to_string());
        if self.hold.is_some() {
            let mut options = TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            endpoint = endpoint.tcp_socket_options(options);
        }
        if plain {
            endpoint = endpoint.l4_buffer(L4BufferSettings {
                read: Some(0),
                write: Some(ANSWER_WRITE_BUFFER),
            });
        }
        service.add_listener(endpoint);
    }
}

/// Checks that `configured` can be bound and, for port 0, picks and holds the port (see the
/// module documentation for why this is race-free).
pub fn reserve(name: impl Into<String>, configured: SocketAddr) -> io::Result<Reserved> {
    let name = name.into();
    if configured.port() != 0 {
        // fail early with a clear message rather than inside pingora's listener setup
        std::net::TcpListener::bind(configured)?;
        return Ok(Reserved {
            name,
            addr: configured,
            hold: None,
        });
    }
    let socket = match configured {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseport(true)?;
    socket.bind(configured)?;
    let addr = socket.local_addr()?;
    Ok(Reserved {
        name,
        addr,
        hold: Some(socket),
    })
}

/// Waits until every listener accepts connections, then releases the port-0 reservations
/// and, when asked, writes the ready file: `{"pid":…,"listeners":{"admin":"127.0.0.1:…",…}}`,
/// atomically (a temporary file in the same folder, renamed), so a reader never sees half.
pub struct ReadyTask {
    listeners: Mutex<Vec<Reserved>>,
    ready_file: Option<PathBuf>,
}

impl ReadyTask {
    /// Watches `listeners`; writes `ready_file` when set.
    pub fn new(listeners: Vec<Reserved>, ready_file: Option<PathBuf>) -> Self {
        Self {
            listeners: Mutex::new(listeners),
            ready_file,
        }
    }
}

/// The ready file's content.
pub fn ready_json(pid: u32, listeners: &[(String, SocketAddr)]) -> String {
    let map: BTreeMap<&str, String> = listeners
        .iter()
        .map(|(name, addr)| (name.as_str(), addr.to_string()))
        .collect();
    serde_json::json!({ "pid": pid, "listeners": map }).to_string()
}

/// A temporary file next to `path` (same folder, so the rename is atomic), readable by all
/// (0644 whatever the umask): the files written this way (the ready file, the trust bundle)
/// hold nothing secret, and their reader (a supervisor, an app) may run as another user.
fn temp_next_to(path: &std::path::Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".alipay-sidecar-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    // the mode given at creation is filtered by the umask; set it exactly
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(tmp)
}

/// Checks at start that the ready file can be written (its folder exists and is writable),
/// so a supervisor waiting for it gets an exit code instead of a file that never comes.
pub fn check_ready_file(path: &std::path::Path) -> io::Result<()> {
    temp_next_to(path).map(drop)
}

/// Replaces `path` with `bytes` at once (a temporary file in the same folder, renamed), mode
/// 0644: a reader sees the old content or the new, never half.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = temp_next_to(path)?;
    io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Loopback for a wildcard address (what a connection test can reach).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port())
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), a.port())
        }
        a => a,
    }
}

#[async_trait]
impl BackgroundService for ReadyTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let addrs: Vec<(String, SocketAddr)> = {
            let held = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            held.iter().map(|r| (r.name.clone(), r.addr)).collect()
        };
        for (_, addr) in &addrs {
            // pingora binds each service as it starts it; until then the connection is refused
            while tokio::net::TcpStream::connect(reachable(*addr))
                .await
                .is_err()
            {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        // pingora holds every port now: the reservations can go
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .for_each(|r| r.hold = None);
        for (name, addr) in &addrs {
            tracing::info!(listener = %name, %addr, "accepting connections");
        }
        if let Some(path) = &self.ready_file {
            match write_atomically(path, ready_json(std::process::id(), &addrs).as_bytes()) {
                Ok(()) => tracing::info!(path = %path.display(), "ready file written"),
                Err(e) => tracing::error!(
                    path = %path.display(),
                    error = %e,
                    "cannot write the ready file (--ready-file); pick a writable folder"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_cannot_be_taken_and_is_shared_only_by_reuseport() {
        let r = reserve("outbound", "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(r.addr().port(), 0);
        assert!(std::net::TcpListener::bind(r.addr()).is_err());
        // nothing accepts on a reservation
        assert!(std::net::TcpStream::connect(r.addr()).is_err());
        let joined = tokio::net::TcpSocket::new_v4().unwrap();
        joined.set_reuseport(true).unwrap();
        joined.bind(r.addr()).unwrap();
    }

    #[test]
    fn the_ready_file_names_every_listener() {
        let v: serde_json::Value = serde_json::from_str(&ready_json(
            7,
            &[
                ("admin".into(), "127.0.0.1:9".parse().unwrap()),
                ("outbound:sg".into(), "[::1]:8".parse().unwrap()),
            ],
        ))
        .unwrap();
        assert_eq!(v["pid"], 7);
        assert_eq!(v["listeners"]["admin"], "127.0.0.1:9");
        assert_eq!(v["listeners"]["outbound:sg"], "[::1]:8");
    }
}
