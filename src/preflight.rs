//! The preflight: the classic key mix-ups, found before a key set goes live, each with what
//! to change.
//!
//! The mistakes it catches are the ones behind most "signature verify fail" tickets: the
//! merchant's own public key configured where Alipay's belongs, a `SANDBOX_` client id against
//! live-only settings (or the reverse), PKCS#1 keys where Alipay's tooling expects PKCS#8, and
//! across merchants one key file copied to the wrong merchant.
//!
//! Why one [`run`]: a reload must refuse exactly what `check-config` and start-up refuse, and
//! report what they report, so all three run it over the whole configuration: each merchant's
//! findings ([`merchant`]), the shared settings' ([`shared`]) and those across merchants
//! ([`cross`]). Start-up and reload get there through [`load`]. An error finding refuses that
//! merchant's set: `check-config` exits 2, start-up does not start, a reload keeps that
//! merchant's old set serving. The findings across merchants are warnings (the sets work, but
//! most likely a file was copied to the wrong merchant): `check-config` prints them and exits
//! 0, start-up and reload log them (`preflight warning`) and serve the new sets.
//!
//! Pure apart from [`load`] (which reads the key files): the checks see only the config and
//! the loaded sets, so every caller gets the same findings.

use crate::config::{Config, InboundMode, MerchantConfig};
use crate::files::FileAccess;
use crate::keyset::{location, Credential, KeySet, KeySetError};
pub use crate::keyset::{Finding, Severity};
use crate::protocol::{ApiKey, ApiKeyEnv, KeyEncoding, PublicKey};
use crate::signer::SigningKey;

/// Everything the preflight found about a configuration and the key sets loaded for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Each set's own findings ([`merchant`]), in the order of the sets given to [`run`].
    pub merchants: Vec<Vec<Finding>>,
    /// About the settings every merchant shares ([`shared`]).
    pub shared: Vec<Finding>,
    /// Across merchants ([`cross`]): warnings only.
    pub cross: Vec<Finding>,
}

impl Findings {
    /// Every finding: each merchant's, the shared settings', then those across merchants
    /// (the order `check-config` prints them in).
    pub fn all(&self) -> impl Iterator<Item = &Finding> {
        self.merchants
            .iter()
            .flatten()
            .chain(&self.shared)
            .chain(&self.cross)
    }

    /// The findings that decide whether each of `sets` (as given to [`run`]) may go live: its
    /// merchant's own, and the shared settings' with the first merchant's set only, so they
    /// are logged once.
    fn per_set(&self, config: &Config, sets: &[(&MerchantConfig, &KeySet)]) -> Vec<Vec<Finding>> {
        sets.iter()
            .zip(&self.merchants)
            .map(|((m, _), own)| {
                let mut out = own.clone();
                if m.client_id == first(config).client_id {
                    out.extend(self.shared.iter().cloned());
                }
                out
            })
            .collect()
    }
}

/// The whole preflight over `config` and the key sets loaded for its merchants: the one check
/// behind `check-config`, start-up and reload (see the module doc). Pure: no I/O.
pub fn run(config: &Config, sets: &[(&MerchantConfig, &KeySet)]) -> Findings {
    Findings {
        merchants: sets.iter().map(|(m, k)| merchant(config, m, k)).collect(),
        shared: shared(config),
        cross: cross(config, sets),
    }
}

/// Every merchant's key set, loaded and checked together: what start-up and a reload serve.
#[derive(Debug)]
pub struct Loaded {
    /// One per merchant of the config, in its order: the checked set (its warnings in
    /// [`KeySet::warnings`]), or why it cannot be used (a key that does not load, or the
    /// preflight's errors).
    pub sets: Vec<Result<KeySet, KeySetError>>,
    /// The findings across the merchants whose keys loaded (warnings, to log once).
    pub cross: Vec<Finding>,
}

/// Reads and parses every merchant's key files and runs [`run`] over the sets that loaded;
/// a set with an error finding is refused, its warnings are kept in [`KeySet::warnings`].
/// Start-up and reload both go through here, so a bad key never goes live.
pub fn load(config: &Config) -> Loaded {
    let loaded: Vec<_> = config
        .merchants
        .iter()
        .map(|m| KeySet::load_unchecked(config, m))
        .collect();
    let (mut per_set, cross) = {
        let ok: Vec<(&MerchantConfig, &KeySet)> = config
            .merchants
            .iter()
            .zip(&loaded)
            .filter_map(|(m, r)| Some((m, r.as_ref().ok()?)))
            .collect();
        let findings = run(config, &ok);
        (findings.per_set(config, &ok).into_iter(), findings.cross)
    };
    let sets = loaded
        .into_iter()
        .map(|r| r.and_then(|keys| checked(keys, per_set.next().unwrap_or_default())))
        .collect();
    Loaded { sets, cross }
}

