//! The outbound handler's side of `product/uploadImage` ([`crate::upload`]): the bytes the
//! signature covers, and the upload gateway each merchant sends it to.

use std::sync::Arc;

use bytes::Bytes;

use super::OutboundMerchant;
use crate::config::{Gateway, OutboundConfig};
use crate::envelope::SidecarError;
use crate::exchange;
use crate::handler::{Refusal, Request};
use crate::upload::{derive_upload_gateway, signed_part, UploadError};
use crate::upstream::{Upstream, UpstreamClient};

/// The bytes the request signature covers: the body, or on an upload route the multipart
/// `body` part once the file parts match its `fileSha256` (a refusal otherwise: nothing is
/// signed or sent).
pub(super) async fn signed_body(req: &Request, upload: bool) -> Result<Bytes, Refusal> {
    if !upload {
        return Ok(req.body.clone());
    }
    let ct = exchange::header_text(&req.head.headers, "content-type");
    signed_part(ct, req.body.clone()).await.map_err(|e| {
        let code = match e {
            UploadError::Malformed(_) => SidecarError::UploadMalformed,
            UploadError::DigestMismatch(_) => SidecarError::UploadDigestMismatch,
        };
        Refusal::new(code, e.to_string())
    })
}

impl<G: UpstreamClient> OutboundMerchant<G> {
    /// The same merchant, sending `product/uploadImage` to `gateway` at `host:port`.
    pub fn with_upload_gateway(mut self, gateway: G, (host, port): (&str, u16)) -> Self {
        self.upload = Some((gateway, exchange::authority(host, port, 443)));
        self
    }

    /// The client and `Host` of a call: the upload gateway for an upload (the API gateway
    /// when none is set), else the API gateway.
    pub(super) fn gateway_for(&self, upload: bool) -> (&G, &str) {
        match (&self.upload, upload) {
            (Some((g, authority)), true) => (g, authority),
            _ => (&self.gateway, &self.gateway_authority),
        }
    }
}

impl OutboundMerchant<Arc<Upstream>> {
    /// The same merchant with its upload gateway from the config: `[outbound] upload_gateway`,
    /// else derived from `gateway` ([`derive_upload_gateway`]); on the same host and port as
    /// `gateway`, the API gateway's client is reused. check-config refuses a config whose
    /// gateway has no upload gateway; should one get here, uploads stay on the API gateway
    /// (logged), which refuses an unknown route itself.
    /// Also gives it the HTTP/2 client of the session routes (`meter/uploadEvent`).
    pub fn with_upload_from(self, cfg: &OutboundConfig, gateway: &Gateway) -> Self {
        let upload = match (
            &cfg.upload_gateway,
            derive_upload_gateway((&gateway.host, gateway.port)),
        ) {
            (Some(explicit), _) => explicit.clone(),
            (None, Ok((host, port))) => Gateway { host, port },
            (None, Err(msg)) => {
                tracing::warn!("{msg}");
                return self;
            }
        };
        let session = Arc::new(self.gateway.sibling(&gateway.host, gateway.port).http2());
        let this = self.with_session_gateway(session);
        if upload == *gateway {
            return this;
        }
        let client = Arc::new(this.gateway.sibling(&upload.host, upload.port));
        this.with_upload_gateway(client, (&upload.host, upload.port))
    }
}
