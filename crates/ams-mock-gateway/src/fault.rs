//! [`Fault`]: the misbehaviours the gateway can inject (`--fault`, `"mockFault"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A misbehaviour to inject, so clients can test their handling of each failure mode; see
/// the table in docs/mock-gateway.md. Parsed from the same strings as `--fault` and
/// `"mockFault"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `delay:<ms>`: answer late.
    Delay(Duration),
    /// `slow_sign:<ms>`: sign the answer, then keep the signing thread <ms> longer, as a slow
    /// CPU signing with a large key would (the answer is otherwise normal).
    SlowSign(Duration),
    /// `drop`: close the connection without answering.
    Drop,
    /// `reset_mid_body`: headers and half the body, then close.
    ResetMidBody,
    /// `http_status:<code>`: a non-200 status (400–599) with an HTML body.
    HttpStatus(u16),
    /// `unsigned`: no signature headers on a valid response.
    Unsigned,
    /// `tampered`: a signature over other bytes than the body.
    Tampered,
    /// `invalid_signature`: Alipay's unsigned INVALID_SIGNATURE rejection.
    InvalidSignature,
    /// `unknown_exception`: signed `UNKNOWN_EXCEPTION`/`U`.
    UnknownException,
    /// `signed_failure`: signed `PROCESS_FAIL`/`F`.
    SignedFailure,
    /// `no_notify`: no notification after the pay.
    NoNotify,
    /// `notify_tampered`: the notification's signature is over other bytes.
    NotifyTampered,
    /// `stale_response_time`: the normal answer, signed over [`crate::STALE_RESPONSE_TIME`] (a
    /// genuine answer from long ago, replayed).
    StaleResponseTime,
    /// `gzip`: the signed answer, gzip-compressed with `Content-Encoding: gzip` (signature over
    /// the uncompressed body), as a front end that compresses whatever the client asked for.
    Gzip,
    /// `status:<code>` / `unsigned_status:<code>`: the normal answer (signed, or without
    /// signature headers) with another HTTP status (200-599), e.g. a 201 or a 302 carrying
    /// `resultStatus: "S"`, for the sidecar's response policy.
    Status {
        /// The HTTP status.
        code: u16,
        /// Whether the answer keeps its signature headers.
        signed: bool,
    },
}

/// The accepted spellings, for error messages and `--help`.
const FAULT_KINDS: &str = "delay:<ms>, slow_sign:<ms>, drop, reset_mid_body, http_status:<400-599>, \
     status:<200-599>, unsigned_status:<200-599>, gzip, unsigned, tampered, invalid_signature, unknown_exception, signed_failure, no_notify, notify_tampered, stale_response_time";

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(ms) = s.strip_prefix("delay:") {
            let ms = ms.trim();
            let d = match ms.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => humantime::parse_duration(ms).map_err(|_| {
                    format!("`{s}`: the delay must be milliseconds (delay:500) or a duration (delay:2s)")
                })?,
            };
            return Ok(Fault::Delay(d));
        }
        if let Some(ms) = s.strip_prefix("slow_sign:") {
            return ms
                .trim()
                .parse::<u64>()
                .map(|ms| Fault::SlowSign(Duration::from_millis(ms)))
                .map_err(|_| format!("`{s}`: the hold must be milliseconds (slow_sign:500)"));
        }
        if let Some(code) = s.strip_prefix("http_status:") {
            return match code.trim().parse::<u16>() {
                Ok(c) if (400..=599).contains(&c) => Ok(Fault::HttpStatus(c)),
                _ => Err(format!(
                    "`{s}`: the status must be a number from 400 to 599"
                )),
            };
        }
        for (prefix, signed) in [("status:", true), ("unsigned_status:", false)] {
            if let Some(code) = s.strip_prefix(prefix) {
                return match code.trim().parse::<u16>() {
                    Ok(c) if (200..=599).contains(&c) && c != 204 && c != 304 => {
                        Ok(Fault::Status { code: c, signed })
                    }
                    _ => Err(format!(
                        "`{s}`: the status must be a number from 200 to 599 that carries a body"
                    )),
                };
            }
        }
        Ok(match s {
            "drop" => Fault::Drop,
            "gzip" => Fault::Gzip,
            "reset_mid_body" => Fault::ResetMidBody,
            "unsigned" => Fault::Unsigned,
            "tampered" => Fault::Tampered,
            "invalid_signature" => Fault::InvalidSignature,
            "unknown_exception" => Fault::UnknownException,
            "signed_failure" => Fault::SignedFailure,
            "no_notify" => Fault::NoNotify,
            "notify_tampered" => Fault::NotifyTampered,
            "stale_response_time" => Fault::StaleResponseTime,
            _ => return Err(format!("unknown fault `{s}`; known: {FAULT_KINDS}")),
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Delay(d) => write!(f, "delay:{}", d.as_millis()),
            Fault::SlowSign(d) => write!(f, "slow_sign:{}", d.as_millis()),
            Fault::Drop => f.write_str("drop"),
            Fault::Gzip => f.write_str("gzip"),
            Fault::ResetMidBody => f.write_str("reset_mid_body"),
            Fault::HttpStatus(c) => write!(f, "http_status:{c}"),
            Fault::Unsigned => f.write_str("unsigned"),
            Fault::Tampered => f.write_str("tampered"),
            Fault::InvalidSignature => f.write_str("invalid_signature"),
            Fault::UnknownException => f.write_str("unknown_exception"),
            Fault::SignedFailure => f.write_str("signed_failure"),
            Fault::NoNotify => f.write_str("no_notify"),
            Fault::NotifyTampered => f.write_str("notify_tampered"),
            Fault::StaleResponseTime => f.write_str("stale_response_time"),
            Fault::Status { code, signed: true } => write!(f, "status:{code}"),
            Fault::Status {
                code,
                signed: false,
            } => write!(f, "unsigned_status:{code}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip() {
        for s in [
            "delay:250",
            "slow_sign:250",
            "drop",
            "reset_mid_body",
            "http_status:503",
            "unsigned",
            "tampered",
            "invalid_signature",
            "unknown_exception",
            "signed_failure",
            "no_notify",
            "notify_tampered",
            "stale_response_time",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert_eq!(
            "delay:2s".parse::<Fault>().unwrap(),
            Fault::Delay(Duration::from_secs(2))
        );
        assert!("http_status:200".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
    }
}
