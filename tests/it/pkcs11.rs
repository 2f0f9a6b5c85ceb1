//! The merchant key in a real PKCS#11 token (SoftHSM 2 in a temp folder): `check-config`'s
//! words for every way a token key is unusable, the pay flow and a signed acknowledgement
//! signed by the token (verified by the fake gateway / the merchant's public key), a reload
//! that switches to another token object, proof that the key never leaves the token, the
//! signing budget against a stalling token (a C shim in front of SoftHSM), and the
//! `pkcs11 list` / `pkcs11 keygen` commands.

use std::time::Duration;

use alipay_sidecar::protocol::{content_to_sign, PublicKey, Verifier};

use crate::support::*;

/// SPKI PEM of a one-line base64 public key (what the fake gateway reads).
fn pem(b64: &str) -> String {
    let lines: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// `check-config` on a config whose `[keys]` are `keys` (the vector Alipay key beside it),
/// with the token's environment: (exit code, stdout + stderr).
fn check_config(hsm: &SoftHsm, keys: &str) -> (i32, String) {
    check_config_with(hsm, keys, |_| {})
}

fn check_config_with(
    hsm: &SoftHsm,
    keys: &str,
    prepare: impl FnOnce(&std::path::Path),
) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    prepare(dir.path());
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "client_id = \"{CLIENT_ID}\"\n[keys]\n{keys}\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
             gateway = \"https://open-na-global.alipay.com\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let mut cmd = command(&["check-config", "--config", &config.display().to_string()]);
    let (k, v) = hsm.env();
    cmd.env(k, v);
    let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(60));
    (code, format!("{out}\n{err}"))
}

fn refused(hsm: &SoftHsm, keys: &str, words: &[&str]) {
    let (code, out) = check_config(hsm, keys);
    assert_ne!(code, 0, "check-config accepted it:\n{out}");
    for w in words {
        assert!(out.contains(w), "check-config does not say {w:?}:\n{out}");
    }
}

// ---------------------------------------------------------------- check-config

#[test]
fn check_config_accepts_a_token_key_and_shows_its_fingerprint() {
    let Some(hsm) = softhsm("check_config_accepts_a_token_key_and_shows_its_fingerprint") else {
        return;
    };
    let public = hsm.keygen("merchant");
    let fingerprint = PublicKey::from_text(&public)
        .unwrap()
        .fingerprint()
        .to_string();
    let (code, out) = check_config(&hsm, &hsm.keys("merchant", None));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&fingerprint), "{out}");
    assert!(
        out.contains("PKCS#11 token pkcs11:token=alipay;object=merchant"),
        "{out}"
    );
}

#[test]
fn the_preflight_catches_the_token_keys_public_half_configured_as_alipays() {
    let Some(hsm) =
        softhsm("the_preflight_catches_the_token_keys_public_half_configured_as_alipays")
    else {
        return;
    };
    let public = hsm.keygen("merchant");
    let (code, out) = check_config_with(&hsm, &hsm.keys("merchant", None), |dir| {
        std::fs::write(dir.join("alipay_public_key.pem"), pem(&public)).unwrap()
    });
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("you configured your own public key as Alipay's"),
        "{out}"
    );
}

#[test]
fn merchants_keys_take_token_keys_and_the_cross_merchant_preflight_sees_them() {
    let Some(hsm) =
        softhsm("merchants_keys_take_token_keys_and_the_cross_merchant_preflight_sees_them")
    else {
        return;
    };
    let public = hsm.keygen("shared");
    let fingerprint = PublicKey::from_text(&public)
        .unwrap()
        .fingerprint()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let keys = hsm.keys("shared", None);
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[outbound]\ngateway = \"https://open-na-global.alipay.com\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[merchants]]\nname = \"sg\"\nclient_id = \"T_1\"\n[merchants.keys]\n{keys}\
             [merchants.outbound]\nlisten = \"127.0.0.1:0\"\n\
             [[merchants]]\nname = \"eu\"\nclient_id = \"T_2\"\n[merchants.keys]\n{keys}\
             [merchants.outbound]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let mut cmd = command(&["check-config", "--config", &config.display().to_string()]);
    let (k, v) = hsm.env();
    cmd.env(k, v);
    let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, 0, "{out}\n{err}");
    let all = format!("{out}\n{err}");
    assert!(all.matches(&fingerprint).count() >= 2, "{all}");
    assert!(
        all.contains("use the same private key for two client ids"),
        "{all}"
    );
}

