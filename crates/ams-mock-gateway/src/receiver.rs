//! A stand-in for the merchant app: receives the notifications a sidecar verified and
//! forwarded, hands each to a callback and acknowledges it as an app would. The demo shows
//! them as `[app]` lines; `mock-gateway --out-dir` starts one where its `sidecar.toml`
//! forwards to, so a notification of the walkthrough arrives somewhere visible instead of
//! getting a 503 from the sidecar for want of an app.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// One notification the receiver got.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The request path.
    pub path: String,
    /// The sidecar's `X-Alipay-Sidecar-Verified` (`(absent)` when missing). Spelled out here:
    /// this crate does not depend on the sidecar.
    pub verified: String,
    /// `X-Alipay-Sidecar-Source` (`inquiryPayment` for a reconciled result).
    pub source: Option<String>,
    /// The body, lossily as UTF-8.
    pub body: String,
}

/// The app's acknowledgement, as Alipay expects it.
const ACK: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

/// Listens on `addr` (port 0: a free port), passes every request to `on_delivery` and answers
/// it 200 with the acknowledgement; returns the accept task and the address it is bound to.
pub async fn start_receiver(
    addr: SocketAddr,
    on_delivery: impl Fn(Delivered) + Send + Sync + 'static,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("notification receiver on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("notification receiver on {addr}: {e}"))?;
    let on_delivery = Arc::new(on_delivery);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let on_delivery = on_delivery.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let on_delivery = on_delivery.clone();
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let path = req.uri().path().to_string();
                        let verified = header("x-alipay-sidecar-verified")
                            .unwrap_or_else(|| "(absent)".into());
                        let source = header("x-alipay-sidecar-source");
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        on_delivery(Delivered {
                            path,
                            verified,
                            source,
                            body: String::from_utf8_lossy(&body).to_string(),
                        });
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("Content-Type", "application/json")
                                .body(Full::new(Bytes::from(ACK)))
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