/// `keys` with its findings: refused when any is an error, else carrying the warnings.
fn checked(mut keys: KeySet, findings: Vec<Finding>) -> Result<KeySet, KeySetError> {
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    if !errors.is_empty() {
        return Err(KeySetError::Preflight { findings: errors });
    }
    keys.warnings = warnings;
    Ok(keys)
}

/// Client ids that are obviously the placeholder of an example config, not a real id.
pub fn is_placeholder_client_id(id: &str) -> bool {
    let upper = id.to_ascii_uppercase();
    let squeezed: String = upper
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    // Words long enough not to occur by chance in a real (random alphanumeric) id.
    [
        "REPLACE",
        "YOURCLIENTID",
        "CHANGEME",
        "PLACEHOLDER",
        "EXAMPLE",
        "FIXME",
        "XXXXXX",
    ]
    .iter()
    .any(|word| squeezed.contains(word))
        || id.contains(['<', '>', '{', '}', '$'])
}

fn is_pkcs1(encoding: KeyEncoding) -> bool {
    matches!(encoding, KeyEncoding::Pkcs1Pem | KeyEncoding::Pkcs1Base64)
}

/// The first merchant of `config` (a validated config has at least one).
fn first(config: &Config) -> &MerchantConfig {
    // merchant routing: lead wires this (callers that know only one merchant)
    &config.merchants[0]
}

fn error(message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        message,
    }
}

fn warning(message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        message,
    }
}

