//! The signing budget of a remote key store: at most `max_concurrent_signs` signs at once per
//! merchant, each given `sign_timeout`, and a circuit breaker.
//!
//! Why: a cloud KMS is rationed (hundreds to about a thousand RSA signs per second per account
//! and region) and a token can stall. Without a budget every app request would wait on the
//! token and pile up; with it, a sign that cannot finish in time fails fast and nothing is
//! sent to Alipay. After [`FAILURES_TO_OPEN`] consecutive failures (token errors or timeouts)
//! the breaker opens: for [`COOL_DOWN`] requests are answered `SIDECAR_SIGNER_UNAVAILABLE`
//! without asking the token and `/readyz` reports not ready; then one request probes the
//! token, and its success closes the breaker (its failure opens it again).
//!
//! The budget belongs to the merchant, not to one loaded key: a reload keeps the breaker and
//! the slots (`max_concurrent_signs` needs a restart), so a stalled sign still holds its slot
//! after a reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{metrics, FailureReason, SignFailure};

/// Consecutive failures (token errors or timeouts) that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker refuses before it lets one probe through.
pub const COOL_DOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct BreakerState {
    consecutive: u32,
    /// Set while open: refuse until then, then let one probe through.
    open_until: Option<Instant>,
    probing: bool,
}

/// One merchant's slots and breaker.
#[derive(Debug)]
pub struct Budget {
    slots: Arc<Semaphore>,
    state: Mutex<BreakerState>,
    merchant: String,
}

/// How a sign was admitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    Probe,
}

fn budgets() -> &'static Mutex<HashMap<String, Arc<Budget>>> {
    static B: OnceLock<Mutex<HashMap<String, Arc<Budget>>>> = OnceLock::new();
    B.get_or_init(Default::default)
}

/// The merchant's budget, made with `slots` sign slots the first time.
pub fn for_merchant(merchant: &str, slots: usize) -> Arc<Budget> {
    budgets()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(merchant.to_string())
        .or_insert_with(|| {
            Arc::new(Budget {
                slots: Arc::new(Semaphore::new(slots.max(1))),
                state: Mutex::new(BreakerState::default()),
                merchant: merchant.to_string(),
            })
        })
        .clone()
}

/// Merchants whose breaker is open and still cooling down (for `/readyz`).
pub fn open_breakers() -> Vec<String> {
    let now = Instant::now();
    let mut out: Vec<String> = budgets()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|b| b.lock().open_until.is_some_and(|t| t > now))
        .map(|b| b.merchant.clone())
        .collect();
    out.sort();
    out
}

