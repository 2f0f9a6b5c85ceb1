//! TLS files through the REAL binary: the merged CA bundle's private folder; a local CA that
//! lives as long as the deployment: `local-ca` (files, modes, no overwrite, fingerprint),
//! `[outbound] tls_ca_cert` / `tls_ca_key` (a new leaf at every start under the same CA,
//! reloaded when the files change, a broken file keeps the old certificate), `tls_trust_out`
//! (system roots + the CA apps must trust, rewritten when that CA changes) and check-config's
//! explanation of a mix-up.

use crate::limits::pay;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sdk_compat::{assert_verified, ca_and_leaf, pay_body, raw_pay, tls_request};
use crate::support::{command, run_bounded, Rig, RigConfig, Sidecar, PAY};

/// `alipay-sidecar local-ca --out dir`: (exit code, stdout, stderr).
fn local_ca(dir: &Path) -> (i32, String, String) {
    run_bounded(
        &mut command(&["local-ca", "--out", &dir.display().to_string()]),
        Duration::from_secs(60),
    )
}

/// A new CA in `dir` (ca.pem, ca.key); its certificate PEM.
fn new_ca(dir: &Path) -> String {
    let (code, out, err) = local_ca(dir);
    assert_eq!(code, 0, "{out}\n{err}");
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

fn der_of(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .unwrap()
        .to_vec()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The certificates of a PEM bundle, DER, in order.
fn certs_in(pem: &[u8]) -> Vec<Vec<u8>> {
    rustls_pemfile::certs(&mut &pem[..])
        .map(|c| c.unwrap().to_vec())
        .collect()
}

/// The system's trusted roots as the sidecar finds them, each once, in order.
fn system_roots() -> Vec<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    rustls_native_certs::load_native_certs()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_vec())
        .filter(|c| seen.insert(c.clone()))
        .collect()
}

/// A rig with only the HTTPS listener, its certificate from `tls` (lines of `[outbound]`).
fn tls_rig(tls: &str) -> Rig {
    let outbound = format!("tls_listen = \"127.0.0.1:0\"\nrequest_timeout = \"20s\"\n{tls}\n");
    Rig::start(
        RigConfig {
            outbound: &outbound,
            plain_listener: false,
            ..Default::default()
        },
        |_| {},
        |_| {},
    )
}

/// One pay over TLS trusting only `ca_pem`; the leaf served (DER).
fn pay_trusting(sidecar: &Sidecar, ca_pem: &str, id: &str) -> Vec<u8> {
    let (resp, leaf) = tls_request(
        sidecar.addr("outbound_tls"),
        ca_pem,
        &raw_pay(PAY, "127.0.0.1", &pay_body(id, ""), &[]),
    );
    assert_verified(&resp);
    leaf
}

/// Whether a TLS handshake succeeds trusting only `ca_pem`.
fn handshake_ok(sidecar: &Sidecar, ca_pem: &str) -> bool {
    let addr = sidecar.addr("outbound_tls");
    let connector = crate::support::tls_connector(ca_pem.as_bytes());
    crate::support::rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.is_ok()
    })
}

#[test]
fn local_ca_writes_ca_pem_and_ca_key_refuses_to_overwrite_and_prints_the_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("ca");
    let (code, out, err) = local_ca(&out_dir);
    assert_eq!(code, 0, "{out}\n{err}");
    let (cert, key) = (out_dir.join("ca.pem"), out_dir.join("ca.key"));
    assert_eq!(mode(&cert), 0o644, "ca.pem is public");
    assert_eq!(mode(&key), 0o600, "ca.key is secret");
    let pem = std::fs::read_to_string(&cert).unwrap();
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE"));
    assert!(key_pem.contains("BEGIN PRIVATE KEY"));
    // a CA certificate, valid now
    let der = der_of(&pem);
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(x509.basic_constraints().unwrap().unwrap().value.ca);
    assert!(x509.validity().is_valid());
    // the fingerprint printed is the certificate's
    let fp = alipay_sidecar::tls::fingerprint(&der);
    assert!(
        out.contains(&format!("CA SHA-256 fingerprint: {fp}")),
        "{out}"
    );
    // and the lines to paste name the files
    let real = std::fs::canonicalize(&out_dir).unwrap();
    for line in [
        format!("tls_ca_cert = {}", quoted(&real.join("ca.pem"))),
        format!("tls_ca_key = {}", quoted(&real.join("ca.key"))),
        "tls_trust_out = ".to_string(),
        "SSL_CERT_FILE".to_string(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains(key_pem.trim()), "the key is never printed");

    // a second run refuses, and leaves both files as they were
    let (code, out2, err2) = local_ca(&out_dir);
    assert_eq!(code, 2, "{out2}\n{err2}");
    assert!(err2.contains("refusing to overwrite"), "{err2}");
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem);
    // one file already there is enough to refuse, and nothing is written next to it
    let half = dir.path().join("half");
    std::fs::create_dir(&half).unwrap();
    std::fs::write(half.join("ca.key"), "mine").unwrap();
    let (code, _, err3) = local_ca(&half);
    assert_eq!(code, 2);
    assert!(err3.contains("ca.key"), "{err3}");
    assert!(!half.join("ca.pem").exists());
    assert_eq!(
        std::fs::read_to_string(half.join("ca.key")).unwrap(),
        "mine"
    );
}

