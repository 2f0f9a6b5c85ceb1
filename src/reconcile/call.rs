//! The reconciler's gateway calls (`inquiryPayment`, `payments/cancel`), as a trait: in
//! production they go through the outbound handler ([`OutboundApi`]: signed, answer verified,
//! the same metrics and log line as the app's calls); the reconciler's unit tests answer them
//! from a script (`reconcile::testing`).

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::handler::{Handler, Marker, Request};
use crate::headers::MERCHANT_HEADER;
use crate::headers::VERIFIED_HEADER;
use crate::metrics::Direction;
use crate::outbound::Outbound;
use crate::upstream::UpstreamClient;

/// The inquiry, after `/ams/api/` (or `/ams/sandbox/api/`).
pub const INQUIRY_TAIL: &str = "v1/payments/inquiryPayment";
/// The cancel at the close time, after `/ams/api/` (or `/ams/sandbox/api/`).
pub const CANCEL_TAIL: &str = "v1/payments/cancel";

/// What one gateway call gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Called {
    /// A 200 answer whose signature verified: its body.
    Verified(Bytes),
    /// Anything else, with what to log.
    Failed(String),
}

/// Calls the gateway for a merchant.
#[async_trait]
pub trait PayApi: Send + Sync + 'static {
    /// Calls `tail` ([`INQUIRY_TAIL`] or [`CANCEL_TAIL`]) with `body` for `merchant`, whose
    /// client id is `client_id` (a `SANDBOX_` one goes to the sandbox path).
    async fn call(&self, merchant: &str, client_id: &str, tail: &str, body: String) -> Called;
}

/// The production [`PayApi`]: an outbound handler serving every merchant (the call names its
/// merchant in [`MERCHANT_HEADER`]).
pub struct OutboundApi<G> {
    outbound: Outbound<G>,
}

impl<G> OutboundApi<G> {
    /// Calls through `outbound`.
    pub fn new(outbound: Outbound<G>) -> Self {
        Self { outbound }
    }
}

#[async_trait]
impl<G: UpstreamClient> PayApi for OutboundApi<G> {
    /// Calls `tail` (after `/ams/api/` or, for a `SANDBOX_` client id, `/ams/sandbox/api/`)
    /// for the merchant through the outbound handler, recording the request's metrics and log
    /// line as the listeners do. The handler's head checks are not run: they guard the
    /// listener against what an app (or a browser) sends (`Host`, browser headers,
    /// `allowed_path_prefixes`), while this request is built by the sidecar itself.
    async fn call(&self, merchant: &str, client_id: &str, tail: &str, body: String) -> Called {
        let base = if client_id.starts_with("SANDBOX_") {
            "/ams/sandbox/api/"
        } else {
            "/ams/api/"
        };
        let target = format!("{base}{tail}");
        let mut head = match RequestHeader::build("POST", target.as_bytes(), Some(3)) {
            Ok(h) => h,
            Err(e) => return Called::Failed(e.to_string()),
        };
        let headers = [
            ("Content-Type", "application/json; charset=UTF-8"),
            (MERCHANT_HEADER, merchant),
        ];
        for (name, value) in headers {
            if let Err(e) = head.insert_header(name, value) {
                return Called::Failed(format!("building the {tail} request: {e}"));
            }
        }
        let start = Instant::now();
        let reply = self
            .outbound
            .handle(Request {
                head,
                target,
                body: Bytes::from(body),
                local_addr: None,
            })
            .await;
        crate::adapter::record(Direction::Outbound, start, &reply.report);
        let verified = reply
            .head
            .headers
            .get(VERIFIED_HEADER)
            .is_some_and(|v| v.as_bytes() == Marker::Verified.as_str().as_bytes());
        if reply.head.status.as_u16() == 200 && verified {
            Called::Verified(reply.body)
        } else {
            Called::Failed(format!(
                "{tail}: HTTP {} {}",
                reply.head.status.as_u16(),
                reply
                    .report
                    .detail
                    .as_deref()
                    .or(reply.report.error.map(|e| e.code()))
                    .unwrap_or("(not verified)")
            ))
        }
    }
}
