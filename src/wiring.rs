//! What `server.rs` hands every service constructor ([`crate::outbound::services`],
//! [`crate::inbound::service`], [`crate::admin::service`], …): the pingora configuration the
//! proxies are built with, the listening sockets reserved at start (by listener name) and
//! the `[server]` connection limits every listener shares.
//!
//! Why a value of its own: each constructor sits beside its handler and knows its listeners
//! and its settings; what they all need from the process is this, so none of them imports
//! `server.rs` (which imports them all) and the imports keep running one way.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use crate::config::{Config, ConfigError, ServerConfig};
use crate::limits::ListenerLimits;
use crate::listen::Reserved;

/// A listener wanted by the configuration: its address as configured, its name (metrics
/// `listener` label, logs, readiness) and the config key that names the address (for the
/// error when it cannot be bound).
pub type Wanted = (SocketAddr, &'static str, String);

/// Reserves every `wanted` listener (picking the port of a port-0 one, held until pingora has
/// bound it), before pingora's listener setup, so that an address in use fails early with a
/// message naming its config key.
pub fn reserve(config: &Config, wanted: &[Wanted]) -> Result<Vec<Reserved>, ConfigError> {
    wanted
        .iter()
        .map(|(addr, name, key)| {
            crate::listen::reserve(*name, *addr).map_err(|e| {
                config.error_at(
                    key,
                    format!("cannot listen on {addr}: {e}; pick a free address or stop the process using it"),
                )
            })
        })
        .collect()
}

/// The shared inputs of the service constructors.
pub struct Wiring {
    /// The pingora server configuration (after bootstrap), for `http_proxy`.
    pub conf: Arc<ServerConf>,
    listeners: Vec<Reserved>,
    server: ServerConfig,
}

impl Wiring {
    /// The inputs for services built with `conf`, serving on `listeners` (every configured
    /// listener, reserved), limited by `[server]`.
    pub fn new(conf: Arc<ServerConf>, listeners: Vec<Reserved>, server: &ServerConfig) -> Self {
        Self {
            conf,
            listeners,
            server: server.clone(),
        }
    }

    /// The reserved listener called `name`; every configured listener was reserved before
    /// any service is built.
    pub fn bound(&self, name: &str) -> &Reserved {
        self.listeners
            .iter()
            .find(|r| r.name() == name)
            .expect("every configured listener is reserved")
    }

    /// Puts the reserved listener called `name` on `service` (plain HTTP); returns the
    /// address it is bound to (a configured port 0 is a picked port).
    pub fn listen<A>(&self, name: &str, service: &mut Service<A>) -> SocketAddr {
        let reserved = self.bound(name);
        reserved.add_to(service, true);
        reserved.addr()
    }

    /// [`Wiring::listen`] for a service that terminates TLS on the accepted stream (it keeps
    /// pingora's read buffer under the TLS reads: see [`Reserved::add_to`]).
    pub fn listen_tls<A>(&self, name: &str, service: &mut Service<A>) -> SocketAddr {
        let reserved = self.bound(name);
        reserved.add_to(service, false);
        reserved.addr()
    }

    /// The limits of a listener accepting at most `max_connections` connections.
    pub fn limits(&self, max_connections: usize) -> ListenerLimits {
        ListenerLimits {
            max_connections,
            max_header_bytes: self.server.max_header_bytes,
            header_read_timeout: self.server.header_read_timeout,
            idle_timeout: self.server.idle_timeout,
        }
    }

    /// The reserved listeners, for the readiness task once every service is built.
    pub fn into_listeners(self) -> Vec<Reserved> {
        self.listeners
    }
}
