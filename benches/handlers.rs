//! The handler cores without sockets, beside the raw engine, in one run: what the sidecar's
//! own request path costs on top of the RSA work it cannot avoid.
//!
//! - `handlers/engine_sign`: `sign_content` over a 1 KiB pay request's content (merchant key).
//! - `handlers/outbound_handle`: one pay request through `Outbound::check_head` and
//!   `Outbound::handle` (signed with the merchant key, the pre-signed answer of an in-memory
//!   gateway verified with Alipay's key) — what the adapter drives per request, minus sockets.
//! - `handlers/engine_verify`: `Verifier::verify` of a notification's signature.
//! - `handlers/inbound_handle`: one signed notification through `Inbound::check_head` and
//!   `Inbound::handle` (verified, delivered to an in-memory app that acknowledges).
//!
//! After a measured run it prints the overhead per request as ratios (outbound handler ÷
//! engine sign, inbound handler ÷ engine verify) from criterion's estimates of this run: a
//! figure that does not depend on the machine's load the way the socket harness
//! (`benches/sidecar.sh`) does, for later changes to the request path to quote.
//!
//! The handlers are built the way the binary builds them: the policies from a parsed config
//! (the production defaults), the keys by `preflight::load` (start-up's path) from key files (the
//! published vectors' keys, tests/data/ams-public.json) written to a temporary folder. Two
//! settings are changed, each said where it is.
//!
//! Run: `cargo bench --bench handlers` (`cargo test --bench handlers` runs each once).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alipay_sidecar::config::Config;
use alipay_sidecar::handler::{Handler, Reply, Request};
use alipay_sidecar::inbound::{AppRoute, Inbound, InboundMerchant, InboundPolicy};
use alipay_sidecar::keyset::KeySet;
use alipay_sidecar::merchants::KeySource;
use alipay_sidecar::metrics::Outcome;
use alipay_sidecar::outbound::{Outbound, OutboundMerchant, OutboundPolicy};
use alipay_sidecar::preflight;
use alipay_sidecar::protocol::{
    content_to_sign, format_iso8601, sign_content, PrivateKey, ACK_BODY,
};
use alipay_sidecar::upstream::{UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};
use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use pingora::http::{RequestHeader, ResponseHeader};
use std::hint::black_box;

const CLIENT_ID: &str = "T_111222333";
const PAY: &str = "/ams/api/v1/payments/pay";
const NOTIFY: &str = "/alipay/notify";
const GATEWAY: &str = "open-sea-global.alipay.com";
/// The criterion group; its estimates are read back from `<target>/criterion/handlers/`.
const GROUP: &str = "handlers";

/// `tests/data/ams-public.json`: the published vectors and their key pairs.
fn vectors() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ams-public.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the vectors file is JSON")
}

fn pem<'a>(vectors: &'a serde_json::Value, role: &str, kind: &str) -> &'a str {
    vectors["keys"][role][kind]
        .as_str()
        .unwrap_or_else(|| panic!("the vectors file has no keys.{role}.{kind}"))
}

/// A pay request body of `len` bytes (the size the signature bench measures).
fn pay_body(len: usize) -> Bytes {
    let mut b = b"{\"paymentRequestId\":\"pay_1\",\"note\":\"".to_vec();
    b.resize(len - 2, b'x');
    b.extend_from_slice(b"\"}");
    Bytes::from(b)
}

fn now_iso8601() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    format_iso8601(i64::try_from(ms).expect("millis fit i64"))
}

/// An upstream that answers every request with the same complete response, built once:
/// the gateway (its answer signed by Alipay ahead of time) or the app (its acknowledgement).
struct Canned(UpstreamResponse);

impl UpstreamClient for Canned {
    async fn send(&self, _: &UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        Ok(self.0.clone())
    }
}

fn response(headers: &[(&str, &str)], body: &[u8]) -> UpstreamResponse {
    let mut header = ResponseHeader::build(200, None).expect("status");
    for (name, value) in headers {
        header
            .append_header(name.to_string(), *value)
            .expect("header");
    }
    UpstreamResponse {
        header,
        body: Bytes::copy_from_slice(body),
        elapsed: Duration::ZERO,
    }
}

fn head(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut head = RequestHeader::build("POST", target.as_bytes(), None).expect("head");
    for (name, value) in headers {
        head.append_header(name.to_string(), *value)
            .expect("header");
    }
    head
}

