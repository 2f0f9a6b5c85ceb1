//! Delivery through the journal: suppressed re-sends, forward mode, failed deliveries recorded,
//! a broken store, store-and-forward, nothing unverified journaled.

use super::*;
use crate::headers::DELIVER_QUERY_HEADER;
use sidecar_store::EventKey;

fn journaled(
    policy: InboundPolicy,
    app: &Arc<Fake>,
    journal: &Arc<FakeJournal>,
) -> Inbound<Arc<Fake>> {
    let j: Arc<dyn Journal> = journal.clone();
    inbound_with(policy, route(&[]), app).with_journal(j)
}

fn suppress() -> InboundPolicy {
    InboundPolicy {
        duplicates: Duplicates::Suppress,
        ..policy()
    }
}

fn result_body(status: &str) -> Vec<u8> {
    format!(r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"X","resultStatus":"{status}"}},"paymentRequestId":"PR-1"}}"#).into_bytes()
}

fn event_id_of(req: &UpstreamRequest) -> String {
    header(&req.head.headers, EVENT_ID_HEADER)
        .expect("every journaled delivery carries the event id")
        .to_string()
}

#[tokio::test]
async fn re_sends_of_a_delivered_event_are_acknowledged_without_the_app() {
    let (app, journal) = (app(200, b"app ack"), FakeJournal::new());
    let h = journaled(suppress(), &app, &journal);
    let body = result_body("S");
    let first = h.handle(signed("/merchant/notify", "t1", &body)).await;
    assert_eq!(
        &first.body[..],
        b"app ack",
        "the app's own answer, as without a journal"
    );
    for time in ["t1", "t1", "t2-re-signed-later"] {
        let reply = h.handle(signed("/merchant/notify", time, &body)).await;
        assert_eq!(reply.head.status.as_u16(), 200);
        assert_eq!(&reply.body[..], ACK, "the exact SUCCESS acknowledgement");
        assert_eq!(reply.report.outcome, Outcome::Verified);
    }
    let sent = app.only();
    let events = journal.events();
    assert_eq!(events.len(), 1);
    let (id, e) = events.iter().next().unwrap();
    assert_eq!(&event_id_of(&sent), id);
    assert!(id.starts_with("evt_"));
    assert_eq!(e.status, sidecar_store::NotificationStatus::Delivered);
    assert_eq!(e.copies, 4);
    assert_eq!(e.entry.merchant, DEFAULT_MERCHANT);
    assert_eq!(e.entry.key.path, "/merchant/notify");
    assert_eq!(e.entry.deliver_at, None, "delivered in line, not queued");
    assert_eq!(&e.entry.body[..], &body[..]);

    // another result for the same payment is another event
    h.handle(signed("/merchant/notify", "t3", &result_body("F")))
        .await;
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(event_id_of(&seen[1]), *id);
    assert_eq!(journal.events().len(), 2);
}

#[tokio::test]
async fn suppressed_duplicates_are_signed_when_acknowledgements_are() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let policy = InboundPolicy {
        sign_acknowledgements: true,
        ..suppress()
    };
    let h = journaled(policy, &app, &journal);
    let body = result_body("S");
    h.handle(signed("/merchant/notify", "t1", &body)).await;
    let reply = h.handle(signed("/merchant/notify", "t2", &body)).await;
    assert_signed_ack(&reply);
    assert_eq!(app.seen().len(), 1);
}

#[tokio::test]
async fn forward_mode_delivers_every_copy_with_the_same_event_id() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let h = journaled(policy(), &app, &journal);
    let body = result_body("S");
    for time in ["t1", "t2", "t3"] {
        h.handle(signed("/merchant/notify", time, &body)).await;
    }
    let ids: Vec<String> = app.seen().iter().map(event_id_of).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(journal.events()[&ids[0]].copies, 3);
}

