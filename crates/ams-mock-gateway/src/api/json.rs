//! Alipay-shaped JSON: bodies written field by field in Alipay's order (`result` first), and
//! the request fields the APIs read.

use serde_json::Value;

/// `resultStatus` of the `result` envelope (spec §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    S,
    F,
    U,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::S => "S",
            Status::F => "F",
            Status::U => "U",
        }
    }
}

/// JSON string literal.
pub(crate) fn js(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// JSON object from already-encoded values, keeping the given field order.
pub(crate) fn obj(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&js(name));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

/// `{"resultCode":…,"resultStatus":…,"resultMessage":…}` in the order Alipay writes it.
pub(crate) fn result(code: &str, status: Status, message: &str) -> String {
    obj(&[
        ("resultCode", js(code)),
        ("resultStatus", js(status.as_str())),
        ("resultMessage", js(message)),
    ])
}

/// A body holding only the `result` envelope.
pub(crate) fn envelope(code: &str, status: Status, message: &str) -> String {
    obj(&[("result", result(code, status, message))])
}

pub(super) fn success() -> String {
    result("SUCCESS", Status::S, "success")
}

/// A signed-looking inquiryPayment answer that says SUCCESS about no payment at all (no
/// `paymentRequestId`, no `paymentId`): [`crate::InquiryAnswer::SuccessWithoutIds`].
pub(crate) fn success_without_ids() -> String {
    obj(&[
        ("result", success()),
        ("paymentStatus", js("SUCCESS")),
        ("paymentResultCode", js("SUCCESS")),
        ("paymentResultMessage", js("success")),
    ])
}

pub(super) fn param_illegal(message: &str) -> String {
    envelope("PARAM_ILLEGAL", Status::F, message)
}

/// An amount in minor units, as AMS carries it (`{"currency":"HKD","value":"5800"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Amount {
    pub(super) currency: String,
    pub(super) value: u64,
}

impl Amount {
    pub(super) fn json(&self) -> String {
        obj(&[
            ("currency", js(&self.currency)),
            ("value", js(&self.value.to_string())),
        ])
    }

    pub(super) fn from_field(body: &Value, field: &str) -> Result<Amount, String> {
        let amount = body
            .get(field)
            .ok_or_else(|| format!("{field} is required"))?;
        let currency = amount
            .get("currency")
            .and_then(Value::as_str)
            .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
            .ok_or_else(|| format!("{field}.currency must be a 3-letter ISO 4217 code"))?;
        let value = amount
            .get("value")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                format!("{field}.value must be a string of digits (amount in minor units)")
            })?;
        Ok(Amount {
            currency: currency.to_string(),
            value,
        })
    }
}

/// A per-request switch (`mockNotify`, `mockOutcome`): absent, parsed, or the reason it is
/// unusable (answered as `PARAM_ILLEGAL`).
pub(super) fn switch<T: std::str::FromStr<Err = String>>(
    body: &Value,
    field: &str,
    example: &str,
) -> Result<Option<T>, String> {
    match body.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|e| format!("{field}: {e}")),
        Some(_) => Err(format!("{field} must be a string such as {example}")),
    }
}

pub(super) fn str_field<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}
