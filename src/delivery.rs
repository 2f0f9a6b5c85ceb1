//! The delivery worker (issue 13): delivers the notifications queued in the store to the
//! app, with back-off retries, until the app answers 2xx or `max_delivery_age` passes.
//!
//! What is queued: notifications taken in store-and-forward mode (`[inbound] acknowledge =
//! "after-store"`), the PAYMENT_RESULTs the reconciler builds from `inquiryPayment`, and
//! whatever `notifications replay` / `notifications retry --dead` put back. Every queued row
//! is delivered, whatever the acknowledge mode: the worker runs whenever `[store]` and
//! `[inbound]` are configured.
//!
//! How: every turn claims the due rows with a lease ([`DeliveryQueue::claim_due`], owner
//! [`crate::schedule::claim_owner`], lease longer than `forward_timeout`), so that with several replicas on one
//! PostgreSQL database each row is worked by one of them, and a replica that dies mid-turn
//! loses its rows to the next claim after the lease. Each row goes to its merchant's app
//! (`forward_to`, `path_map` and `base_path`, as in line) through the same pooled connector
//! the inbound listener uses, with the stored headers, `X-Alipay-Sidecar-Verified: true` and
//! `X-Alipay-Sidecar-Event-Id`. The internal `x-alipay-sidecar-deliver-path` header (the
//! reconciler's `[reconcile] deliver_path`) replaces the path and is never sent.
//!
//! 2xx → delivered; anything else → the next attempt after the next gap of
//! `delivery_schedule` (the last gap repeats), a last attempt at `max_delivery_age` after the
//! first copy arrived, then dead (a warn line, `alipay_sidecar_deliveries_total{outcome="dead"}`;
//! `notifications retry --dead` revives it). Delivery is at-least-once: the app may see an
//! event id twice (a crash between its 2xx and the commit), never zero times.
//!
//! The worker reaches the store through [`DeliveryQueue`] and the app through
//! [`UpstreamClient`]: its state machine is unit-tested below against in-memory fakes of both
//! ([`crate::testing`]). [`service`] is its wiring, called by the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use sidecar_store::Delivery;

use crate::config::Config;
use crate::exchange::now_millis;
use crate::headers::VERIFIED_HEADER;
use crate::headers::{DELIVER_PATH_HEADER, DELIVER_QUERY_HEADER, EVENT_ID_HEADER};
use crate::inbound::{AppRoute, MAX_APP_RESPONSE_BYTES};
use crate::journal::{self, DeliveryOutcome, DeliveryQueue};
use crate::paylock::{Holder, LockError, PaymentLease, PaymentLocks, WORKER_WAIT};
use crate::schedule::{claim_owner, next_attempt_at};
use crate::store::StateStore;
use crate::upstream::{Upstream, UpstreamClient, UpstreamRequest};

/// How long the worker sleeps when nothing was due.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Rows claimed per turn (delivered concurrently).
const BATCH: i64 = 16;

/// Headers of a stored row the worker never copies: its own framing and host, the markers it
/// sets itself, the internal ones it consumes.
const NOT_COPIED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    DELIVER_PATH_HEADER,
    DELIVER_QUERY_HEADER,
];

/// One merchant's app.
struct Route<A> {
    app: A,
    route: AppRoute,
}

/// The worker: shared by its turn's concurrent deliveries.
pub struct DeliveryWorker<A: UpstreamClient = Arc<Upstream>> {
    inner: Arc<Inner<A>>,
}

struct Inner<A> {
    store: Arc<dyn DeliveryQueue>,
    routes: HashMap<String, Route<A>>,
    schedule: Vec<Duration>,
    max_age: Duration,
    timeout: Duration,
    owner: String,
    lease: Duration,
    /// One lock per payment (issue 22): a queued PAYMENT_RESULT is delivered under its
    /// payment's lock, so the app never gets two results of one payment at the same time and
    /// no cancel is decided while one is with it.
    locks: Option<Arc<dyn PaymentLocks>>,
}

/// The worker's timings (from `[inbound]`).
#[derive(Debug, Clone)]
struct Timings {
    /// `delivery_schedule`.
    schedule: Vec<Duration>,
    /// `max_delivery_age`.
    max_age: Duration,
    /// `forward_timeout`.
    timeout: Duration,
}