#[test]
fn check_config_says_the_module_is_missing() {
    let Some(hsm) = softhsm("check_config_says_the_module_is_missing") else {
        return;
    };
    let keys = hsm.keys(
        "merchant",
        Some(std::path::Path::new("/nonexistent/libvendor.so")),
    );
    refused(
        &hsm,
        &keys,
        &["module missing", "/nonexistent/libvendor.so"],
    );
}

#[test]
fn check_config_says_the_token_is_not_found() {
    let Some(hsm) = softhsm("check_config_says_the_token_is_not_found") else {
        return;
    };
    let keys = hsm
        .keys("merchant", None)
        .replace("token=alipay", "token=elsewhere");
    refused(
        &hsm,
        &keys,
        &["token not found", "\"elsewhere\"", "\"alipay\""],
    );
}

#[test]
fn check_config_says_the_pin_is_wrong() {
    let Some(hsm) = softhsm("check_config_says_the_pin_is_wrong") else {
        return;
    };
    hsm.keygen("merchant");
    std::fs::write(&hsm.pin_file, "9999\n").unwrap();
    refused(
        &hsm,
        &hsm.keys("merchant", None),
        &["wrong PIN", "CKR_PIN_INCORRECT"],
    );
}

#[test]
fn check_config_says_there_is_no_such_object() {
    let Some(hsm) = softhsm("check_config_says_there_is_no_such_object") else {
        return;
    };
    hsm.keygen("merchant");
    refused(
        &hsm,
        &hsm.keys("merchant-2027", None),
        &["no such object", "\"merchant-2027\"", "\"merchant\""],
    );
}

#[test]
fn check_config_refuses_keys_that_are_not_rsa_2048_to_4096() {
    let Some(hsm) = softhsm("check_config_refuses_keys_that_are_not_rsa_2048_to_4096") else {
        return;
    };
    hsm.helper(&["genkey", "ec", "ec"]);
    hsm.helper(&["genkey", "small", "rsa1024"]);
    refused(&hsm, &hsm.keys("ec", None), &["key not RSA", "CKK_EC"]);
    refused(&hsm, &hsm.keys("small", None), &["RSA-1024", "2048–4096"]);
}

#[test]
fn check_config_refuses_a_key_without_the_sign_permission() {
    let Some(hsm) = softhsm("check_config_refuses_a_key_without_the_sign_permission") else {
        return;
    };
    hsm.helper(&["genkey", "decrypt-only", "rsa2048-nosign"]);
    refused(
        &hsm,
        &hsm.keys("decrypt-only", None),
        &["key without the sign permission", "CKA_SIGN"],
    );
}

#[test]
fn check_config_refuses_a_pin_in_the_uri_and_token_options_next_to_a_file_key() {
    let Some(hsm) =
        softhsm("check_config_refuses_a_pin_in_the_uri_and_token_options_next_to_a_file_key")
    else {
        return;
    };
    let keys = hsm
        .keys("merchant", None)
        .replace(";type=private", ";type=private?pin-value=1234");
    refused(&hsm, &keys, &["pin-value", "pkcs11_pin_file"]);
    refused(
        &hsm,
        &format!("{VECTOR_KEYS}sign_timeout = \"1s\"\n"),
        &["`sign_timeout` applies to a merchant key kept in a PKCS#11 token"],
    );
}

// ---------------------------------------------------------------- the real binary

/// A rig whose merchant key is the token object `object` (made by `pkcs11 keygen`), the fake
/// gateway verifying with its public half; returns the rig and the public key (base64).
fn token_rig(
    hsm: &SoftHsm,
    object: &str,
    module: Option<&std::path::Path>,
    tail: &str,
) -> (Rig, String) {
    let public = hsm.keygen(object);
    let mut keys = hsm.keys(object, module);
    if module.is_some() {
        // the stalling shim: give up on a sign after 1 s
        keys.push_str("sign_timeout = \"1s\"\n");
    }
    let (k, conf) = hsm.env();
    let target = hsm.module.display().to_string();
    let stall = hsm.dir.path().join("stall").display().to_string();
    let fail = hsm.dir.path().join("fail").display().to_string();
    let env = [
        (k, conf.as_str()),
        ("PKCS11_SHIM_TARGET", target.as_str()),
        ("PKCS11_SHIM_STALL", stall.as_str()),
        ("PKCS11_SHIM_FAIL", fail.as_str()),
    ];
    let gw_key = pem(&public);
    let rig = Rig::start(
        RigConfig {
            keys: &keys,
            env: &env,
            tail,
            ..Default::default()
        },
        |gw| gw.merchant_public_key = gw_key,
        |_| {},
    );
    (rig, public)
}

