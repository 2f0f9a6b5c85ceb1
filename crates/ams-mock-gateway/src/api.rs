//! The fake AMS payment APIs: in-memory payments and refunds, Alipay-shaped response bodies.
//!
//! Bodies are written field by field in Alipay's order (`result` first) instead of through
//! `serde_json::to_vec` of a map, which would sort the keys; the bytes are built once and the
//! very same bytes are signed and sent.

use std::collections::HashMap;

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

fn success() -> String {
    result("SUCCESS", Status::S, "success")
}

fn param_illegal(message: &str) -> String {
    envelope("PARAM_ILLEGAL", Status::F, message)
}

/// An amount in minor units, as AMS carries it (`{"currency":"HKD","value":"5800"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Amount {
    currency: String,
    value: u64,
}

impl Amount {
    fn json(&self) -> String {
        obj(&[
            ("currency", js(&self.currency)),
            ("value", js(&self.value.to_string())),
        ])
    }

    fn from_field(body: &Value, field: &str) -> Result<Amount, String> {
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

fn str_field<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PaymentStatus {
    Success,
    Cancelled,
}

#[derive(Debug)]
struct Payment {
    request_id: String,
    payment_id: String,
    amount: Amount,
    create_time: String,
    payment_time: String,
    status: PaymentStatus,
    cancel_time: Option<String>,
    refunded: u64,
}

#[derive(Debug)]
struct Refund {
    request_id: String,
    refund_id: String,
    payment_id: String,
    amount: Amount,
    time: String,
}

/// A payment notification to deliver after a successful pay.
#[derive(Debug, Clone)]
pub(crate) struct NotifyJob {
    /// `paymentNotifyUrl` of the pay request, when it had one.
    pub(crate) url_from_request: Option<String>,
    pub(crate) payment_request_id: String,
    pub(crate) body: Vec<u8>,
}

/// What one API call produced.
pub(crate) struct Outcome {
    pub(crate) body: Vec<u8>,
    pub(crate) notify: Option<NotifyJob>,
}

impl Outcome {
    fn body(body: String) -> Outcome {
        Outcome {
            body: body.into_bytes(),
            notify: None,
        }
    }
}

/// Clock and id source, injected so the store stays free of globals.
pub(crate) struct Stamp {
    /// ISO-8601 with `+08:00` offset, like Alipay's `paymentTime`.
    pub(crate) now: String,
    /// `YYYYMMDD` of now, the prefix of Alipay ids.
    pub(crate) date: String,
}

/// All payments and refunds the gateway has seen, keyed by the merchant's request ids.
#[derive(Default)]
pub(crate) struct Store {
    payments: HashMap<String, Payment>,
    payment_ids: HashMap<String, String>,
    refunds: HashMap<String, Refund>,
    refund_ids: HashMap<String, String>,
    counter: u64,
}

/// The routes the gateway implements (last path segment under `/v1/payments/`).
pub(crate) const ROUTES: &[&str] = &[
    "pay",
    "inquiryPayment",
    "cancel",
    "refund",
    "inquiryRefund",
    "consult",
];

impl Store {
    fn new_id(&mut self, date: &str) -> String {
        self.counter += 1;
        let random = getrandom::u64().unwrap_or(0) % 10_000_000_000_000_000;
        // 32 digits like the vectors' paymentId: date, counter, randomness.
        format!("{date}{:08}{random:016}", self.counter % 100_000_000)
    }

    /// Runs one API call. `route` is one of [`ROUTES`]; anything else is `NO_INTERFACE_DEF`.
    pub(crate) fn call(&mut self, route: &str, body: &[u8], stamp: &Stamp) -> Outcome {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Outcome::body(param_illegal("The request body is not valid JSON."));
        };
        if !json.is_object() {
            return Outcome::body(param_illegal("The request body must be a JSON object."));
        }
        match route {
            "pay" => self.pay(&json, stamp),
            "inquiryPayment" => Outcome::body(self.inquiry_payment(&json)),
            "cancel" => Outcome::body(self.cancel(&json, stamp)),
            "refund" => Outcome::body(self.refund(&json, stamp)),
            "inquiryRefund" => Outcome::body(self.inquiry_refund(&json)),
            "consult" => Outcome::body(consult()),
            _ => Outcome::body(envelope(
                "NO_INTERFACE_DEF",
                Status::F,
                "The API is not defined.",
            )),
        }
    }

    fn pay_body(p: &Payment) -> String {
        obj(&[
            ("result", success()),
            ("paymentRequestId", js(&p.request_id)),
            ("paymentId", js(&p.payment_id)),
            ("paymentAmount", p.amount.json()),
            ("paymentCreateTime", js(&p.create_time)),
            ("paymentTime", js(&p.payment_time)),
        ])
    }

    fn pay(&mut self, json: &Value, stamp: &Stamp) -> Outcome {
        let Some(request_id) = str_field(json, "paymentRequestId") else {
            return Outcome::body(param_illegal("paymentRequestId is required"));
        };
        let amount = match Amount::from_field(json, "paymentAmount") {
            Ok(a) => a,
            Err(e) => return Outcome::body(param_illegal(&e)),
        };
        if let Some(existing) = self.payments.get(request_id) {
            // Idempotent on paymentRequestId: the same request again gets the same payment.
            if existing.amount != amount {
                return Outcome::body(envelope(
                    "REPEAT_REQ_INCONSISTENT",
                    Status::F,
                    "The paymentRequestId was used before with a different paymentAmount.",
                ));
            }
            return Outcome::body(Self::pay_body(existing));
        }
        let payment = Payment {
            request_id: request_id.to_string(),
            payment_id: self.new_id(&stamp.date),
            amount,
            create_time: stamp.now.clone(),
            payment_time: stamp.now.clone(),
            status: PaymentStatus::Success,
            cancel_time: None,
            refunded: 0,
        };
        let notification = obj(&[
            ("notifyType", js("PAYMENT_RESULT")),
            ("result", success()),
            ("paymentRequestId", js(&payment.request_id)),
            ("paymentId", js(&payment.payment_id)),
            ("paymentAmount", payment.amount.json()),
            ("paymentCreateTime", js(&payment.create_time)),
            ("paymentTime", js(&payment.payment_time)),
        ]);
        let body = Self::pay_body(&payment);
        self.payment_ids
            .insert(payment.payment_id.clone(), payment.request_id.clone());
        self.payments.insert(payment.request_id.clone(), payment);
        Outcome {
            body: body.into_bytes(),
            notify: Some(NotifyJob {
                url_from_request: str_field(json, "paymentNotifyUrl").map(str::to_string),
                payment_request_id: request_id.to_string(),
                body: notification.into_bytes(),
            }),
        }
    }

    /// Finds a payment by `paymentId` (takes precedence, as documented) or `paymentRequestId`.
    fn find_payment(&mut self, json: &Value) -> Result<&mut Payment, String> {
        let key = if let Some(id) = str_field(json, "paymentId") {
            self.payment_ids.get(id).cloned()
        } else if let Some(id) = str_field(json, "paymentRequestId") {
            Some(id.to_string())
        } else {
            return Err(param_illegal(
                "paymentId and paymentRequestId cannot both be empty",
            ));
        };
        key.and_then(|k| self.payments.get_mut(&k))
            .ok_or_else(|| envelope("ORDER_NOT_EXIST", Status::F, "The order does not exist."))
    }

    fn inquiry_payment(&mut self, json: &Value) -> String {
        let p = match self.find_payment(json) {
            Ok(p) => p,
            Err(body) => return body,
        };
        let mut fields = vec![
            ("result", success()),
            (
                "paymentStatus",
                js(match p.status {
                    PaymentStatus::Success => "SUCCESS",
                    PaymentStatus::Cancelled => "CANCELLED",
                }),
            ),
        ];
        if p.status == PaymentStatus::Success {
            fields.push(("paymentResultCode", js("SUCCESS")));
            fields.push(("paymentResultMessage", js("success")));
        }
        fields.extend([
            ("paymentRequestId", js(&p.request_id)),
            ("paymentId", js(&p.payment_id)),
            ("paymentAmount", p.amount.json()),
            ("paymentCreateTime", js(&p.create_time)),
            ("paymentTime", js(&p.payment_time)),
        ]);
        obj(&fields)
    }

    fn cancel(&mut self, json: &Value, stamp: &Stamp) -> String {
        let p = match self.find_payment(json) {
            Ok(p) => p,
            Err(body) => return body,
        };
        if p.refunded > 0 {
            return envelope(
                "PROCESS_FAIL",
                Status::F,
                "A payment that has been refunded cannot be cancelled.",
            );
        }
        p.status = PaymentStatus::Cancelled;
        let cancel_time = p.cancel_time.get_or_insert_with(|| stamp.now.clone());
        obj(&[
            ("result", success()),
            ("paymentId", js(&p.payment_id)),
            ("paymentRequestId", js(&p.request_id)),
            ("cancelTime", js(cancel_time)),
        ])
    }

    fn refund_body(r: &Refund) -> String {
        obj(&[
            ("result", success()),
            ("refundRequestId", js(&r.request_id)),
            ("refundId", js(&r.refund_id)),
            ("paymentId", js(&r.payment_id)),
            ("refundAmount", r.amount.json()),
            ("refundTime", js(&r.time)),
        ])
    }

    fn refund(&mut self, json: &Value, stamp: &Stamp) -> String {
        let Some(request_id) = str_field(json, "refundRequestId") else {
            return param_illegal("refundRequestId is required");
        };
        let Some(payment_id) = str_field(json, "paymentId") else {
            return param_illegal("paymentId is required");
        };
        let amount = match Amount::from_field(json, "refundAmount") {
            Ok(a) => a,
            Err(e) => return param_illegal(&e),
        };
        if let Some(existing) = self.refunds.get(request_id) {
            if existing.amount != amount || existing.payment_id != payment_id {
                return envelope(
                    "REPEAT_REQ_INCONSISTENT",
                    Status::F,
                    "The refundRequestId was used before with a different paymentId or refundAmount.",
                );
            }
            return Self::refund_body(existing);
        }
        let Some(payment) = self
            .payment_ids
            .get(payment_id)
            .and_then(|k| self.payments.get_mut(k))
        else {
            return envelope("ORDER_NOT_EXIST", Status::F, "The order does not exist.");
        };
        if payment.status == PaymentStatus::Cancelled {
            return envelope(
                "ORDER_IS_CANCELED",
                Status::F,
                "The payment was cancelled and cannot be refunded.",
            );
        }
        if amount.currency != payment.amount.currency {
            return param_illegal("refundAmount.currency differs from the payment currency");
        }
        if amount.value == 0 {
            return param_illegal("refundAmount.value must be greater than 0");
        }
        if payment.refunded.saturating_add(amount.value) > payment.amount.value {
            return envelope(
                "REFUND_AMOUNT_EXCEED",
                Status::F,
                "The total refund amount exceeds the payment amount.",
            );
        }
        payment.refunded += amount.value;
        let refund = Refund {
            request_id: request_id.to_string(),
            refund_id: self.new_id(&stamp.date),
            payment_id: payment_id.to_string(),
            amount,
            time: stamp.now.clone(),
        };
        let body = Self::refund_body(&refund);
        self.refund_ids
            .insert(refund.refund_id.clone(), refund.request_id.clone());
        self.refunds.insert(refund.request_id.clone(), refund);
        body
    }

    fn inquiry_refund(&mut self, json: &Value) -> String {
        let key = if let Some(id) = str_field(json, "refundId") {
            self.refund_ids.get(id).cloned()
        } else if let Some(id) = str_field(json, "refundRequestId") {
            Some(id.to_string())
        } else {
            return param_illegal("refundId and refundRequestId cannot both be empty");
        };
        let Some(r) = key.and_then(|k| self.refunds.get(&k)) else {
            return envelope("REFUND_NOT_EXIST", Status::F, "The refund does not exist.");
        };
        obj(&[
            ("result", success()),
            ("refundId", js(&r.refund_id)),
            ("refundRequestId", js(&r.request_id)),
            ("refundAmount", r.amount.json()),
            ("refundStatus", js("SUCCESS")),
            ("refundTime", js(&r.time)),
        ])
    }
}

fn consult() -> String {
    let option = |method: &str, name: &str| {
        obj(&[
            ("paymentMethodType", js(method)),
            ("paymentMethodName", js(name)),
            ("enabled", "true".to_string()),
            ("preferred", "false".to_string()),
        ])
    };
    let options = [
        option("ALIPAY_CN", "Alipay"),
        option("ALIPAY_HK", "AlipayHK"),
        option("GCASH", "GCash"),
        option("CONNECT_WALLET", "Alipay+"),
    ];
    obj(&[
        ("result", success()),
        ("paymentOptions", format!("[{}]", options.join(","))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            now: "2024-05-01T12:34:57+08:00".into(),
            date: "20240501".into(),
        }
    }

    fn call(store: &mut Store, route: &str, body: &str) -> Value {
        let out = store.call(route, body.as_bytes(), &stamp());
        serde_json::from_slice(&out.body).expect("json body")
    }

    #[test]
    fn result_comes_first_in_alipay_order() {
        assert_eq!(
            envelope("X", Status::F, "m"),
            r#"{"result":{"resultCode":"X","resultStatus":"F","resultMessage":"m"}}"#
        );
    }

    #[test]
    fn refunds_are_limited_to_the_paid_amount() {
        let mut s = Store::default();
        let pay = call(
            &mut s,
            "pay",
            r#"{"paymentRequestId":"p1","paymentAmount":{"currency":"HKD","value":"100"}}"#,
        );
        let pid = pay["paymentId"].as_str().unwrap().to_string();
        assert_eq!(pid.len(), 32);
        let r = |s: &mut Store, id: &str, v: &str| {
            call(
                s,
                "refund",
                &format!(
                    r#"{{"refundRequestId":"{id}","paymentId":"{pid}","refundAmount":{{"currency":"HKD","value":"{v}"}}}}"#
                ),
            )["result"]["resultCode"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(r(&mut s, "r1", "60"), "SUCCESS");
        assert_eq!(r(&mut s, "r2", "41"), "REFUND_AMOUNT_EXCEED");
        assert_eq!(r(&mut s, "r2", "40"), "SUCCESS");
        assert_eq!(r(&mut s, "r1", "60"), "SUCCESS");
        assert_eq!(r(&mut s, "r1", "61"), "REPEAT_REQ_INCONSISTENT");
    }
}