/// The delivery worker as a background service of the server, when there are a store and
/// `[inbound]` (whatever the acknowledge mode: replays and reconciled results are queued too).
/// Creates the journal's series of every merchant at zero.
pub fn service(
    config: &Config,
    store: Option<&Arc<StateStore>>,
) -> Option<GenBackgroundService<DeliveryWorker>> {
    let (store, inbound) = (store?, config.inbound.as_ref()?);
    journal::metrics().register_merchants(config.merchants.iter().map(|m| m.name.as_str()));
    let worker = DeliveryWorker::from_config(store.clone(), config, inbound);
    Some(background_service("delivery worker", worker))
}

impl DeliveryWorker<Arc<Upstream>> {
    /// The worker of `config`: every merchant's app as the inbound listener reaches it.
    pub fn from_config(
        store: Arc<StateStore>,
        config: &Config,
        cfg: &crate::config::InboundConfig,
    ) -> Self {
        let routes = config
            .merchants
            .iter()
            .map(|m| {
                let app = m.forward_to.as_ref().unwrap_or(&cfg.forward_to);
                let upstream = Upstream::new(&app.host, app.port, false, None, cfg.forward_timeout);
                (
                    m.name.clone(),
                    Route {
                        app: Arc::new(upstream),
                        route: AppRoute::new(app, m.path_map.clone()),
                    },
                )
            })
            .collect();
        let timings = Timings {
            schedule: cfg.delivery_schedule.clone(),
            max_age: cfg.max_delivery_age,
            timeout: cfg.forward_timeout,
        };
        let locks = crate::paylock::for_store(&store);
        let mut worker = Self::new(store, routes, timings);
        if let Some(inner) = Arc::get_mut(&mut worker.inner) {
            inner.locks = Some(locks);
        }
        worker
    }
}

impl<A: UpstreamClient> DeliveryWorker<A> {
    fn new(
        store: Arc<dyn DeliveryQueue>,
        routes: HashMap<String, Route<A>>,
        timings: Timings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                routes,
                schedule: timings.schedule,
                max_age: timings.max_age,
                timeout: timings.timeout,
                owner: claim_owner(),
                // one turn delivers its rows concurrently, each within the wait for its
                // payment's lock and forward_timeout
                lease: timings.timeout + WORKER_WAIT + Duration::from_secs(5),
                locks: None,
            }),
        }
    }

    /// One turn: claims what is due and delivers it. Returns how many rows it worked, or
    /// `None` when the claim failed (the store is out of reach).
    pub async fn turn(&self) -> Option<usize> {
        let inner = &self.inner;
        let (owner, lease, now) = (inner.owner.clone(), inner.lease, now_millis());
        let claimed = inner.store.claim_due(now, &owner, lease, BATCH).await;
        let rows = match claimed {
            Ok(rows) => rows,
            Err(e) => {
                journal::metrics().store_error("claim");
                tracing::debug!(store = inner.store.location(), error = %e, "claiming due deliveries failed");
                return None;
            }
        };
        let n = rows.len();
        let mut set = tokio::task::JoinSet::new();
        for row in rows {
            let inner = self.inner.clone();
            set.spawn(async move { inner.work(row).await });
        }
        while set.join_next().await.is_some() {}
        Some(n)
    }
}

impl<A: UpstreamClient> Inner<A> {
    /// The lock of the payment a queued PAYMENT_RESULT is about: `Ok(None)` for other rows
    /// (or when the store cannot be asked: then the outcome cannot be recorded either), `Err`
    /// when it stays busy (the row stays claimed and is delivered once its lease runs out).
    async fn lock(&self, row: &Delivery) -> Result<Option<PaymentLease>, ()> {
        let Some(locks) = &self.locks else {
            return Ok(None);
        };
        if row.notify_type != "PAYMENT_RESULT" {
            return Ok(None);
        }
        let Some(id) = crate::paylock::payment_of(&row.body) else {
            return Ok(None);
        };
        match locks
            .lock(&row.client_id, &id, Holder::Delivery, WORKER_WAIT)
            .await
        {
            Ok(lease) => Ok(Some(lease)),
            Err(e @ LockError::Busy { .. }) => {
                tracing::info!(event_id = %row.event_id, error = %e, "the payment of a queued result is being worked on; delivering it later");
                Err(())
            }
            Err(e) => {
                tracing::debug!(event_id = %row.event_id, error = %e, "the payment's lock could not be taken; delivering without it");
                Ok(None)
            }
        }
    }