#[test]
fn pay_flow_is_signed_by_the_token_and_verified_by_the_gateway() {
    let Some(hsm) = softhsm("pay_flow_is_signed_by_the_token_and_verified_by_the_gateway") else {
        return;
    };
    let (rig, public) = token_rig(&hsm, "merchant-2026", None, "[log]\nformat = \"json\"\n");
    for i in 0..3 {
        let r = rig.pay(&format!("hsm-pay-{i}"), "");
        assert_verified_ok(&r, "a pay signed by the token", &rig.sidecar);
    }
    assert!(signed_with(&rig.last_pay(), &pem(&public)));
    let m = rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_signer_seconds_count",
            &[("merchant", "default"), ("backend", "pkcs11")]
        ),
        3.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "alipay_sidecar_signer_breaker_open",
            &[("merchant", "default")]
        ),
        0.0
    );
    assert_eq!(rig.ready_status(), 200);
}

#[test]
fn acknowledgement_is_signed_through_the_token() {
    let Some(hsm) = softhsm("acknowledgement_is_signed_through_the_token") else {
        return;
    };
    let app = App::start(Behaviour::Ack);
    let tail = format!(
        "{}acknowledge = \"sidecar\"\nsign_acknowledgements = true\n",
        inbound_section(&app.url())
    );
    let (rig, public) = token_rig(&hsm, "merchant", None, &tail);
    let inbound = rig.sidecar.addr("inbound");
    let n = crate::inbound::fresh("hsm-ack");
    let headers: Vec<(&str, &str)> = n
        .headers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let r = request(inbound, "POST", &n.uri, &headers, &n.body).unwrap();
    assert_eq!(r.status, 200, "{}", rig.sidecar.logs());
    let time = r.header("response-time").expect("response-time");
    let content = content_to_sign("POST", &n.uri, CLIENT_ID, time, &r.body);
    let merchant = Verifier::new([("1".to_string(), PublicKey::from_text(&public).unwrap())]);
    merchant
        .verify(&content, r.header("signature").expect("signature header"))
        .expect("the acknowledgement verifies with the token key's public half");
}

#[test]
fn reload_switches_to_another_token_object() {
    let Some(hsm) = softhsm("reload_switches_to_another_token_object") else {
        return;
    };
    let (rig, first) = token_rig(&hsm, "merchant-a", None, "[log]\nformat = \"json\"\n");
    assert_verified_ok(
        &rig.pay("hsm-reload-1", ""),
        "before the reload",
        &rig.sidecar,
    );
    let second = hsm.keygen("merchant-b");
    let config = std::fs::read_to_string(&rig.sidecar.config_path).unwrap();
    std::fs::write(
        &rig.sidecar.config_path,
        config.replace("object=merchant-a", "object=merchant-b"),
    )
    .unwrap();
    let r = rig.reload();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let fingerprint = PublicKey::from_text(&second)
        .unwrap()
        .fingerprint()
        .to_string();
    rig.eventually("the new key is live", || {
        rig.scrape().text.contains(&fingerprint).then_some(())
    });
    // the gateway still trusts only the first key: the pay reaches it signed with the second
    let _ = rig.pay("hsm-reload-2", "");
    let sent = rig.last_pay();
    assert!(signed_with(&sent, &pem(&second)), "signed with merchant-b");
    assert!(
        !signed_with(&sent, &pem(&first)),
        "no longer with merchant-a"
    );
}

#[test]
fn the_private_key_never_leaves_the_token() {
    let Some(hsm) = softhsm("the_private_key_never_leaves_the_token") else {
        return;
    };
    hsm.keygen("merchant");
    let attrs = hsm.helper(&["attrs", "merchant"]);
    for want in [
        "extractable=false",
        "sensitive=true",
        "never_extractable=true",
        "always_sensitive=true",
        "private_exponent=refused",
    ] {
        assert!(attrs.contains(want), "{want} in {attrs}");
    }
    // `pkcs11 list` shows the same, and the public half's fingerprint
    let (code, out, err) = hsm.cli(&["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("private key \"merchant\""), "{out}");
    assert!(out.contains("sensitive=yes extractable=no"), "{out}");
}

