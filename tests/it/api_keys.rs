//! Merchant credentials through the REAL binary: API-key mode end to end (the sidecar's Bearer
//! key only, refused keys, reload, redaction at every log level), the app's credential headers
//! dropped in signing mode, and the loud, throttled warning when the gateway refuses the
//! merchant.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use crate::support::*;

/// `{isak|irak}_{TEST|PROD}_{base64(client id), unpadded}_{secret}`.
fn api_key(kind: &str, env: &str, client_id: &str, secret: &str) -> String {
    let id = base64::engine::general_purpose::STANDARD_NO_PAD.encode(client_id);
    format!("{kind}_{env}_{id}_{secret}")
}

/// The sidecar's key (what the gateway must see) and the app's own key (what it must not).
const SECRET: &str = "SidecarSecretValue0123456789";
const APP_SECRET: &str = "AppOwnSecretValue9876543210";

const API_KEYS: &str =
    "api_key = \"api_key.txt\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";

fn prod_key() -> String {
    api_key("isak", "PROD", CLIENT_ID, SECRET)
}

/// A pay carrying the app's own credentials, as an SDK in API-key mode (plus a proxy and a
/// cookie jar) would send it.
fn pay_with_app_credentials(rig: &Rig, id: &str) -> Response {
    let app_key = api_key("isak", "PROD", CLIENT_ID, APP_SECRET);
    request(
        rig.outbound,
        "POST",
        PAY,
        &[
            ("Content-Type", "application/json; charset=UTF-8"),
            ("Authorization", &format!("Bearer {app_key}")),
            ("Proxy-Authorization", &format!("Basic {APP_SECRET}")),
            ("Cookie", &format!("session={APP_SECRET}")),
        ],
        pay_body(id, "5800", "").as_bytes(),
    )
    .unwrap()
}

fn api_key_rig(
    sidecar_key: &str,
    gateway_key: &str,
    env: &'static [(&'static str, &'static str)],
) -> Rig {
    let sidecar_key = sidecar_key.to_string();
    let gateway_key = gateway_key.to_string();
    Rig::start(
        RigConfig {
            keys: API_KEYS,
            env,
            ..Default::default()
        },
        move |gw| gw.api_key = Some(gateway_key),
        move |dir| std::fs::write(dir.join("api_key.txt"), format!("{sidecar_key}\n")).unwrap(),
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET, APP_SECRET] {
        assert!(!text.contains(secret), "{what} shows a key:\n{text}");
    }
}