/// The findings about one merchant: its client id, its keys, and its client id against the
/// shared outbound settings (sandbox/live).
pub fn merchant(config: &Config, merchant: &MerchantConfig, keys: &KeySet) -> Vec<Finding> {
    let mut out = Vec::new();
    let client_id = &merchant.client_id;
    let env_hint = if merchant.key("client_id") == "client_id" {
        ", or set ALIPAY_SIDECAR_CLIENT_ID"
    } else {
        ""
    };

    // 0. The example config's placeholder client id, and a private key others can read.
    // A placeholder says nothing about sandbox or live, nor which client an API key belongs
    // to: the checks of the client id below are left out, so the one error that matters is
    // not followed by a misleading "live client id" one (issue 20).
    let placeholder = is_placeholder_client_id(client_id);
    if placeholder {
        out.push(error(format!(
            "{}: \"{}\" is a placeholder, not a client id: every request would be signed for \
             a merchant that does not exist. Put the Client ID from the Alipay (Antom) developer \
             dashboard here (SANDBOX_… for the sandbox){env_hint}",
            location(config, &merchant.key("client_id")),
            client_id
        )));
    }
    let credential_key = merchant.key(&format!("keys.{}", merchant.keys.credential.option()));
    if let Some(access) = keys.merchant_key_file.filter(FileAccess::too_open) {
        let path = keys.sources.credential.display();
        let what = match keys.credential {
            Credential::Signing(_) => "merchant private key",
            Credential::ApiKey(_) => "API key",
        };
        out.push(warning(format!(
            "{}: the {what} file {path} has mode {:04o}: it is readable by \
             users other than the sidecar's (as ssh would say: UNPROTECTED PRIVATE KEY FILE). \
             Anyone who can read it can sign payments as you. Run `chmod 600 {path}` (or 0440 \
             with the file's group set to the sidecar's group, as Kubernetes' fsGroup does)",
            location(config, &credential_key),
            access.mode
        )));
    }

    // API-key mode: the key's client id and environment against the merchant's settings.
    if let Credential::ApiKey(api_key) = &keys.credential {
        out.extend(api_key_mode(
            config,
            merchant,
            api_key,
            &credential_key,
            placeholder,
        ));
    }

    // 1. The merchant's own public key configured as Alipay's.
    let own = keys.credential.signing_key().map(SigningKey::public_key);
    for (version, public) in keys.alipay.versions() {
        if let Some(own) = own.as_ref().filter(|own| *own == public) {
            out.push(error(format!(
                "{}: this \"Alipay\" public key is the public half of your own merchant private \
                 key ({}): you configured your own public key as Alipay's; download Alipay's \
                 public key from the dashboard and put that file here",
                location(
                    config,
                    &merchant.key(&format!("keys.alipay_public_keys.{version}"))
                ),
                own.fingerprint()
            )));
        }
    }

    // 2. The same Alipay key under two versions.
    let versions: Vec<(&str, &PublicKey)> = keys.alipay.versions().collect();
    for (i, (v1, k1)) in versions.iter().enumerate() {
        for (v2, k2) in versions.iter().skip(i + 1) {
            if k1 == k2 {
                out.push(warning(format!(
                    "`{}` versions {v1} and {v2} hold the same key ({}); \
                     during a rotation the new version should hold Alipay's new key — check \
                     that you downloaded the right file for version {v2}",
                    merchant.key("keys.alipay_public_keys"),
                    k1.fingerprint()
                )));
            }
        }
    }

    // 3. PKCS#1 merchant key.
    if let Some(private) = keys
        .credential
        .signing_key()
        .and_then(SigningKey::file_key)
        .filter(|k| is_pkcs1(k.encoding()))
    {
        out.push(warning(format!(
            "{}: the merchant private key is {}; the sidecar accepts it, but Alipay's SDKs \
             (Java, Go, .NET) and dashboard tooling use PKCS#8, so a copy shared with them will \
             not load. Convert it: `openssl pkcs8 -topk8 -nocrypt -in {} -out \
             merchant_private_key.pkcs8.pem` (the key itself, and its public half, stay the same)",
            location(config, &merchant.key("keys.merchant_private_key")),
            private.encoding(),
            keys.sources.credential.display()
        )));
    }

    // 4. SANDBOX_ client id against live settings, and the reverse (not for a placeholder).
    let sandbox = merchant.is_sandbox();
    if let Some(o) = config.outbound.as_ref().filter(|_| !placeholder) {
        let has_sandbox_prefix = o
            .allowed_path_prefixes
            .iter()
            .any(|p| p.starts_with("/ams/sandbox/"));
        let only_sandbox = o
            .allowed_path_prefixes
            .iter()
            .all(|p| p.starts_with("/ams/sandbox/"));
        if !sandbox && o.sandbox_path_rewrite {
            out.push(error(format!(
                "{}: `sandbox_path_rewrite = true` with the live client id \"{}\": the rewrite \
                 only applies to SANDBOX_ client ids, so this mixes sandbox and live settings. \
                 Remove sandbox_path_rewrite for live traffic, or use your SANDBOX_ client id \
                 (and sandbox keys) for sandbox testing",
                location(config, "outbound.sandbox_path_rewrite"),
                client_id
            )));
        }
        if !sandbox && only_sandbox {
            out.push(error(format!(
                "{}: only sandbox paths (/ams/sandbox/…) are allowed, but the client id \"{}\" \
                 is a live one (it does not start with SANDBOX_): every live call would be \
                 refused, and Alipay rejects sandbox paths for live client ids. Allow \
                 \"/ams/api/\", or use your SANDBOX_ client id",
                location(config, "outbound.allowed_path_prefixes"),
                client_id
            )));
        }
        if sandbox && !has_sandbox_prefix && !o.sandbox_path_rewrite {
            out.push(error(format!(
                "{}: the client id \"{}\" is a sandbox one, and sandbox calls must go to \
                 /ams/sandbox/api/…, but no /ams/sandbox/ path is allowed and \
                 sandbox_path_rewrite is off. Add \"/ams/sandbox/api/\" to \
                 allowed_path_prefixes, or set `sandbox_path_rewrite = true` to rewrite \
                 /ams/api/ paths as the SDKs do",
                location(config, "outbound.allowed_path_prefixes"),
                client_id
            )));
        }
        let live_prefixes: Vec<&str> = o
            .allowed_path_prefixes
            .iter()
            .map(String::as_str)
            .filter(|p| p.starts_with("/ams/api"))
            .collect();
        if sandbox && !o.sandbox_path_rewrite && !live_prefixes.is_empty() {
            out.push(warning(format!(
                "{}: the client id \"{}\" is a sandbox one, but live paths ({}) are allowed: \
                 Alipay answers SANDBOX_ client ids only on /ams/sandbox/api/…, so a call to a \
                 live path fails at the gateway. Allow only [\"/ams/sandbox/api/\"], or set \
                 `sandbox_path_rewrite = true` to rewrite /ams/api/ paths as the SDKs do",
                location(config, "outbound.allowed_path_prefixes"),
                client_id,
                live_prefixes.join(", ")
            )));
        }
    }
    out
}

