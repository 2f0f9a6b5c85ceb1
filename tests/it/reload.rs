//! Hot key reload through the REAL binary: a Kubernetes `..data` symlink swap, SIGHUP and
//! `POST /admin/reload`; broken or missing keys never replace working ones; zero failed
//! requests across 100 reloads under traffic.
//!
//! Nothing here asserts on time: every wait polls with a generous deadline and fails with the
//! sidecar's logs.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use alipay_sidecar::protocol::{generate_keypair, PrivateKey, PublicKey};

use crate::support::{
    alipay_fingerprint, assert_verified_ok, flat, merchant_fingerprint, signed_with, start,
    truncated, KeyMetrics, ALIPAY_KEY_FILE, FLAT_KEYS, JSON_LOGS, MERCHANT_KEY_FILE,
};
use crate::support::{key, request};
use crate::support::{pay_body, PAY};

// ---------------------------------------------------------------- 2. Kubernetes symlink swap

/// Writes one generation of a Secret volume: `keys/<generation>/{merchant,alipay}`.
fn write_generation(keys: &Path, generation: &str, merchant_pem: &str, alipay_pem: &str) {
    let dir = keys.join(generation);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(MERCHANT_KEY_FILE), merchant_pem).unwrap();
    std::fs::write(dir.join(ALIPAY_KEY_FILE), alipay_pem).unwrap();
}

/// What the kubelet's atomic writer does on a Secret update: new generation folder, a
/// `..data_tmp` symlink to it renamed over `..data` (atomic), old generation removed.
fn swap_generation(keys: &Path, new: &str, old: &str, merchant_pem: &str, alipay_pem: &str) {
    write_generation(keys, new, merchant_pem, alipay_pem);
    std::os::unix::fs::symlink(new, keys.join("..data_tmp")).unwrap();
    std::fs::rename(keys.join("..data_tmp"), keys.join("..data")).unwrap();
    std::fs::remove_dir_all(keys.join(old)).unwrap();
}

#[test]
fn kubernetes_secret_symlink_swap_reloads_without_restart() {
    const KEYS: &str = r#"merchant_private_key = "keys/merchant_private_key.pem"
merchant_key_version = 1
alipay_public_keys = { "1" = "keys/alipay_public_key.pem" }"#;
    let rig = start(
        KEYS,
        JSON_LOGS,
        |_| {},
        |d| {
            let keys = d.join("keys");
            std::fs::create_dir(&keys).unwrap();
            write_generation(
                &keys,
                "..2026_a",
                &key("merchant", "private_pkcs8_pem"),
                &key("alipay", "public_spki_pem"),
            );
            std::os::unix::fs::symlink("..2026_a", keys.join("..data")).unwrap();
            for file in [MERCHANT_KEY_FILE, ALIPAY_KEY_FILE] {
                std::os::unix::fs::symlink(format!("..data/{file}"), keys.join(file)).unwrap();
            }
        },
    );
    let keys = rig.dir.path().join("keys");
    let m = rig.scrape();
    assert_eq!(m.merchant_fingerprint(), Some(merchant_fingerprint()));
    let successes = m.reloads("success");
    let r = rig.pay("pay_k8s_before", "");
    assert_verified_ok(&r, "before the swap", &rig.sidecar);
    assert!(signed_with(
        &rig.last_pay(),
        &key("merchant", "public_spki_pem")
    ));

    // rotate the merchant key
    let new = generate_keypair().unwrap();
    swap_generation(
        &keys,
        "..2026_b",
        "..2026_a",
        &new.private_pkcs8_pem,
        &key("alipay", "public_spki_pem"),
    );
    let new_fp = PrivateKey::from_text(&new.private_pkcs8_pem)
        .unwrap()
        .fingerprint()
        .to_string();
    let m = rig.eventually("the swapped-in merchant key goes live", || {
        let m = rig.scrape();
        (m.merchant_fingerprint().as_deref() == Some(new_fp.as_str())).then_some(m)
    });
    assert!(m.reloads("success") > successes, "{}", m.text);
    assert_eq!(
        m.alipay_keys(),
        [("1".to_string(), alipay_fingerprint())].into()
    );
    assert_eq!(rig.ready_status(), 200);
    // the same process now signs with the new key (the fake gateway only knows the old one,
    // so check the signature on the wire ourselves)
    let _ = rig.pay("pay_k8s_rotated", "");
    let got = rig.last_pay();
    assert!(
        signed_with(&got, &new.public_spki_pem),
        "signed with the new key after the swap"
    );
    assert!(!signed_with(&got, &key("merchant", "public_spki_pem")));

    // swap back to the key the gateway knows: traffic is verified end to end again
    swap_generation(
        &keys,
        "..2026_c",
        "..2026_b",
        &key("merchant", "private_pkcs8_pem"),
        &key("alipay", "public_spki_pem"),
    );
    rig.eventually("the original merchant key is back", || {
        (rig.scrape().merchant_fingerprint() == Some(merchant_fingerprint())).then_some(())
    });
    let r = rig.pay("pay_k8s_after", "");
    assert_verified_ok(&r, "after swapping back", &rig.sidecar);
    assert!(
        rig.last_pay().verified,
        "the gateway verified the request signature"
    );
    assert!(rig.sidecar.logged("key reload succeeded"));
}

