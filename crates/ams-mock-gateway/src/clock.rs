//! Alipay's clock and its timestamp formats.

use chrono::{FixedOffset, Utc};

use crate::api;

/// Alipay's clock: China Standard Time, as its timestamps show.
fn alipay_now() -> chrono::DateTime<FixedOffset> {
    let now = Utc::now();
    match FixedOffset::east_opt(8 * 3600) {
        Some(offset) => now.with_timezone(&offset),
        None => now.fixed_offset(),
    }
}

/// `response-time` header value, e.g. `2024-05-01T12:34:57+08:00`.
/// The `response-time` of fault `stale_response_time`: a moment in 2001.
pub const STALE_RESPONSE_TIME: &str = "2001-09-09T09:46:40+08:00";

pub(crate) fn response_time() -> String {
    alipay_now().format("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Notification `Request-Time`, e.g. `2024-05-01T12:35:10.253+08:00`.
pub(crate) fn notification_time() -> String {
    alipay_now().format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

pub(crate) fn stamp() -> api::Stamp {
    let now = alipay_now();
    api::Stamp {
        now: now.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        date: now.format("%Y%m%d").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_look_like_alipay() {
        let t = response_time();
        assert!(t.ends_with("+08:00") && t.len() == 25, "{t}");
        let n = notification_time();
        assert!(n.ends_with("+08:00") && n.len() == 29, "{n}");
    }
}