#[test]
fn api_key_mode_sends_only_the_sidecars_bearer_key_and_never_logs_it() {
    // trace for everything, pingora's header dumps included: the redaction must hold
    let rig = api_key_rig(&prod_key(), &prod_key(), &[("RUST_LOG", "trace")]);
    let r = pay_with_app_credentials(&rig, "ak-1");
    r.assert_status(200, "API-key pay");
    assert_eq!(r.result_code().0, "S", "{:?}", r.json());
    assert_eq!(
        r.header("X-Alipay-Sidecar-Verified"),
        Some("unsigned-api-key"),
        "the API-key protocol has no response signature"
    );

    let got = rig.last_pay();
    assert!(got.verified, "the gateway accepted the key");
    assert_eq!(
        got.header("authorization"),
        Some(&*format!("Bearer {}", prod_key()))
    );
    let authorizations = got
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .count();
    assert_eq!(authorizations, 1, "{:?}", got.headers);
    for h in [
        "client-id",
        "request-time",
        "signature",
        "proxy-authorization",
        "cookie",
    ] {
        assert_eq!(
            got.header(h),
            None,
            "{h} reached the gateway: {:?}",
            got.headers
        );
    }
    assert_no_secret(
        "what the gateway received",
        &format!("{:?}", got.headers).replace(SECRET, ""),
    );

    let m = rig.scrape();
    for h in ["authorization", "proxy-authorization", "cookie"] {
        assert_eq!(
            m.sum(
                "alipay_sidecar_app_credentials_dropped_total",
                &[("merchant", "default"), ("header", h)]
            ),
            1.0,
            "{h}"
        );
    }
    let metrics_text = String::from_utf8(rig.sidecar.admin_get("/metrics").body).unwrap();
    assert_no_secret("/metrics", &metrics_text);
    assert!(
        metrics_text.contains("role=\"api_key\""),
        "key_info shows the API key's role"
    );

    // a reload logs the key set too
    rig.reload().assert_status(200, "reload");
    let logs = rig.sidecar.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
        "trace logging ran"
    );
    assert_no_secret("the trace logs", &logs);

    let (code, out, err) = run_bounded(
        &mut command(&[
            "check-config",
            "--config",
            &rig.sidecar.config_path.display().to_string(),
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_no_secret("check-config", &format!("{out}{err}"));
    assert!(out.contains("API key: Standard PROD, SHA256:"), "{out}");
}

/// Writes a config with `key` in api_key.txt (and `outbound` lines) and runs `check-config`
/// and `run` on it: both must refuse, saying `why`, without the key.
fn refused(key: &str, outbound: &str, why: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    std::fs::write(dir.path().join("api_key.txt"), key).unwrap();
    let toml = RigConfig {
        keys: API_KEYS,
        outbound,
        ..Default::default()
    }
    .toml("https://127.0.0.1:1", None);
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, toml).unwrap();
    let p = path.display().to_string();
    for args in [["check-config", "--config", &p], ["run", "--config", &p]] {
        let (code, out, err) = run_bounded(&mut command(&args), Duration::from_secs(60));
        let all = format!("{out}\n{err}");
        assert_eq!(code, 2, "{args:?} must refuse: {all}");
        for w in why {
            assert!(all.contains(w), "{args:?} does not say {w:?}:\n{all}");
        }
        assert!(!all.contains(SECRET), "{args:?} shows the key:\n{all}");
        assert!(all.contains("api_key"), "{args:?} names the option:\n{all}");
    }
}

#[test]
fn a_malformed_api_key_is_refused() {
    refused(
        &format!("sk_live_{SECRET}"),
        "",
        &["does not start with isak_ (Standard) or irak_ (Restricted)"],
    );
    refused(
        &format!("isak_PROD_{SECRET}"),
        "",
        &["has no client-id part or no secret"],
    );
}

#[test]
fn an_api_key_of_another_client_is_refused() {
    refused(
        &api_key("isak", "PROD", "T_999", SECRET),
        "",
        &[
            "was issued for client id \"T_999\"",
            "client_id is \"T_111222333\"",
        ],
    );
}

#[test]
fn a_test_api_key_with_live_paths_is_refused() {
    refused(
        &api_key("isak", "TEST", CLIENT_ID, SECRET),
        "allowed_path_prefixes = [\"/ams/api/\"]\n",
        &["is a TEST key", "only live paths are allowed"],
    );
    refused(
        &api_key("irak", "PROD", CLIENT_ID, SECRET),
        "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\n",
        &["is a PROD key", "only sandbox paths are allowed"],
    );
}

#[test]
fn a_test_api_key_calls_only_sandbox_paths() {
    let key = api_key("isak", "TEST", CLIENT_ID, SECRET);
    let rig = api_key_rig(&key, &key, &[]);
    // a live path with a TEST key: refused by the sidecar, nothing sent
    let r = rig.pay("ak-live", "");
    r.assert_status(403, "TEST key on a live path");
    assert_eq!(r.result_code().1, "SIDECAR_PATH_NOT_ALLOWED");
    assert!(rig.gw.received().is_empty());
    let sandbox = "/ams/sandbox/api/v1/payments/pay";
    let r = request(
        rig.outbound,
        "POST",
        sandbox,
        &[("Content-Type", "application/json; charset=UTF-8")],
        pay_body("ak-sb", "5800", "").as_bytes(),
    )
    .unwrap();
    r.assert_status(200, "TEST key on the sandbox path");
    assert_eq!(r.result_code().0, "S");
    assert_eq!(
        rig.last_received(sandbox).header("authorization"),
        Some(&*format!("Bearer {key}"))
    );
}

#[test]
fn api_key_reload_uses_the_new_key_and_a_broken_file_keeps_the_old() {
    let old = prod_key();
    let new = api_key("isak", "PROD", CLIENT_ID, "TheNewSidecarSecret42");
    // the gateway knows only the new key: the old one is refused the way Alipay does
    let rig = api_key_rig(&old, &new, &[]);
    let r = rig.pay("rl-1", "");
    r.assert_status(200, "refused key");
    assert_eq!(r.result_code(), ("F".into(), "OAUTH_FAIL".into()));
    assert_eq!(
        r.header("X-Alipay-Sidecar-Verified"),
        Some("unsigned-api-key")
    );
    assert_eq!(
        rig.last_pay().header("authorization"),
        Some(&*format!("Bearer {old}"))
    );
    // the refusal is loud: counted, and one WARN with the key's prefix, never the key
    let m = rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_gateway_rejections_total",
            &[("merchant", "default"), ("result_code", "OAUTH_FAIL")]
        ),
        1.0
    );
    let warn = rig.eventually("the OAUTH_FAIL warning", || {
        rig.sidecar
            .logs()
            .lines()
            .find(|l| l.contains("refused the merchant's credentials") && l.contains("OAUTH_FAIL"))
            .map(str::to_string)
    });
    assert!(warn.contains("\"level\":\"WARN\""), "{warn}");
    assert!(
        warn.contains("does not accept this merchant's API key") && warn.contains("SHA256:"),
        "{warn}"
    );

    // a broken file: the reload fails, the old key keeps serving
    let file = rig.dir.path().join("api_key.txt");
    std::fs::write(&file, "isak_PROD_not a key\n").unwrap();
    let r = rig.reload();
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    rig.pay("rl-2", "");
    assert_eq!(
        rig.last_pay().header("authorization"),
        Some(&*format!("Bearer {old}"))
    );

    // the right key: used from the next request on
    write_atomically(&file, &format!("{new}\n"));
    rig.reload().assert_status(200, "reload with the new key");
    let r = rig.pay("rl-3", "");
    assert_eq!(r.result_code().0, "S", "{:?}", r.json());
    assert_eq!(
        rig.last_pay().header("authorization"),
        Some(&*format!("Bearer {new}"))
    );
    assert!(!rig.sidecar.logs().contains("TheNewSidecarSecret42"));
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn signing_mode_drops_the_apps_credentials() {
    let rig = Rig::with("");
    let r = pay_with_app_credentials(&rig, "strip-1");
    r.assert_status(200, "signed pay");
    assert_eq!(r.header("X-Alipay-Sidecar-Verified"), Some("true"));
    let got = rig.last_pay();
    assert!(got.verified);
    for h in ["authorization", "proxy-authorization", "cookie"] {
        assert_eq!(
            got.header(h),
            None,
            "{h} reached the gateway: {:?}",
            got.headers
        );
    }
    assert!(got.header("signature").is_some());
    let m = rig.scrape();
    for h in ["authorization", "proxy-authorization", "cookie"] {
        assert_eq!(
            m.sum(
                "alipay_sidecar_app_credentials_dropped_total",
                &[("merchant", "default"), ("header", h)]
            ),
            1.0,
            "{h}"
        );
    }
    // a request without them counts nothing more
    rig.pay("strip-2", "").assert_status(200, "plain pay");
    assert_eq!(
        rig.scrape().sum(
            "alipay_sidecar_app_credentials_dropped_total",
            &[("header", "authorization")]
        ),
        1.0
    );
}

