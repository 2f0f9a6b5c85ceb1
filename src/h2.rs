//! HTTP/2 on the HTTPS outbound listener (ALPN `h2`, issue 24): the limits an h2 connection
//! runs under, and the deadline for its connection preface.
//!
//! Why the listener speaks h2 at all: the SDKs send `meter/uploadEvent` over HTTP/2 only
//! (httpx with `http1=False`), so a TLS listener that offers only `http/1.1` cuts them off.
//! Every other route is handled exactly as over HTTP/1.1 (pingora hands the handler the
//! same request whatever the protocol).
//!
//! The HTTP/1.1 head limits (`crate::limits::HeadLimited`) read text heads and cannot
//! apply to frames, so an h2 connection is bounded by these instead:
//! - **connections**: the listener's `max_connections` slot, taken before the TLS handshake
//!   (`crate::limits::Limited`, which wraps the stream in [`Preface`]), as for HTTP/1.1;
//! - **the preface**: [`Preface`] closes a connection whose client preface and first frame
//!   header (24 + 9 bytes) do not arrive within `header_read_timeout`;
//! - **streams per connection**: `SETTINGS_MAX_CONCURRENT_STREAMS` = [`MAX_STREAMS`]; the h2
//!   crate refuses streams beyond it (`REFUSED_STREAM`), and resets of streams not yet
//!   accepted are capped (`max_pending_accept_reset_streams`, the "rapid reset" bound);
//! - **head size**: `SETTINGS_MAX_HEADER_LIST_SIZE` = `[server] max_header_bytes` (the h2
//!   crate stops decoding a header block past it, CONTINUATION frames included);
//! - **a slow HEADERS frame / idle connections**: pingora's `h2_idle_timeout` =
//!   `[server] idle_timeout` closes a connection that has no open stream for that long; a
//!   header block that never ends opens no stream;
//! - **a SETTINGS flood**: the h2 crate acknowledges each SETTINGS frame before it reads
//!   the next one, so a peer that floods without reading stalls itself (nothing queues);
//! - **body size and time**: the handler's body policy (`max_body_bytes`,
//!   `body_read_timeout`) applies to an h2 request body as to any other.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Streams open at once on one h2 connection.
pub const MAX_STREAMS: u32 = 100;

/// Resets of streams the server has not accepted yet, per connection (h2's default is 20).
pub const MAX_PENDING_RESETS: usize = 20;

/// The h2 settings of a listener whose heads may hold `max_header_bytes`.
pub fn options(max_header_bytes: usize) -> H2Options {
    let mut o = H2Options::default();
    o.max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS);
    o
}

/// pingora's server options of a listener: h2 connections without an open stream close
/// after `idle_timeout`.
pub fn server_options(idle_timeout: Duration) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    o.h2_idle_timeout = Some(idle_timeout);
    o
}

/// Bytes of the client preface (`PRI * HTTP/2.0…`) and the first frame header (SETTINGS).
const PREFACE_BYTES: usize = 24 + 9;

/// An h2 connection's stream until its preface has arrived: reading fails with `TimedOut`
/// when [`PREFACE_BYTES`] have not come within the deadline (pingora's h2 handshake itself
/// has none), then a plain pass-through.
pub struct Preface {
    inner: Stream,
    listener: &'static str,
    read: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Preface {
    /// Wraps `inner`, a connection of `listener` (metric label); the preface must arrive
    /// within `within`.
    pub fn new(inner: Stream, listener: &'static str, within: Duration) -> Self {
        Self {
            inner,
            listener,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl fmt::Debug for Preface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Preface")
    }
}

impl AsyncRead for Preface {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    crate::metrics::metrics()
                        .record_connection_closed(this.listener, "header_timeout");
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the HTTP/2 preface did not arrive within header_read_timeout",
                    )))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Preface {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Preface {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for Preface {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Preface {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Preface {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Preface {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Preface {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Preface {}
