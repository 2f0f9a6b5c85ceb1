//! A payment and a refund as the gateway keeps them.

use super::json::{js, Amount};
use crate::switches::{NotifyMode, PaymentStatus};

/// Where a payment stands on the gateway's side, apart from cancellation (which is recorded
/// separately: a paid payment that is cancelled keeps its result, as at Alipay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    Processing,
    Success,
    Fail { code: String },
}

/// Where and when the payment's notification goes, fixed at the pay.
#[derive(Debug, Clone)]
pub(super) struct NotifyPlan {
    pub(super) mode: NotifyMode,
    /// `paymentNotifyUrl` of the pay request, when it had one.
    pub(super) url: Option<String>,
    /// The pay's `Client-Id`, which the notification carries.
    pub(super) client_id: String,
    /// Fault `notify_tampered` applied to the pay.
    pub(super) tampered: bool,
}

#[derive(Debug)]
pub(super) struct Payment {
    pub(super) request_id: String,
    pub(super) payment_id: String,
    pub(super) amount: Amount,
    pub(super) create_time: String,
    /// When the payment became final (success or failure).
    pub(super) payment_time: Option<String>,
    pub(super) state: State,
    pub(super) cancel_time: Option<String>,
    pub(super) refunded: u64,
    pub(super) notify: NotifyPlan,
}

impl Payment {
    /// The payment's own fields of a pay or inquiry answer: ids, amount, create time, and
    /// `paymentTime` once paid.
    pub(super) fn push_fields(&self, fields: &mut Vec<(&'static str, String)>) {
        fields.extend([
            ("paymentRequestId", js(&self.request_id)),
            ("paymentId", js(&self.payment_id)),
            ("paymentAmount", self.amount.json()),
            ("paymentCreateTime", js(&self.create_time)),
        ]);
        if self.state == State::Success {
            if let Some(t) = &self.payment_time {
                fields.push(("paymentTime", js(t)));
            }
        }
    }

    pub(super) fn status(&self) -> PaymentStatus {
        if self.cancel_time.is_some() {
            return PaymentStatus::Cancelled;
        }
        match self.state {
            State::Processing => PaymentStatus::Processing,
            State::Success => PaymentStatus::Success,
            State::Fail { .. } => PaymentStatus::Fail,
        }
    }
}

/// `paymentResultMessage` for a failure code.
pub(super) fn fail_message(code: &str) -> &'static str {
    match code {
        "USER_BALANCE_NOT_ENOUGH" => "The user balance is not enough for this payment.",
        "ORDER_IS_CLOSED" => "The order is closed.",
        _ => "The payment failed. (mock-gateway)",
    }
}

pub(super) const IN_PROCESS_MESSAGE: &str = "payment in process";

#[derive(Debug)]
pub(super) struct Refund {
    pub(super) request_id: String,
    pub(super) refund_id: String,
    pub(super) payment_id: String,
    pub(super) amount: Amount,
    pub(super) time: String,
}
