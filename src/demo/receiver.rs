//! The demo's stand-in for the merchant app: receives the notifications the sidecar verified
//! and forwards, prints an `[app]` line for each and acknowledges it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::report::shorten;

/// One notification the demo's app received.
#[derive(Debug, Clone)]
pub(super) struct Delivered {
    /// `X-Alipay-Sidecar-Verified`.
    pub(super) verified: String,
    /// `X-Alipay-Sidecar-Source` (`inquiryPayment` for a reconciled result).
    pub(super) source: Option<String>,
    pub(super) body: String,
}

/// Listens on `addr` (port 0: a free port) and serves each connection on its own task;
/// returns the task and the address it is bound to.
pub(super) async fn start_receiver(
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Delivered>>>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("demo receiver on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("demo receiver on {addr}: {e}"))?;
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let received = received.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let verified = req
                            .headers()
                            .get("x-alipay-sidecar-verified")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(absent)")
                            .to_string();
                        let source = req
                            .headers()
                            .get(crate::headers::SOURCE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = String::from_utf8_lossy(&body).to_string();
                        let from = match &source {
                            Some(s) => format!(", X-Alipay-Sidecar-Source: {s}"),
                            None => String::new(),
                        };
                        println!(
                            "   [app] notification delivered to POST {path}, X-Alipay-Sidecar-Verified: {verified}{from}\n         {}",
                            shorten(&body)
                        );
                        if let Ok(mut r) = received.lock() {
                            r.push(Delivered {
                                verified,
                                source,
                                body,
                            });
                        }
                        let ack = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("Content-Type", "application/json")
                                .body(Full::new(Bytes::from(ack)))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok((task, bound))
}
