//! The inbound listener as a pingora service: the production handler of `[inbound]` (every
//! merchant, its app through pingora's plain-HTTP connector, the journal of the store) behind
//! the one adapter.

use std::sync::Arc;

use pingora::services::listening::Service;
use pingora::services::ServiceWithDependents;

use super::{AppRoute, Inbound, InboundMerchant, InboundPolicy};
use crate::adapter::Adapter;
use crate::config::{Config, InboundConfig};
use crate::hooks::NotificationHook;
use crate::journal;
use crate::limits::Limited;
use crate::merchants::LiveKeys;
use crate::state::SidecarState;
use crate::upstream::Upstream;
use crate::wiring::Wiring;

/// The `inbound` listener of `[inbound]` (`i`). `reconcile`: what `[reconcile]` is told of
/// verified payment results (closing the payments it watches), when on.
pub fn service(
    config: &Config,
    i: &InboundConfig,
    state: &Arc<SidecarState>,
    reconcile: Option<Arc<dyn NotificationHook>>,
    wiring: &Wiring,
) -> Box<dyn ServiceWithDependents> {
    let app = i.forward_to.url();
    let max = i.max_connections;
    let mut handler = Inbound::from_config(state.clone(), config, i);
    if let Some(hook) = reconcile {
        handler = handler.with_reconcile(hook);
    }
    let proxy = pingora::proxy::http_proxy(&wiring.conf, Adapter::new(handler, state.clone()));
    let mut svc = Service::new(
        "inbound".to_string(),
        Limited::new(proxy, "inbound", wiring.limits(max)),
    );
    let listen = wiring.listen("inbound", &mut svc);
    tracing::info!(%listen, forward_to = %app, max_connections = max, "inbound notification verifier");
    Box::new(svc)
}

impl Inbound<Arc<Upstream>> {
    /// The production handler of `[inbound]`: every merchant of `config`, its live keys from
    /// `state`, its app (`forward_to`, `path_map`, inherited or its own) through pingora's
    /// plain-HTTP connector.
    pub fn from_config(state: Arc<SidecarState>, config: &Config, cfg: &InboundConfig) -> Self {
        let merchants = config
            .merchants
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let app = m.forward_to.as_ref().unwrap_or(&cfg.forward_to);
                let upstream = Upstream::new(&app.host, app.port, false, None, cfg.forward_timeout);
                InboundMerchant::new(
                    &m.name,
                    &m.client_id,
                    LiveKeys::new(state.merchants(), index),
                    Arc::new(upstream),
                    AppRoute::new(app, m.path_map.clone()),
                )
            })
            .collect();
        let handler = Self::shared(InboundPolicy::from_config(config, cfg), merchants);
        match state.store() {
            Some(store) => handler
                .with_journal(journal::from_store(store))
                .with_payment_locks(crate::paylock::for_store(store)),
            None => handler,
        }
    }
}