// ---------------------------------------------------------------- 3. broken keys never go live

#[test]
fn a_broken_key_never_replaces_a_working_one() {
    let rig = flat();
    let alipay_file = rig.dir.path().join(ALIPAY_KEY_FILE);
    let merchant_file = rig.dir.path().join(MERCHANT_KEY_FILE);
    let live = rig.scrape().key_info();
    assert_eq!(live.len(), 2);

    let broken: [(&str, &Path, String); 4] = [
        (
            "truncated Alipay key",
            &alipay_file,
            truncated(&key("alipay", "public_spki_pem")),
        ),
        (
            "garbage Alipay key",
            &alipay_file,
            "this is not a key\n".to_string(),
        ),
        (
            "private key in the Alipay public key slot",
            &alipay_file,
            key("alipay", "private_pkcs8_pem"),
        ),
        (
            "truncated merchant key",
            &merchant_file,
            truncated(&key("merchant", "private_pkcs8_pem")),
        ),
    ];
    for (i, (what, file, text)) in broken.iter().enumerate() {
        let failures = rig.scrape().reloads("failure");
        std::fs::write(file, text).unwrap();
        // the file watcher notices and fails the reload
        let m = rig.eventually(
            &format!("{what}: a failed reload from the file watcher"),
            || {
                let m = rig.scrape();
                (m.reloads("failure") > failures).then_some(m)
            },
        );
        assert_eq!(m.key_info(), live, "{what}: the old keys stay live");
        assert_eq!(rig.ready_status(), 200, "{what}: still ready");
        let r = rig.pay(&format!("pay_broken_{i}"), "");
        assert_verified_ok(&r, what, &rig.sidecar);
        assert!(
            rig.last_pay().verified,
            "{what}: still signed with the working merchant key"
        );

        // the admin endpoint says what is wrong, and where
        let r = rig.reload();
        r.assert_status(500, what);
        let body = r.json();
        assert_eq!(body["reloaded"], false);
        let error = body["error"].as_str().unwrap_or_default();
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            error.contains(name),
            "{what}: the error names the file: {error}"
        );
        assert_eq!(rig.scrape().key_info(), live);

        // fixed: the admin reload succeeds
        let good = if *file == alipay_file {
            key("alipay", "public_spki_pem")
        } else {
            key("merchant", "private_pkcs8_pem")
        };
        std::fs::write(file, good).unwrap();
        let r = rig.reload();
        r.assert_status(200, &format!("{what} fixed"));
        assert_eq!(r.json()["reloaded"], true);
        assert_eq!(rig.scrape().key_info(), live);
    }
    // the log says which file and that the old keys stay
    let logs = rig.sidecar.logs();
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("key reload failed"))
        .collect();
    assert!(failed.iter().any(|l| l.contains(ALIPAY_KEY_FILE)), "{logs}");
    assert!(
        failed.iter().any(|l| l.contains(MERCHANT_KEY_FILE)),
        "{logs}"
    );
}