/// The findings about an API-key merchant: the key was issued for another client id, or for
/// an environment none of the allowed paths belongs to; and acknowledgements that cannot be
/// signed without a private key.
fn api_key_mode(
    config: &Config,
    merchant: &MerchantConfig,
    api_key: &ApiKey,
    key: &str,
    placeholder_client_id: bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if api_key.client_id() != merchant.client_id && !placeholder_client_id {
        out.push(error(format!(
            "{}: the API key ({}) was issued for client id \"{}\", but this merchant's \
             client_id is \"{}\": Alipay refuses a key used for another client. Put this \
             merchant's own API key in the file, or correct client_id",
            location(config, key),
            api_key.describe(),
            crate::exchange::echo(api_key.client_id()),
            merchant.client_id
        )));
    }
    if let Some(o) = &config.outbound {
        let rewrite = o.sandbox_path_rewrite && merchant.is_sandbox();
        let usable = o.allowed_path_prefixes.iter().any(|p| {
            api_key.env().owns_path(p)
                || (rewrite && api_key.env() == ApiKeyEnv::Test && p.starts_with("/ams/api/"))
        });
        if !usable {
            let (key_env, paths, fix) = match api_key.env() {
                ApiKeyEnv::Test => (
                    "a TEST key, which Alipay accepts only on sandbox paths (/ams/sandbox/api/…)",
                    "only live paths",
                    "allow \"/ams/sandbox/api/\" (the SDKs send TEST-key calls there), or use \
                     your PROD key for live traffic",
                ),
                ApiKeyEnv::Prod => (
                    "a PROD key, which Alipay accepts only on live paths (/ams/api/…)",
                    "only sandbox paths",
                    "allow \"/ams/api/\", or use your TEST key for sandbox traffic",
                ),
            };
            out.push(error(format!(
                "{}: the API key of merchant \"{}\" is {key_env}, but {paths} are allowed \
                 ({}): every call would fail. In `allowed_path_prefixes`, {fix}",
                location(config, key),
                merchant.name,
                o.allowed_path_prefixes.join(", ")
            )));
        }
    }
    if config
        .inbound
        .as_ref()
        .is_some_and(|i| i.sign_acknowledgements)
    {
        out.push(warning(format!(
            "{}: `sign_acknowledgements = true`, but merchant \"{}\" uses an API key and has no \
             private key to sign with: its acknowledgements go unsigned (Alipay accepts them)",
            location(config, "inbound.sign_acknowledgements"),
            merchant.name
        )));
    }
    out
}

/// The findings about settings every merchant shares (listeners, verification, admin).
pub fn shared(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(o) = &config.outbound {
        if !o.verify_responses {
            out.push(warning(format!(
                "{}: `verify_responses = false`: Alipay's responses reach the app unverified, \
                 so a tampered or forged response would be trusted. Remove the line unless you \
                 are debugging",
                location(config, "outbound.verify_responses")
            )));
        }
        let merchant_listeners = config.merchants.iter().flat_map(|m| m.listen_addrs());
        for listen in o.listen_addrs().into_iter().chain(merchant_listeners) {
            if o.allow_remote_clients && !listen.ip().is_loopback() {
                out.push(warning(format!(
                    "{}: the outbound listener accepts remote clients on {listen}: anyone who \
                     can reach it can have requests signed with your merchant key. Make sure \
                     only your app can reach this address",
                    location(config, "outbound.allow_remote_clients"),
                )));
            }
        }
        if o.sandbox_path_rewrite {
            out.push(warning(format!(
                "{}: `sandbox_path_rewrite = true`: the gateway answers for the rewritten path \
                 (/ams/sandbox/api/...), so an app whose SDK verifies responses itself checks \
                 them against the path it sent and rejects every answer, although the call was \
                 processed (retrying with a new request id could pay twice). Use it only for \
                 apps that do not verify responses, or let the SDK send sandbox paths itself",
                location(config, "outbound.sandbox_path_rewrite")
            )));
        }
    }
    if let Some(o) = &config.outbound {
        if o.allowed_path_prefixes.iter().any(|p| p == "/") {
            out.push(warning(format!(
                "{}: `allowed_path_prefixes` contains \"/\", so the signer signs a request to any \
                 path the app (or anything that reaches the listener) sends; list the AMS \
                 prefixes instead, e.g. [\"/ams/api/\", \"/ams/sandbox/api/\"]",
                location(config, "outbound.allowed_path_prefixes")
            )));
        }
    }
    if !config.admin.listen.ip().is_loopback() {
        out.push(warning(format!(
            "{}: the admin listener is on {}, a non-loopback address: /admin/reload and \
             /metrics have no authentication, so restrict who can reach the port (e.g. a \
             Kubernetes NetworkPolicy), or listen on 127.0.0.1",
            location(config, "admin.listen"),
            config.admin.listen
        )));
    }
    if let Some(i) = &config.inbound {
        if i.max_request_time_skew.is_none()
            && i.replay_window_entries == 0
            && config.store.is_none()
        {
            out.push(warning(format!(
                "{}: no replay protection on notifications: `max_request_time_skew = \"off\"`, \
                 `replay_window_entries = 0` and no [store], so a captured notification can be \
                 sent again at any time and reaches the app each time. Keep the defaults \
                 (\"48h\", 16384) or add a [store]",
                location(config, "inbound.max_request_time_skew")
            )));
        }
        if i.mode == InboundMode::Shadow {
            out.push(warning(format!(
                "{}: inbound `mode = \"shadow\"`: notifications that fail verification are still \
                 forwarded to the app (marked X-Alipay-Sidecar-Verified: false). Switch to \
                 \"enforce\" once the verification results look right",
                location(config, "inbound.mode")
            )));
        }
    }
    out
}

