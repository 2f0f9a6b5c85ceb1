//! Per-payment switches: when the PAYMENT_RESULT notification goes out ([`NotifyMode`]) and
//! how a pay ends ([`PaymentOutcome`]), plus the payment states `inquiryPayment` reports
//! ([`PaymentStatus`]) and the errors of the on-demand controls ([`ControlError`]).
//!
//! They exist so the sidecar's reconciler (and any app) can be tested against the failure
//! Alipay's own guide describes: the customer paid, but the notification never came or came
//! late, and only `inquiryPayment` tells the truth.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Longest delay a switch accepts (`late:`, `success_after:`, `fail_after:`): long enough for
/// any test or demo, short enough that a typo cannot park a task for years.
pub const MAX_SWITCH_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `paymentResultCode` of a failed payment when none is given: one of the payment result
/// codes Alipay lists for inquiryPayment and notifyPayment.
pub const DEFAULT_FAIL_CODE: &str = "USER_BALANCE_NOT_ENOUGH";

/// When a payment's PAYMENT_RESULT notification is sent once the payment is final. Set for
/// every payment with `MockGatewayConfig::notify` / `--notify`, or for one pay with the body
/// field `"mockNotify"` (the per-request value wins). Parsed from `immediate`, `none`,
/// `late:<duration>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyMode {
    /// `immediate`: as soon as the payment is final (today's behaviour, the default).
    #[default]
    Immediate,
    /// `none`: never on its own: "Alipay failed to send it". `MockGateway::notify_now` or
    /// `POST /mock/notify/<paymentRequestId>` sends it when the test chooses.
    Held,
    /// `late:<duration>`: that long after the payment became final, then re-sent with the
    /// usual back-off.
    Late(Duration),
    /// `drop`: "Alipay's delivery failed for good": the notification is logged in the
    /// event log as FAILED (so `inquireNotificationList` has it) and never sent on its own.
    Drop,
}

impl FromStr for NotifyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(d) = s.strip_prefix("late:") {
            return Ok(NotifyMode::Late(parse_delay(s, d)?));
        }
        match s {
            "immediate" => Ok(NotifyMode::Immediate),
            "none" => Ok(NotifyMode::Held),
            "drop" => Ok(NotifyMode::Drop),
            _ => Err(format!(
                "unknown notify mode `{s}`; known: immediate, none, drop, late:<duration> (e.g. late:30s)"
            )),
        }
    }
}

impl fmt::Display for NotifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyMode::Immediate => f.write_str("immediate"),
            NotifyMode::Held => f.write_str("none"),
            NotifyMode::Drop => f.write_str("drop"),
            NotifyMode::Late(d) => write!(f, "late:{}", humantime::format_duration(*d)),
        }
    }
}

/// How a pay ends. Set for every pay with `MockGatewayConfig::outcome` / `--outcome`, or for
/// one pay with the body field `"mockOutcome"` (the per-request value wins). Parsed from
/// `success`, `success_after:<duration>`, `fail_after:<duration>[:<CODE>]`, `never`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PaymentOutcome {
    /// `success`: the pay answers `SUCCESS`/`S` and the payment is final at once (the default).
    #[default]
    Success,
    /// `success_after:<duration>`: the pay answers `PAYMENT_IN_PROCESS`/`U` (as for Entry
    /// Code and other user-presented flows); the payment succeeds that much later.
    SuccessAfter(Duration),
    /// `fail_after:<duration>[:<CODE>]`: as above, but the payment fails with `paymentResultCode`
    /// `CODE` ([`DEFAULT_FAIL_CODE`] when omitted).
    FailAfter {
        /// Time from the pay to the failure.
        after: Duration,
        /// The `paymentResultCode` / notification `resultCode`.
        code: String,
    },
    /// `never`: `PAYMENT_IN_PROCESS`/`U`, and the payment stays `PROCESSING` until it is
    /// cancelled or completed on demand (`MockGateway::complete_payment`).
    Never,
}

