//! Credentials on the wire, besides the signature itself: the app's own credentials the
//! sidecar drops, and the gateway refusing the merchant's.
//!
//! Why the app's `Authorization`, `Proxy-Authorization` and `Cookie` never reach Alipay: the
//! sidecar authenticates every request itself (signature or its own API key). An SDK in
//! API-key mode still sends its Bearer key, and an app behind a corporate proxy may add
//! proxy credentials; forwarding them would hand a second, unmanaged credential to the
//! gateway (and, with a key the app was never meant to hold, defeat the point of the
//! sidecar). They are dropped and counted
//! (`alipay_sidecar_app_credentials_dropped_total{merchant,header}`), so an operator sees
//! that an app still carries one.
//!
//! Why a refusal is loud: when Alipay does not accept the merchant's signature (public key
//! not registered, the wrong one uploaded, wrong client id) or its API key, it answers an
//! ordinary `F` — often unsigned — that the app treats as a failed payment. That is the most
//! likely production misconfiguration and only the operator can fix it, so every answer
//! whose `result.resultCode` is in [`CREDENTIAL_REJECTIONS`] is counted
//! (`alipay_sidecar_gateway_rejections_total{merchant,result_code}`) and logged at WARN with
//! the merchant, the client id, the key version, the credential's fingerprint and what to
//! check. Throttle rule: per merchant and result code, at most one line per
//! [`WARN_INTERVAL`]; the next line says how many were not logged in between. A burst of a
//! thousand rejections thus gives one line per code and minute, the metric counts them all.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts};

use crate::keyset::{Credential, KeySet};
use crate::protocol::{
    credential_rejection, rejection_meaning, CREDENTIAL_REJECTIONS, OTHER_REJECTION_LABEL,
};

/// The app headers that carry credentials and are never forwarded to the gateway (lower
/// case; also the `header` label values of the drop counter).
pub const APP_CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// At most one rejection WARN line per merchant and result code in this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// The metrics of this file, registered in the sidecar's registry on first use.
#[derive(Debug)]
pub struct CredentialMetrics {
    dropped: IntCounterVec,
    rejections: IntCounterVec,
}

impl CredentialMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            dropped: IntCounterVec::new(
                Opts::new(
                    "alipay_sidecar_app_credentials_dropped_total",
                    "Credential headers the app sent (authorization, proxy-authorization, cookie) that the sidecar dropped instead of forwarding them to the gateway.",
                ),
                &["merchant", "header"],
            )?,
            rejections: IntCounterVec::new(
                Opts::new(
                    "alipay_sidecar_gateway_rejections_total",
                    "Gateway answers refusing the merchant's credentials, by result.resultCode (INVALID_SIGNATURE, KEY_NOT_FOUND, INVALID_CLIENT, OAUTH_FAIL, ILLEGAL_CLIENT_IP, ACCESS_DENIED, INVALID_ACCESS_TOKEN; other = an unsigned F with another code, signing mode).",
                ),
                &["merchant", "result_code"],
            )?,
        })
    }

    /// Creates every series of `merchants` at zero, so alerts on `increase()` see the first
    /// rejection.
    pub fn register_merchants<'a>(&self, merchants: impl IntoIterator<Item = &'a str>) {
        for m in merchants {
            for h in APP_CREDENTIAL_HEADERS {
                self.dropped.with_label_values(&[m, h]);
            }
            for (code, _) in CREDENTIAL_REJECTIONS {
                self.rejections.with_label_values(&[m, code]);
            }
            self.rejections
                .with_label_values(&[m, OTHER_REJECTION_LABEL]);
        }
    }
}

/// The process-wide credential metrics.
pub fn metrics() -> &'static CredentialMetrics {
    static M: OnceLock<CredentialMetrics> = OnceLock::new();
    M.get_or_init(|| {
        // Only a definition bug in this file can fail; the unit tests build the set.
        let m = CredentialMetrics::new().unwrap_or_else(|e| panic!("credential metrics: {e}"));
        for c in [&m.dropped, &m.rejections] {
            if let Err(e) = crate::metrics::metrics().register(Box::new(c.clone())) {
                tracing::error!(error = %e, "registering a credential metric failed");
            }
        }
        m
    })
}

