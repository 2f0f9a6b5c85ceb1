//! Several merchants in one running sidecar (`run`, real admin socket): each merchant's keys
//! reload on their own.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::{free_port, key, request, Sidecar};

/// `(merchant, role, key_version)` of every live key in a `/metrics` scrape.
fn live_keys(sidecar: &Sidecar) -> BTreeSet<(String, String, String)> {
    let r = request(sidecar.admin, "GET", "/metrics", &[], b"").expect("scrape");
    let text = String::from_utf8(r.body).expect("utf-8");
    text.lines()
        .filter(|l| l.starts_with("alipay_sidecar_key_info{") && l.ends_with(" 1"))
        .map(|l| {
            let label = |name: &str| {
                let start = l
                    .find(&format!("{name}=\""))
                    .unwrap_or_else(|| panic!("{name}: {l}"))
                    + name.len()
                    + 2;
                let end = start + l[start..].find('"').expect("closing quote");
                l[start..end].to_string()
            };
            (label("merchant"), label("role"), label("key_version"))
        })
        .collect()
}

fn config(admin: u16, outbound: u16, eu_version: u32) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [outbound]\nregion = \"sea\"\nlisten = \"127.0.0.1:{outbound}\"\n\
         [[merchants]]\nname = \"sg\"\nclient_id = \"2188120012345678\"\n\
         [merchants.keys]\nmerchant_private_key = \"sg/m.pem\"\nalipay_public_keys = {{ \"1\" = \"sg/a.pem\" }}\n\
         [[merchants]]\nname = \"eu\"\nclient_id = \"2188220087654321\"\n\
         [merchants.keys]\nmerchant_private_key = \"eu/m.pem\"\nmerchant_key_version = {eu_version}\n\
         alipay_public_keys = {{ \"1\" = \"eu/a.pem\" }}\n"
    )
}

fn write_key(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn one_merchants_broken_key_does_not_hold_back_the_others() {
    let dir = tempfile::tempdir().unwrap();
    // two different key sets: the vectors' merchant pair for sg; for eu, the vectors'
    // Alipay private key as merchant key and the merchant public key as "Alipay's"
    write_key(
        dir.path(),
        "sg/m.pem",
        &key("merchant", "private_pkcs8_pem"),
    );
    write_key(dir.path(), "sg/a.pem", &key("alipay", "public_spki_pem"));
    write_key(dir.path(), "eu/m.pem", &key("alipay", "private_pkcs8_pem"));
    write_key(dir.path(), "eu/a.pem", &key("merchant", "public_spki_pem"));
    let (admin, outbound) = (free_port(), free_port());
    let sidecar = Sidecar::start(dir.path(), &config(admin, outbound, 1), admin);

    let expected = |eu_version: &str| -> BTreeSet<(String, String, String)> {
        [
            ("sg", "merchant_private", "1"),
            ("sg", "alipay_public", "1"),
            ("eu", "merchant_private", eu_version),
            ("eu", "alipay_public", "1"),
        ]
        .iter()
        .map(|(m, r, v)| (m.to_string(), r.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(live_keys(&sidecar), expected("1"), "{}", sidecar.logs());

    // sg's key file breaks while eu moves to merchant key version 2
    let sg_key = key("merchant", "private_pkcs8_pem");
    write_key(dir.path(), "sg/m.pem", &sg_key[..sg_key.len() / 2]);
    std::fs::write(&sidecar.config_path, config(admin, outbound, 2)).unwrap();
    let r = request(sidecar.admin, "POST", "/admin/reload", &[], b"").expect("reload");
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
    assert_eq!(live_keys(&sidecar), expected("2"));
    let ready = request(sidecar.admin, "GET", "/readyz", &[], b"").expect("readyz");
    assert_eq!(ready.status, 200);
    assert!(
        sidecar
            .logs()
            .lines()
            .any(|l| l.contains("key reload failed") && l.contains("sg")),
        "{}",
        sidecar.logs()
    );

    // fixed: both reload, the 200 body names each merchant's keys
    write_key(dir.path(), "sg/m.pem", &sg_key);
    let r = request(sidecar.admin, "POST", "/admin/reload", &[], b"").expect("reload");
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
    assert_eq!(live_keys(&sidecar), expected("2"));
}