/// Everything the benches share: the config, the merchant's key set and Alipay's private key.
struct Setup {
    config: Config,
    keys: Arc<KeySet>,
    alipay: PrivateKey,
}

/// Writes the vectors' keys and a config with `[outbound]` and `[inbound]` (every other
/// value its default) to a temporary folder, and loads them as the binary does.
fn setup() -> Setup {
    let v = vectors();
    let dir = tempfile::tempdir().expect("temporary folder");
    std::fs::write(
        dir.path().join("merchant.pem"),
        pem(&v, "merchant", "private_pkcs8_pem"),
    )
    .expect("write key");
    std::fs::write(
        dir.path().join("alipay.pem"),
        pem(&v, "alipay", "public_spki_pem"),
    )
    .expect("write key");
    let text = format!(
        "client_id = \"{CLIENT_ID}\"\n\
         [keys]\n\
         merchant_private_key = \"merchant.pem\"\n\
         alipay_public_keys = {{ \"1\" = \"alipay.pem\" }}\n\
         [outbound]\n\
         listen = \"127.0.0.1:0\"\n\
         gateway = \"https://{GATEWAY}\"\n\
         [inbound]\n\
         listen = \"127.0.0.1:0\"\n\
         forward_to = \"http://127.0.0.1:3000\"\n"
    );
    let config = Config::parse(&text, &dir.path().join("sidecar.toml"), [])
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    let keys = preflight::load(&config)
        .sets
        .swap_remove(0)
        .unwrap_or_else(|e| panic!("bench keys: {e}"));
    Setup {
        keys: Arc::new(keys),
        alipay: PrivateKey::from_text(pem(&v, "alipay", "private_pkcs8_pem")).expect("alipay key"),
        config,
    }
}

/// Checks that a reply is the verified 200 the bench means to measure (not a refusal).
fn check(what: &str, reply: &Reply) {
    assert_eq!(
        (reply.head.status.as_u16(), reply.report.outcome),
        (200, Outcome::Verified),
        "{what}: not a verified 200 ({:?})",
        reply.report.detail
    );
}

fn outbound(c: &mut Criterion, s: &Setup, rt: &tokio::runtime::Runtime) {
    let merchant = &s.config.merchants[0];
    let cfg = s.config.outbound.as_ref().expect("[outbound]");
    let listener = "127.0.0.1:8080".parse().expect("address");
    let policy = OutboundPolicy::from_config(&s.config, cfg, &[listener]);
    let body = pay_body(1024);

    // The gateway's answer, signed by Alipay once over what the handler will verify.
    let time = now_iso8601();
    let answer = br#"{"result":{"resultStatus":"U","resultCode":"PAYMENT_IN_PROCESS","resultMessage":"payment in process"},"paymentRequestId":"pay_1"}"#;
    let content = content_to_sign("POST", PAY, CLIENT_ID, &time, answer);
    let signature = sign_content(&s.alipay, "1", &content).expect("sign the answer");
    let gateway = Canned(response(
        &[
            ("Content-Type", "application/json; charset=UTF-8"),
            ("client-id", CLIENT_ID),
            ("response-time", &time),
            ("signature", &signature),
        ],
        answer,
    ));
    let keys: Arc<dyn KeySource> = Arc::new(s.keys.clone());
    let handler = Outbound::new(
        policy,
        OutboundMerchant::new(
            &merchant.name,
            CLIENT_ID,
            None,
            keys,
            gateway,
            (GATEWAY, 443),
        ),
    );
    let head = head(
        PAY,
        &[
            ("Host", "127.0.0.1:8080"),
            ("Content-Type", "application/json; charset=UTF-8"),
        ],
    );
    let request = || Request {
        head: head.clone(),
        target: PAY.to_string(),
        body: body.clone(),
        local_addr: None,
    };
    let run = |request: Request| {
        handler
            .check_head(&request.head, &request.target)
            .expect("head accepted");
        rt.block_on(handler.handle(request))
    };
    check("outbound", &run(request()));

    // The engine alone on the same request's content and key.
    let key = s
        .keys
        .credential
        .signing_key()
        .and_then(|k| k.file_key())
        .expect("signing mode, file key");
    let content = content_to_sign("POST", PAY, CLIENT_ID, &time, &body);

    let mut g = c.benchmark_group(GROUP);
    g.bench_function("engine_sign", |b| {
        b.iter(|| sign_content(key, "1", black_box(&content)).expect("sign"))
    });
    g.bench_function("outbound_handle", |b| {
        b.iter_batched(request, run, BatchSize::SmallInput)
    });
    g.finish();
    check("outbound (after)", &run(request()));
}

