//! The config file and key loading through the library: the shipped example, real files in a
//! temporary folder, environment overrides, and errors that name file, key and line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alipay_sidecar::config::{
    known_keys, Acknowledge, Config, InboundMode, LogFormat, RequestTimeFormat,
};
use alipay_sidecar::keyset::{KeySet, KeySetError, Severity};
use alipay_sidecar::preflight;

use crate::support::key;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.example.toml")
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_example_config_parses_and_documents_every_option() {
    let text = std::fs::read_to_string(example_path()).expect("example config");
    let c = Config::parse(&text, &example_path(), Vec::new()).expect("example parses");
    assert_eq!(
        c.merchants[0].keys.credential.path(),
        example_path()
            .parent()
            .expect("dir")
            .join("keys/merchant_private_key.pem")
    );
    let o = c.outbound.as_ref().expect("outbound");
    assert_eq!(o.gateway.url(), "https://open-sea-global.alipay.com");
    assert!(c.inbound.is_some());
    for key in known_keys() {
        let name = key.rsplit('.').next().expect("name");
        let written = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{name} =")) || l.starts_with(&format!("{name}="))
        });
        assert!(written, "config/sidecar.example.toml does not show `{key}`");
    }
    // Every commented-out alternative is valid too.
    let uncommented = text
        .replace("gateway = \"https://open-sea-global.alipay.com\"", "")
        .replace("# region = \"sea\"", "region = \"sea\"")
        .replace("# format = \"json\"", "format = \"json\"")
        .replace("# ca_file", "ca_file")
        .replace("# tls_listen", "tls_listen")
        .replace("# tls_names", "tls_names")
        .replace("# tls_ca_out", "tls_ca_out")
        .replace("# tls_trust_out", "tls_trust_out");
    let c = Config::parse(&uncommented, &example_path(), Vec::new()).expect("alternatives parse");
    assert_eq!(c.log.format, Some(LogFormat::Json));
    assert_eq!(
        c.inbound.expect("inbound").max_request_time_skew,
        Some(Duration::from_secs(48 * 3600))
    );
    let o = c.outbound.expect("outbound");
    assert!(o.ca_file.is_some());
    let tls = o.tls.expect("tls_listen");
    assert_eq!(tls.listen.to_string(), "127.0.0.1:443");
    assert_eq!(tls.names, ["alipay-sidecar"]);
    assert!(tls.source == alipay_sidecar::config::CertSource::Generated && tls.ca_out.is_some());
    assert!(tls.trust_out.is_some());
}

#[test]
fn defaults_match_the_documented_schema() {
    let text = "client_id = \"T_1\"\n[keys]\nmerchant_private_key = \"m.pem\"\nalipay_public_keys = { \"1\" = \"a.pem\" }\n[outbound]\nregion = \"eu\"\n[inbound]\nforward_to = \"http://127.0.0.1:3000\"\n";
    let c = Config::parse(text, Path::new("/srv/sidecar.toml"), Vec::new()).expect("parses");
    let o = c.outbound.as_ref().expect("outbound");
    assert_eq!(
        o.listen.map(|l| l.to_string()).as_deref(),
        Some("127.0.0.1:8080")
    );
    assert!(o.tls.is_none());
    assert_eq!(o.gateway.url(), "https://open-de-global.alipay.com");
    assert_eq!(o.allowed_path_prefixes, ["/ams/api/", "/ams/sandbox/api/"]);
    assert_eq!(o.max_body_bytes, 1_048_576);
    assert_eq!(o.request_time_format, RequestTimeFormat::EpochMillis);
    assert_eq!(o.agent_token, None);
    assert!(!o.sandbox_path_rewrite && o.verify_responses && !o.allow_remote_clients);
    assert_eq!(
        (o.connect_timeout, o.request_timeout),
        (Duration::from_secs(5), Duration::from_secs(15))
    );
    let i = c.inbound.as_ref().expect("inbound");
    assert_eq!(i.listen.to_string(), "0.0.0.0:8081");
    assert_eq!(
        (
            i.forward_to.host.as_str(),
            i.forward_to.port,
            i.forward_to.base_path.as_str()
        ),
        ("127.0.0.1", 3000, "")
    );
    // issue 18: notifications are a few KB; replays and stale times are refused by default
    assert_eq!(i.max_body_bytes, 65_536);
    assert_eq!(i.unverified_body_budget_bytes, 8 * 1024 * 1024);
    assert_eq!(i.forward_timeout, Duration::from_secs(10));
    assert_eq!(
        i.max_request_time_skew,
        Some(Duration::from_secs(48 * 3600))
    );
    assert_eq!(i.replay_window_entries, 16_384);
    assert_eq!(o.max_response_time_skew, Some(Duration::from_secs(600)));
    assert_eq!(
        (i.acknowledge, i.mode, i.sign_acknowledgements),
        (Acknowledge::App, InboundMode::Enforce, false)
    );
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!((c.log.format, c.log.level.as_str()), (None, "info"));
    assert_eq!(c.server.threads, 2);
    assert_eq!(
        (c.server.shutdown_grace, c.server.shutdown_timeout),
        (Duration::from_secs(5), Duration::from_secs(30))
    );
    assert_eq!(c.merchants[0].keys.merchant_key_version, "1");
    assert_eq!(
        c.merchants[0].keys.alipay_public_keys["1"],
        Path::new("/srv/a.pem")
    );
}

