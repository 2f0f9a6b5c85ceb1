//! The notification acknowledgement (spec §6): the body Alipay waits for, and the optional
//! signature headers the legacy Java SDK puts on it.

use crate::content::content_to_sign;
use crate::keys::PrivateKey;
use crate::{sign_content, SignError};

/// The acknowledgement Alipay waits for (spec §6), byte-exact: Alipay re-sends a notification
/// until it gets this answer.
pub const ACK_BODY: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

/// The headers that sign an acknowledgement the legacy Java SDK way (spec §6, vector ACK-01):
/// `client-id`, `response-time` and `signature` over
/// `POST <notify target>\n<client_id>.<response_time>.<body>` with the merchant key.
pub fn ack_signature_headers(
    merchant: &PrivateKey,
    key_version: &str,
    client_id: &str,
    notify_target: &str,
    response_time: &str,
    body: &[u8],
) -> Result<[(&'static str, String); 3], SignError> {
    let content = content_to_sign("POST", notify_target, client_id, response_time, body);
    let signature = sign_content(merchant, key_version, &content)?;
    Ok([
        ("client-id", client_id.to_string()),
        ("response-time", response_time.to_string()),
        ("signature", signature),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        // the workspace's vectors file (the sidecar's tests read it too)
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/ams-public.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file"))
            .expect("vectors json")
    }

    #[test]
    fn ack_signature_reproduces_ack_01() {
        let all = vectors();
        let v = all["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == "ACK-01")
            .expect("ACK-01");
        let input = |f: &str| v["inputs"][f].as_str().unwrap().to_string();
        assert_eq!(input("body"), ACK_BODY);
        let merchant = PrivateKey::from_text(
            all["keys"]["merchant"]["private_pkcs8_pem"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let headers = ack_signature_headers(
            &merchant,
            &input("key_version"),
            &input("client_id"),
            &input("uri"),
            &input("time"),
            ACK_BODY.as_bytes(),
        )
        .unwrap();
        let expected = &v["expected_response_headers"];
        for (name, value) in &headers {
            assert_eq!(
                expected[*name].as_str(),
                Some(value.as_str()),
                "header {name}"
            );
        }
        assert_eq!(
            headers[2].1,
            v["expected_signature_header"].as_str().unwrap()
        );
    }
}
