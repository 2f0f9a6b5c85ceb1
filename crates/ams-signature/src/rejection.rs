//! The gateway's answers that say it refused the caller's credentials: the one list the
//! sidecar warns about, counts (`alipay_sidecar_gateway_rejections_total{result_code}`) and
//! documents.
//!
//! Why a closed list: the metric label must be bounded, and these codes are the ones an
//! operator fixes in the Antom dashboard or the key files, not in the app. The codes and their
//! meaning come from Antom's common result codes (docs.antom.com, e.g.
//! `INVALID_SIGNATURE_error_code`; spec Appendix A E67, E70, E71) and from the API-key SDK
//! runs (`ILLEGAL_CLIENT_IP`, `OAUTH_FAIL`); all are answered with `resultStatus` `F`, most of
//! them unsigned.

/// The credential rejections, with what each means for the operator.
pub const CREDENTIAL_REJECTIONS: &[(&str, &str)] = &[
    (
        "INVALID_SIGNATURE",
        "the request signature did not verify with the public key Alipay holds for this client id",
    ),
    (
        "KEY_NOT_FOUND",
        "Alipay holds no public key for this client id and key version",
    ),
    (
        "INVALID_CLIENT",
        "Alipay does not know this client id (or it is not active)",
    ),
    (
        "OAUTH_FAIL",
        "the API key was refused (wrong, revoked, or a Restricted key outside its routes)",
    ),
    (
        "ILLEGAL_CLIENT_IP",
        "the request came from an IP address outside the client's allow-list",
    ),
    (
        "ACCESS_DENIED",
        "the client is not allowed to call this API",
    ),
    (
        "INVALID_ACCESS_TOKEN",
        "the access token (Agent-Token / authorization token) is invalid or expired",
    ),
];

/// The label for a rejection whose code is not in [`CREDENTIAL_REJECTIONS`].
pub const OTHER_REJECTION_LABEL: &str = "other";

/// The closed label of `result_code`: itself when it is a credential rejection, `None`
/// otherwise.
pub fn credential_rejection(result_code: &str) -> Option<&'static str> {
    CREDENTIAL_REJECTIONS
        .iter()
        .find(|(code, _)| *code == result_code)
        .map(|(code, _)| *code)
}

/// What a credential rejection code means, in words (`None` for other codes).
pub fn rejection_meaning(result_code: &str) -> Option<&'static str> {
    CREDENTIAL_REJECTIONS
        .iter()
        .find(|(code, _)| *code == result_code)
        .map(|(_, meaning)| *meaning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_closed_and_complete() {
        for code in [
            "INVALID_SIGNATURE",
            "KEY_NOT_FOUND",
            "INVALID_CLIENT",
            "OAUTH_FAIL",
            "ILLEGAL_CLIENT_IP",
            "ACCESS_DENIED",
            "INVALID_ACCESS_TOKEN",
        ] {
            assert_eq!(credential_rejection(code), Some(code));
            assert!(rejection_meaning(code).is_some());
        }
        for code in ["SUCCESS", "PARAM_ILLEGAL", "invalid_signature", ""] {
            assert_eq!(credential_rejection(code), None);
        }
    }
}
