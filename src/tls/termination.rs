//! TLS termination for the HTTPS outbound listener: the handshake of an accepted connection,
//! and the decrypted stream handed to pingora as its own stream type.
//!
//! Why here and not in pingora's listener: the handshake runs inside
//! [`crate::limits::Limited`], so it holds a connection slot and is bounded by
//! `header_read_timeout` like a request head, and the request-head limits then apply to the
//! plaintext.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ListenerTls;

impl ListenerTls {
    /// Terminates TLS on an accepted connection: the handshake with the certificate live
    /// now, within `deadline` (the listener's `header_read_timeout`, so a peer that never
    /// completes it cannot hold the slot).
    pub async fn accept(&self, stream: Stream, deadline: Duration) -> Result<Stream, Handshake> {
        let handshake = self.acceptor().accept(stream);
        match tokio::time::timeout(deadline, handshake).await {
            Ok(Ok(tls_stream)) => Ok(Box::new(TlsConn(tls_stream))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Handshake::Closed),
            Ok(Err(e)) => Err(Handshake::Failed(e)),
            Err(_) => Err(Handshake::TimedOut),
        }
    }
}

/// Why a connection's TLS handshake did not complete.
#[derive(Debug)]
pub enum Handshake {
    /// Closed before it spoke TLS: a TCP probe (readiness, a load balancer).
    Closed,
    /// The handshake failed (not TLS, no common version or cipher, a client that does not
    /// trust the certificate).
    Failed(std::io::Error),
    /// Not complete within the deadline.
    TimedOut,
}

/// A TLS-terminated connection as pingora's stream type; reports the ALPN protocol the
/// client chose, so pingora serves `h2` connections with its HTTP/2 server.
struct TlsConn(tokio_rustls::server::TlsStream<Stream>);

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConn")
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.0.get_ref().0.id()
    }
}

impl Ssl for TlsConn {
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        match self.0.get_ref().1.alpn_protocol() {
            Some(b"h2") => Some(pingora::protocols::ALPN::H2),
            Some(_) => Some(pingora::protocols::ALPN::H1),
            None => None,
        }
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.0.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.0.get_ref().0.get_socket_digest()
    }
}

#[async_trait]
impl Peek for TlsConn {}