/// `/readyz`'s check: `Err` naming the merchants whose signer breaker is open.
pub fn readiness() -> Result<(), String> {
    let open = open_breakers();
    if open.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the signer circuit breaker is open for merchant(s) {}: the key store failed {} times \
         in a row; requests get SIDECAR_SIGNER_UNAVAILABLE until a probe succeeds",
        open.join(", "),
        FAILURES_TO_OPEN
    ))
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self) -> Option<Admission> {
        let mut s = self.lock();
        match s.open_until {
            None => Some(Admission::Normal),
            Some(t) if Instant::now() < t => None,
            Some(_) if s.probing => None,
            Some(_) => {
                s.probing = true;
                Some(Admission::Probe)
            }
        }
    }

    fn succeeded(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!(merchant = %self.merchant, "signer probe succeeded; circuit breaker closed");
        }
        *s = BreakerState::default();
        metrics::get()
            .breaker_open
            .with_label_values(&[&self.merchant])
            .set(0);
    }

    fn failed(&self, admission: Admission) {
        let mut s = self.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        if admission == Admission::Probe || s.consecutive >= FAILURES_TO_OPEN {
            s.open_until = Some(Instant::now() + COOL_DOWN);
            s.probing = false;
            tracing::error!(
                merchant = %self.merchant,
                consecutive_failures = s.consecutive,
                cool_down = ?COOL_DOWN,
                "signer circuit breaker open: requests are answered SIDECAR_SIGNER_UNAVAILABLE (nothing sent to Alipay) until a probe succeeds"
            );
            metrics::get()
                .breaker_open
                .with_label_values(&[&self.merchant])
                .set(1);
        }
    }

    fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.lock().probing = false;
        }
    }

    /// Runs the blocking `sign` under the budget: a free slot within `timeout`, the sign
    /// itself within what is left of `timeout`. A sign that times out keeps its slot until the
    /// token answers (the slot count is the honest number of signs the token is working on).
    pub async fn run<F>(
        &self,
        merchant: &str,
        timeout: Duration,
        sign: F,
    ) -> Result<Vec<u8>, SignFailure>
    where
        F: FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
    {
        let Some(admission) = self.admit() else {
            return Err(SignFailure {
                reason: FailureReason::BreakerOpen,
                message: format!(
                    "the signer of merchant \"{merchant}\" is unavailable: its circuit breaker \
                     is open after {FAILURES_TO_OPEN} consecutive failures; nothing was sent to \
                     Alipay, retry later"
                ),
            });
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let permit =
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    self.abandon(admission);
                    return Err(SignFailure {
                        reason: FailureReason::Busy,
                        message: format!(
                            "every sign slot (max_concurrent_signs) stayed busy for {}; \
                             nothing was sent to Alipay, retry later",
                            humantime::format_duration(timeout)
                        ),
                    });
                }
            };
        let in_flight = metrics::get().in_flight.clone();
        in_flight.inc();
        let job = tokio::task::spawn_blocking(move || {
            let r = sign();
            in_flight.dec();
            drop(permit);
            r
        });
        let failure = match tokio::time::timeout_at(deadline, job).await {
            Ok(Ok(Ok(sig))) => {
                self.succeeded();
                return Ok(sig);
            }
            Ok(Ok(Err(e))) => SignFailure {
                reason: FailureReason::TokenError,
                message: format!("the key store could not sign ({e}); nothing was sent to Alipay"),
            },
            Ok(Err(join)) => SignFailure {
                reason: FailureReason::TokenError,
                message: format!("the signing task failed ({join}); nothing was sent to Alipay"),
            },
            Err(_) => SignFailure {
                reason: FailureReason::Timeout,
                message: format!(
                    "the key store did not sign within sign_timeout ({}); nothing was sent to \
                     Alipay, retry later",
                    humantime::format_duration(timeout)
                ),
            },
        };
        self.failed(admission);
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_recovers_after_a_probe() {
        let b = for_merchant("budget-unit-test", 2);
        for _ in 0..FAILURES_TO_OPEN {
            let r = b
                .run("m", Duration::from_secs(5), || {
                    Err("CKR_DEVICE_ERROR".into())
                })
                .await;
            assert_eq!(r.unwrap_err().reason, FailureReason::TokenError);
        }
        assert!(open_breakers().contains(&"budget-unit-test".to_string()));
        let r = b.run("m", Duration::from_secs(5), || Ok(vec![1])).await;
        assert_eq!(r.unwrap_err().reason, FailureReason::BreakerOpen);
        // cool-down over: the next sign is the probe
        b.lock().open_until = Some(Instant::now());
        assert_eq!(
            b.run("m", Duration::from_secs(5), || Ok(vec![1]))
                .await
                .unwrap(),
            vec![1]
        );
        assert!(!open_breakers().contains(&"budget-unit-test".to_string()));
    }

    #[tokio::test]
    async fn a_stalled_sign_times_out_and_keeps_its_slot() {
        let b = for_merchant("budget-unit-stall", 1);
        let r = b
            .run("m", Duration::from_millis(50), || {
                std::thread::sleep(Duration::from_secs(3));
                Ok(vec![1])
            })
            .await;
        assert_eq!(r.unwrap_err().reason, FailureReason::Timeout);
        // the one slot is still held by the stalled sign
        let r = b.run("m", Duration::from_millis(50), || Ok(vec![2])).await;
        assert_eq!(r.unwrap_err().reason, FailureReason::Busy);
    }
}
