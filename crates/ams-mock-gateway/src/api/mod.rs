//! The fake AMS payment APIs: in-memory payments and refunds, Alipay-shaped response bodies.
//!
//! Bodies are written field by field in Alipay's order (`result` first) instead of through
//! `serde_json::to_vec` of a map, which would sort the keys; the bytes are built once and the
//! very same bytes are signed and sent.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::switches::{ControlError, NotifyMode, PaymentOutcome, PaymentResult, PaymentStatus};

pub(crate) mod events;
mod json;
mod payment;
pub(crate) mod session;
#[cfg(test)]
mod tests;
pub(crate) mod upload;

pub(crate) use json::{envelope, js, obj, success_without_ids, Status};
use json::{param_illegal, result, str_field, success, switch, Amount};
use payment::{fail_message, NotifyPlan, Payment, Refund, State, IN_PROCESS_MESSAGE};

/// A PAYMENT_RESULT or REFUND_RESULT notification to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotifyJob {
    /// `paymentNotifyUrl` of the pay request, when it had one.
    pub(crate) url_from_request: Option<String>,
    pub(crate) payment_request_id: String,
    pub(crate) body: Vec<u8>,
    /// The `client-id` header: the pay's.
    pub(crate) client_id: String,
    /// Sign other bytes than the body (fault `notify_tampered`).
    pub(crate) tampered: bool,
    /// `true` for a REFUND_RESULT (its `payment_request_id` is the refunded payment's).
    pub(crate) refund: bool,
    /// Notify mode `drop`: log the event as FAILED, do not send it.
    pub(crate) dropped: bool,
}

/// What a new pay leaves for the caller to start once the store is unlocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// The payment is final now: its notification is due (per its [`NotifyMode`]).
    Final(String),
    /// A refund succeeded: its REFUND_RESULT notification is due (sent at once, or only
    /// logged as FAILED with notify mode `drop`).
    Refunded(Box<NotifyJob>),
    /// The payment is processing and gets `result` after `after`.
    SettleAfter {
        request_id: String,
        after: Duration,
        result: PaymentResult,
    },
}

/// What one API call produced.
pub(crate) struct Outcome {
    pub(crate) body: Vec<u8>,
    pub(crate) effect: Option<Effect>,
}

impl Outcome {
    fn body(body: String) -> Outcome {
        Outcome {
            body: body.into_bytes(),
            effect: None,
        }
    }
}

