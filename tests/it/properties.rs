//! Property tests: round trips, single-byte tamper detection, parser robustness.

use std::sync::OnceLock;

use alipay_sidecar::protocol::{
    content_to_sign, parse_signature_header, sign_content, PrivateKey, Verifier,
};
use proptest::prelude::*;

use crate::support::key;

fn keys() -> &'static (PrivateKey, Verifier) {
    static KEYS: OnceLock<(PrivateKey, Verifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k = PrivateKey::from_text(&key("merchant", "private_pkcs8_pem")).unwrap();
        let v = Verifier::new([("1".to_string(), k.public_key())]);
        (k, v)
    })
}

fn flip(bytes: &mut [u8], at: usize, xor: u8) {
    let i = at % bytes.len();
    bytes[i] ^= xor;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sign_then_verify_round_trips(body in proptest::collection::vec(any::<u8>(), 0..2048),
                                    path in "/[ -~]{0,60}", time in "[0-9T:+.Z-]{1,30}", client in "[A-Za-z0-9_]{1,30}") {
        let (k, v) = keys();
        let content = content_to_sign("POST", &path, &client, &time, &body);
        let header = sign_content(k, "1", &content).unwrap();
        prop_assert!(v.verify(&content, &header).is_ok());
    }

    #[test]
    fn any_single_byte_change_fails(body in proptest::collection::vec(any::<u8>(), 1..512),
                                    which in 0usize..4, at in any::<usize>(), xor in 1u8..=255) {
        let (k, v) = keys();
        let (mut path, mut time, mut client) = (b"/ams/api/v1/payments/pay".to_vec(), b"1714538096000".to_vec(), b"T_111222333".to_vec());
        let signed = content_to_sign("POST", "/ams/api/v1/payments/pay", "T_111222333", "1714538096000", &body);
        let header = sign_content(k, "1", &signed).unwrap();
        let mut body2 = body.clone();
        match which {
            0 => flip(&mut body2, at, xor),
            1 => flip(&mut path, at, xor),
            2 => flip(&mut time, at, xor),
            _ => flip(&mut client, at, xor),
        }
        // the other side builds its content from the (changed) parts
        let mut changed = Vec::new();
        changed.extend_from_slice(b"POST ");
        changed.extend_from_slice(&path);
        changed.push(b'\n');
        changed.extend_from_slice(&client);
        changed.push(b'.');
        changed.extend_from_slice(&time);
        changed.push(b'.');
        changed.extend_from_slice(&body2);
        prop_assert_ne!(&changed, &signed);
        let err = v.verify(&changed, &header).unwrap_err();
        prop_assert_eq!(err.reason(), "mismatch");
    }

    #[test]
    fn header_parsing_never_panics(s in ".{0,400}") {
        let _ = parse_signature_header(&s);
        let _ = keys().1.verify(b"x", &s);
    }

    #[test]
    fn header_parsing_of_near_valid_input_never_panics(alg in "[A-Za-z0-9]{0,8}", ver in "[0-9a-z]{0,3}",
                                                       sig in "[A-Za-z0-9%+/=]{0,400}", sep in "(,|, | ,)") {
        let h = format!("algorithm={alg}{sep}keyVersion={ver}{sep}signature={sig}");
        let _ = keys().1.verify(b"x", &h);
    }
}
