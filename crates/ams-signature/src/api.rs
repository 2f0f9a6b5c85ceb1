//! The AMS API list (spec Appendix B) and the low-cardinality label each request path maps
//! to, so metrics and logs name the API without ever copying request text into a label.

/// Label for every inbound (notification) request: notify URLs are the merchant's own paths,
/// so they are never used as a label.
pub const INBOUND_API_LABEL: &str = "notify";

/// Label for an outbound path that is not in the known AMS API list.
pub const OTHER_API_LABEL: &str = "other";

/// Full paths the SDKs spell irregularly (Appendix B), mapped to the label of the API.
const IRREGULAR_PATHS: &[(&str, &str)] = &[
    (
        "/ams/api//v1/payments/retrievePaymentSession",
        "payments/retrievePaymentSession",
    ),
    (
        "/ams/sandbox/api//v1/payments/retrievePaymentSession",
        "payments/retrievePaymentSession",
    ),
    (
        "/ams/api/open/openapiv2_file/v1/business/attachment/submitAttachment",
        "business/attachment/submitAttachment",
    ),
    (
        "/ams/sandbox/api/open/openapiv2_file/v1/business/attachment/submitAttachment",
        "business/attachment/submitAttachment",
    ),
    (
        "/ams/v1/aba/funds/createExchange",
        "aba/funds/createExchange",
    ),
];

/// Prefixes of the regular API paths, live and sandbox.
const API_PREFIXES: &[&str] = &["/ams/api/v1/", "/ams/sandbox/api/v1/"];

/// Known AMS APIs (spec Appendix B), as the path after `/ams/api/v1/`. Sorted by bytes for
/// binary search (a unit test checks it).
const KNOWN_APIS: &[&str] = &[
    "aba/account/inquireAvailableQuota",
    "aba/accounts/inquiryBalance",
    "aba/accounts/inquiryStatement",
    "aba/accounts/inquiryStatementDetail",
    "aba/accounts/inquiryStatementList",
    "aba/cards/applyCard",
    "aba/cards/inquireCard",
    "aba/cards/inquireCardDetail",
    "aba/cards/inquireCardSensitiveInfo",
    "aba/cards/inquireCardTransactionEvent",
    "aba/cards/inquireCardTransactionLifecycle",
    "aba/cards/inquireCardTransactionLifecycleDetail",
    "aba/cards/updateCard",
    "aba/cards/updateCardStatus",
    "aba/funds/createDirectPayment",
    "aba/funds/createDirectRefund",
    "aba/funds/createExchange",
    "aba/funds/createQuote",
    "aba/funds/inquireDirectPayment",
    "aba/funds/inquireDirectRefund",
    "aba/funds/inquireExchange",
    "aba/funds/inquireRate",
    "accounts/inquireBalance",
    "authorizations/applyToken",
    "authorizations/consult",
    "authorizations/query",
    "authorizations/revoke",
    "billing/coupon/create",
    "billing/coupon/inquireDetails",
    "billing/coupon/inquireList",
    "billing/coupon/update",
    "billing/creditNote/create",
    "billing/creditNote/inquireDetails",
    "billing/creditNote/inquireList",
    "billing/creditNote/void",
    "billing/customer/create",
    "billing/customer/createPortalLink",
    "billing/customer/delete",
    "billing/customer/inquireDetails",
    "billing/customer/inquireList",
    "billing/customer/update",
    "billing/invoice/confirmPayment",
    "billing/invoice/create",
    "billing/invoice/createViewLink",
    "billing/invoice/export",
    "billing/invoice/finalize",
    "billing/invoice/inquireDetails",
    "billing/invoice/inquireList",
    "billing/invoice/markUncollectible",
    "billing/invoice/revise",
    "billing/invoice/send",
    "billing/invoice/update",
    "billing/invoice/void",
    "billing/price/create",
    "billing/price/inquireDetails",
    "billing/price/inquireList",
    "billing/price/update",
    "billing/product/create",
    "billing/product/inquireDetails",
    "billing/product/inquireList",
    "billing/product/update",
    "billing/product/uploadImage",
    "billing/promotionCode/create",
    "billing/promotionCode/inquireDetails",
    "billing/promotionCode/inquireList",
    "billing/promotionCode/update",
    "billing/receipt/export",
    "billing/receipt/inquireDetails",
    "billing/receipt/inquireList",
    "billing/receipt/send",
    "billing/subscription/cancel",
    "billing/subscription/create",
    "billing/subscription/inquireDetails",
    "billing/subscription/inquireList",
    "billing/subscription/resume",
    "billing/subscription/update",
    "business/attachment/submitAttachment",
    "customs/declare",
    "customs/inquiryDeclarationRequests",
    "funds/createPayout",
    "funds/createTransfer",
    "merchants/inquiryRegistrationInfo",
    "merchants/inquiryRegistrationStatus",
    "merchants/register",
    "merchants/registration",
    "merchants/settlementInfo/update",
    "meter/create",
    "meter/createSession",
    "meter/creditGrant/create",
    "meter/creditGrant/inquireDetails",
    "meter/creditGrant/inquireList",
    "meter/creditGrant/updateExpiry",
    "meter/creditGrant/void",
    "meter/inquireDetails",
    "meter/inquireList",
    "meter/update",
    "meter/uploadEvent",
    "payments/acceptDispute",
    "payments/cancel",
    "payments/capture",
    "payments/consult",
    "payments/createDeviceCertificate",
    "payments/createPaymentSession",
    "payments/downloadDisputeEvidence",
    "payments/fetchNonce",
    "payments/getCardInfo",
    "payments/inquire",
    "payments/inquireExchangeRate",
    "payments/inquireInstallment",
    "payments/inquiryPayment",
    "payments/inquiryRefund",
    "payments/pay",
    "payments/refund",
    "payments/retrievePaymentSession",
    "payments/settle",
    "payments/supplyDefenseDocument",
    "payments/syncArrear",
    "payments/updateAmount",
    "payments/uploadInvoiceShippingFile",
    "payments/verifyAndCompletePayment",
    "risk/payments/decide",
    "risk/payments/reportRisk",
    "risk/payments/sendPaymentResult",
    "risk/payments/sendRefundResult",
    "subscriptions/cancel",
    "subscriptions/change",
    "subscriptions/create",
    "subscriptions/inquireSubscription",
    "subscriptions/inquireSubscriptionList",
    "subscriptions/inquireSubscriptionPayment",
    "subscriptions/inquiry",
    "subscriptions/update",
    "tax/calculate",
    "tax/cancelRegistration",
    "tax/initializeSettings",
    "tax/inquireCalculation",
    "tax/inquireRegistrationList",
    "tax/inquireSettings",
    "tax/inquireTransactionList",
    "tax/register",
    "tax/updateRegistrationPeriod",
    "tax/updateSettings",
    "users/initAuthentication",
    "users/inquiryUserInfo",
    "users/verifyAuthentication",
    "vaults/createVaultingSession",
    "vaults/deleteToken",
    "vaults/fetchNonce",
    "vaults/inquireToken",
    "vaults/inquireVaulting",
    "vaults/updateToken",
    "vaults/vaultPaymentMethod",
];

