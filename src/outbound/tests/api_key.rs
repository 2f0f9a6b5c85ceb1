//! API-key mode: the sidecar's bearer key, signed answers still verified, a TEST key never on a
//! live path.

use super::*;

const API_KEY: &str = "isak_PROD_VF8xMTEyMjIzMzM_UnitTestSecret";

fn api_key_outbound(key: &str, gateway: &Arc<Fake>) -> Outbound<Arc<Fake>> {
    api_key_outbound_with(policy(), key, gateway)
}

fn api_key_outbound_with(
    policy: OutboundPolicy,
    key: &str,
    gateway: &Arc<Fake>,
) -> Outbound<Arc<Fake>> {
    let mut keys = (*keyset(CLIENT)).clone();
    keys.credential = Credential::ApiKey(crate::protocol::ApiKey::parse(key).unwrap());
    let keys: Arc<dyn KeySource> = Arc::new(Arc::new(keys));
    let merchant = OutboundMerchant::new(
        DEFAULT_MERCHANT,
        CLIENT,
        None,
        keys,
        gateway.clone(),
        ("open-sea-global.alipay.com", 443),
    );
    Outbound::new(policy, merchant)
}

/// Alipay's answer signed for [`CLIENT`] over `signed` (the request carries no client id
/// in API-key mode).
fn signed_for_client(signed: &'static [u8], sent: &'static [u8]) -> Arc<Fake> {
    Fake::new(move |req| {
        let target = req.head.uri.path_and_query().expect("target").as_str();
        let time = "2024-05-01T12:34:57+08:00";
        let sig = alipay_signature("1", target, CLIENT, time, signed);
        Ok(answer(
            200,
            &[("response-time", time), ("signature", sig.as_str())],
            sent,
        ))
    })
}

#[tokio::test]
async fn api_key_mode_sends_the_sidecars_bearer_key_and_marks_unsigned_answers() {
    let gw = canned(
        200,
        &[("Content-Type", "application/json")],
        br#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#,
    );
    let h = api_key_outbound(API_KEY, &gw);
    let reply = h
        .handle(pay(&[
            (
                "Authorization",
                "Bearer isak_PROD_VF8xMTEyMjIzMzM_TheAppsOwn",
            ),
            ("Cookie", "a=b"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Signature", "algorithm=RSA256,keyVersion=1,signature=x"),
        ]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(marker(&reply), Some("unsigned-api-key"));
    assert_eq!(reply.report.outcome, Outcome::Forwarded);
    let sent = gw.only();
    let auth: Vec<_> = sent.head.headers.get_all("authorization").iter().collect();
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].as_bytes(), format!("Bearer {API_KEY}").as_bytes());
    assert!(auth[0].is_sensitive(), "never indexed by HPACK");
    for h in [
        "client-id",
        "request-time",
        "signature",
        "cookie",
        "proxy-authorization",
    ] {
        assert!(!sent.head.headers.contains_key(h), "{h} was sent");
    }
    assert_eq!(&sent.body[..], BODY, "the same bytes");
}

#[tokio::test]
async fn api_key_mode_still_verifies_signed_answers() {
    let body: &[u8] = br#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"}}"#;
    let reply = api_key_outbound(API_KEY, &signed_for_client(body, body))
        .handle(pay(&[]))
        .await;
    assert_eq!(marker(&reply), Some("true"));
    let reply = api_key_outbound(API_KEY, &signed_for_client(b"{}", body))
        .handle(pay(&[]))
        .await;
    withheld(&reply, "mismatch");
}

#[tokio::test]
async fn a_test_api_key_never_calls_a_live_path() {
    const TEST_KEY: &str = "isak_TEST_VF8xMTEyMjIzMzM_UnitTestSecret";
    let gw = canned(200, &[], b"{}");
    let no_rewrite = OutboundPolicy {
        sandbox_path_rewrite: false,
        ..policy()
    };
    let reply = api_key_outbound_with(no_rewrite, TEST_KEY, &gw)
        .handle(pay(&[]))
        .await;
    refused_with(&reply, SidecarError::PathNotAllowed);
    assert!(gw.seen().is_empty(), "nothing was sent");
    // with sandbox_path_rewrite, a TEST key's live path goes to the sandbox path
    let reply = api_key_outbound(TEST_KEY, &gw).handle(pay(&[])).await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert_eq!(
        gw.only().head.uri.path(),
        "/ams/sandbox/api/v1/payments/pay"
    );
}