/// Counts the app credential headers present in `headers` (dropped by the caller) and logs
/// one debug line naming them (never their values).
pub fn record_dropped(merchant: &str, headers: &http::HeaderMap) {
    let present: Vec<&str> = APP_CREDENTIAL_HEADERS
        .into_iter()
        .filter(|h| headers.contains_key(*h))
        .collect();
    if present.is_empty() {
        return;
    }
    for h in &present {
        metrics().dropped.with_label_values(&[merchant, h]).inc();
    }
    tracing::debug!(
        merchant,
        headers = %present.join(","),
        "dropped the app's credential headers; the sidecar authenticates to the gateway itself"
    );
}

/// What the gateway's answer says about the merchant's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A code of [`CREDENTIAL_REJECTIONS`].
    Credential(&'static str),
    /// An unsigned `F` with another code in signing mode: Alipay answers unsigned when it
    /// cannot authenticate the caller, so this is counted (as `other`) but not warned about.
    /// (In API-key mode every answer may be unsigned, so there it is not counted.)
    OtherUnsigned,
}

impl Rejection {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Credential(code) => code,
            Rejection::OtherUnsigned => OTHER_REJECTION_LABEL,
        }
    }
}

/// Classifies an answer by its `result.resultCode`/`resultStatus` and whether it was
/// unsigned (pure).
pub fn classify(
    result_code: Option<&str>,
    result_status: Option<&str>,
    unsigned: bool,
) -> Option<Rejection> {
    match result_code.and_then(credential_rejection) {
        Some(code) => Some(Rejection::Credential(code)),
        None if unsigned && result_status == Some("F") => Some(Rejection::OtherUnsigned),
        None => None,
    }
}

/// (merchant, result code) → (when the last line was written, how many were not logged since).
type ThrottleState = HashMap<(String, &'static str), (Instant, u64)>;

/// Per merchant and code: when the last line was written, and how many were not logged
/// since.
#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<ThrottleState>,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written for `key` at `now`.
    pub fn admit(&self, merchant: &str, code: &'static str, now: Instant) -> Option<u64> {
        // a poisoned lock only means a panic elsewhere mid-update; the counts stay usable
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.get_mut(&(merchant.to_string(), code)) {
            Some((last, suppressed)) if now.duration_since(*last) < WARN_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                state.insert((merchant.to_string(), code), (now, 0));
                Some(0)
            }
        }
    }
}

fn throttle() -> &'static Throttle {
    static T: OnceLock<Throttle> = OnceLock::new();
    T.get_or_init(Throttle::default)
}

/// What to check, in words, for a credential rejection of `code` with `keys`.
pub fn hint(code: &str, client_id: &str, keys: &KeySet) -> String {
    let version = &keys.merchant_key_version;
    let credential = match &keys.credential {
        Credential::Signing(k) => format!(
            "the merchant key {} (keyVersion {version})",
            k.fingerprint()
        ),
        Credential::ApiKey(k) => format!("the {}", k.describe()),
    };
    match (code, &keys.credential) {
        ("INVALID_SIGNATURE" | "KEY_NOT_FOUND", Credential::Signing(k)) => format!(
            "Alipay does not accept this merchant's signature: check that the public key \
             registered in the Antom dashboard for client {client_id} is the one with \
             fingerprint {} (keyVersion {version}); `alipay-sidecar check-config` prints it, \
             and the dashboard must hold the public half of this private key",
            k.fingerprint()
        ),
        ("INVALID_SIGNATURE" | "KEY_NOT_FOUND", Credential::ApiKey(k)) => format!(
            "Alipay expected a signature from client {client_id}, which authenticates with \
             the {}: check that API keys are enabled for this client in the Antom dashboard, \
             or configure merchant_private_key instead",
            k.describe()
        ),
        ("OAUTH_FAIL", Credential::ApiKey(k)) => format!(
            "Alipay does not accept this merchant's API key: check in the Antom dashboard that \
             the {} is active for client {client_id} (not revoked), and, for a Restricted \
             key, that this API is among its routes",
            k.describe()
        ),
        ("INVALID_CLIENT", _) => format!(
            "Alipay does not know client id {client_id}: check client_id against the Antom \
             dashboard (SANDBOX_ client ids work only on the sandbox, live ones only live); \
             {credential} is used with it"
        ),
        ("ILLEGAL_CLIENT_IP", _) => format!(
            "Alipay refuses the IP address the sidecar calls from: add the sidecar's outgoing \
             (egress) address to the IP allow-list of client {client_id} in the Antom dashboard"
        ),
        _ => format!(
            "Alipay refused client {client_id} ({}) with {credential}: check the client's \
             settings and keys in the Antom dashboard",
            rejection_meaning(code).unwrap_or("credential rejection")
        ),
    }
}

