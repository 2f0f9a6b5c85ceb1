//! Several merchants on one shared listener: chosen by `X-Alipay-Sidecar-Merchant`, which is
//! never forwarded.

use super::*;

/// Two merchants on one shared listener, each with its own gateway client.
fn two_merchants(sg: &Arc<Fake>, eu: &Arc<Fake>) -> Outbound<Arc<Fake>> {
    let merchant = |name: &str, id: &str, gw: &Arc<Fake>, host: &str| {
        let keys: Arc<dyn KeySource> = Arc::new(keyset(id));
        OutboundMerchant::new(name, id, None, keys, gw.clone(), (host, 443))
    };
    Outbound::shared(
        policy(),
        vec![
            merchant("sg", "T_SG", sg, "open-sea-global.alipay.com"),
            merchant("eu", CLIENT, eu, "open-eu-global.alipay.com"),
        ],
    )
}

#[tokio::test]
async fn several_merchants_route_by_header_and_the_header_is_not_forwarded() {
    let (sg, eu) = (alipay(200, "1", br#"{}"#), alipay(200, "1", br#"{}"#));
    let h = two_merchants(&sg, &eu);
    let reply = h.handle(pay(&[("X-Alipay-Sidecar-Merchant", "eu")])).await;
    assert_eq!(reply.head.status.as_u16(), 200, "{reply:?}");
    assert_eq!(marker(&reply), Some("true"));
    assert!(sg.seen().is_empty(), "sg's gateway got eu's request");
    let sent = eu.only();
    let hs = &sent.head.headers;
    assert_eq!(header(hs, "client-id"), Some(CLIENT));
    assert_eq!(header(hs, "host"), Some("open-eu-global.alipay.com"));
    assert!(header(hs, "x-alipay-sidecar-merchant").is_none());
    assert_eq!(&*reply.report.merchant, "eu");

    h.handle(pay(&[("X-Alipay-Sidecar-Merchant", " sg ")]))
        .await;
    assert_eq!(header(&sg.only().head.headers, "client-id"), Some("T_SG"));
}

#[tokio::test]
async fn several_merchants_without_or_with_an_unknown_name_get_400_naming_them() {
    let (sg, eu) = (alipay(200, "1", br#"{}"#), alipay(200, "1", br#"{}"#));
    let h = two_merchants(&sg, &eu);
    for headers in [
        vec![],
        vec![("X-Alipay-Sidecar-Merchant", "us")],
        vec![
            ("X-Alipay-Sidecar-Merchant", "sg"),
            ("X-Alipay-Sidecar-Merchant", "eu"),
        ],
    ] {
        let reply = h.handle(pay(&headers)).await;
        assert_eq!(reply.head.status.as_u16(), 400, "{headers:?}");
        assert_eq!(
            result_code(&reply).as_deref(),
            Some("SIDECAR_MERCHANT_UNKNOWN")
        );
        let body = String::from_utf8_lossy(&reply.body).to_string();
        assert!(body.contains("sg, eu"), "{body}");
        assert_eq!(&*reply.report.merchant, UNSELECTED_MERCHANT);
    }
    assert!(sg.seen().is_empty() && eu.seen().is_empty());
}

#[tokio::test]
async fn one_merchant_ignores_the_merchant_header() {
    let gw = alipay(200, "1", br#"{}"#);
    let reply = outbound(&gw)
        .handle(pay(&[("X-Alipay-Sidecar-Merchant", "nobody")]))
        .await;
    assert_eq!(reply.head.status.as_u16(), 200);
    assert!(header(&gw.only().head.headers, "x-alipay-sidecar-merchant").is_none());
    assert_eq!(&*reply.report.merchant, DEFAULT_MERCHANT);
}