#[test]
fn a_missing_key_file_fails_the_reload_and_keeps_serving() {
    let rig = flat();
    let live = rig.scrape().key_info();
    std::fs::remove_file(rig.dir.path().join(ALIPAY_KEY_FILE)).unwrap();
    let r = rig.reload();
    assert_eq!(r.status, 500);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(ALIPAY_KEY_FILE) && error.contains("does not exist"),
        "{error}"
    );
    assert_eq!(rig.scrape().key_info(), live);
    assert_eq!(rig.ready_status(), 200);
    assert_verified_ok(
        &rig.pay("pay_missing", ""),
        "with the key file gone",
        &rig.sidecar,
    );
}

// ---------------------------------------------------------------- 4. SIGHUP

#[test]
fn sighup_reloads_an_added_alipay_key_version() {
    // The config file lives in conf/ (not watched) behind a symlink in the watched folder,
    // so editing it produces no watched event: only the SIGHUP can bring version 2 live.
    let rig = start(
        FLAT_KEYS,
        JSON_LOGS,
        |_| {},
        |d| {
            std::fs::create_dir(d.join("conf")).unwrap();
            std::os::unix::fs::symlink("conf/sidecar.toml", d.join("sidecar.toml")).unwrap();
        },
    );
    let conf = rig.dir.path().join("conf");
    let v2 = generate_keypair().unwrap();
    std::fs::write(conf.join("alipay_public_key_v2.pem"), &v2.public_spki_pem).unwrap();
    let toml = std::fs::read_to_string(&rig.sidecar.config_path).unwrap();
    let edited = toml.replace(
        r#"alipay_public_keys = { "1" = "alipay_public_key.pem" }"#,
        r#"alipay_public_keys = { "1" = "alipay_public_key.pem", "2" = "conf/alipay_public_key_v2.pem" }"#,
    );
    assert_ne!(edited, toml);
    std::fs::write(conf.join("sidecar.toml"), edited).unwrap();
    assert_eq!(
        rig.scrape().alipay_keys().len(),
        1,
        "nothing reloaded the edit yet"
    );

    rig.sidecar.signal("HUP");
    let v2_fp = PublicKey::from_text(&v2.public_spki_pem)
        .unwrap()
        .fingerprint()
        .to_string();
    let expected: BTreeSet<_> = [
        ("1".to_string(), alipay_fingerprint()),
        ("2".to_string(), v2_fp),
    ]
    .into();
    rig.eventually("keyVersion 2 goes live after SIGHUP", || {
        (rig.scrape().alipay_keys() == expected).then_some(())
    });
    let logs = rig.sidecar.logs();
    assert!(
        logs.lines().any(|l| l.contains("key reload succeeded")
            && l.contains("\"trigger\":\"SIGHUP\"")
            && l.contains("alipay_public 2")),
        "the reload is logged as SIGHUP-triggered:\n{logs}"
    );
    // still the same process, still serving
    assert_eq!(rig.ready_status(), 200);
    assert_verified_ok(&rig.pay("pay_after_hup", ""), "after SIGHUP", &rig.sidecar);
}

// ---------------------------------------------------------------- 5. reloads under traffic

