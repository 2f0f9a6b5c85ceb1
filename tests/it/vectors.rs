//! Every published vector through the library (the CLI runs them again in `cli.rs`).

use alipay_sidecar::protocol::{
    content_to_sign, sha256_hex, sign_content, PrivateKey, PublicKey, Verifier, VerifyError,
};

use crate::support::{input, key, vector, vectors};

fn merchant() -> PrivateKey {
    PrivateKey::from_text(&key("merchant", "private_pkcs8_pem")).unwrap()
}

fn public(who: &str) -> PublicKey {
    PublicKey::from_text(&key(who, "public_spki_pem")).unwrap()
}

fn content_of(v: &serde_json::Value) -> Vec<u8> {
    content_to_sign(
        input(v, "method"),
        input(v, "uri"),
        input(v, "client_id"),
        input(v, "time"),
        input(v, "body").as_bytes(),
    )
}

#[test]
fn there_are_25_vectors() {
    assert_eq!(vectors().len(), 25);
}

#[test]
fn sign_vectors_match_byte_for_byte() {
    let key = merchant();
    let mut n = 0;
    for v in vectors()
        .iter()
        .filter(|v| v["kind"] == "request_sign" || v["kind"] == "ack_sign")
    {
        let content = content_of(v);
        let expected_content = v["content_to_sign"].as_str().unwrap();
        assert_eq!(content, expected_content.as_bytes(), "{}: content", v["id"]);
        assert_eq!(
            sha256_hex(&content),
            v["content_sha256_utf8"].as_str().unwrap(),
            "{}",
            v["id"]
        );
        let header = sign_content(&key, input(v, "key_version"), &content).unwrap();
        assert_eq!(
            header,
            v["expected_signature_header"].as_str().unwrap(),
            "{}: header",
            v["id"]
        );
        // and the merchant public key verifies it, also in the .NET lowercase spelling
        let verifier = Verifier::new([(input(v, "key_version").to_string(), public("merchant"))]);
        verifier.verify(&content, &header).unwrap();
        if let Some(dotnet) = v["dotnet_style_signature_header"].as_str() {
            verifier.verify(&content, dotnet).unwrap();
        }
        n += 1;
    }
    assert_eq!(n, 9);
}