#[test]
fn a_refused_signature_is_a_throttled_warning_with_the_fingerprint_and_a_metric() {
    // the gateway holds another public key for the client: every request is refused with
    // Alipay's unsigned INVALID_SIGNATURE
    let rig = Rig::start(
        RigConfig::default(),
        |gw| gw.merchant_public_key = key("alipay", "public_spki_pem"),
        |_| {},
    );
    const BURST: usize = 12;
    for i in 0..BURST {
        let r = rig.pay(&format!("rej-{i}"), "");
        r.assert_status(200, "unsigned F");
        assert_eq!(r.result_code(), ("F".into(), "INVALID_SIGNATURE".into()));
        assert_eq!(
            r.header("X-Alipay-Sidecar-Verified"),
            Some("unsigned-failure")
        );
    }
    let m = rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_gateway_rejections_total",
            &[
                ("merchant", "default"),
                ("result_code", "INVALID_SIGNATURE")
            ]
        ),
        BURST as f64
    );
    assert_eq!(
        m.sum(
            "alipay_sidecar_gateway_rejections_total",
            &[("result_code", "other")]
        ),
        0.0,
        "series exist at zero"
    );
    let fingerprint = {
        let (code, out, err) = run_bounded(
            &mut command(&[
                "check-config",
                "--config",
                &rig.sidecar.config_path.display().to_string(),
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(code, 0, "{out}\n{err}");
        let line = out
            .lines()
            .find(|l| l.starts_with("merchant private key:"))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string();
        line.split(", ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .to_string()
    };
    let logs = rig.sidecar.logs();
    let warns: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused the merchant's credentials"))
        .collect();
    // at most one line per minute per merchant and code; a slow machine may cross a minute
    assert!(
        !warns.is_empty() && warns.len() <= 2,
        "{BURST} rejections gave {} lines:\n{logs}",
        warns.len()
    );
    let w = warns[0];
    for part in [
        "\"level\":\"WARN\"",
        "\"merchant\":\"default\"",
        &format!("\"client_id\":\"{CLIENT_ID}\""),
        "\"key_version\":\"1\"",
        "\"result_code\":\"INVALID_SIGNATURE\"",
        &format!("\"fingerprint\":\"{fingerprint}\""),
        "Alipay does not accept this merchant's signature: check that the public key registered in the Antom dashboard for client T_111222333 is the one with fingerprint",
    ] {
        assert!(w.contains(part), "the warning lacks {part}:\n{w}");
    }
    // /readyz stays green: a refusal is not a readiness problem
    assert_eq!(rig.ready_status(), 200);
}

#[test]
fn the_fake_gateway_cli_accepts_its_api_key_and_refuses_others_as_alipay_does() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path(), "m.pem", "merchant", "public_spki_pem");
    std::fs::write(dir.path().join("api_key.txt"), format!("{}\n", prod_key())).unwrap();
    let mut child = std::process::Command::new(bin())
        .args([
            "mock-gateway",
            "--listen",
            "127.0.0.1:0",
            "--merchant-public-key",
        ])
        .arg(dir.path().join("m.pem"))
        .arg("--api-key")
        .arg(dir.path().join("api_key.txt"))
        .arg("--out-dir")
        .arg(dir.path().join("out"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let summary = lines.join("\n");
    let addr: std::net::SocketAddr = summary
        .lines()
        .find_map(|l| l.strip_prefix("mock-gateway: listening on http://"))
        .unwrap_or_else(|| panic!("{summary}"))
        .trim()
        .parse()
        .unwrap();
    assert!(!summary.contains(SECRET), "{summary}");
    let call = |auth: &str| {
        request(
            addr,
            "POST",
            PAY,
            &[
                ("Content-Type", "application/json"),
                ("Authorization", auth),
            ],
            pay_body(&format!("cli-{}", auth.len()), "100", "").as_bytes(),
        )
        .unwrap()
    };
    let good = call(&format!("Bearer {}", prod_key()));
    assert_eq!(good.result_code(), ("S".into(), "SUCCESS".into()));
    assert_eq!(
        good.header("signature"),
        None,
        "API-key answers are unsigned"
    );
    let wrong = call(&format!(
        "Bearer {}",
        api_key("isak", "PROD", CLIENT_ID, APP_SECRET)
    ));
    assert_eq!(wrong.status, 200);
    assert_eq!(wrong.result_code(), ("F".into(), "OAUTH_FAIL".into()));
    assert_eq!(
        wrong.header("signature"),
        None,
        "Alipay's refusal is unsigned"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn no_log_level_or_format_shows_a_key() {
    for level in ["error", "warn", "info", "debug", "trace"] {
        let rig = Rig::start(
            RigConfig {
                keys: API_KEYS,
                tail: &format!("[log]\nformat = \"text\"\nlevel = \"{level}\"\n"),
                ..Default::default()
            },
            |gw| {
                gw.api_key = Some(api_key(
                    "isak",
                    "PROD",
                    CLIENT_ID,
                    "OtherKeyTheGatewayKnows",
                ))
            },
            |dir| std::fs::write(dir.join("api_key.txt"), prod_key()).unwrap(),
        );
        // refused by the gateway: the WARN line, the request line, the debug lines
        let r = pay_with_app_credentials(&rig, &format!("lv-{level}"));
        assert_eq!(
            r.result_code(),
            ("F".into(), "OAUTH_FAIL".into()),
            "{level}"
        );
        rig.reload().assert_status(200, "reload");
        let logs = rig.sidecar.logs();
        assert!(
            !logs.is_empty() || level == "error",
            "{level}: nothing logged"
        );
        assert_no_secret(&format!("the {level} logs"), &logs);
    }
}

#[test]
fn api_key_and_private_key_are_exclusive_and_merchants_may_mix_modes() {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    std::fs::write(dir.path().join("api_key.txt"), prod_key()).unwrap();
    let both = "client_id = \"T_111222333\"\n[keys]\nmerchant_private_key = \"merchant_private_key.pem\"\napi_key = \"api_key.txt\"\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n[outbound]\nregion = \"sea\"\n";
    let path = dir.path().join("both.toml");
    std::fs::write(&path, both).unwrap();
    let (code, out, err) = run_bounded(
        &mut command(&["check-config", "--config", &path.display().to_string()]),
        Duration::from_secs(60),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("both.toml:4:")
            && err.contains("`api_key` and `merchant_private_key` are both set"),
        "{err}"
    );

    let mixed = format!(
        "[outbound]\nregion = \"sea\"\n\
         [[merchants]]\nname = \"rsa\"\nclient_id = \"T_1\"\n[merchants.keys]\n{VECTOR_KEYS}\
         [[merchants]]\nname = \"bearer\"\nclient_id = \"{CLIENT_ID}\"\n[merchants.keys]\n{API_KEYS}"
    );
    let path = dir.path().join("mixed.toml");
    std::fs::write(&path, mixed).unwrap();
    let (code, out, err) = run_bounded(
        &mut command(&["check-config", "--config", &path.display().to_string()]),
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("merchant private key: keyVersion 1"), "{out}");
    assert!(out.contains("API key: Standard PROD, SHA256:"), "{out}");
    assert_no_secret("check-config", &format!("{out}{err}"));
}