#[test]
fn a_restart_under_the_same_ca_serves_a_new_leaf_that_apps_trusting_the_ca_accept() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = new_ca(ca_dir.path());
    let trust = ca_dir.path().join("trust").join("bundle.pem");
    std::fs::create_dir(trust.parent().unwrap()).unwrap();
    let mut r = tls_rig(&format!(
        "tls_ca_cert = {}\ntls_ca_key = {}\ntls_trust_out = {}\ntls_names = [\"alipay-sidecar\"]",
        quoted(&ca_dir.path().join("ca.pem")),
        quoted(&ca_dir.path().join("ca.key")),
        quoted(&trust)
    ));
    // a client that trusts the CA only (not the leaf) connects
    let leaf1 = pay_trusting(&r.sidecar, &ca, "ca_restart_1");
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf1).unwrap();
    assert!(!x509
        .basic_constraints()
        .unwrap()
        .is_some_and(|b| b.value.ca));
    let names: Vec<String> = x509
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    // x509-parser shows 127.0.0.1 as 7f:00:00:01
    for want in ["localhost", "7f:00:00:01", "alipay-sidecar"] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "{want} not in {names:?}"
        );
    }
    assert!(r
        .sidecar
        .logs()
        .contains(&alipay_sidecar::tls::fingerprint(&der_of(&ca))));
    let bundle1 = std::fs::read(&trust).expect("tls_trust_out written at start");

    // restart: same config, same CA files
    let config = r.sidecar.config_path.clone();
    r.sidecar.signal("KILL");
    // killed by a signal: no exit code, but gone (and port 443 with it)
    let _ = r.sidecar.wait_exit(Duration::from_secs(30));
    r.sidecar = Sidecar::launch(&config, &[], &[]);
    let leaf2 = pay_trusting(&r.sidecar, &ca, "ca_restart_2");
    assert_ne!(leaf1, leaf2, "a new leaf at every start");
    assert_eq!(
        std::fs::read(&trust).unwrap(),
        bundle1,
        "the CA did not change, nor the bundle apps read"
    );
    // the CA files are untouched by the sidecar
    assert_eq!(
        std::fs::read_to_string(ca_dir.path().join("ca.pem")).unwrap(),
        ca
    );
}

#[test]
fn the_trust_bundle_holds_the_system_roots_and_the_ca_and_follows_the_served_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, leaf1, key1) = ca_and_leaf("first");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    // the chain as it should be written: leaf first, its root last
    std::fs::write(&cert, format!("{leaf1}{ca1}")).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let trust = dir.path().join("bundle.pem");
    let r = tls_rig(&format!(
        "tls_cert = {}\ntls_key = {}\ntls_trust_out = {}",
        quoted(&cert),
        quoted(&key),
        quoted(&trust)
    ));
    pay_trusting(&r.sidecar, &ca1, "bundle_1");
    let roots = system_roots();
    let expect = |ca: &str| -> Vec<Vec<u8>> {
        let mut all = roots.clone();
        let der = der_of(ca);
        if !all.contains(&der) {
            all.push(der);
        }
        all
    };
    assert_eq!(
        certs_in(&std::fs::read(&trust).unwrap()),
        expect(&ca1),
        "system roots ({}) then the chain's root",
        roots.len()
    );
    assert_eq!(mode(&trust), 0o644);
    // the bundle alone is enough for a client to connect
    let bundle = std::fs::read_to_string(&trust).unwrap();
    pay_trusting(&r.sidecar, &bundle, "bundle_2");

    // a new chain under another root: the reload serves it and rewrites the bundle
    let (ca2, leaf2, key2) = ca_and_leaf("second");
    std::fs::write(&cert, format!("{leaf2}{ca2}")).unwrap();
    std::fs::write(&key, &key2).unwrap();
    r.reload().assert_status(200, "reload");
    pay_trusting(&r.sidecar, &ca2, "bundle_3");
    r.eventually("the bundle names the new root", || {
        (certs_in(&std::fs::read(&trust).unwrap()) == expect(&ca2)).then_some(())
    });
    assert!(r.sidecar.logged("trust bundle rewritten"));
    assert_eq!(mode(&trust), 0o644);
}