/// A folder with the vectors' keys and a config; returns (dir, config path).
/// The (first) merchant's key set as start-up and reload load it: read, parsed and
/// preflighted by `preflight::load`.
fn first_keys(c: &Config) -> Result<KeySet, KeySetError> {
    preflight::load(c).sets.swap_remove(0)
}

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("merchant.pem"),
        key("merchant", "private_pkcs8_pem"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("alipay.pem"),
        key("alipay", "public_spki_pem"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("alipay.b64"),
        key("alipay", "public_spki_der_b64"),
    )
    .expect("write");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

const GOOD: &str = "client_id = \"T_111222333\"\n\
[keys]\n\
merchant_private_key = \"merchant.pem\"\n\
merchant_key_version = \"2\"\n\
alipay_public_keys = { \"1\" = \"alipay.pem\", \"2\" = \"alipay.b64\" }\n\
[outbound]\n\
region = \"sea\"\n";

#[test]
fn load_reads_files_and_keyset_loads_every_key() {
    let (dir, path) = write_config(GOOD);
    let c = Config::load(&path).expect("loads");
    assert_eq!(
        c.merchants[0].keys.credential.path(),
        dir.path().join("merchant.pem")
    );
    let keys = first_keys(&c).expect("keys load");
    assert_eq!(keys.merchant_key_version, "2");
    assert_eq!(
        keys.alipay.versions().map(|(v, _)| v).collect::<Vec<_>>(),
        ["1", "2"]
    );
    // Same key under two versions: a warning, not an error.
    assert!(
        keys.warnings
            .iter()
            .any(|w| w.severity == Severity::Warning && w.message.contains("same key")),
        "{:?}",
        keys.warnings
    );
    // The preflight is pure and repeatable.
    let again = preflight::run(&c, &[(&c.merchants[0], &keys)]);
    assert_eq!(again.all().cloned().collect::<Vec<_>>(), keys.warnings);
}

#[test]
fn load_errors_name_file_key_and_line() {
    let (_dir, path) = write_config(&GOOD.replace(
        "region = \"sea\"",
        "region = \"sea\"\nrequest_timeout = \"15 s\"\nconect_timeout = \"5s\"",
    ));
    let e = Config::load(&path).expect_err("typo").to_string();
    assert!(
        e.contains(&format!("{}:9:", path.display()))
            && e.contains("`outbound.conect_timeout`")
            && e.contains("unknown field"),
        "{e}"
    );

    let (_dir, path) = write_config(&GOOD.replace(
        "region = \"sea\"",
        "region = \"sea\"\nrequest_timeout = \"fifteen\"",
    ));
    let e = Config::load(&path).expect_err("duration").to_string();
    assert!(
        e.contains(&format!("{}:8:", path.display()))
            && e.contains("`outbound.request_timeout`")
            && e.contains("not a duration"),
        "{e}"
    );

    let (_dir, path) = write_config(&GOOD.replace(
        "region = \"sea\"",
        "region = \"sea\"\nca_file = \"missing-ca.pem\"",
    ));
    let e = Config::load(&path).expect_err("ca").to_string();
    assert!(
        e.contains(&format!("{}:8", path.display()))
            && e.contains("outbound.ca_file")
            && e.contains("missing-ca.pem"),
        "{e}"
    );

    let (dir, path) = write_config(GOOD);
    std::fs::remove_file(dir.path().join("merchant.pem")).expect("rm");
    let c = Config::load(&path).expect("config itself is fine");
    let e = first_keys(&c).expect_err("missing key").to_string();
    assert!(
        e.contains(&format!("{}:3", path.display()))
            && e.contains("keys.merchant_private_key")
            && e.contains("merchant.pem")
            && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn key_problems_are_named() {
    let cases: [(&str, String, &str); 4] = [
        ("empty", String::new(), "empty"),
        (
            "truncated",
            key("alipay", "public_spki_pem")[..200].to_string(),
            "truncated",
        ),
        (
            "not a key",
            "hello, I am not a key".to_string(),
            "not a readable RSA key",
        ),
        (
            "private in public slot",
            key("alipay", "private_pkcs8_pem"),
            "PUBLIC key",
        ),
    ];
    for (what, content, needle) in cases {
        let (dir, path) = write_config(GOOD);
        std::fs::write(dir.path().join("alipay.pem"), content).expect("write");
        let c = Config::load(&path).expect("config");
        let e = first_keys(&c).expect_err(what).to_string();
        assert!(
            e.contains(":5") && e.contains("keys.alipay_public_keys.1") && e.contains(needle),
            "{what}: {e}"
        );
    }
    let (dir, path) = write_config(GOOD);
    std::fs::write(
        dir.path().join("merchant.pem"),
        key("merchant", "public_spki_pem"),
    )
    .expect("write");
    let e = first_keys(&Config::load(&path).expect("config"))
        .expect_err("public in private slot")
        .to_string();
    assert!(
        e.contains("keys.merchant_private_key") && e.contains("PRIVATE key"),
        "{e}"
    );
}

#[test]
fn env_overrides_single_values_and_rejects_typos() {
    let (dir, path) = write_config(GOOD);
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(
        dir.path().join("other.pem"),
        key("merchant", "private_pkcs1_pem"),
    )
    .expect("write");
    let c = Config::parse(
        &text,
        &path,
        env(&[
            ("ALIPAY_SIDECAR_KEYS_MERCHANT_PRIVATE_KEY", "other.pem"),
            ("ALIPAY_SIDECAR_OUTBOUND_GATEWAY", "https://127.0.0.1:8443"),
            ("ALIPAY_SIDECAR_OUTBOUND_MAX_BODY_BYTES", "2048"),
            ("ALIPAY_SIDECAR_SERVER_SHUTDOWN_GRACE", "1s"),
            ("ALIPAY_SIDECAR_INBOUND_FORWARD_TO", "http://127.0.0.1:3000"),
        ]),
    )
    .expect("overrides apply");
    assert_eq!(
        c.merchants[0].keys.credential.path(),
        dir.path().join("other.pem"),
        "resolved against the config folder"
    );
    let o = c.outbound.as_ref().expect("outbound");
    assert_eq!(
        o.gateway.url(),
        "https://127.0.0.1:8443",
        "the env gateway replaces the file's region"
    );
    assert_eq!(o.max_body_bytes, 2048);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(1));
    assert!(
        c.inbound.is_some(),
        "a section created from the environment"
    );
    let keys = first_keys(&c).expect("keys");
    assert!(
        keys.warnings.iter().any(|w| w.message.contains("PKCS#1")),
        "{:?}",
        keys.warnings
    );
    let e = first_keys(
        &Config::parse(
            &text,
            &path,
            env(&[("ALIPAY_SIDECAR_KEYS_MERCHANT_PRIVATE_KEY", "gone.pem")]),
        )
        .expect("config"),
    )
    .expect_err("missing")
    .to_string();
    assert!(
        e.contains("environment variable ALIPAY_SIDECAR_KEYS_MERCHANT_PRIVATE_KEY")
            && e.contains("gone.pem"),
        "{e}"
    );

    let e = Config::parse(&text, &path, env(&[("ALIPAY_SIDECAR_SEVER_THREADS", "4")]))
        .expect_err("typo")
        .to_string();
    assert!(
        e.contains("ALIPAY_SIDECAR_SEVER_THREADS") && e.contains("ALIPAY_SIDECAR_SERVER_THREADS"),
        "{e}"
    );
    let e = Config::parse(
        &text,
        &path,
        env(&[("ALIPAY_SIDECAR_OUTBOUND_MAX_BODY_BYTES", "big")]),
    )
    .expect_err("type")
    .to_string();
    assert!(
        e.contains("ALIPAY_SIDECAR_OUTBOUND_MAX_BODY_BYTES")
            && e.contains("outbound.max_body_bytes"),
        "{e}"
    );
    Config::parse(
        &text,
        &path,
        env(&[
            ("ALIPAY_SIDECAR_CONFIG", "/elsewhere.toml"),
            ("PATH", "/bin"),
        ]),
    )
    .expect("reserved and foreign variables are ignored");
}

#[test]
fn listen_rules_and_sections() {
    let base = GOOD.to_string();
    let e = Config::parse(
        &format!("{base}listen = \"0.0.0.0:8080\"\n"),
        Path::new("/x/s.toml"),
        Vec::new(),
    )
    .expect_err("oracle")
    .to_string();
    assert!(
        e.contains("/x/s.toml:8:")
            && e.contains("signing oracle")
            && e.contains("allow_remote_clients = true"),
        "{e}"
    );
    let c = Config::parse(
        &format!("{base}listen = \"0.0.0.0:8080\"\nallow_remote_clients = true\n"),
        Path::new("/x/s.toml"),
        Vec::new(),
    )
    .expect("opt-in");
    assert!(c.outbound.expect("outbound").allow_remote_clients);
    let e = Config::parse(
        &base.replace("[outbound]\nregion = \"sea\"\n", ""),
        Path::new("/x/s.toml"),
        Vec::new(),
    )
    .expect_err("nothing to do")
    .to_string();
    assert!(e.contains("[outbound]") && e.contains("[inbound]"), "{e}");
    let e = Config::parse(
        &base.replace("region = \"sea\"", "gateway = \"http://127.0.0.1:8443\""),
        Path::new("/x/s.toml"),
        Vec::new(),
    )
    .expect_err("http")
    .to_string();
    assert!(
        e.contains("/x/s.toml:7:")
            && e.contains("`outbound.gateway`")
            && e.contains("TLS is mandatory"),
        "{e}"
    );
}

// ---------------------------------------------------------------- several merchants

/// A folder with two merchants' key files and a config listing them. `sg` gets the vectors'
/// merchant key and Alipay key; `eu` gets the vectors' Alipay private key as its merchant key
/// and the merchant public key as its "Alipay" key (so the two sets differ), or, with
/// `shared`, copies of sg's files.
fn two_merchants(sg: (&str, &str), eu: (&str, &str), shared: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let eu_keys = if shared {
        [
            ("merchant", "private_pkcs8_pem"),
            ("alipay", "public_spki_pem"),
        ]
    } else {
        [
            ("alipay", "private_pkcs8_pem"),
            ("merchant", "public_spki_pem"),
        ]
    };
    for (name, (who, form)) in [
        ("sg_m.pem", ("merchant", "private_pkcs8_pem")),
        ("sg_a.pem", ("alipay", "public_spki_pem")),
        ("eu_m.pem", eu_keys[0]),
        ("eu_a.pem", eu_keys[1]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, key(who, form)).expect("key file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let text = format!(
        "[outbound]\nregion = \"sea\"\nlisten = \"127.0.0.1:18080\"\n\
         [inbound]\nlisten = \"127.0.0.1:18081\"\nforward_to = \"http://127.0.0.1:3000\"\n\
         [[merchants]]\nname = \"{}\"\nclient_id = \"{}\"\n\
         [merchants.keys]\nmerchant_private_key = \"sg_m.pem\"\nalipay_public_keys = {{ \"1\" = \"sg_a.pem\" }}\n\
         [merchants.outbound]\nregion = \"na\"\nlisten = \"127.0.0.1:18090\"\n\
         [[merchants]]\nname = \"{}\"\nclient_id = \"{}\"\n\
         [merchants.keys]\nmerchant_private_key = \"eu_m.pem\"\nmerchant_key_version = 2\n\
         alipay_public_keys = {{ \"1\" = \"eu_a.pem\" }}\n\
         [merchants.inbound]\nforward_to = \"http://127.0.0.1:4000\"\n",
        sg.0, sg.1, eu.0, eu.1
    );
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, text).expect("config");
    (dir, path)
}

fn check_config(path: &Path) -> (i32, String, String) {
    crate::support::run_bounded(
        std::process::Command::new(crate::support::bin())
            .arg("check-config")
            .arg("--config")
            .arg(path),
        Duration::from_secs(60),
    )
}

#[test]
fn check_config_summarises_every_merchant() {
    let (_dir, path) = two_merchants(
        ("sg", "2188120012345678"),
        ("eu", "2188220087654321"),
        false,
    );
    let (code, out, err) = check_config(&path);
    assert_eq!(code, 0, "{out}\n{err}");
    let sg = out
        .lines()
        .find(|l| l.starts_with("merchant sg:"))
        .unwrap_or_else(|| panic!("{out}"));
    for needle in [
        "2188120012345678 (live)",
        "https://open-na-global.alipay.com",
        "http://127.0.0.1:18090",
        "http://127.0.0.1:3000",
    ] {
        assert!(sg.contains(needle), "missing {needle}: {sg}");
    }
    let eu = out
        .lines()
        .find(|l| l.starts_with("merchant eu:"))
        .unwrap_or_else(|| panic!("{out}"));
    for needle in [
        "2188220087654321",
        "https://open-sea-global.alipay.com",
        "http://127.0.0.1:4000",
        "none (the shared listener",
    ] {
        assert!(eu.contains(needle), "missing {needle}: {eu}");
    }
    // key versions and fingerprints per merchant
    assert!(
        out.contains("  merchant private key: keyVersion 2"),
        "{out}"
    );
    assert!(
        out.contains("  merchant private key: keyVersion 1"),
        "{out}"
    );
    assert!(!err.contains("same private key"), "{err}");
}

#[test]
fn check_config_warns_about_keys_shared_between_merchants() {
    for (eu_client_id, expected, not_expected) in [
        // two live client ids, one private key
        (
            "2188220087654321",
            "the same private key for two client ids",
            "a sandbox and a live id",
        ),
        // a sandbox id and a live id sharing keys (the more specific warning only)
        (
            "SANDBOX_2188220087654321",
            "a sandbox and a live id sharing keys",
            "the same private key for two client ids",
        ),
    ] {
        let (_dir, path) = two_merchants(("sg", "2188120012345678"), ("eu", eu_client_id), true);
        let (code, out, err) = check_config(&path);
        assert_eq!(code, 0, "warnings only: {out}\n{err}");
        assert!(
            err.contains("warning:")
                && err.contains(expected)
                && err.contains("\"sg\" (client id 2188120012345678)")
                && err.contains("sidecar.toml:"),
            "{err}"
        );
        assert!(!err.contains(not_expected), "{err}");
    }
}

/// A reload runs the same preflight as `check-config` and start-up, across merchants too: a
/// reload that gives two merchants one private key logs the warning `check-config` prints
/// for the same files, word for word, and (a warning, as there) swaps the keys.
#[test]
fn a_reload_reports_a_cross_merchant_problem_as_check_config_does() {
    let (dir, path) = two_merchants(
        ("sg", "2188120012345678"),
        ("eu", "2188220087654321"),
        false,
    );
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text
        .replace("127.0.0.1:18080", "127.0.0.1:0")
        .replace("127.0.0.1:18081", "127.0.0.1:0")
        .replace("127.0.0.1:18090", "127.0.0.1:0")
        .replacen(
            "[[merchants]]",
            "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n[[merchants]]",
            1,
        );
    std::fs::write(&path, text).expect("config");
    let (code, out, err) = check_config(&path);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("warning:"), "distinct keys: {err}");
    let sidecar = crate::support::Sidecar::launch(&path, &[], &[]);

    // eu's files become copies of sg's: one private key for two client ids
    for (name, (who, form)) in [
        ("eu_m.pem", ("merchant", "private_pkcs8_pem")),
        ("eu_a.pem", ("alipay", "public_spki_pem")),
    ] {
        std::fs::write(dir.path().join(name), key(who, form)).expect("key file");
    }
    let (code, out, err) = check_config(&path);
    assert_eq!(code, 0, "warnings only: {out}\n{err}");
    let expected = err
        .lines()
        .find_map(|l| l.strip_prefix("warning: "))
        .filter(|w| w.contains("the same private key for two client ids"))
        .unwrap_or_else(|| panic!("check-config warns: {err}"))
        .to_string();
    let findings = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "preflight warning")
            .filter_map(|v| v["finding"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        !findings(&sidecar.logs()).contains(&expected),
        "not before the reload: {}",
        sidecar.logs()
    );

    let r = sidecar.reload();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["reloaded"], true, "a warning does not block: {body}");
    assert_eq!(body["changed"], true, "{body}");
    sidecar.eventually("the reload logs check-config's warning", || {
        findings(&sidecar.logs()).contains(&expected).then_some(())
    });
}