impl FromStr for PaymentOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(d) = s.strip_prefix("success_after:") {
            return Ok(PaymentOutcome::SuccessAfter(parse_delay(s, d)?));
        }
        if let Some(rest) = s.strip_prefix("fail_after:") {
            // humantime durations contain no ':', so a second ':' starts the code.
            let (d, code) = match rest.split_once(':') {
                Some((d, code)) => (d, check_fail_code(code.trim())?),
                None => (rest, DEFAULT_FAIL_CODE.to_string()),
            };
            return Ok(PaymentOutcome::FailAfter {
                after: parse_delay(s, d)?,
                code,
            });
        }
        match s {
            "success" => Ok(PaymentOutcome::Success),
            "never" => Ok(PaymentOutcome::Never),
            _ => Err(format!(
                "unknown payment outcome `{s}`; known: success, success_after:<duration>, \
                 fail_after:<duration>[:<CODE>], never"
            )),
        }
    }
}

impl fmt::Display for PaymentOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PaymentOutcome::Success => f.write_str("success"),
            PaymentOutcome::SuccessAfter(d) => {
                write!(f, "success_after:{}", humantime::format_duration(*d))
            }
            PaymentOutcome::FailAfter { after, code } => {
                write!(f, "fail_after:{}", humantime::format_duration(*after))?;
                if code != DEFAULT_FAIL_CODE {
                    write!(f, ":{code}")?;
                }
                Ok(())
            }
            PaymentOutcome::Never => f.write_str("never"),
        }
    }
}

/// The final result given to a payment on demand ([`crate::MockGateway::complete_payment`],
/// `POST /mock/succeed/<id>`, `POST /mock/fail/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentResult {
    /// The payment succeeds.
    Success,
    /// The payment fails with this `paymentResultCode`.
    Fail {
        /// E.g. [`DEFAULT_FAIL_CODE`].
        code: String,
    },
}

/// A lying `inquiryPayment` ([`crate::MockGateway::set_inquiry_answer`]): the first two are
/// still genuinely signed by the gateway's key, so only a client that checks *what* the answer
/// is about (not only that it verifies) notices. For the reconciler's tests (issue 18, M1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InquiryAnswer {
    /// Every inquiry gets the answer about this other payment (by `paymentRequestId`): a
    /// replayed, genuinely signed answer about a payment nobody asked about.
    AboutPayment(String),
    /// Every inquiry gets `result` SUCCESS/S and `paymentStatus` SUCCESS without
    /// `paymentRequestId` or `paymentId`.
    SuccessWithoutIds,
    /// Every inquiry gets the true answer without `client-id`/`response-time`/`signature`
    /// headers (as fault `unsigned`, for inquiries only).
    Unsigned,
}

/// A payment's state as `inquiryPayment` reports it in `paymentStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Not final yet (`PAYMENT_IN_PROCESS`).
    Processing,
    /// Paid.
    Success,
    /// Failed.
    Fail,
    /// Cancelled with `payments/cancel` (before or after it was paid).
    Cancelled,
}

impl PaymentStatus {
    /// The `paymentStatus` value.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Processing => "PROCESSING",
            PaymentStatus::Success => "SUCCESS",
            PaymentStatus::Fail => "FAIL",
            PaymentStatus::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an on-demand control (`notify_now`, `complete_payment`, `/mock/…`) did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No pay with this `paymentRequestId` reached the gateway.
    #[error("mock-gateway: no payment with paymentRequestId `{0}`; send the pay first")]
    UnknownPayment(String),
    /// The payment is still processing, so there is no result to notify.
    #[error("mock-gateway: payment `{0}` is still PROCESSING, there is no result to notify yet; complete it first (complete_payment or POST /mock/succeed/<id>)")]
    NotFinal(String),
    /// The payment was cancelled before it had a result: Alipay sends no PAYMENT_RESULT.
    #[error("mock-gateway: payment `{0}` was cancelled while processing; it has no payment result to notify")]
    Cancelled(String),
    /// The payment already has a final state, which does not change.
    #[error("mock-gateway: payment `{id}` is already {status}; only a PROCESSING payment can be completed")]
    AlreadyFinal {
        /// The paymentRequestId.
        id: String,
        /// Its state.
        status: PaymentStatus,
    },
    /// Neither the pay request nor the gateway configuration gave a notify URL.
    #[error("mock-gateway: payment `{0}` has no notify URL (no paymentNotifyUrl in the pay and no notify URL override)")]
    NoNotifyUrl(String),
    /// The gateway was started with an empty notification back-off.
    #[error("mock-gateway: notifications are disabled (empty notify back-off)")]
    NotificationsDisabled,
    /// The gateway is shutting down or its state is unusable.
    #[error("mock-gateway: the gateway is stopped")]
    Stopped,
}