#[test]
fn no_code_path_reads_a_secret_key_attribute() {
    // the attributes that hold private key material, in cryptoki's and PKCS#11's spelling
    const SECRET: &[&str] = &[
        "PrivateExponent",
        "PRIVATE_EXPONENT",
        "AttributeType::Value",
        "Attribute::Value",
        "CKA_VALUE",
        "Prime1",
        "Prime2",
        "Exponent1",
        "Exponent2",
        "Coefficient",
        "Ck_ATTRIBUTE_PRIME",
    ];
    let mut files = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    assert!(
        files.iter().any(|p| p.ends_with("signer/pkcs11.rs")),
        "the scan sees the token code"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for s in SECRET {
            assert!(!text.contains(s), "{} mentions {s}", f.display());
        }
    }
}

// ---------------------------------------------------------------- the signing budget

#[test]
fn a_stalling_token_times_out_opens_the_breaker_and_recovers() {
    let Some(hsm) = softhsm("a_stalling_token_times_out_opens_the_breaker_and_recovers") else {
        return;
    };
    let shim = stall_shim();
    let (rig, _) = token_rig(&hsm, "merchant", Some(&shim), "[log]\nformat = \"json\"\n");
    let config = std::fs::read_to_string(&rig.sidecar.config_path).unwrap();
    assert!(config.contains("libstallshim.so"), "{config}");
    assert_verified_ok(&rig.pay("stall-0", ""), "before the stall", &rig.sidecar);

    // the token stalls: each sign gives up after sign_timeout (1 s here), nothing is sent
    let stall = hsm.dir.path().join("stall");
    std::fs::write(&stall, "").unwrap();
    let sent_before = rig.gw.received().len();
    for i in 0..5 {
        let r = rig.pay(&format!("stall-{}", i + 1), "");
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        let (status, code) = r.result_code();
        assert_eq!(
            (status.as_str(), code.as_str()),
            ("U", "SIDECAR_SIGNER_UNAVAILABLE")
        );
    }
    assert_eq!(
        rig.gw.received().len(),
        sent_before,
        "nothing reached the gateway"
    );
    // the breaker is open: refused at once, not ready, the gauge says so
    let r = rig.pay("stall-open", "");
    assert_eq!(r.result_code().1, "SIDECAR_SIGNER_UNAVAILABLE");
    assert!(
        String::from_utf8_lossy(&r.body).contains("circuit breaker"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(rig.ready_status(), 503);
    let m = rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_signer_breaker_open",
            &[("merchant", "default")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "alipay_sidecar_signer_errors_total",
            &[
                ("merchant", "default"),
                ("backend", "pkcs11"),
                ("reason", "timeout")
            ]
        ),
        5.0,
        "{}",
        m.text
    );
    assert!(
        m.sum(
            "alipay_sidecar_signer_errors_total",
            &[("merchant", "default"), ("reason", "breaker_open")]
        ) >= 1.0
    );

    // the token answers again: after the cool-down a probe closes the breaker
    std::fs::remove_file(&stall).unwrap();
    rig.eventually("the cool-down ends (readyz 200)", || {
        (rig.ready_status() == 200).then_some(())
    });
    rig.eventually("a probe succeeds", || {
        is_verified_ok(&rig.pay("stall-probe", "")).then_some(())
    });
    let m = rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_signer_breaker_open",
            &[("merchant", "default")]
        ),
        0.0
    );
}