#[test]
fn the_generated_certificate_trust_bundle_names_the_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("bundle.pem");
    let ca_out = dir.path().join("ca.pem");
    let r = tls_rig(&format!(
        "tls_trust_out = {}\ntls_ca_out = {}",
        quoted(&trust),
        quoted(&ca_out)
    ));
    let ca = std::fs::read_to_string(&ca_out).unwrap();
    let certs = certs_in(&std::fs::read(&trust).unwrap());
    assert_eq!(certs.last(), Some(&der_of(&ca)));
    assert_eq!(certs.len(), system_roots().len() + 1);
    let bundle = std::fs::read_to_string(&trust).unwrap();
    pay_trusting(&r.sidecar, &bundle, "generated_bundle");
}

#[test]
fn tls_ca_files_reload_when_they_change_and_a_broken_file_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = new_ca(&dir.path().join("one"));
    let ca2 = new_ca(&dir.path().join("two"));
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let copy = |from: &str| {
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(dir.path().join(from).join(f), live.join(f)).unwrap();
        }
    };
    copy("one");
    let trust = dir.path().join("bundle.pem");
    let r = tls_rig(&format!(
        "tls_ca_cert = {}\ntls_ca_key = {}\ntls_trust_out = {}",
        quoted(&live.join("ca.pem")),
        quoted(&live.join("ca.key")),
        quoted(&trust)
    ));
    let leaf1 = pay_trusting(&r.sidecar, &ca1, "ca_reload_1");
    // a reload with the CA unchanged keeps the leaf
    r.reload().assert_status(200, "reload");
    assert_eq!(pay_trusting(&r.sidecar, &ca1, "ca_reload_2"), leaf1);

    // new CA files (as a Secret update would bring): the file watcher alone (no reload
    // asked) issues a leaf under the new CA and rewrites the bundle
    copy("two");
    r.eventually("a leaf under the new CA", || {
        handshake_ok(&r.sidecar, &ca2).then_some(())
    });
    assert!(!handshake_ok(&r.sidecar, &ca1), "the old CA no longer");
    r.eventually("the bundle names the new CA", || {
        let certs = certs_in(&std::fs::read(&trust).unwrap());
        (certs.last() == Some(&der_of(&ca2)) && !certs.contains(&der_of(&ca1))).then_some(())
    });
    let leaf2 = pay_trusting(&r.sidecar, &ca2, "ca_reload_3");
    let bundle2 = std::fs::read(&trust).unwrap();

    // a broken certificate file: the reload fails, the old certificate keeps serving
    std::fs::write(live.join("ca.pem"), "not a certificate").unwrap();
    let failed = r.reload();
    assert_eq!(
        failed.status,
        500,
        "{}",
        String::from_utf8_lossy(&failed.body)
    );
    assert_eq!(pay_trusting(&r.sidecar, &ca2, "ca_reload_4"), leaf2);
    // a key that is not the CA's: the same, and the log says which
    std::fs::copy(dir.path().join("two/ca.pem"), live.join("ca.pem")).unwrap();
    std::fs::copy(dir.path().join("one/ca.key"), live.join("ca.key")).unwrap();
    let failed = r.reload();
    assert_eq!(failed.status, 500);
    assert_eq!(pay_trusting(&r.sidecar, &ca2, "ca_reload_5"), leaf2);
    assert!(r
        .sidecar
        .logs()
        .contains("does not belong to the CA certificate"));
    assert_eq!(std::fs::read(&trust).unwrap(), bundle2, "bundle untouched");
}

/// A config file in `dir` (vector keys) with `tls` in `[outbound]`; `check-config` on it.
fn check_config(dir: &Path, tls: &str) -> (i32, String, String) {
    crate::support::write_vector_keys(dir);
    let toml = format!(
        "client_id = \"{}\"\n[keys]\n{}\n[outbound]\nregion = \"sea\"\ntls_listen = \"127.0.0.1:443\"\n{tls}\n",
        crate::support::CLIENT_ID,
        crate::support::VECTOR_KEYS
    );
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, toml).unwrap();
    run_bounded(
        &mut command(&["check-config", "--config", &path.display().to_string()]),
        Duration::from_secs(60),
    )
}