/// How many API labels [`api_label_index`] numbers: the known APIs, `other` and `notify`.
pub const API_LABEL_COUNT: usize = KNOWN_APIS.len() + 2;

/// A dense number (`0..API_LABEL_COUNT`) for each API label, so a caller can keep per-API data
/// in an array instead of hashing the label on every request (the sidecar's metric handles);
/// `None` for a string that is no API label.
pub fn api_label_index(label: &str) -> Option<usize> {
    match label {
        OTHER_API_LABEL => Some(KNOWN_APIS.len()),
        INBOUND_API_LABEL => Some(KNOWN_APIS.len() + 1),
        _ => KNOWN_APIS.binary_search(&label).ok(),
    }
}

/// Maps a request path to a low-cardinality API label such as `"payments/pay"`: a known AMS
/// path (live or sandbox form, query ignored) gives its label from a static list, anything
/// else gives `"other"`. The result is always a `&'static str` from this module, so request
/// text can never become a label.
pub fn api_label(path: &str) -> &'static str {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let tail = IRREGULAR_PATHS
        .iter()
        .find(|(full, _)| *full == path)
        .map(|(_, tail)| *tail)
        .or_else(|| {
            API_PREFIXES
                .iter()
                .find_map(|prefix| path.strip_prefix(prefix))
        });
    match tail.map(|tail| KNOWN_APIS.binary_search(&tail)) {
        Some(Ok(index)) => KNOWN_APIS[index],
        _ => OTHER_API_LABEL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_its_own_index() {
        let labels = KNOWN_APIS
            .iter()
            .copied()
            .chain([OTHER_API_LABEL, INBOUND_API_LABEL]);
        let mut seen = [false; API_LABEL_COUNT];
        for label in labels {
            let i = api_label_index(label).expect(label);
            assert!(!seen[i], "{label} shares index {i}");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(api_label_index("/ams/api/v1/payments/pay"), None);
        assert_eq!(
            api_label_index(api_label("/ams/api/v1/payments/pay")),
            api_label_index("payments/pay")
        );
    }

    #[test]
    fn known_api_list_is_sorted_and_unique() {
        for pair in KNOWN_APIS.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for (_, tail) in IRREGULAR_PATHS {
            assert!(
                KNOWN_APIS.binary_search(tail).is_ok(),
                "{tail} not in KNOWN_APIS"
            );
        }
    }
}