#[test]
fn a_token_error_is_counted_and_the_session_reopened() {
    let Some(hsm) = softhsm("a_token_error_is_counted_and_the_session_reopened") else {
        return;
    };
    let shim = stall_shim();
    let (rig, _) = token_rig(&hsm, "merchant", Some(&shim), "[log]\nformat = \"json\"\n");
    let fail = hsm.dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let r = rig.pay("fail-1", "");
    assert_eq!(r.result_code().1, "SIDECAR_SIGNER_UNAVAILABLE");
    assert!(String::from_utf8_lossy(&r.body).contains("could not sign"));
    std::fs::remove_file(&fail).unwrap();
    assert_verified_ok(
        &rig.pay("fail-2", ""),
        "after the token error",
        &rig.sidecar,
    );
    let m = rig.scrape();
    assert_eq!(
        m.sum(
            "alipay_sidecar_signer_errors_total",
            &[("merchant", "default"), ("reason", "token_error")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------- the operator tools

#[test]
fn pkcs11_keygen_prints_the_dashboards_public_key_and_list_shows_its_fingerprint() {
    let Some(hsm) =
        softhsm("pkcs11_keygen_prints_the_dashboards_public_key_and_list_shows_its_fingerprint")
    else {
        return;
    };
    let (code, out, err) = hsm.cli(&["keygen", "--label", "merchant-2026"]);
    assert_eq!(code, 0, "{err}");
    let line = out.trim();
    assert!(
        !line.contains('\n') && !line.contains("BEGIN"),
        "one line: {out}"
    );
    let public = PublicKey::from_text(line).expect("a base64 SPKI public key");
    assert_eq!(public.bits(), 2048);
    assert!(
        err.contains("pkcs11:token=alipay;object=merchant-2026;type=private"),
        "{err}"
    );
    // the same label twice is refused, nothing made
    let (code, _, err) = hsm.cli(&["keygen", "--label", "merchant-2026"]);
    assert_ne!(code, 0);
    assert!(err.contains("already has a private key labelled"), "{err}");

    let (code, out, err) = hsm.cli(&["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("token \"alipay\""), "{out}");
    assert!(out.contains(public.fingerprint()), "{out}");
    assert_eq!(
        out.matches("private key \"merchant-2026\"").count(),
        1,
        "{out}"
    );
}

// ---------------------------------------------------------------- helper (child process)

/// Not a test of its own: the child process behind [`SoftHsm::helper`], which makes keys the
/// sidecar's `keygen` would not (EC, RSA-1024, no sign permission) and reads a key's
/// attributes through cryptoki, with the token's `SOFTHSM2_CONF` in its environment. Without
/// `PKCS11_TEST_HELPER` it does nothing.
#[test]
fn token_helper() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let Ok(cmd) = std::env::var("PKCS11_TEST_HELPER") else {
        return;
    };
    let module = std::env::var("PKCS11_TEST_MODULE").unwrap();
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .expect("the test token");
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap();
    let words: Vec<&str> = cmd.split(' ').collect();
    match words.as_slice() {
        ["genkey", label, kind] => {
            let common = vec![
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(label.as_bytes().to_vec()),
            ];
            let (mechanism, mut public, mut private) = match *kind {
                "ec" => (
                    Mechanism::EccKeyPairGen,
                    vec![Attribute::EcParams(vec![
                        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                    ])],
                    vec![Attribute::Sign(true), Attribute::Sensitive(true)],
                ),
                rsa => {
                    let bits: u64 = if rsa == "rsa1024" { 1024 } else { 2048 };
                    (
                        Mechanism::RsaPkcsKeyPairGen,
                        vec![
                            Attribute::ModulusBits(bits.into()),
                            Attribute::PublicExponent(vec![1, 0, 1]),
                        ],
                        vec![
                            Attribute::Sign(rsa != "rsa2048-nosign"),
                            Attribute::Decrypt(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(false),
                        ],
                    )
                }
            };
            public.extend(common.clone());
            private.extend(common);
            session
                .generate_key_pair(&mechanism, &public, &private)
                .unwrap();
        }
        ["attrs", label] => {
            let key = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .unwrap()[0];
            let attrs = session
                .get_attributes(
                    key,
                    &[
                        AttributeType::Extractable,
                        AttributeType::Sensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::AlwaysSensitive,
                    ],
                )
                .unwrap();
            for a in attrs {
                match a {
                    Attribute::Extractable(v) => println!("extractable={v}"),
                    Attribute::Sensitive(v) => println!("sensitive={v}"),
                    Attribute::NeverExtractable(v) => println!("never_extractable={v}"),
                    Attribute::AlwaysSensitive(v) => println!("always_sensitive={v}"),
                    _ => {}
                }
            }
            // the token itself refuses to reveal the private exponent
            let info = session
                .get_attribute_info(key, &[AttributeType::PrivateExponent])
                .unwrap();
            match info.first() {
                Some(AttributeInfo::Sensitive) => println!("private_exponent=refused"),
                other => println!("private_exponent=readable {other:?}"),
            }
        }
        other => panic!("unknown helper command {other:?}"),
    }
    println!("HELPER-OK");
}