#[test]
fn verify_vectors_give_the_expected_verdict() {
    let alipay = public("alipay");
    let mut n = 0;
    for v in vectors()
        .iter()
        .filter(|v| v["kind"] == "response_verify" || v["kind"] == "notify_verify")
    {
        let id = v["id"].as_str().unwrap();
        let Some(header) = v["inputs"]["signature_header"].as_str() else {
            // RSP-06: unsigned; nothing to verify, the policy is the proxy's (tested there).
            assert_eq!(v["expected_valid"], "unsigned", "{id}");
            n += 1;
            continue;
        };
        // NTF-04 is the URI-less misreading of the docs: its content is not what we build.
        let content = v["content_to_verify"].as_str().unwrap().as_bytes().to_vec();
        if id != "NTF-04" {
            assert_eq!(content_of(v), content, "{id}: content");
        }
        let version = v["parsed_signature_header"]["keyVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let verifier = Verifier::new([(version, alipay.clone())]);
        let expected = match &v["expected_valid"] {
            serde_json::Value::Bool(b) => *b,
            // RSP-10: valid under percent-decoding, which is the sidecar's rule
            other => other["percent_decode"].as_bool().unwrap(),
        };
        let result = verifier.verify(&content, header);
        assert_eq!(result.is_ok(), expected, "{id}: {result:?}");
        if let Err(e) = result {
            assert!(
                matches!(e, VerifyError::Mismatch { ref content_sha256, .. } if content_sha256 == v["content_sha256_utf8"].as_str().unwrap()),
                "{id}: {e:?}"
            );
        }
        n += 1;
    }
    assert_eq!(n, 16);
}

#[test]
fn unknown_key_version_is_named_not_a_mismatch() {
    let v = vector("RSP-09"); // keyVersion=2
    let verifier = Verifier::new([("1".to_string(), public("alipay"))]);
    let err = verifier
        .verify(&content_of(&v), input(&v, "signature_header"))
        .unwrap_err();
    assert_eq!(
        err,
        VerifyError::UnknownKeyVersion {
            key_version: "2".into(),
            configured: vec!["1".into()]
        }
    );
    assert_eq!(err.reason(), "unknown_key_version");
}

#[test]
fn rotation_selects_by_key_version() {
    // two versions configured: v1 = merchant key (wrong for Alipay), v2 = Alipay's
    let v = vector("RSP-09");
    let verifier = Verifier::new([
        ("1".to_string(), public("merchant")),
        ("2".to_string(), public("alipay")),
    ]);
    let ok = verifier
        .verify(&content_of(&v), input(&v, "signature_header"))
        .unwrap();
    assert_eq!(ok.key_version, "2");
    assert_eq!(ok.fingerprint, public("alipay").fingerprint());
    // RSP-01 says keyVersion=1 -> the merchant key is chosen -> mismatch
    let v1 = vector("RSP-01");
    assert_eq!(
        verifier
            .verify(&content_of(&v1), input(&v1, "signature_header"))
            .unwrap_err()
            .reason(),
        "mismatch"
    );
}

#[test]
fn every_key_form_loads_to_the_same_key() {
    for who in ["merchant", "alipay"] {
        let reference = PrivateKey::from_text(&key(who, "private_pkcs8_pem")).unwrap();
        for form in [
            "private_pkcs1_pem",
            "private_pkcs8_der_b64",
            "private_pkcs1_der_b64",
        ] {
            let k = PrivateKey::from_text(&key(who, form)).unwrap();
            assert_eq!(k.fingerprint(), reference.fingerprint(), "{who}.{form}");
            assert_eq!(k.bits(), 2048);
        }
        for form in ["public_spki_pem", "public_spki_der_b64"] {
            let k = PublicKey::from_text(&key(who, form)).unwrap();
            assert_eq!(k, reference.public_key(), "{who}.{form}");
        }
        // wrapped at 64 columns with CRLF and indentation still loads
        let b64 = key(who, "private_pkcs8_der_b64");
        let wrapped: String = b64
            .as_bytes()
            .chunks(64)
            .map(|c| format!("  {}\r\n", String::from_utf8_lossy(c)))
            .collect();
        assert_eq!(
            PrivateKey::from_text(&wrapped).unwrap().fingerprint(),
            reference.fingerprint()
        );
    }
}

#[test]
fn debug_never_shows_key_material() {
    let k = merchant();
    let dbg = format!("{k:?} {:?}", k.public_key());
    assert!(dbg.starts_with("PrivateKey(SHA256:"), "{dbg}");
    let b64 = key("merchant", "private_pkcs8_der_b64");
    assert!(!dbg.contains(&b64[30..60]));
    let public_b64 = key("merchant", "public_spki_der_b64");
    assert!(!dbg.contains(&public_b64[40..80]));
}

#[test]
fn wrong_kinds_and_small_keys_are_refused_with_reasons() {
    use alipay_sidecar::protocol::KeyError;
    assert!(matches!(
        PrivateKey::from_text(&key("merchant", "public_spki_pem")),
        Err(KeyError::WrongKind { .. })
    ));
    assert!(matches!(
        PrivateKey::from_text(&key("merchant", "public_spki_der_b64")),
        Err(KeyError::WrongKind { .. })
    ));
    assert!(matches!(
        PublicKey::from_text(&key("merchant", "private_pkcs8_pem")),
        Err(KeyError::WrongKind { .. })
    ));
    assert!(matches!(
        PublicKey::from_text(&key("merchant", "private_pkcs8_der_b64")),
        Err(KeyError::WrongKind { .. })
    ));
    assert!(matches!(
        PrivateKey::from_text("  \n"),
        Err(KeyError::Empty)
    ));
    assert!(matches!(
        PrivateKey::from_text("hello world"),
        Err(KeyError::NotAKey { .. })
    ));
    let pem = key("merchant", "private_pkcs8_pem");
    let truncated = &pem[..pem.len() / 2];
    assert!(matches!(
        PrivateKey::from_text(truncated),
        Err(KeyError::NotAKey { .. })
    ));
    // a 1024-bit key (generated once with openssl for this test; test-only)
    let small = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDBzMwNnFDHkgTJhUxYs3rbUtDoZf2bbHx7grsu4GCybTz2LxYFN36JAbKM9hFZxpsTsOIgkoM2W7AsWSxXe9Fs0RNc1zWIJsxn7yA3NFW7CKcY6fuTfwNMGSHIlbYQ2KTp+CeYSf7lJc3QwBF0m6s9JAOd5+pqwjpq6GqdQxk3WQIDAQAB";
    assert!(
        matches!(
            PublicKey::from_text(small),
            Err(KeyError::TooSmall { bits: 1024 })
        ),
        "{:?}",
        PublicKey::from_text(small)
    );
}

#[test]
fn generated_keys_round_trip() {
    let pair = alipay_sidecar::protocol::generate_keypair().unwrap();
    let private = PrivateKey::from_text(&pair.private_pkcs8_pem).unwrap();
    let public = PublicKey::from_text(&pair.public_spki_base64).unwrap();
    assert_eq!(private.fingerprint(), pair.fingerprint);
    assert_eq!(
        PrivateKey::from_text(&pair.private_pkcs8_base64)
            .unwrap()
            .fingerprint(),
        pair.fingerprint
    );
    let content = content_to_sign("POST", "/ams/api/v1/payments/pay", "C", "1", b"{}");
    let header = sign_content(&private, "7", &content).unwrap();
    let ok = Verifier::new([("7".to_string(), public)])
        .verify(&content, &header)
        .unwrap();
    assert_eq!(ok.key_version, "7");
}
