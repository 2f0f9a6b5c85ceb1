//! One merchant as the outbound handler sees it: its name and client id, its live keys, its
//! gateway client (and upload and HTTP/2 session clients), and the app headers it never
//! forwards.

use std::sync::Arc;

use crate::exchange;
use crate::merchants::KeySource;
use crate::upstream::UpstreamClient;

/// App headers never forwarded to the gateway besides hop-by-hop ones: the signature headers,
/// which the sidecar always sets itself.
pub(super) const REPLACED: &[&str] = &["client-id", "request-time", "signature"];

/// App headers the sidecar sets itself besides those: `Accept-Encoding` (the sidecar asks for
/// `identity`, so what it verifies is what was signed) and the Go SDK's `Key-Version`
/// (signing metadata, set to the sidecar's own key version when the app sent one).
const ALSO_REPLACED: &[&str] = &["accept-encoding", "key-version"];

/// One merchant as the outbound handler needs it.
pub struct OutboundMerchant<G> {
    pub(super) name: Arc<str>,
    pub(super) client_id: String,
    pub(super) agent_token: Option<String>,
    pub(super) keys: Arc<dyn KeySource>,
    pub(super) gateway: G,
    /// `Host` of the gateway requests.
    pub(super) gateway_authority: String,
    /// App headers the sidecar sets itself (built once: `REPLACED`, `ALSO_REPLACED`, plus
    /// `agent-token` when one is configured).
    pub(super) not_forwarded: Vec<&'static str>,
    /// The upload gateway of `product/uploadImage` and its `Host` (`None`: `gateway`).
    pub(super) upload: Option<(G, String)>,
    /// The HTTP/2 client of the API gateway for the unsigned session routes.
    pub(super) session: Option<G>,
}

impl<G: UpstreamClient> OutboundMerchant<G> {
    /// A merchant called `name` signing as `client_id` with the keys of `keys`, through
    /// `gateway` at `gateway_host:gateway_port`.
    pub fn new(
        name: &str,
        client_id: &str,
        agent_token: Option<String>,
        keys: Arc<dyn KeySource>,
        gateway: G,
        (gateway_host, gateway_port): (&str, u16),
    ) -> Self {
        let mut not_forwarded = REPLACED.to_vec();
        not_forwarded.extend_from_slice(ALSO_REPLACED);
        not_forwarded.extend_from_slice(&crate::credentials::APP_CREDENTIAL_HEADERS);
        if agent_token.is_some() {
            not_forwarded.push("agent-token");
        }
        Self {
            name: Arc::from(name),
            client_id: client_id.to_string(),
            agent_token,
            keys,
            gateway,
            gateway_authority: exchange::authority(gateway_host, gateway_port, 443),
            not_forwarded,
            upload: None,
            session: None,
        }
    }
}