    /// Delivers one claimed row and records the outcome (which releases the claim), under its
    /// payment's lock when it is a PAYMENT_RESULT.
    async fn work(&self, row: Delivery) {
        let Ok(lease) = self.lock(&row).await else {
            return;
        };
        self.deliver(row).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
    }

    async fn deliver(&self, row: Delivery) {
        let result = self.attempt(&row).await;
        let now = now_millis();
        let m = journal::metrics();
        let (id, merchant) = (row.event_id.clone(), row.merchant.clone());
        let max_age = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        let deadline = row.first_seen.saturating_add(max_age);
        let (op, recorded) = match result {
            Ok(status) => {
                m.delivery(&merchant, DeliveryOutcome::Delivered);
                tracing::info!(event_id = %id, merchant = %merchant, status, failed_attempts = row.attempts, notify_type = %row.notify_type, "queued notification delivered to the app");
                ("mark_delivered", self.store.mark_delivered(&id, now).await)
            }
            Err(error) if now >= deadline => {
                m.delivery(&merchant, DeliveryOutcome::Dead);
                tracing::warn!(event_id = %id, merchant = %merchant, attempts = row.attempts + 1, error = %error, max_delivery_age = %humantime::format_duration(self.max_age), "the app did not take the notification within max_delivery_age; marked dead (alipay-sidecar notifications retry --dead delivers it again)");
                (
                    "record_failure",
                    self.store.mark_dead(&id, &error, now).await,
                )
            }
            Err(error) => {
                m.delivery(&merchant, DeliveryOutcome::Failed);
                let next = next_attempt_at(&self.schedule, row.attempts + 1, now, deadline);
                tracing::warn!(event_id = %id, merchant = %merchant, attempts = row.attempts + 1, error = %error, retry_in_ms = next - now, "the app did not take a queued notification; retrying later");
                let r = self.store.retry_at(&id, &error, next, now).await;
                ("record_failure", r)
            }
        };
        if let Err(e) = recorded {
            m.store_error(op);
            tracing::warn!(store = self.store.location(), error = %e, event_id = %row.event_id, "the delivery's outcome could not be recorded; the row is delivered again once its lease expires");
        }
    }