fn inbound(c: &mut Criterion, s: &Setup, rt: &tokio::runtime::Runtime) {
    let merchant = &s.config.merchants[0];
    let cfg = s.config.inbound.as_ref().expect("[inbound]");
    let policy = InboundPolicy {
        // The bench sends the same notification again and again: the in-memory replay window
        // would answer the copies from memory instead of verifying and delivering them.
        replay_window_entries: 0,
        ..InboundPolicy::from_config(&s.config, cfg)
    };
    let app = Canned(response(
        &[("Content-Type", "application/json")],
        ACK_BODY.as_bytes(),
    ));
    let keys: Arc<dyn KeySource> = Arc::new(s.keys.clone());
    let handler = Inbound::new(
        policy,
        InboundMerchant::new(
            &merchant.name,
            CLIENT_ID,
            keys,
            app,
            AppRoute::new(&cfg.forward_to, BTreeMap::new()),
        ),
    );

    // One notification, signed by Alipay once (its Request-Time is now: inside the
    // default 48h window for as long as the bench runs).
    let time = now_iso8601();
    let body = br#"{"notifyType":"PAYMENT_RESULT","result":{"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"},"paymentRequestId":"pay_1","paymentId":"2024050119401089010011100000001","paymentAmount":{"currency":"USD","value":"5800"},"paymentCreateTime":"2024-05-01T12:01:00+08:00","paymentTime":"2024-05-01T12:01:05+08:00"}"#;
    let content = content_to_sign("POST", NOTIFY, CLIENT_ID, &time, body);
    let signature = sign_content(&s.alipay, "1", &content).expect("sign the notification");
    let head = head(
        NOTIFY,
        &[
            ("Content-Type", "application/json; charset=UTF-8"),
            ("client-id", CLIENT_ID),
            ("request-time", &time),
            ("signature", &signature),
        ],
    );
    let request = || Request {
        head: head.clone(),
        target: NOTIFY.to_string(),
        body: Bytes::from_static(body),
        local_addr: None,
    };
    let run = |request: Request| {
        handler
            .check_head(&request.head, &request.target)
            .expect("head accepted");
        rt.block_on(handler.handle(request))
    };
    check("inbound", &run(request()));

    let mut g = c.benchmark_group(GROUP);
    g.bench_function("engine_verify", |b| {
        b.iter(|| {
            s.keys
                .alipay
                .verify(black_box(&content), &signature)
                .expect("verify")
        })
    });
    g.bench_function("inbound_handle", |b| {
        b.iter_batched(request, run, BatchSize::SmallInput)
    });
    g.finish();
    check("inbound (after)", &run(request()));
}

/// Criterion's point estimate (ns) of `id` in this run: its slope, else its mean; `None`
/// when the run did not measure it (test mode, a filter) or the file is from an earlier run.
fn estimate(root: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = root.join(GROUP).join(id).join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| v["mean"]["point_estimate"].as_f64())
}

/// Where criterion keeps its results: `$CRITERION_HOME`, else `criterion/` in the target
/// folder (`$CARGO_TARGET_DIR`, else the workspace's `target/`).
fn criterion_home() -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

fn ratios(since: SystemTime) {
    let root = criterion_home();
    let est = |id| estimate(&root, id, since);
    let pairs = [
        (
            "outbound handler ÷ engine sign",
            "outbound_handle",
            "engine_sign",
        ),
        (
            "inbound handler ÷ engine verify",
            "inbound_handle",
            "engine_verify",
        ),
    ];
    for (label, handler, engine) in pairs {
        match (est(handler), est(engine)) {
            (Some(h), Some(e)) => println!(
                "{label}: {:.2} ({:.1} µs ÷ {:.1} µs; {:.1} µs per request besides the engine)",
                h / e,
                h / 1e3,
                e / 1e3,
                (h - e) / 1e3
            ),
            _ => println!("{label}: not measured in this run (test mode or a filter)"),
        }
    }
}

fn main() {
    let since = SystemTime::now();
    let setup = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    outbound(&mut c, &setup, &rt);
    inbound(&mut c, &setup, &rt);
    c.final_summary();
    ratios(since);
}