#[test]
fn check_config_refuses_bad_merchant_lists() {
    let (_dir, path) = two_merchants(
        ("SG 1", "2188120012345678"),
        ("eu", "2188220087654321"),
        false,
    );
    let (code, _, err) = check_config(&path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("sidecar.toml:8:")
            && err.contains("`merchants.0.name`")
            && err.contains("a-z, 0-9, _ and -"),
        "{err}"
    );
    for (what, sg, eu, needle) in [
        (
            "duplicate name",
            ("sg", "2188120012345678"),
            ("sg", "2188220087654321"),
            "already used by `merchants.0`",
        ),
        (
            "duplicate client id",
            ("sg", "2188120012345678"),
            ("eu", "2188120012345678"),
            "already configured for merchant \"sg\"",
        ),
    ] {
        let (_dir, path) = two_merchants(sg, eu, false);
        let (code, _, err) = check_config(&path);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(
            err.contains(needle) && err.contains("sidecar.toml:"),
            "{what}: {err}"
        );
    }
    // mixing the single-merchant form with [[merchants]]
    let (_dir, path) = two_merchants(
        ("sg", "2188120012345678"),
        ("eu", "2188220087654321"),
        false,
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("client_id = \"T_1\"\n{text}")).unwrap();
    let (code, _, err) = check_config(&path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("sidecar.toml:1:") && err.contains("cannot be combined with [[merchants]]"),
        "{err}"
    );
    // a merchant listener on the shared one's address
    std::fs::write(&path, text.replace("127.0.0.1:18090", "127.0.0.1:18080")).unwrap();
    let (code, _, err) = check_config(&path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`merchants.0.outbound.listen`")
            && err.contains("also used by `outbound.listen`"),
        "{err}"
    );
    // one merchant's broken key file is named with that merchant's config line
    let (dir, path) = two_merchants(
        ("sg", "2188120012345678"),
        ("eu", "2188220087654321"),
        false,
    );
    std::fs::write(dir.path().join("eu_m.pem"), "not a key\n").unwrap();
    let (code, _, err) = check_config(&path);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("eu_m.pem") && err.contains("merchants.1.keys.merchant_private_key"),
        "{err}"
    );
}
