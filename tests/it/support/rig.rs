//! The one rig: the fake gateway (in-process, TLS, signing with the vector Alipay key) and a
//! sidecar in front of it; a pay through it.

use std::net::SocketAddr;
use std::path::Path;

use alipay_sidecar::mock_gateway::{MockGateway, MockGatewayConfig, ReceivedRequest};

/// The merchant client id every rig uses.
pub const CLIENT_ID: &str = "T_111222333";
/// The live pay path.
pub const PAY: &str = "/ams/api/v1/payments/pay";

/// POSTs [`pay_body`]`(id, "5800", extra)` to the outbound listener at `outbound`.
pub fn pay(outbound: SocketAddr, id: &str, extra: &str) -> Response {
    request(
        outbound,
        "POST",
        PAY,
        &[("Content-Type", "application/json; charset=UTF-8")],
        pay_body(id, "5800", extra).as_bytes(),
    )
    .unwrap()
}

use test_support::pay_body;

use super::files::{write_vector_keys, VECTOR_KEYS};
use super::gateway::vector_gateway;
use test_support::Response;

use super::http::request;
use super::metrics::Metrics;
use super::sidecar::Sidecar;

/// The one rig: the fake gateway (TLS, signing with the vectors' Alipay key, expecting
/// [`CLIENT_ID`]) and a sidecar in front of it on port-0 listeners.
pub struct Rig {
    /// The fake gateway.
    pub gw: MockGateway,
    /// The sidecar.
    pub sidecar: Sidecar,
    /// The sidecar's plain outbound listener (the HTTPS one when there is no plain one).
    pub outbound: SocketAddr,
    /// The folder holding the config, keys, the gateway's CA and the logs.
    pub dir: tempfile::TempDir,
}

/// What differs between rigs; [`RigConfig::default`] is vector keys, the gateway's CA
/// trusted, JSON logs.
pub struct RigConfig<'a> {
    /// The merchant's client id (the gateway expects it unless `gateway` says otherwise).
    pub client_id: &'a str,
    /// The `[keys]` body.
    pub keys: &'a str,
    /// More `[outbound]` lines (e.g. `tls_listen = "127.0.0.1:0"`, timeouts, policy).
    pub outbound: &'a str,
    /// Sections after `[admin]` (e.g. `[inbound]`, `[server]`, `[log]`).
    pub tail: &'a str,
    /// Whether `ca_file` names the gateway's CA.
    pub trust_ca: bool,
    /// Extra environment variables for the sidecar process.
    pub env: &'a [(&'a str, &'a str)],
    /// Whether `[outbound]` has a plain `listen` (port 0); without it, give `tls_listen`.
    pub plain_listener: bool,
}

impl Default for RigConfig<'_> {
    fn default() -> Self {
        RigConfig {
            client_id: CLIENT_ID,
            keys: VECTOR_KEYS,
            outbound: "",
            tail: "[log]\nformat = \"json\"\n",
            trust_ca: true,
            env: &[],
            plain_listener: true,
        }
    }
}

impl RigConfig<'_> {
    /// The sidecar's config: `[outbound]` on port 0 towards `gateway` (trusting `ca`), the
    /// admin listener on port 0.
    pub fn toml(&self, gateway: &str, ca: Option<&Path>) -> String {
        let ca = ca
            .map(|ca| format!("ca_file = {:?}\n", ca.display().to_string()))
            .unwrap_or_default();
        let listen = if self.plain_listener {
            "listen = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        format!(
            "client_id = \"{client_id}\"\n[keys]\n{keys}\n[outbound]\n{listen}gateway = \"{gateway}\"\n{ca}{outbound}\n[admin]\nlisten = \"127.0.0.1:0\"\n{tail}",
            client_id = self.client_id,
            keys = self.keys,
            outbound = self.outbound,
            tail = self.tail,
        )
    }
}

impl Rig {
    /// Vector keys, the gateway's CA trusted, `outbound` added to `[outbound]`.
    pub fn with(outbound: &str) -> Rig {
        Self::start(
            RigConfig {
                outbound,
                ..Default::default()
            },
            |_| {},
            |_| {},
        )
    }

    /// `gateway` adjusts the fake gateway; `prepare` lays out files in the folder (the vector
    /// keys are already there) before the sidecar starts.
    pub fn start(
        rig: RigConfig,
        gateway: impl FnOnce(&mut MockGatewayConfig),
        prepare: impl FnOnce(&Path),
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        write_vector_keys(dir.path());
        let gw = vector_gateway(dir.path(), |cfg| {
            cfg.expected_client_id = Some(rig.client_id.into());
            gateway(cfg)
        });
        prepare(dir.path());
        let ca = if rig.trust_ca { gw.ca_file() } else { None };
        let gateway = format!("https://127.0.0.1:{}", gw.local_addr().port());
        let toml = rig.toml(&gateway, ca);
        let sidecar = Sidecar::start_with_env(dir.path(), &toml, rig.env);
        let outbound = match sidecar.listeners.get("outbound") {
            Some(plain) => *plain,
            None => sidecar.addr("outbound_tls"),
        };
        Rig {
            gw,
            outbound,
            sidecar,
            dir,
        }
    }

    /// POSTs a pay (see [`pay`]) through the outbound listener.
    pub fn pay(&self, id: &str, extra: &str) -> Response {
        pay(self.outbound, id, extra)
    }

    /// A pay the fake gateway answers with `fault` (its `mockFault` switch).
    pub fn pay_fault(&self, id: &str, fault: &str) -> Response {
        self.pay(id, &format!(",\"mockFault\":\"{fault}\""))
    }

    /// One `/metrics` scrape, parsed.
    pub fn scrape(&self) -> Metrics {
        self.sidecar.metrics()
    }

    /// See [`Sidecar::eventually`].
    pub fn eventually<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        self.sidecar.eventually(what, check)
    }

    /// `POST /admin/reload`.
    pub fn reload(&self) -> Response {
        self.sidecar.reload()
    }

    /// The status of `GET /readyz`.
    pub fn ready_status(&self) -> u16 {
        self.sidecar.admin_get("/readyz").status
    }

    /// The last pay the gateway received.
    pub fn last_pay(&self) -> ReceivedRequest {
        self.last_received(PAY)
    }

    /// The last request the gateway received on `path`.
    pub fn last_received(&self, path: &str) -> ReceivedRequest {
        self.gw
            .received()
            .into_iter()
            .rev()
            .find(|r| r.target == path)
            .unwrap_or_else(|| panic!("gateway got no request on {path}"))
    }
}