/// Findings across merchants, for `check-config` and start-up: one private key for two client
/// ids, and a sandbox and a live client id sharing a key. Warnings only: the sets work, but
/// most likely a file was copied to the wrong merchant.
pub fn cross(config: &Config, sets: &[(&MerchantConfig, &KeySet)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, (a, ka)) in sets.iter().enumerate() {
        for (b, kb) in sets.iter().skip(i + 1) {
            let same_private = ka.credential.fingerprint() == kb.credential.fingerprint();
            let shared_alipay: Vec<&str> = ka
                .alipay
                .versions()
                .filter(|(_, k)| kb.alipay.versions().any(|(_, other)| other == *k))
                .map(|(_, k)| k.fingerprint())
                .collect();
            let names = format!(
                "merchants \"{}\" (client id {}) and \"{}\" (client id {})",
                a.name, a.client_id, b.name, b.client_id
            );
            if a.is_sandbox() != b.is_sandbox() && (same_private || !shared_alipay.is_empty()) {
                let what = if same_private {
                    format!("the merchant credential {}", ka.credential.fingerprint())
                } else {
                    format!("the Alipay public key {}", shared_alipay.join(", "))
                };
                out.push(warning(format!(
                    "{}: {names} are a sandbox and a live id sharing keys ({what}): the sandbox \
                     and live environments issue different keys, so one of the two merchants \
                     has the other's key file; download each environment's keys separately",
                    location(config, &b.key("keys"))
                )));
            } else if same_private {
                out.push(warning(format!(
                    "{}: {names} use the same private key for two client ids ({}): each client \
                     id has its own key pair registered with Alipay, so requests of one of them \
                     will fail verification at the gateway; check which key file belongs to \
                     which merchant",
                    location(config, &b.key("keys.merchant_private_key")),
                    ka.credential.fingerprint()
                )));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first merchant's set as start-up loads it.
    fn load_first(c: &Config) -> Result<KeySet, KeySetError> {
        load(c).sets.swap_remove(0)
    }

    #[test]
    fn placeholders_are_recognised() {
        for id in [
            "REPLACE_WITH_YOUR_CLIENT_ID",
            "your-client-id",
            "<client id>",
            "${CLIENT_ID}",
            "CHANGE_ME",
            "SANDBOX_XXXXXXXXXX",
        ] {
            assert!(is_placeholder_client_id(id), "{id}");
        }
        for id in [
            "SANDBOX_5YBZ2Q2ZAB7C01234",
            "T_111222333",
            "2188120000000001",
        ] {
            assert!(!is_placeholder_client_id(id), "{id}");
        }
    }

    fn vectors() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/ams-public.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn setup(extra: &str, merchant: &str, alipay: &str) -> (tempfile::TempDir, Config) {
        let v = vectors();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.pem"),
            v["keys"]["merchant"][merchant].as_str().unwrap(),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.path().join("m.pem"), private).unwrap();
        }
        let (who, form) = alipay.split_once('.').unwrap();
        std::fs::write(
            dir.path().join("a.pem"),
            v["keys"][who][form].as_str().unwrap(),
        )
        .unwrap();
        let text = format!(
            "client_id = \"T_1\"\n[keys]\nmerchant_private_key = \"m.pem\"\nalipay_public_keys = {{ \"1\" = \"a.pem\" }}\n[outbound]\nregion = \"na\"\n{extra}"
        );
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::parse(&text, &path, Vec::new()).unwrap();
        (dir, config)
    }

    #[test]
    fn good_set_loads_and_debug_hides_material() {
        let (_d, c) = setup("", "private_pkcs8_pem", "alipay.public_spki_pem");
        let k = load_first(&c).unwrap();
        assert!(k.warnings.is_empty());
        let dbg = format!("{k:?}");
        assert!(dbg.contains("SHA256:") && !dbg.contains("MII"), "{dbg}");
    }

    #[test]
    fn own_key_as_alipay_key_is_refused() {
        let (_d, c) = setup("", "private_pkcs8_pem", "merchant.public_spki_pem");
        let e = load_first(&c).unwrap_err().to_string();
        assert!(
            e.contains("you configured your own public key as Alipay's"),
            "{e}"
        );
        assert!(e.contains("sidecar.toml:4"), "{e}");
    }

    #[test]
    fn pkcs1_is_a_warning() {
        let (_d, c) = setup("", "private_pkcs1_pem", "alipay.public_spki_pem");
        let k = load_first(&c).unwrap();
        assert_eq!(k.warnings.len(), 1);
        assert!(k.warnings[0].message.contains("openssl pkcs8 -topk8"));
    }

    #[test]
    fn key_file_problems_name_file_and_line() {
        let (d, c) = setup("", "private_pkcs8_pem", "alipay.public_spki_pem");
        std::fs::remove_file(d.path().join("a.pem")).unwrap();
        let e = load_first(&c).unwrap_err().to_string();
        assert!(
            e.contains("sidecar.toml:4") && e.contains("a.pem") && e.contains("does not exist"),
            "{e}"
        );
        std::fs::write(d.path().join("a.pem"), "").unwrap();
        let e = load_first(&c).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let v = vectors();
        std::fs::write(
            d.path().join("a.pem"),
            v["keys"]["alipay"]["private_pkcs8_pem"].as_str().unwrap(),
        )
        .unwrap();
        let e = load_first(&c).unwrap_err().to_string();
        assert!(e.contains("PUBLIC key"), "{e}");
        let pem = v["keys"]["merchant"]["private_pkcs8_pem"].as_str().unwrap();
        std::fs::write(d.path().join("m.pem"), &pem[..pem.len() / 2]).unwrap();
        let e = load_first(&c).unwrap_err().to_string();
        assert!(
            e.contains("sidecar.toml:3") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn sandbox_mixups() {
        let (_d, c) = setup(
            "sandbox_path_rewrite = true\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        let e = load_first(&c).unwrap_err().to_string();
        assert!(
            e.contains("live client id") && e.contains("sidecar.toml:7"),
            "{e}"
        );
        let (_d, c) = setup(
            "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        assert!(load_first(&c).unwrap_err().to_string().contains("live one"));
        let (_d, mut c) = setup(
            "allowed_path_prefixes = [\"/ams/api/\"]\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        c.merchants[0].client_id = "SANDBOX_1".into();
        assert!(load_first(&c)
            .unwrap_err()
            .to_string()
            .contains("sandbox one"));
        c.outbound.as_mut().unwrap().sandbox_path_rewrite = true;
        assert!(load_first(&c).is_ok());
    }

    /// A placeholder client id is one error; the sandbox/live checks of that "client id"
    /// would only add a misleading second one (issue 20).
    #[test]
    fn a_placeholder_client_id_is_one_error_without_follow_ons() {
        let (_d, mut c) = setup(
            "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\nsandbox_path_rewrite = true\n",
            "private_pkcs8_pem",
            "alipay.public_spki_pem",
        );
        c.merchants[0].client_id = "YOUR_CLIENT_ID".into();
        let k = load_first(&c).unwrap_err();
        let KeySetError::Preflight { findings } = &k else {
            panic!("{k}");
        };
        assert_eq!(findings.len(), 1, "{k}");
        assert!(findings[0].message.contains("is a placeholder"), "{k}");
        assert!(!k.to_string().contains("live"), "{k}");
    }
}