fn parse_delay(whole: &str, d: &str) -> Result<Duration, String> {
    let d = d.trim();
    let delay = match d.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(d).map_err(|_| {
            format!("`{whole}`: the delay must be milliseconds (500) or a duration (30s, 2m)")
        })?,
    };
    if delay > MAX_SWITCH_DELAY {
        return Err(format!(
            "`{whole}`: the delay may be at most {}",
            humantime::format_duration(MAX_SWITCH_DELAY)
        ));
    }
    Ok(delay)
}

pub(crate) fn check_fail_code(code: &str) -> Result<String, String> {
    if code.is_empty()
        || code.len() > 64
        || !code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "`{code}`: a result code is 1 to 64 characters A-Z, 0-9 and _ (e.g. ORDER_IS_CLOSED)"
        ));
    }
    Ok(code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_modes_round_trip() {
        for s in ["immediate", "none", "drop", "late:30s", "late:1m 30s"] {
            let m: NotifyMode = s.parse().unwrap();
            assert_eq!(m.to_string(), s);
        }
        assert_eq!(
            "late:250".parse::<NotifyMode>().unwrap(),
            NotifyMode::Late(Duration::from_millis(250))
        );
        assert!("late:".parse::<NotifyMode>().is_err());
        assert!("late:8d".parse::<NotifyMode>().is_err(), "bounded");
        assert!("never".parse::<NotifyMode>().is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        for s in [
            "success",
            "never",
            "success_after:2s",
            "fail_after:1s",
            "fail_after:1s:ORDER_IS_CLOSED",
        ] {
            let o: PaymentOutcome = s.parse().unwrap();
            assert_eq!(o.to_string(), s);
        }
        assert_eq!(
            "fail_after:500".parse::<PaymentOutcome>().unwrap(),
            PaymentOutcome::FailAfter {
                after: Duration::from_millis(500),
                code: DEFAULT_FAIL_CODE.into()
            }
        );
        for bad in [
            "fail_after:1s:bad code",
            "fail_after:1s:",
            "success_after:soon",
            "success_after:30d",
            "fail",
        ] {
            assert!(bad.parse::<PaymentOutcome>().is_err(), "{bad}");
        }
    }
}

/// The cancel hold ([`crate::MockGateway::hold_cancels`]): while on, every `payments/cancel`
/// that arrives waits, before the gateway reads it, until the hold is turned off: a cancel
/// "in flight" for as long as a test needs, so it can send the payment's SUCCESS notification
/// meanwhile (issue 22: the cancel/SUCCESS race, tested deterministically).
#[derive(Debug)]
pub(crate) struct CancelHold {
    on: tokio::sync::watch::Sender<bool>,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Default for CancelHold {
    fn default() -> Self {
        Self {
            on: tokio::sync::watch::Sender::new(false),
            waiting: Default::default(),
        }
    }
}

impl CancelHold {
    /// Turns the hold on or off (off lets every held cancel through).
    pub(crate) fn set(&self, on: bool) {
        self.on.send_replace(on);
    }

    /// Cancels waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns at once when the hold is off, else when it is turned off or `stopped` resolves.
    pub(crate) async fn pass(&self, stopped: impl std::future::Future<Output = ()>) {
        use std::sync::atomic::Ordering;
        let mut rx = self.on.subscribe();
        if !*rx.borrow_and_update() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = rx.wait_for(|on| !*on) => {}
            _ = stopped => {}
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}
