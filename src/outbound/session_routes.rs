//! The unsigned session routes (spec §8, §11 item 8, E65): `meter/uploadEvent` carries no
//! request signature — only the `X-Session-Id` the app got from the signed
//! `meter/createSession` — travels over HTTP/2 only, has no sandbox rewrite, and its answer
//! is unsigned. The sidecar passes it through: no `Signature`, `Client-Id` or
//! `Request-Time` added, the body and `X-Session-Id` as received, over HTTP/2 to the API
//! gateway, the answer relayed unverified and marked `X-Alipay-Sidecar-Verified:
//! unsigned-session`. Only the routes in [`SESSION_ROUTES`] are treated so; every other
//! route is signed and verified whatever protocol the app spoke.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::merchant::REPLACED;
use super::{gateway_refusal, OutboundMerchant, MAX_RESPONSE_BYTES};
use crate::envelope::SidecarError;
use crate::exchange;
use crate::handler::{Marker, Refusal, Request, Stop};
use crate::headers::VERIFIED_HEADER;
use crate::metrics::Outcome;
use crate::report::{Report, UpstreamTiming};
use crate::upstream::{UpstreamClient, UpstreamRequest};

/// The routes that go unsigned over HTTP/2 (the SDKs' `_SESSION_HTTP2_ROUTES`; POST only,
/// like every route). The sandbox form is not listed: the SDKs never rewrite it.
pub const SESSION_ROUTES: &[&str] = &["/ams/api/v1/meter/uploadEvent"];

/// The header a session route is authenticated by.
pub const SESSION_HEADER: &str = "X-Session-Id";

/// Whether `target` (origin form) is a session route (the path before any query).
pub fn is_session_route(target: &str) -> bool {
    SESSION_ROUTES.contains(&target.split('?').next().unwrap_or(""))
}

impl<G: UpstreamClient> OutboundMerchant<G> {
    /// The same merchant, sending the session routes to `gateway` (an HTTP/2 client of the
    /// API gateway).
    pub fn with_session_gateway(mut self, gateway: G) -> Self {
        self.session = Some(gateway);
        self
    }

    /// Forwards a session-route request unsigned and relays the answer unverified.
    pub(super) async fn session_exchange(
        &self,
        req: Request,
        timeout: std::time::Duration,
        report: &mut Report,
    ) -> Result<(ResponseHeader, Bytes), Stop> {
        let ids = req.head.headers.get_all(SESSION_HEADER).iter().count();
        let valid = req
            .head
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty());
        if ids != 1 || !valid {
            let msg = format!(
                "{} is authenticated by one non-empty {SESSION_HEADER} header (from the signed \
                 meter/createSession); the request has {ids}",
                exchange::echo(&req.target)
            );
            return Err(Refusal::new(SidecarError::SessionIdMissing, msg).into());
        }
        let Some(gateway) = &self.session else {
            let msg = "this sidecar has no HTTP/2 client for the session routes".to_string();
            return Err(Refusal::new(SidecarError::GatewayProtocolError, msg).into());
        };
        let mut head = RequestHeader::build("POST", req.target.as_bytes(), None)?;
        // the app's own signature headers (none from the SDKs) never travel: the route is
        // unsigned; credentials and the sidecar's markers are dropped as everywhere
        let mut drop: Vec<&str> = REPLACED.to_vec();
        drop.extend_from_slice(&crate::credentials::APP_CREDENTIAL_HEADERS);
        drop.push("accept-encoding");
        exchange::forward_request_headers(&req.head, &mut head, &drop)?;
        head.insert_header("Host", self.gateway_authority.as_str())?;
        head.insert_header("Content-Length", req.body.len().to_string())?;
        head.insert_header("Accept-Encoding", "identity")?;
        let up = UpstreamRequest {
            head,
            body: req.body,
            max_response: MAX_RESPONSE_BYTES,
            timeout,
        };
        let response = gateway
            .send(&up)
            .await
            .map_err(|e| gateway_refusal(e, "gateway exchange (session route, HTTP/2) failed"))?;
        report.upstream = Some(UpstreamTiming {
            elapsed: response.elapsed,
            status: response.header.status.as_u16(),
            body_bytes: response.body.len(),
        });
        report.outcome = Outcome::Forwarded;
        let mut out = exchange::relayed_response_header(&response.header)?;
        out.insert_header(VERIFIED_HEADER, Marker::UnsignedSession.as_str())?;
        Ok((out, response.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_routes_are_session_routes() {
        assert!(is_session_route("/ams/api/v1/meter/uploadEvent"));
        assert!(is_session_route("/ams/api/v1/meter/uploadEvent?x=1"));
        assert!(!is_session_route("/ams/api/v1/meter/createSession"));
        assert!(!is_session_route("/ams/sandbox/api/v1/meter/uploadEvent"));
        assert!(!is_session_route("/ams/api/v1/meter/uploadEvent/x"));
    }
}