#[test]
fn check_config_explains_a_tls_cert_and_tls_ca_cert_mix_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(&dir.path().join("ca"));
    let (ca_pem, ca_key): (PathBuf, PathBuf) =
        (dir.path().join("ca/ca.pem"), dir.path().join("ca/ca.key"));
    let (_, leaf, leaf_key) = ca_and_leaf("server");
    std::fs::write(dir.path().join("server.crt"), leaf).unwrap();
    std::fs::write(dir.path().join("server.key"), leaf_key).unwrap();
    let (leaf_pem, leaf_key) = (dir.path().join("server.crt"), dir.path().join("server.key"));

    // the good one: the CA's fingerprint, the bundle path
    let (code, out, err) = check_config(
        dir.path(),
        &format!(
            "tls_ca_cert = {}\ntls_ca_key = {}\ntls_trust_out = \"bundle.pem\"",
            quoted(&ca_pem),
            quoted(&ca_key)
        ),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&alipay_sidecar::tls::fingerprint(&der_of(&ca))),
        "{out}"
    );
    assert!(out.contains("issued at every start from the CA"), "{out}");
    assert!(out.contains("bundle.pem"), "{out}");

    let cases: Vec<(String, &[&str])> = vec![
        // both pairs
        (
            format!(
                "tls_cert = {}\ntls_key = {}\ntls_ca_cert = {}\ntls_ca_key = {}",
                quoted(&leaf_pem),
                quoted(&leaf_key),
                quoted(&ca_pem),
                quoted(&ca_key)
            ),
            &["outbound.tls_ca_cert", "two different ways", "set one pair"],
        ),
        // half a pair
        (
            format!("tls_ca_cert = {}", quoted(&ca_pem)),
            &["set both `tls_ca_cert` and `tls_ca_key`", "local-ca"],
        ),
        // the server certificate given as the CA
        (
            format!(
                "tls_ca_cert = {}\ntls_ca_key = {}",
                quoted(&leaf_pem),
                quoted(&leaf_key)
            ),
            &["is not a CA certificate", "set it as `tls_cert`"],
        ),
        // the CA given as the server certificate
        (
            format!(
                "tls_cert = {}\ntls_key = {}",
                quoted(&ca_pem),
                quoted(&ca_key)
            ),
            &["starts with a CA certificate", "set it as `tls_ca_cert`"],
        ),
        // a key that is not the CA's
        (
            format!(
                "tls_ca_cert = {}\ntls_ca_key = {}",
                quoted(&ca_pem),
                quoted(&leaf_key)
            ),
            &["does not belong to the CA certificate"],
        ),
        // tls_ca_out makes no sense with tls_ca_cert
        (
            format!(
                "tls_ca_cert = {}\ntls_ca_key = {}\ntls_ca_out = \"x.pem\"",
                quoted(&ca_pem),
                quoted(&ca_key)
            ),
            &["outbound.tls_ca_out", "remove the line"],
        ),
    ];
    for (tls, needles) in cases {
        let (code, out, err) = check_config(dir.path(), &tls);
        assert_eq!(code, 2, "{tls}\n{out}\n{err}");
        for n in needles {
            assert!(err.contains(n), "{tls}: {n:?} not in:\n{err}");
        }
        assert!(err.contains("NOT USABLE"), "{err}");
    }
}

#[test]
fn the_merged_ca_bundle_lives_in_a_private_folder_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let tmp_text = tmp.display().to_string();
    let Rig {
        gw,
        sidecar: mut s,
        outbound: out,
        ..
    } = Rig::start(
        RigConfig {
            env: &[("TMPDIR", &tmp_text)],
            ..Default::default()
        },
        |_| {},
        |_| {},
    );
    assert_eq!(pay(out, "ca_bundle").status, 200, "{}", s.logs());
    let entries: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let private: Vec<_> = entries
        .iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("alipay-sidecar-")
        })
        .collect();
    assert_eq!(private.len(), 1, "{entries:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(private[0]).unwrap().permissions().mode() & 0o777;
    assert!(
        private[0].is_dir() && mode == 0o700,
        "{:?} mode {mode:o}",
        private[0]
    );
    assert!(private[0].join("ca-bundle.pem").is_file());
    let predictable = tmp.join(format!("alipay-sidecar-{}-ca-bundle.pem", s.pid()));
    assert!(!predictable.exists());
    s.signal("TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(
        !private[0].exists(),
        "the private folder outlived the process"
    );
    drop(gw);
}