    /// One delivery to the app: `Ok(status)` for a 2xx, else what went wrong.
    async fn attempt(&self, row: &Delivery) -> Result<u16, String> {
        let Some(route) = self.routes.get(&row.merchant) else {
            return Err(format!(
                "no merchant {:?} in the configuration (renamed or removed since the notification was stored)",
                row.merchant
            ));
        };
        let request = delivery_request(&route.route, row, self.timeout)
            .map_err(|e| format!("cannot build the request to the app: {e}"))?;
        match route.app.send(&request).await {
            Ok(r) if r.header.status.is_success() => Ok(r.header.status.as_u16()),
            Ok(r) => Err(format!(
                "the app answered HTTP {}",
                r.header.status.as_u16()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The request to the app for a stored row: its headers minus framing and the internal ones,
/// `X-Alipay-Sidecar-Verified: true` and the event id, to the route's path for the row (the
/// internal deliver-path header wins over the notify path; `path_map` and `base_path` apply;
/// the notify URL's query is kept).
fn delivery_request(
    route: &AppRoute,
    row: &Delivery,
    timeout: Duration,
) -> pingora::Result<UpstreamRequest> {
    let stored = |name: &str| {
        row.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let path = stored(DELIVER_PATH_HEADER).unwrap_or(&row.path);
    let target = route.target(path, stored(DELIVER_QUERY_HEADER));
    let mut head = RequestHeader::build("POST", target.as_bytes(), Some(row.headers.len() + 4))?;
    for (name, value) in &row.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_COPIED.contains(&lower.as_str())
            || lower.eq_ignore_ascii_case(VERIFIED_HEADER)
            || lower.eq_ignore_ascii_case(EVENT_ID_HEADER)
        {
            continue;
        }
        head.append_header(name.clone(), value.as_str())?;
    }
    head.insert_header("Host", route.authority.as_str())?;
    head.insert_header("Content-Length", row.body.len().to_string())?;
    head.insert_header(VERIFIED_HEADER, "true")?;
    head.insert_header(EVENT_ID_HEADER, row.event_id.as_str())?;
    Ok(UpstreamRequest {
        head,
        body: Bytes::from(row.body.clone()),
        max_response: MAX_APP_RESPONSE_BYTES,
        timeout,
    })
}

#[async_trait::async_trait]
impl<A: UpstreamClient> BackgroundService for DeliveryWorker<A> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tracing::info!(owner = %self.inner.owner, store = self.inner.store.location(), "delivery worker started");
        let mut failing = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let worked = self.turn().await;
            match (worked, failing) {
                (None, false) => {
                    failing = true;
                    tracing::warn!(store = self.inner.store.location(), "the delivery worker cannot reach the store; queued notifications wait until it is back");
                }
                (Some(_), true) => {
                    failing = false;
                    tracing::info!(
                        store = self.inner.store.location(),
                        "the delivery worker reaches the store again"
                    );
                }
                _ => {}
            }
            let wait = match worked {
                Some(n) if n > 0 => Duration::ZERO,
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("delivery worker stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(headers: &[(&str, &str)]) -> Delivery {
        Delivery {
            event_id: "evt_1".into(),
            merchant: "default".into(),
            client_id: "T_1".into(),
            path: "/alipay/notify".into(),
            notify_type: "PAYMENT_RESULT".into(),
            body: b"{}".to_vec(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            attempts: 0,
            first_seen: 0,
        }
    }

    fn route() -> AppRoute {
        let app = crate::config::AppUpstream {
            host: "127.0.0.1".into(),
            port: 3000,
            base_path: "/base".into(),
        };
        let map = [("/alipay/notify".to_string(), "/hooks/alipay".to_string())];
        AppRoute::new(&app, map.into_iter().collect())
    }

    fn header<'a>(r: &'a UpstreamRequest, name: &str) -> Vec<&'a str> {
        r.head
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn a_stored_row_is_delivered_with_its_headers_marked_and_its_event_id() {
        let stored = [
            ("Content-Type", "application/json; charset=UTF-8"),
            ("X-Alipay-Sidecar-Source", "inquiryPayment"),
            ("X-Alipay-Sidecar-Verified", "false"),
            ("X-Alipay-Sidecar-Event-Id", "evt_forged"),
            ("host", "alipay.example"),
            ("content-length", "999"),
            ("signature", "algorithm=RSA256,keyVersion=1,signature=x"),
            (DELIVER_QUERY_HEADER, "src=ams"),
        ];
        let r = delivery_request(&route(), &row(&stored), Duration::from_secs(3)).unwrap();
        assert_eq!(r.head.uri.to_string(), "/base/hooks/alipay?src=ams");
        assert_eq!(header(&r, "x-alipay-sidecar-verified"), ["true"]);
        assert_eq!(header(&r, "x-alipay-sidecar-event-id"), ["evt_1"]);
        assert_eq!(header(&r, "x-alipay-sidecar-source"), ["inquiryPayment"]);
        assert_eq!(header(&r, "host"), ["127.0.0.1:3000"]);
        assert_eq!(header(&r, "content-length"), ["2"]);
        assert_eq!(header(&r, "signature").len(), 1);
        assert!(
            header(&r, DELIVER_QUERY_HEADER).is_empty(),
            "internal, never sent"
        );
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(&r.body[..], b"{}");

        // the reconciler's deliver_path replaces the notify path and is never sent
        let r = delivery_request(
            &route(),
            &row(&[(DELIVER_PATH_HEADER, "/app/results")]),
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(r.head.uri.to_string(), "/base/app/results");
        assert!(header(&r, DELIVER_PATH_HEADER).is_empty());
    }

    // ---- the state machine, against an in-memory queue and app (crate::testing) ----

    use crate::testing::{answer, Fake, FakeQueue, QueueOutcome};

    const SCHEDULE: [Duration; 3] = [
        Duration::ZERO,
        Duration::from_secs(2),
        Duration::from_secs(10),
    ];
    const MAX_AGE: Duration = Duration::from_secs(3600);

    fn worker(queue: Arc<FakeQueue>, app: Arc<Fake>) -> DeliveryWorker<Arc<Fake>> {
        let routes = [(
            "default".to_string(),
            Route {
                app,
                route: route(),
            },
        )];
        let timings = Timings {
            schedule: SCHEDULE.to_vec(),
            max_age: MAX_AGE,
            timeout: Duration::from_secs(3),
        };
        DeliveryWorker::new(queue, routes.into_iter().collect(), timings)
    }

    fn app(status: u16) -> Arc<Fake> {
        Fake::new(move |_| Ok(answer(status, &[], b"")))
    }

    /// A queued row first seen `age` ago, after `attempts` failed attempts.
    fn queued(event_id: &str, merchant: &str, attempts: i64, age: Duration) -> Delivery {
        let mut r = row(&[("Content-Type", "application/json")]);
        r.event_id = event_id.into();
        r.merchant = merchant.into();
        r.attempts = attempts;
        r.first_seen = now_millis() - age.as_millis() as i64;
        r
    }

    #[tokio::test]
    async fn a_2xx_from_the_app_marks_the_row_delivered() {
        let queue = FakeQueue::with([queued("evt_a", "default", 0, Duration::ZERO)]);
        let app = app(204);
        let w = worker(queue.clone(), app.clone());
        assert_eq!(w.turn().await, Some(1));
        assert_eq!(queue.outcomes(), [QueueOutcome::Delivered("evt_a".into())]);
        let sent = app.only();
        assert_eq!(sent.head.uri.to_string(), "/base/hooks/alipay");
        assert_eq!(header(&sent, "x-alipay-sidecar-event-id"), ["evt_a"]);
        // nothing left: the next turn works nothing and sends nothing
        assert_eq!(w.turn().await, Some(0));
        assert_eq!(app.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_delivery_is_retried_on_the_schedule() {
        let queue = FakeQueue::with([
            queued("evt_b", "default", 0, Duration::ZERO),
            queued("evt_c", "default", 7, Duration::ZERO),
        ]);
        let w = worker(queue.clone(), app(500));
        let before = now_millis();
        assert_eq!(w.turn().await, Some(2));
        let after = now_millis();
        let mut outcomes = queue.outcomes();
        outcomes.sort_by_key(|o| format!("{o:?}"));
        let [QueueOutcome::Retry {
            event_id: b,
            error,
            next_at: next_b,
        }, QueueOutcome::Retry {
            event_id: c,
            next_at: next_c,
            ..
        }] = &outcomes[..]
        else {
            panic!("two retries: {outcomes:?}");
        };
        assert_eq!((b.as_str(), c.as_str()), ("evt_b", "evt_c"));
        assert_eq!(error, "the app answered HTTP 500");
        // first failure: the schedule's second gap; many failures: the last gap repeats
        assert!((before + 2000..=after + 2000).contains(next_b), "{next_b}");
        assert!(
            (before + 10_000..=after + 10_000).contains(next_c),
            "{next_c}"
        );
    }

    #[tokio::test]
    async fn retries_end_dead_at_max_delivery_age() {
        let old = queued("evt_d", "default", 12, MAX_AGE + Duration::from_secs(1));
        let queue = FakeQueue::with([old]);
        let w = worker(queue.clone(), app(503));
        w.turn().await;
        assert_eq!(
            queue.outcomes(),
            [QueueOutcome::Dead {
                event_id: "evt_d".into(),
                error: "the app answered HTTP 503".into(),
            }]
        );
        // the last retry is capped at max_delivery_age after the first copy
        let nearly = queued("evt_e", "default", 12, MAX_AGE - Duration::from_secs(1));
        let first_seen = nearly.first_seen;
        let queue = FakeQueue::with([nearly]);
        worker(queue.clone(), app(503)).turn().await;
        let [QueueOutcome::Retry { next_at, .. }] = &queue.outcomes()[..] else {
            panic!("a retry");
        };
        assert_eq!(*next_at, first_seen + MAX_AGE.as_millis() as i64);
    }

    #[tokio::test]
    async fn a_row_of_an_unknown_merchant_is_retried_not_sent() {
        let queue = FakeQueue::with([queued("evt_f", "gone", 0, Duration::ZERO)]);
        let app = app(200);
        worker(queue.clone(), app.clone()).turn().await;
        assert!(app.seen().is_empty());
        let [QueueOutcome::Retry { error, .. }] = &queue.outcomes()[..] else {
            panic!("a retry");
        };
        assert!(error.contains("no merchant \"gone\""), "{error}");
    }

    #[tokio::test]
    async fn a_store_out_of_reach_ends_the_turn() {
        let queue = FakeQueue::with([queued("evt_g", "default", 0, Duration::ZERO)]);
        queue
            .broken
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let app = app(200);
        assert_eq!(worker(queue.clone(), app.clone()).turn().await, None);
        assert!(app.seen().is_empty());
    }
}
