//! The inbound handler's unit tests, by concern (no sockets: the app is an in-memory fake);
//! the shared builders are here.

use super::*;
use crate::headers::{CONFLICT_HEADER, EVENT_ID_HEADER, KEY_VERSION_HEADER, VERIFIED_HEADER};
use crate::merchants::{DEFAULT_MERCHANT, UNSELECTED_MERCHANT};
use crate::testing::*;
use crate::upstream::UpstreamError;

const ACK: &[u8] = ACK_BODY.as_bytes();

fn policy() -> InboundPolicy {
    InboundPolicy {
        max_request_time_skew: None,
        acknowledge: Acknowledge::App,
        sign_acknowledgements: false,
        mode: InboundMode::Enforce,
        forward_timeout: Duration::from_secs(10),
        body: BodyPolicy {
            max_bytes: 1 << 20,
            limit_key: "[inbound] max_body_bytes",
            timeout: Duration::from_secs(10),
        },
        duplicates: Duplicates::Forward,
        body_budget_bytes: 1 << 20,
        replay_window_entries: 0,
    }
}

fn route(path_map: &[(&str, &str)]) -> AppRoute {
    AppRoute::new(
        &AppUpstream {
            host: "127.0.0.1".into(),
            port: 3000,
            base_path: String::new(),
        },
        path_map
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

fn inbound_with(policy: InboundPolicy, route: AppRoute, app: &Arc<Fake>) -> Inbound<Arc<Fake>> {
    let keys: Arc<dyn KeySource> = Arc::new(keyset("T_111222333"));
    let merchant = InboundMerchant::new(DEFAULT_MERCHANT, "T_111222333", keys, app.clone(), route);
    Inbound::new(policy, merchant)
}

fn inbound(app: &Arc<Fake>) -> Inbound<Arc<Fake>> {
    inbound_with(policy(), route(&[]), app)
}

/// An app that answers `status` with `body`.
fn app(status: u16, body: &'static [u8]) -> Arc<Fake> {
    Fake::new(move |_| {
        Ok(answer(
            status,
            &[("Content-Type", "application/json")],
            body,
        ))
    })
}

/// A published notification vector as the request Alipay sends.
fn published(id: &str, extra: &[(&str, &str)]) -> Request {
    let (client, time, sig) = (
        input(id, "client_id"),
        input(id, "time"),
        input(id, "signature_header"),
    );
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("client-id", client.as_str()),
        ("request-time", time.as_str()),
        ("signature", sig.as_str()),
    ];
    headers.extend_from_slice(extra);
    request(&input(id, "uri"), &headers, input(id, "body").as_bytes())
}

/// A notification to `target` signed now by the vectors' Alipay key, with `time`.
fn signed(target: &str, time: &str, body: &[u8]) -> Request {
    let sig = alipay_signature("1", target, "T_111222333", time, body);
    request(
        target,
        &[
            ("client-id", "T_111222333"),
            ("request-time", time),
            ("signature", &sig),
        ],
        body,
    )
}

/// The reply is the SUCCESS acknowledgement signed with the merchant key over the notify
/// target and its exact body.
fn assert_signed_ack(reply: &Reply) {
    let hs = &reply.head.headers;
    let time = header(hs, "response-time").expect("response-time");
    let content =
        crate::protocol::content_to_sign("POST", "/merchant/notify", "T_111222333", time, ACK);
    merchant_public()
        .verify(&content, header(hs, "signature").expect("signature"))
        .expect("the acknowledgement is signed over the notify target and its exact body");
}

fn refused_with(reply: &Reply, error: SidecarError, result: VerificationResult) {
    assert_eq!(reply.head.status.as_u16(), error.http_status(), "{reply:?}");
    assert_eq!(result_code(reply).as_deref(), Some(error.code()));
    assert_eq!(reply.report.error, Some(error));
    assert_eq!(reply.report.verification, Some(result));
}

mod deliver;
mod hook;
mod journal;
mod verify;
