//! The outbound handler's unit tests, by concern (no sockets: the gateway is an in-memory fake);
//! the shared builders are here.

use super::*;
use crate::merchants::{KeySource, DEFAULT_MERCHANT, UNSELECTED_MERCHANT};
use crate::testing::*;
use crate::upstream::UpstreamError;
use std::io::Write;
use std::sync::Mutex;

const CLIENT: &str = "T_111222333";
const PAY: &str = "/ams/api/v1/payments/pay";
const BODY: &[u8] = r#"{"paymentRequestId":"p1","note":"\u73cd 珍珠 🧋"}"#.as_bytes();

fn policy() -> OutboundPolicy {
    OutboundPolicy {
        allowed_path_prefixes: vec!["/ams/api/".into()],
        allowed_hosts: vec!["sidecar.internal".into()],
        loopback_only: true,
        sandbox_path_rewrite: true,
        request_time_format: RequestTimeFormat::EpochMillis,
        verify_responses: true,
        max_response_time_skew: None,
        request_timeout: Duration::from_secs(15),
        body: BodyPolicy {
            max_bytes: 1 << 20,
            limit_key: "[outbound] max_body_bytes",
            timeout: Duration::from_secs(10),
        },
    }
}

fn outbound_with(
    policy: OutboundPolicy,
    client_id: &str,
    agent_token: Option<&str>,
    gateway: &Arc<Fake>,
) -> Outbound<Arc<Fake>> {
    let keys: Arc<dyn KeySource> = Arc::new(keyset(client_id));
    let merchant = OutboundMerchant::new(
        DEFAULT_MERCHANT,
        client_id,
        agent_token.map(str::to_string),
        keys,
        gateway.clone(),
        ("open-sea-global.alipay.com", 443),
    );
    Outbound::new(policy, merchant)
}

fn outbound(gateway: &Arc<Fake>) -> Outbound<Arc<Fake>> {
    outbound_with(policy(), CLIENT, None, gateway)
}

/// A gateway that answers `status` with `body`, signed by Alipay over the path and
/// client id it was sent (keyVersion `version`).
fn alipay(status: u16, version: &'static str, body: &'static [u8]) -> Arc<Fake> {
    signing(status, version, "", body, body)
}

/// A gateway that answers `status` with `sent` (`Content-Encoding: encoding` unless
/// empty), signed by Alipay (keyVersion `version`) over `signed`, the path and the client
/// id it was sent.
fn signing(
    status: u16,
    version: &'static str,
    encoding: &'static str,
    signed: &'static [u8],
    sent: &'static [u8],
) -> Arc<Fake> {
    Fake::new(move |req| {
        let target = req.head.uri.path_and_query().expect("target").as_str();
        let client = header(&req.head.headers, "client-id").expect("client-id");
        let time = "2024-05-01T12:34:57+08:00";
        let sig = alipay_signature(version, target, client, time, signed);
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("response-time", time),
            ("signature", sig.as_str()),
        ];
        if !encoding.is_empty() {
            headers.push(("Content-Encoding", encoding));
        }
        Ok(answer(status, &headers, sent))
    })
}

fn canned(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
) -> Arc<Fake> {
    Fake::new(move |_| Ok(answer(status, headers, body)))
}

fn pay(headers: &[(&str, &str)]) -> Request {
    request(PAY, headers, BODY)
}

fn marker(reply: &Reply) -> Option<&str> {
    header(&reply.head.headers, VERIFIED_HEADER)
}

fn refused_with(reply: &Reply, error: SidecarError) {
    assert_eq!(reply.head.status.as_u16(), error.http_status(), "{reply:?}");
    assert_eq!(result_code(reply).as_deref(), Some(error.code()));
    assert_eq!(
        header(&reply.head.headers, "x-alipay-sidecar-error"),
        Some(error.code())
    );
    assert_eq!(reply.report.error, Some(error));
    assert_eq!(reply.report.status, error.http_status());
    assert_eq!(
        marker(reply),
        None,
        "a refusal carries no verification marker"
    );
}

/// Withheld as `SIDECAR_RESPONSE_SIGNATURE_INVALID`, counted with `reason`.
fn withheld(reply: &Reply, reason: &'static str) {
    refused_with(reply, SidecarError::ResponseSignatureInvalid);
    assert_eq!(
        reply.report.verification,
        Some(VerificationResult::Invalid(reason))
    );
}

mod api_key;
mod merchants;
mod reconcile;
mod request;
mod response;
