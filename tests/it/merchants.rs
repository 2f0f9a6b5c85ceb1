//! Several merchants in one running sidecar (`run`, real sockets): outbound routed by
//! listener and by `X-Alipay-Sidecar-Merchant`, inbound by `client-id`, each merchant's keys
//! reloading on their own, metrics per merchant.
//!
//! Two fake gateways stand for two regions: each knows only its own merchant's public key and
//! client id and signs with its own "Alipay" key, so a request signed for the wrong merchant,
//! or sent to the wrong gateway, fails there, and an answer verified with the wrong merchant's
//! Alipay key fails in the sidecar.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use alipay_sidecar::mock_gateway::{MockGateway, MockGatewayConfig};

use crate::support::{
    key, pay_body, request, rt, vector_gateway, App, Behaviour, Response, Sidecar, PAY,
};

const SG: &str = "2188120012345678";
const EU: &str = "2188220087654321";

/// Two merchants, two gateways, two apps, one sidecar.
struct Two {
    sg_gw: MockGateway,
    eu_gw: MockGateway,
    sg_app: App,
    eu_app: App,
    sidecar: Sidecar,
    dir: tempfile::TempDir,
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// sg signs with the vectors' merchant key (its gateway verifies with the matching public
/// key and signs with the vectors' Alipay key); eu signs with the vectors' *Alipay* private
/// key as its merchant key, and its gateway signs with a key it generates. No key is shared.
fn config(two: &TwoPaths, eu_version: u32) -> String {
    format!(
        "[outbound]\nlisten = \"127.0.0.1:0\"\ngateway = \"{sg_gw}\"\nca_file = \"sg-gw/ca.pem\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{sg_app}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n\
         [[merchants]]\nname = \"sg\"\nclient_id = \"{SG}\"\n\
         [merchants.keys]\nmerchant_private_key = \"sg/m.pem\"\nalipay_public_keys = {{ \"1\" = \"sg/a.pem\" }}\n\
         [[merchants]]\nname = \"eu\"\nclient_id = \"{EU}\"\n\
         [merchants.keys]\nmerchant_private_key = \"eu/m.pem\"\nmerchant_key_version = {eu_version}\n\
         alipay_public_keys = {{ \"1\" = \"eu/a.pem\" }}\n\
         [merchants.outbound]\ngateway = \"{eu_gw}\"\nca_file = \"eu-gw/ca.pem\"\nlisten = \"127.0.0.1:0\"\n\
         [merchants.inbound]\nforward_to = \"{eu_app}\"\n",
        sg_gw = two.sg_gw,
        eu_gw = two.eu_gw,
        sg_app = two.sg_app,
        eu_app = two.eu_app,
    )
}

struct TwoPaths {
    sg_gw: String,
    eu_gw: String,
    sg_app: String,
    eu_app: String,
}

impl Two {
    fn start() -> Two {
        let dir = tempfile::tempdir().unwrap();
        let notify = |cfg: &mut MockGatewayConfig| {
            cfg.notify_backoff = vec![Duration::ZERO, Duration::from_millis(300)];
        };
        let sg_gw = vector_gateway(&dir.path().join("sg-gw"), |cfg| {
            cfg.expected_client_id = Some(SG.into());
            notify(cfg);
        });
        let mut cfg = MockGatewayConfig::new(key("alipay", "public_spki_pem"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.tls = Some(dir.path().join("eu-gw"));
        cfg.expected_client_id = Some(EU.into());
        notify(&mut cfg);
        let eu_gw = rt().block_on(MockGateway::start(cfg)).expect("eu gateway");

        write(
            dir.path(),
            "sg/m.pem",
            &key("merchant", "private_pkcs8_pem"),
        );
        write(dir.path(), "sg/a.pem", &key("alipay", "public_spki_pem"));
        write(dir.path(), "eu/m.pem", &key("alipay", "private_pkcs8_pem"));
        write(dir.path(), "eu/a.pem", &eu_gw.alipay_public_key_pem());

        let (sg_app, eu_app) = (App::start(Behaviour::Ack), App::start(Behaviour::Ack));
        let paths = Two::paths_of(&sg_gw, &eu_gw, &sg_app, &eu_app);
        let sidecar = Sidecar::start(dir.path(), &config(&paths, 1));
        Two {
            sg_gw,
            eu_gw,
            sg_app,
            eu_app,
            sidecar,
            dir,
        }
    }

    fn paths_of(sg_gw: &MockGateway, eu_gw: &MockGateway, sg_app: &App, eu_app: &App) -> TwoPaths {
        let url = |gw: &MockGateway| format!("https://127.0.0.1:{}", gw.local_addr().port());
        TwoPaths {
            sg_gw: url(sg_gw),
            eu_gw: url(eu_gw),
            sg_app: sg_app.url(),
            eu_app: eu_app.url(),
        }
    }

    fn paths(&self) -> TwoPaths {
        Two::paths_of(&self.sg_gw, &self.eu_gw, &self.sg_app, &self.eu_app)
    }

    /// A pay on `listener` with the merchant header `merchant` (none when empty) whose
    /// notification comes back to the sidecar's inbound listener.
    fn pay(&self, listener: &str, merchant: &str, id: &str) -> Response {
        let notify = format!(
            r#","paymentNotifyUrl":"http://{}/alipay/notify""#,
            self.sidecar.addr("inbound")
        );
        let mut headers = vec![("Content-Type", "application/json; charset=UTF-8")];
        if !merchant.is_empty() {
            headers.push(("X-Alipay-Sidecar-Merchant", merchant));
        }
        request(
            self.sidecar.addr(listener),
            "POST",
            PAY,
            &headers,
            pay_body(id, "5800", &notify).as_bytes(),
        )
        .unwrap()
    }

    /// The client ids of the pays `gw` received.
    fn client_ids(gw: &MockGateway) -> Vec<String> {
        gw.received()
            .iter()
            .filter(|r| r.target == PAY)
            .map(|r| {
                r.headers
                    .iter()
                    .find(|(n, _)| n == "client-id")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn assert_verified(r: &Response, what: &str, logs: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: {}\n{logs}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        r.header("x-alipay-sidecar-verified"),
        Some("true"),
        "{what}"
    );
}

#[test]
fn two_merchants_route_by_listener_header_and_client_id_end_to_end() {
    let two = Two::start();
    let logs = || two.sidecar.logs();

    // outbound: the shared listener routes by header, each to its own gateway and keys
    assert_verified(&two.pay("outbound", "sg", "sg-1"), "sg by header", &logs());
    assert_verified(&two.pay("outbound", "eu", "eu-1"), "eu by header", &logs());
    // eu's own listener needs no header, and ignores one naming another merchant
    assert_verified(
        &two.pay("outbound:eu", "", "eu-2"),
        "eu own listener",
        &logs(),
    );
    assert_verified(
        &two.pay("outbound:eu", "sg", "eu-3"),
        "eu own listener",
        &logs(),
    );
    assert_eq!(Two::client_ids(&two.sg_gw), [SG]);
    assert_eq!(Two::client_ids(&two.eu_gw), [EU, EU, EU]);
    for r in two
        .sg_gw
        .received()
        .iter()
        .chain(two.eu_gw.received().iter())
    {
        assert!(
            !r.headers
                .iter()
                .any(|(n, _)| n == "x-alipay-sidecar-merchant"),
            "the merchant header reached a gateway: {:?}",
            r.headers
        );
    }

    // the shared listener refuses a request that names no merchant, or an unknown one
    for (merchant, id) in [("", "x-1"), ("us", "x-2")] {
        let r = two.pay("outbound", merchant, id);
        assert_eq!(r.status, 400, "{merchant:?}");
        let (status, code) = r.result_code();
        assert_eq!(
            (status.as_str(), code.as_str()),
            ("F", "SIDECAR_MERCHANT_UNKNOWN")
        );
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(body.contains("sg, eu"), "{body}");
    }
    assert_eq!(two.sg_gw.received().len() + two.eu_gw.received().len(), 4);

    // inbound: each gateway's signed notification reaches its merchant's app, by client-id
    let sg_got = two.sg_app.wait_received(1);
    let eu_got = two.eu_app.wait_received(3);
    assert_eq!(sg_got.len(), 1, "{}", logs());
    assert_eq!(eu_got.len(), 3, "{}", logs());
    for (got, client_id) in [(&sg_got, SG), (&eu_got, EU)] {
        for g in got.iter() {
            assert_eq!(g.one("client-id"), Some(client_id));
            assert_eq!(g.one("x-alipay-sidecar-verified"), Some("true"));
        }
    }

    // metrics carry the merchant
    let m = two.sidecar.metrics();
    let count = |direction: &str, merchant: &str| {
        m.sum(
            "alipay_sidecar_requests_total",
            &[("direction", direction), ("merchant", merchant)],
        )
    };
    assert_eq!(count("outbound", "sg"), 1.0, "{}", m.text);
    assert_eq!(count("outbound", "eu"), 3.0, "{}", m.text);
    assert_eq!(count("outbound", "unknown"), 2.0, "{}", m.text);
    assert_eq!(count("inbound", "sg"), 1.0, "{}", m.text);
    assert_eq!(count("inbound", "eu"), 3.0, "{}", m.text);
    assert!(
        logs()
            .lines()
            .any(|l| l.contains("\"merchant\":\"eu\"") && l.contains("outbound")),
        "no log line names the merchant:\n{}",
        logs()
    );
}

/// `(merchant, role, key_version)` of every live key in a `/metrics` scrape.
fn live_keys(sidecar: &Sidecar) -> BTreeSet<(String, String, String)> {
    sidecar
        .metrics()
        .matching("alipay_sidecar_key_info", &[])
        .filter(|s| s.value == 1.0)
        .map(|s| {
            let label = |name: &str| s.labels.get(name).cloned().unwrap_or_default();
            (label("merchant"), label("role"), label("key_version"))
        })
        .collect()
}

fn expected(eu_version: &str) -> BTreeSet<(String, String, String)> {
    [
        ("sg", "merchant_private", "1"),
        ("sg", "alipay_public", "1"),
        ("eu", "merchant_private", eu_version),
        ("eu", "alipay_public", "1"),
    ]
    .iter()
    .map(|(m, r, v)| (m.to_string(), r.to_string(), v.to_string()))
    .collect()
}

#[test]
fn one_merchants_broken_key_does_not_hold_back_the_others() {
    let two = Two::start();
    let sidecar = &two.sidecar;
    assert_eq!(live_keys(sidecar), expected("1"), "{}", sidecar.logs());

    // sg's key file breaks while eu moves to merchant key version 2
    let sg_key = key("merchant", "private_pkcs8_pem");
    write(two.dir.path(), "sg/m.pem", &sg_key[..sg_key.len() / 2]);
    std::fs::write(&sidecar.config_path, config(&two.paths(), 2)).unwrap();
    let r = sidecar.reload();
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["reloaded"], false);
    assert_eq!(
        body["failed_merchants"],
        serde_json::json!(["sg"]),
        "{body}"
    );
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("merchant sg") && error.contains("m.pem") && !error.contains("merchant eu"),
        "{error}"
    );
    // eu's new key version is live, sg keeps its old set, and the sidecar stays ready
    assert_eq!(live_keys(sidecar), expected("2"));
    assert_eq!(sidecar.admin_get("/readyz").status, 200);
    assert!(
        sidecar
            .logs()
            .lines()
            .any(|l| l.contains("key reload failed") && l.contains("sg")),
        "{}",
        sidecar.logs()
    );
    // both merchants keep signing: sg with its old key, eu with its (same) key, now version 2
    assert_verified(
        &two.pay("outbound", "sg", "sg-after"),
        "sg",
        &sidecar.logs(),
    );
    assert_verified(
        &two.pay("outbound", "eu", "eu-after"),
        "eu",
        &sidecar.logs(),
    );
    let eu_pay = two
        .eu_gw
        .received()
        .into_iter()
        .rev()
        .find(|r| r.target == PAY)
        .unwrap();
    let signature = eu_pay
        .headers
        .iter()
        .find(|(n, _)| n == "signature")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(signature.contains("keyVersion=2"), "{signature}");

    // fixed: both reload, the 200 body names each merchant's keys
    write(two.dir.path(), "sg/m.pem", &sg_key);
    let r = sidecar.reload();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["reloaded"], true);
    let lines: Vec<&str> = body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("sg: merchant_private 1 ")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("eu: merchant_private 2 ")),
        "{lines:?}"
    );
    assert_eq!(live_keys(sidecar), expected("2"));
}