/// Counts a rejection and, for a credential code and within the throttle, logs the WARN.
pub fn record_rejection(
    merchant: &str,
    client_id: &str,
    api: &str,
    keys: &KeySet,
    rejection: Rejection,
) {
    metrics()
        .rejections
        .with_label_values(&[merchant, rejection.label()])
        .inc();
    let Rejection::Credential(code) = rejection else {
        return;
    };
    let Some(suppressed) = throttle().admit(merchant, code, Instant::now()) else {
        return;
    };
    let (mode, key_version) = match &keys.credential {
        Credential::Signing(_) => ("signature", keys.merchant_key_version.as_str()),
        Credential::ApiKey(_) => ("api_key", "none"),
    };
    tracing::warn!(
        merchant,
        client_id,
        api,
        result_code = code,
        auth = mode,
        key_version,
        fingerprint = keys.credential.fingerprint(),
        suppressed,
        hint = %hint(code, client_id, keys),
        "the gateway refused the merchant's credentials (at most one line per merchant and result code a minute; alipay_sidecar_gateway_rejections_total counts every one)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_defined_and_documented() {
        let m = CredentialMetrics::new().expect("definitions");
        m.register_merchants(["default"]);
        let readme = [
            include_str!("../docs/configuration.md"),
            include_str!("../docs/operating.md"),
        ]
        .concat();
        for name in [
            "alipay_sidecar_app_credentials_dropped_total",
            "alipay_sidecar_gateway_rejections_total",
        ] {
            assert!(
                readme.contains(name),
                "docs/configuration.md and docs/operating.md do not document {name}"
            );
        }
    }

    #[test]
    fn classifies_by_the_closed_list() {
        assert_eq!(
            classify(Some("INVALID_SIGNATURE"), Some("F"), true),
            Some(Rejection::Credential("INVALID_SIGNATURE"))
        );
        assert_eq!(
            classify(Some("ACCESS_DENIED"), Some("F"), false),
            Some(Rejection::Credential("ACCESS_DENIED"))
        );
        assert_eq!(
            classify(Some("SOMETHING_NEW"), Some("F"), true),
            Some(Rejection::OtherUnsigned)
        );
        assert_eq!(classify(Some("PROCESS_FAIL"), Some("F"), false), None);
        assert_eq!(classify(Some("SUCCESS"), Some("S"), false), None);
        assert_eq!(classify(None, None, true), None);
    }

    #[test]
    fn throttle_lets_one_line_a_minute_through() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.admit("m", "INVALID_SIGNATURE", t0), Some(0));
        for i in 1..100 {
            assert_eq!(
                t.admit("m", "INVALID_SIGNATURE", t0 + Duration::from_millis(i)),
                None
            );
        }
        // another code and another merchant have their own budget
        assert_eq!(t.admit("m", "OAUTH_FAIL", t0), Some(0));
        assert_eq!(t.admit("n", "INVALID_SIGNATURE", t0), Some(0));
        assert_eq!(
            t.admit("m", "INVALID_SIGNATURE", t0 + WARN_INTERVAL),
            Some(99)
        );
        assert_eq!(
            t.admit(
                "m",
                "INVALID_SIGNATURE",
                t0 + WARN_INTERVAL + Duration::from_secs(1)
            ),
            None
        );
    }

    #[test]
    fn the_hint_names_the_fingerprint_and_never_an_api_key() {
        let keys = crate::testing::keyset("T_1");
        let h = hint("INVALID_SIGNATURE", "T_1", &keys);
        assert!(
            h.contains("Alipay does not accept this merchant's signature")
                && h.contains(keys.credential.fingerprint())
                && h.contains("client T_1"),
            "{h}"
        );
    }
}
