//! Keys for the real-binary tests: the vector key files next to the config, a rig with them,
//! their fingerprints, the key gauges of a scrape, and a check that a request was signed with
//! a given key.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use alipay_sidecar::mock_gateway::{MockGatewayConfig, ReceivedRequest};
use alipay_sidecar::protocol::{content_to_sign, PrivateKey, PublicKey, Verifier};

use super::{key, Metrics, Response, Rig, RigConfig, Sidecar};

/// How long any "eventually" may take before the test fails (a reload is ~250 ms debounce
/// plus a key parse; shutdown is 1 s grace plus a 1.5 s request).
pub const DEADLINE: Duration = Duration::from_secs(30);
pub const MERCHANT_KEY_FILE: &str = "merchant_private_key.pem";
pub const ALIPAY_KEY_FILE: &str = "alipay_public_key.pem";
/// `[keys]` for key files next to the config file.
pub const FLAT_KEYS: &str = r#"merchant_private_key = "merchant_private_key.pem"
merchant_key_version = 1
alipay_public_keys = { "1" = "alipay_public_key.pem" }"#;
pub const JSON_LOGS: &str = "[log]\nformat = \"json\"\n";

// ---------------------------------------------------------------- gateway + sidecar rig

/// The outbound timeouts these tests run with.
pub const TIMEOUTS: &str = "request_timeout = \"10s\"\nconnect_timeout = \"2s\"\n";

/// The shared rig with `keys` as `[keys]` and `tail` as the further sections; `prepare`
/// lays out the key files (and anything else) in the folder before the sidecar starts.
pub fn start(
    keys: &str,
    tail: &str,
    gateway: impl FnOnce(&mut MockGatewayConfig),
    prepare: impl FnOnce(&Path),
) -> Rig {
    let rig = Rig::start(
        RigConfig {
            keys,
            outbound: TIMEOUTS,
            tail,
            ..Default::default()
        },
        gateway,
        prepare,
    );
    assert_eq!(
        PublicKey::from_text(&rig.gw.alipay_public_key_pem())
            .unwrap()
            .fingerprint(),
        alipay_fingerprint(),
        "the gateway must sign with the vectors' Alipay key"
    );
    rig
}

/// Vector keys next to the config file, JSON logs.
pub fn flat() -> Rig {
    start(FLAT_KEYS, JSON_LOGS, |_| {}, |_| {})
}

/// 200 with a verified Alipay response.
pub fn is_verified_ok(r: &Response) -> bool {
    r.status == 200 && r.header("x-alipay-sidecar-verified") == Some("true")
}

pub fn assert_verified_ok(r: &Response, what: &str, sidecar: &Sidecar) {
    assert!(
        is_verified_ok(r),
        "{what}: expected 200 + X-Alipay-Sidecar-Verified: true, got {} {:?}\n{}\n--- sidecar logs ---\n{}",
        r.status,
        r.header("x-alipay-sidecar-verified"),
        String::from_utf8_lossy(&r.body),
        sidecar.logs()
    );
}

pub fn merchant_fingerprint() -> String {
    PrivateKey::from_text(&key("merchant", "private_pkcs8_pem"))
        .unwrap()
        .fingerprint()
        .to_string()
}

pub fn alipay_fingerprint() -> String {
    PublicKey::from_text(&key("alipay", "public_spki_pem"))
        .unwrap()
        .fingerprint()
        .to_string()
}

/// Whether the request's Signature header verifies (keyVersion 1) with `public_pem`,
/// recomputing the content to sign from what the gateway received on the wire.
pub fn signed_with(req: &ReceivedRequest, public_pem: &str) -> bool {
    let content = content_to_sign(
        &req.method,
        &req.target,
        req.header("client-id").unwrap_or(""),
        req.header("request-time").unwrap_or(""),
        &req.body,
    );
    let verifier = Verifier::new([("1".to_string(), PublicKey::from_text(public_pem).unwrap())]);
    verifier
        .verify(&content, req.header("signature").unwrap_or(""))
        .is_ok()
}

/// A truncated PEM: the first half of the text (no END line, base64 cut mid-way).
pub fn truncated(pem: &str) -> String {
    pem[..pem.len() / 2].to_string()
}

// ---------------------------------------------------------------- key metrics

/// The key gauges of a scrape.
pub trait KeyMetrics {
    fn reloads(&self, result: &str) -> f64;
    /// `(role, key_version, fingerprint)` of every live key.
    fn key_info(&self) -> BTreeSet<(String, String, String)>;
    fn merchant_fingerprint(&self) -> Option<String>;
    fn alipay_keys(&self) -> BTreeSet<(String, String)>;
}

impl KeyMetrics for Metrics {
    fn reloads(&self, result: &str) -> f64 {
        self.sum("alipay_sidecar_key_reloads_total", &[("result", result)])
    }

    fn key_info(&self) -> BTreeSet<(String, String, String)> {
        self.matching("alipay_sidecar_key_info", &[])
            .filter(|s| s.value == 1.0)
            .map(|s| {
                (
                    s.labels["role"].clone(),
                    s.labels["key_version"].clone(),
                    s.labels["fingerprint"].clone(),
                )
            })
            .collect()
    }

    fn merchant_fingerprint(&self) -> Option<String> {
        self.key_info()
            .into_iter()
            .find(|(role, _, _)| role == "merchant_private")
            .map(|(_, _, fp)| fp)
    }

    fn alipay_keys(&self) -> BTreeSet<(String, String)> {
        self.key_info()
            .into_iter()
            .filter(|(role, _, _)| role == "alipay_public")
            .map(|(_, v, fp)| (v, fp))
            .collect()
    }
}