#[test]
fn hundred_reloads_alternating_good_and_bad_keys_under_traffic_fail_no_request() {
    let rig = flat();
    let alipay_file = rig.dir.path().join(ALIPAY_KEY_FILE);
    let good = key("alipay", "public_spki_pem");
    let bad: Vec<(&str, Option<String>)> = vec![
        ("garbage", Some("garbage\n".to_string())),
        ("truncated", Some(truncated(&good))),
        ("empty", Some(String::new())),
        ("missing", None),
        (
            "private key in the public slot",
            Some(key("alipay", "private_pkcs8_pem")),
        ),
        (
            "the merchant's own public key (preflight)",
            Some(key("merchant", "public_spki_pem")),
        ),
    ];
    let live = rig.scrape().key_info();
    let before = rig.scrape();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    // two clients paying in a loop for the whole run
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, done, outbound) = (stop.clone(), done.clone(), rig.outbound);
            std::thread::spawn(move || {
                let mut results = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("pay_traffic_{c}_{i}");
                    let body = pay_body(&id, "5800", "");
                    match request(outbound, "POST", PAY, &[], body.as_bytes()) {
                        Ok(r) => results.push((
                            id,
                            r.status,
                            r.header("x-alipay-sidecar-verified").map(str::to_string),
                            r.body,
                        )),
                        Err(e) => results.push((id, 0, None, e.to_string().into_bytes())),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                results
            })
        })
        .collect();
    // at least `n` more requests completed than `since`
    let wait_for_traffic = |since: usize, n: usize| {
        rig.eventually("client requests complete", || {
            (done.load(Ordering::SeqCst) >= since + n).then_some(())
        })
    };
    wait_for_traffic(0, 1);

    let (mut ok, mut refused) = (0, 0);
    for n in 0..100 {
        let what = if n % 2 == 0 {
            std::fs::write(&alipay_file, &good).unwrap();
            "good"
        } else {
            let (what, text) = &bad[(n / 2) % bad.len()];
            match text {
                Some(t) => std::fs::write(&alipay_file, t).unwrap(),
                None => std::fs::remove_file(&alipay_file).unwrap(),
            }
            what
        };
        let r = rig.reload();
        match (n % 2, r.status) {
            (0, 200) => ok += 1,
            (1, 500) => refused += 1,
            (_, s) => panic!(
                "reload {n} ({what}): {s} {}\n{}",
                String::from_utf8_lossy(&r.body),
                rig.sidecar.logs()
            ),
        }
        // requests run against every state (two finish after this reload returned, so at
        // least one of them started after it)
        wait_for_traffic(done.load(Ordering::SeqCst), 2);
    }
    std::fs::write(&alipay_file, &good).unwrap();
    stop.store(true, Ordering::SeqCst);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();

    assert_eq!((ok, refused), (50, 50));
    assert!(results.len() >= 200, "{} requests", results.len());
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, status, verified, _)| !(*status == 200 && verified.as_deref() == Some("true")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during reloads, e.g. {} {} {:?} {}",
        failed.len(),
        results.len(),
        failed[0].0,
        failed[0].1,
        failed[0].2,
        String::from_utf8_lossy(&failed[0].3)
    );
    // every request reaching the gateway carried a valid signature
    let unverified = rig
        .gw
        .received()
        .into_iter()
        .filter(|r| !r.verified)
        .count();
    assert_eq!(unverified, 0, "requests the gateway could not verify");
    let after = rig.scrape();
    assert_eq!(after.key_info(), live, "only the good key was ever live");
    // the file watcher adds reloads of its own; the admin ones are counted at least
    assert!(
        after.reloads("success") - before.reloads("success") >= 50.0,
        "{}",
        after.text
    );
    assert!(
        after.reloads("failure") - before.reloads("failure") >= 50.0,
        "{}",
        after.text
    );
    assert!(
        after.sum(
            "alipay_sidecar_requests_total",
            &[("direction", "outbound"), ("outcome", "error")]
        ) == 0.0,
        "{}",
        after.text
    );
    assert_eq!(rig.ready_status(), 200);
}