/// The gateway-wide defaults and request facts a pay needs besides its body.
pub(crate) struct PayContext<'a> {
    /// The request's `Client-Id`.
    pub(crate) client_id: &'a str,
    /// Notify mode unless the body has `mockNotify` (fault `no_notify` makes it `Held`).
    pub(crate) notify: NotifyMode,
    /// Outcome unless the body has `mockOutcome`.
    pub(crate) outcome: &'a PaymentOutcome,
    /// Fault `notify_tampered`.
    pub(crate) tampered: bool,
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
    pub(crate) fn call(
        &mut self,
        route: &str,
        body: &[u8],
        stamp: &Stamp,
        ctx: &PayContext<'_>,
    ) -> Outcome {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Outcome::body(param_illegal("The request body is not valid JSON."));
        };
        if !json.is_object() {
            return Outcome::body(param_illegal("The request body must be a JSON object."));
        }
        match route {
            "pay" => self.pay(&json, stamp, ctx),
            "inquiryPayment" => Outcome::body(self.inquiry_payment(&json)),
            "cancel" => Outcome::body(self.cancel(&json, stamp)),
            "refund" => self.refund(&json, stamp, ctx),
            "inquiryRefund" => Outcome::body(self.inquiry_refund(&json)),
            "consult" => Outcome::body(consult()),
            _ => Outcome::body(envelope(
                "NO_INTERFACE_DEF",
                Status::F,
                "The API is not defined.",
            )),
        }
    }

    /// The pay answer for the payment's current state: `SUCCESS`/`S` once paid (also after a
    /// cancel, as before), `PAYMENT_IN_PROCESS`/`U` while processing (the fields Alipay
    /// returns with it: ids, amount, create time), the failure code/`F` when it failed, and
    /// `ORDER_IS_CANCELED`/`F` when it was cancelled before it was paid.
    fn pay_answer(p: &Payment) -> String {
        let result = match (&p.state, p.cancel_time.is_some()) {
            (State::Success, _) => success(),
            (State::Fail { code }, false) => result(code, Status::F, fail_message(code)),
            (State::Processing, false) => {
                result("PAYMENT_IN_PROCESS", Status::U, IN_PROCESS_MESSAGE)
            }
            (_, true) => result("ORDER_IS_CANCELED", Status::F, "The payment was cancelled."),
        };
        let mut fields = vec![("result", result)];
        p.push_fields(&mut fields);
        obj(&fields)
    }

    fn pay(&mut self, json: &Value, stamp: &Stamp, ctx: &PayContext<'_>) -> Outcome {
        let Some(request_id) = str_field(json, "paymentRequestId") else {
            return Outcome::body(param_illegal("paymentRequestId is required"));
        };
        let amount = match Amount::from_field(json, "paymentAmount") {
            Ok(a) => a,
            Err(e) => return Outcome::body(param_illegal(&e)),
        };
        let notify = match switch(json, "mockNotify", "\"none\" or \"late:30s\"") {
            Ok(None) => ctx.notify,
            Ok(Some(mode)) => mode,
            Err(e) => return Outcome::body(param_illegal(&e)),
        };
        let outcome = match switch(json, "mockOutcome", "\"success_after:2s\" or \"never\"") {
            Ok(None) => ctx.outcome.clone(),
            Ok(Some(outcome)) => outcome,
            Err(e) => return Outcome::body(param_illegal(&e)),
        };
        if let Some(existing) = self.payments.get(request_id) {
            // Idempotent on paymentRequestId: the same request again gets the same payment
            // (in its current state) and starts nothing new.
            if existing.amount != amount {
                return Outcome::body(envelope(
                    "REPEAT_REQ_INCONSISTENT",
                    Status::F,
                    "The paymentRequestId was used before with a different paymentAmount.",
                ));
            }
            return Outcome::body(Self::pay_answer(existing));
        }
        let (state, effect) = match outcome {
            PaymentOutcome::Success => (State::Success, Some(Effect::Final(request_id.into()))),
            PaymentOutcome::SuccessAfter(after) => (
                State::Processing,
                Some(Effect::SettleAfter {
                    request_id: request_id.into(),
                    after,
                    result: PaymentResult::Success,
                }),
            ),
            PaymentOutcome::FailAfter { after, code } => (
                State::Processing,
                Some(Effect::SettleAfter {
                    request_id: request_id.into(),
                    after,
                    result: PaymentResult::Fail { code },
                }),
            ),
            PaymentOutcome::Never => (State::Processing, None),
        };
        let payment = Payment {
            request_id: request_id.to_string(),
            payment_id: self.new_id(&stamp.date),
            amount,
            create_time: stamp.now.clone(),
            payment_time: (state == State::Success).then(|| stamp.now.clone()),
            state,
            cancel_time: None,
            refunded: 0,
            notify: NotifyPlan {
                mode: notify,
                url: str_field(json, "paymentNotifyUrl").map(str::to_string),
                client_id: ctx.client_id.to_string(),
                tampered: ctx.tampered,
            },
        };
        let body = Self::pay_answer(&payment);
        self.payment_ids
            .insert(payment.payment_id.clone(), payment.request_id.clone());
        self.payments.insert(payment.request_id.clone(), payment);
        Outcome {
            body: body.into_bytes(),
            effect,
        }
    }

    /// The current state of a payment, by `paymentRequestId`.
    pub(crate) fn status(&self, request_id: &str) -> Option<PaymentStatus> {
        self.payments.get(request_id).map(Payment::status)
    }

    /// Makes a PROCESSING payment final (its outcome delay ran out, or a test asked). A
    /// payment cancelled meanwhile stays cancelled.
    pub(crate) fn settle(
        &mut self,
        request_id: &str,
        result: &PaymentResult,
        stamp: &Stamp,
    ) -> Result<(), ControlError> {
        let p = self
            .payments
            .get_mut(request_id)
            .ok_or_else(|| ControlError::UnknownPayment(request_id.to_string()))?;
        let status = p.status();
        if status != PaymentStatus::Processing {
            return Err(ControlError::AlreadyFinal {
                id: request_id.to_string(),
                status,
            });
        }
        p.state = match result {
            PaymentResult::Success => State::Success,
            PaymentResult::Fail { code } => State::Fail { code: code.clone() },
        };
        p.payment_time = Some(stamp.now.clone());
        Ok(())
    }

    /// The payment's PAYMENT_RESULT notification as of now, with its notify mode. A payment
    /// that succeeded and was cancelled afterwards still reports its success: Alipay's docs
    /// say a success notification may arrive after a cancel (the status stays CANCELLED).
    pub(crate) fn notification(
        &self,
        request_id: &str,
    ) -> Result<(NotifyMode, NotifyJob), ControlError> {
        let p = self
            .payments
            .get(request_id)
            .ok_or_else(|| ControlError::UnknownPayment(request_id.to_string()))?;
        let result = match &p.state {
            State::Processing if p.cancel_time.is_some() => {
                return Err(ControlError::Cancelled(request_id.to_string()))
            }
            State::Processing => return Err(ControlError::NotFinal(request_id.to_string())),
            State::Success => success(),
            State::Fail { code } => result(code, Status::F, fail_message(code)),
        };
        let mut fields = vec![
            ("notifyType", js("PAYMENT_RESULT")),
            ("result", result),
            ("paymentRequestId", js(&p.request_id)),
            ("paymentId", js(&p.payment_id)),
            ("paymentAmount", p.amount.json()),
            ("paymentCreateTime", js(&p.create_time)),
        ];
        // Alipay: paymentTime only when the payment succeeded.
        if p.state == State::Success {
            if let Some(t) = &p.payment_time {
                fields.push(("paymentTime", js(t)));
            }
        }
        Ok((
            p.notify.mode,
            NotifyJob {
                url_from_request: p.notify.url.clone(),
                payment_request_id: p.request_id.clone(),
                body: obj(&fields).into_bytes(),
                client_id: p.notify.client_id.clone(),
                tampered: p.notify.tampered,
                refund: false,
                dropped: p.notify.mode == NotifyMode::Drop,
            },
        ))
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

    /// `inquiryPayment` in the official response shape: `result` says the inquiry worked;
    /// `paymentStatus` is the payment's state, with `paymentResultCode`/`paymentResultMessage`
    /// (`SUCCESS`, `PAYMENT_IN_PROCESS`, or the failure code) and `paymentTime` once paid.
    fn inquiry_payment(&mut self, json: &Value) -> String {
        let p = match self.find_payment(json) {
            Ok(p) => p,
            Err(body) => return body,
        };
        let status = p.status();
        let mut fields = vec![
            ("result", success()),
            ("paymentStatus", js(status.as_str())),
        ];
        match (&p.state, status) {
            (_, PaymentStatus::Cancelled) => {}
            (State::Success, _) => {
                fields.push(("paymentResultCode", js("SUCCESS")));
                fields.push(("paymentResultMessage", js("success")));
            }
            (State::Fail { code }, _) => {
                fields.push(("paymentResultCode", js(code)));
                fields.push(("paymentResultMessage", js(fail_message(code))));
            }
            (State::Processing, _) => {
                fields.push(("paymentResultCode", js("PAYMENT_IN_PROCESS")));
                fields.push(("paymentResultMessage", js(IN_PROCESS_MESSAGE)));
            }
        }
        p.push_fields(&mut fields);
        obj(&fields)
    }

    /// `cancel` closes the payment whatever its state, as Antom's cancel guide describes
    /// (docs.antom.com/ac/cashierpay/cancel, "Cancel"): a payment not yet paid is cancelled
    /// and can no longer be paid (a PROCESSING payment never becomes final afterwards, so no
    /// PAYMENT_RESULT follows); a paid one is cancelled with a full refund, and its status is
    /// CANCELLED from then on, even if a success notification still arrives later. The
    /// contract's cancellation window (paid payments until 00:15 UTC+8 the next day) is not
    /// enforced here. A payment already refunded cannot be cancelled (`PROCESS_FAIL`).
    /// Cancelling again answers the same `cancelTime`.
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

    /// `refund`, plus its REFUND_RESULT notification when the refund is new and has
    /// somewhere to go (`refundNotifyUrl`, or the gateway's notify URL override): sent at
    /// once unless its notify mode (`mockNotify` of the refund, else the gateway's) is `none`
    /// (not sent) or `drop` (logged FAILED in the event log, not sent). `late:` sends at once.
    fn refund(&mut self, json: &Value, stamp: &Stamp, ctx: &PayContext<'_>) -> Outcome {
        let mode = match switch(json, "mockNotify", "\"none\" or \"drop\"") {
            Ok(None) => ctx.notify,
            Ok(Some(mode)) => mode,
            Err(e) => return Outcome::body(param_illegal(&e)),
        };
        let before = self.refunds.len();
        let body = self.refund_call(json, stamp);
        if self.refunds.len() == before || mode == NotifyMode::Held {
            return Outcome::body(body);
        }
        let effect = str_field(json, "refundRequestId")
            .and_then(|id| self.refunds.get(id))
            .map(|r| {
                let payment_request_id = self
                    .payment_ids
                    .get(&r.payment_id)
                    .cloned()
                    .unwrap_or_default();
                let notification = obj(&[
                    ("notifyType", js("REFUND_RESULT")),
                    ("result", success()),
                    ("refundStatus", js("SUCCESS")),
                    ("refundRequestId", js(&r.request_id)),
                    ("refundId", js(&r.refund_id)),
                    ("paymentId", js(&r.payment_id)),
                    ("paymentRequestId", js(&payment_request_id)),
                    ("refundAmount", r.amount.json()),
                    ("refundTime", js(&r.time)),
                ]);
                Effect::Refunded(Box::new(NotifyJob {
                    url_from_request: str_field(json, "refundNotifyUrl").map(str::to_string),
                    payment_request_id,
                    body: notification.into_bytes(),
                    client_id: ctx.client_id.to_string(),
                    tampered: ctx.tampered,
                    refund: true,
                    dropped: mode == NotifyMode::Drop,
                }))
            });
        Outcome {
            body: body.into_bytes(),
            effect,
        }
    }

    fn refund_call(&mut self, json: &Value, stamp: &Stamp) -> String {
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
        match payment.status() {
            PaymentStatus::Cancelled => {
                return envelope(
                    "ORDER_IS_CANCELED",
                    Status::F,
                    "The payment was cancelled and cannot be refunded.",
                )
            }
            PaymentStatus::Processing | PaymentStatus::Fail => {
                return envelope(
                    "PROCESS_FAIL",
                    Status::F,
                    "Only a successful payment can be refunded.",
                )
            }
            PaymentStatus::Success => {}
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