#[tokio::test]
async fn a_failed_delivery_is_recorded_and_the_resend_reaches_the_app() {
    let journal = FakeJournal::new();
    let app = Fake::new({
        let n = std::sync::atomic::AtomicUsize::new(0);
        move |_| {
            let status = if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                503
            } else {
                200
            };
            Ok(answer(status, &[], ACK))
        }
    });
    let h = journaled(suppress(), &app, &journal);
    let body = result_body("S");
    let reply = h.handle(signed("/merchant/notify", "t1", &body)).await;
    assert_eq!(reply.head.status.as_u16(), 503);
    let e = journal.events().into_values().next().unwrap();
    assert_eq!(e.status, sidecar_store::NotificationStatus::Pending);
    assert_eq!(e.failures, ["the app answered HTTP 503"]);
    let reply = h.handle(signed("/merchant/notify", "t2", &body)).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(app.seen().len(), 2, "a pending event is delivered again");
    let e = journal.events().into_values().next().unwrap();
    assert_eq!(e.status, sidecar_store::NotificationStatus::Delivered);
}

#[tokio::test]
async fn a_broken_store_never_stops_an_in_line_delivery() {
    let (app, journal) = (app(200, ACK), FakeJournal::broken());
    let h = journaled(suppress(), &app, &journal);
    let body = result_body("S");
    for time in ["t1", "t2"] {
        let reply = h.handle(signed("/merchant/notify", time, &body)).await;
        assert_eq!(reply.head.status.as_u16(), 200, "{reply:?}");
    }
    let seen = app.seen();
    assert_eq!(
        seen.len(),
        2,
        "without the store, re-sends cannot be recognised"
    );
    let want = EventKey::from_notification("T_111222333", "/merchant/notify", &body).event_id();
    assert_eq!(
        event_id_of(&seen[0]),
        want,
        "the event id is computed from the key"
    );
}

#[tokio::test]
async fn store_and_forward_acknowledges_once_stored_and_never_delivers_in_line() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let policy = InboundPolicy {
        acknowledge: Acknowledge::AfterStore,
        ..suppress()
    };
    let h = journaled(policy.clone(), &app, &journal);
    let body = result_body("S");
    for time in ["t1", "t2"] {
        let reply = h
            .handle(signed("/merchant/notify?src=ams", time, &body))
            .await;
        assert_eq!((reply.head.status.as_u16(), &reply.body[..]), (200, ACK));
    }
    assert!(app.seen().is_empty(), "the delivery worker delivers");
    let events = journal.events();
    assert_eq!(events.len(), 1, "a re-send is not queued twice");
    let e = events.into_values().next().unwrap();
    assert_eq!(e.copies, 2);
    assert_eq!(e.entry.deliver_at, Some(e.entry.now));
    let stored = |name: &str| {
        e.entry
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(stored(VERIFIED_HEADER), Some("true"));
    assert_eq!(stored(KEY_VERSION_HEADER), Some("1"));
    assert_eq!(
        stored("request-time"),
        Some("t1"),
        "the first copy's headers"
    );
    assert!(stored("signature").is_some());
    assert_eq!(stored(DELIVER_QUERY_HEADER), Some("src=ams"));
    assert_eq!(stored("host"), None);
    assert_eq!(stored("content-length"), None);
    assert_eq!(e.entry.key.path, "/merchant/notify", "the key has no query");

    // store down: 503, so that Alipay re-sends; the app never sees it
    let broken = FakeJournal::broken();
    let reply = journaled(policy, &app, &broken)
        .handle(signed("/merchant/notify", "t1", &body))
        .await;
    assert_eq!(reply.head.status.as_u16(), 503);
    assert_eq!(
        result_code(&reply).as_deref(),
        Some("SIDECAR_STORE_UNAVAILABLE")
    );
    assert_eq!(reply.report.outcome, Outcome::Error);
    assert!(app.seen().is_empty());
}

#[tokio::test]
async fn unverified_notifications_are_never_journaled() {
    let (app, journal) = (app(200, ACK), FakeJournal::new());
    let shadow = InboundPolicy {
        mode: InboundMode::Shadow,
        ..suppress()
    };
    let mut req = signed("/merchant/notify", "t1", &result_body("S"));
    req.body = Bytes::from(result_body("F"));
    journaled(shadow, &app, &journal).handle(req).await;
    assert_eq!(app.seen().len(), 1);
    assert_eq!(header(&app.only().head.headers, EVENT_ID_HEADER), None);
    assert!(journal.events().is_empty());
    // nor refused ones
    let mut req = signed("/merchant/notify", "t1", &result_body("S"));
    req.body = Bytes::from(result_body("F"));
    journaled(suppress(), &app, &journal).handle(req).await;
    assert!(journal.events().is_empty());
}
