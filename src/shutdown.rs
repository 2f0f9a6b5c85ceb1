//! Shutdown: pingora stops accepting the moment its shutdown watch returns, and its grace
//! period is a fixed sleep. The sidecar's own [`ShutdownSignalWatch`] therefore does the
//! draining before it returns: on SIGTERM or SIGINT it turns readiness to 503 at once, keeps
//! serving (including new connections) for `shutdown_grace` so load balancers notice, then
//! waits up to `shutdown_timeout` for in-flight requests to finish, and only then lets pingora
//! stop the listeners. SIGQUIT does the same (pingora's socket hand-over on SIGQUIT needs an
//! `--upgrade` process this binary does not offer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};

use crate::state::SidecarState;

/// Waits for SIGTERM, SIGINT or SIGQUIT, drains, then tells pingora to stop.
pub struct DrainOnSignal {
    state: Arc<SidecarState>,
    grace: Duration,
    timeout: Duration,
}

impl DrainOnSignal {
    /// Drains `state`'s requests: `grace` still serving, then up to `timeout` for the
    /// requests in flight (`[server] shutdown_grace`, `shutdown_timeout`).
    pub fn new(state: Arc<SidecarState>, grace: Duration, timeout: Duration) -> Self {
        Self {
            state,
            grace,
            timeout,
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        // SIGQUIT drains too: pingora's socket hand-over to a new process (`--upgrade`) is
        // not offered by this binary, so an "upgrade" would hand the sockets to nobody.
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        };
        self.state.start_draining();
        tracing::info!(
            signal = which,
            grace_s = self.grace.as_secs_f64(),
            "shutdown: readiness is now 503; still serving during the grace period"
        );
        tokio::time::sleep(self.grace).await;
        let start = Instant::now();
        while self.state.in_flight() > 0 && start.elapsed() < self.timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown_timeout reached with requests still in flight"
            );
        } else {
            tracing::info!("shutdown: all in-flight requests finished");
        }
        ShutdownSignal::GracefulTerminate
    }
}
