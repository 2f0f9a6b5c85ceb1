//! One HTTP/1.1 exchange with an upstream (Alipay's gateway, or the app for notifications)
//! through pingora's own connector: same TLS stack (rustls, certificate and hostname
//! verification always on), keep-alive connection pool, and no body-size limit of the proxy
//! hook pipeline (the retry buffer is 64 KiB, too small for a 1 MiB signed body).
//!
//! The whole response is read (bounded) before anyone sees a byte of it, because the caller
//! must verify its signature first. DNS is resolved here (async, cached), because
//! `HttpPeer::new` resolves synchronously and panics when resolution fails.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::{v1::Connector as H1Connector, Connector};
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as H1Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::io::IoSlice;
use tokio::io::AsyncWriteExt;

/// How long a resolved gateway address is reused before DNS is asked again.
const DNS_TTL: Duration = Duration::from_secs(30);

/// How long an idle pooled connection is kept: well under the keep-alive of common front
/// ends (nginx 75 s, most load balancers 60 s), so the pool drops a connection before the
/// other side does and reuse seldom meets one that is being closed. pingora also watches
/// every idle pooled connection and evicts it as soon as the peer closes it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an exchange failed; each maps to one sidecar error code.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// DNS failed, or the TCP connection could not be made.
    #[error("cannot connect to {target}: {detail}")]
    Connect {
        /// host:port
        target: String,
        /// what failed
        detail: String,
    },
    /// TLS handshake or certificate verification failed.
    #[error("TLS with {target} failed: {detail} ({})", tls_hint(detail, *private_ca))]
    Tls {
        /// host:port
        target: String,
        /// what failed
        detail: String,
        /// whether `[outbound] ca_file` is set: then a certificate no trusted CA signed
        /// means that file holds the wrong CA (or the gateway's CA changed), not that one
        /// is missing
        private_ca: bool,
    },
    /// No connection (TCP connect and TLS handshake) within the connect timeout. Told apart
    /// from [`UpstreamError::Timeout`] because the remedy differs: a slow handshake points
    /// at the network or an overloaded peer, not at a slow answer.
    #[error("no connection to {target} within the connect timeout of {timeout:?} (TCP connect and TLS handshake)")]
    ConnectTimeout {
        /// host:port
        target: String,
        /// the connect timeout
        timeout: Duration,
    },
    /// No complete response within the deadline.
    #[error("no complete response from {target} within {timeout:?}")]
    Timeout {
        /// host:port
        target: String,
        /// the deadline
        timeout: Duration,
    },
    /// The response broke off or was not HTTP.
    #[error("the response from {target} broke off or was invalid: {detail}")]
    Protocol {
        /// host:port
        target: String,
        /// what failed
        detail: String,
        /// whether the request may have reached the upstream: false only when writing the
        /// request head failed on a reused connection, the one case retried (once, fresh)
        maybe_delivered: bool,
    },
    /// The response body exceeded the limit.
    #[error("the response from {target} exceeds {limit} bytes")]
    TooLarge {
        /// host:port
        target: String,
        /// the limit
        limit: usize,
    },
}

/// What to check after a failed handshake. A certificate that no trusted CA signed (rustls:
/// `UnknownIssuer`; `BadSignature` when a CA of the same name signed it, as a fake gateway
/// restarted with a new CA does) is told apart, because the generic advice, "set ca_file",
/// misleads someone who has set it.
fn tls_hint(detail: &str, private_ca: bool) -> &'static str {
    let not_signed = detail.contains("UnknownIssuer") || detail.contains("BadSignature");
    match (not_signed, private_ca) {
        (true, true) => {
            "the gateway's certificate is not signed by the CA in [outbound] ca_file: that file \
             holds another CA, or the gateway's CA changed (a `mock-gateway` restarted without \
             --out-dir makes a new one: point ca_file at its new ca.pem, or keep its CA with \
             --out-dir DIR)"
        }
        (true, false) => {
            "the gateway's certificate is not signed by a CA in the system roots: set [outbound] \
             ca_file to the CA that signed it"
        }
        (false, _) => {
            "is the gateway's certificate issued by a trusted CA? set [outbound] ca_file for a \
             private CA"
        }
    }
}

/// One request to an upstream: the head and exact body to send, and the bounds of the answer.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// Method, target and headers to send.
    pub head: RequestHeader,
    /// The exact body bytes (the ones that were signed or verified).
    pub body: Bytes,
    /// Largest answer body read; a larger one is [`UpstreamError::TooLarge`].
    pub max_response: usize,
    /// The whole exchange must finish within this.
    pub timeout: Duration,
}

/// A complete upstream response.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    /// Status and headers as received.
    pub header: ResponseHeader,
    /// The exact body bytes (de-chunked).
    pub body: Bytes,
    /// Time spent waiting for the upstream.
    pub elapsed: Duration,
}

/// A pooled client for one upstream host.
pub struct Upstream {
    /// The HTTP/1.1 pool (every signed call and every notification): a pooled connection is
    /// taken with a small future, and only a new connection's (≈ 9 KB, TLS handshake
    /// included) is boxed, so that every request's futures, which embed this one, stay small
    /// (issue 23: pingora's `get_http_session` future made each request's state ≈ 20 KB,
    /// copied several times per request).
    h1: H1Connector,
    /// The pool of [`Upstream::http2`] clients (HTTP/2 only).
    connector: Connector,
    host: String,
    port: u16,
    tls: bool,
    connect_timeout: Duration,
    /// The CA bundle trusted (kept for [`Upstream::sibling`]).
    ca_file: Option<String>,
    /// Speak HTTP/2 only (ALPN `h2`): the unsigned session routes ([`Upstream::http2`]).
    h2: bool,
    /// The address when `host` is an IP literal (no DNS at all).
    literal: Option<SocketAddr>,
    /// The last resolved address and when; refreshed after [`DNS_TTL`].
    resolved: Mutex<Option<(SocketAddr, Instant)>>,
}

impl Upstream {
    /// `ca_file`: a PEM bundle to trust (see [`crate::tls::ca_bundle`], which merges it with
    /// the system roots); `None` = system roots only.
    pub fn new(
        host: &str,
        port: u16,
        tls: bool,
        ca_file: Option<String>,
        connect_timeout: Duration,
    ) -> Self {
        let mut opts = ConnectorOptions::new(64);
        opts.ca_file = ca_file.clone();
        Self {
            h1: H1Connector::new(Some(opts.clone())),
            connector: Connector::new(Some(opts)),
            ca_file,
            h2: false,
            host: host.to_string(),
            port,
            tls,
            connect_timeout,
            literal: host
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port)),
            resolved: Mutex::new(None),
        }
    }

    /// A client for another host with the same TLS mode, trust and connect timeout (the
    /// upload gateway beside a merchant's API gateway); its own connection pool.
    pub fn sibling(&self, host: &str, port: u16) -> Self {
        Self::new(
            host,
            port,
            self.tls,
            self.ca_file.clone(),
            self.connect_timeout,
        )
    }

    /// The same client speaking HTTP/2 only (ALPN `h2`, no HTTP/1.1 fallback): the gateway
    /// takes `meter/uploadEvent` over HTTP/2 only.
    pub fn http2(mut self) -> Self {
        self.h2 = true;
        self
    }

    /// `host:port` for messages.
    fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    async fn resolve(&self) -> Result<SocketAddr, UpstreamError> {
        if let Some(addr) = self.literal {
            return Ok(addr);
        }
        let cached = self.resolved.lock().ok().and_then(|g| *g);
        if let Some((addr, at)) = cached {
            if at.elapsed() < DNS_TTL {
                return Ok(addr);
            }
        }
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(mut addrs) => {
                let first = addrs.next().ok_or_else(|| UpstreamError::Connect {
                    target: self.target(),
                    detail: "DNS returned no address".into(),
                })?;
                if let Ok(mut g) = self.resolved.lock() {
                    *g = Some((first, Instant::now()));
                }
                Ok(first)
            }
            // keep serving on the last known address when DNS hiccups
            Err(e) => cached
                .map(|(addr, _)| addr)
                .ok_or_else(|| UpstreamError::Connect {
                    target: self.target(),
                    detail: format!("DNS lookup failed: {e}"),
                }),
        }
    }

    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        if self.h2 {
            peer.options.set_http_version(2, 2);
        }
        peer
    }

    /// Sends the request head and body and returns the whole response (at most
    /// `max_response` body bytes), within `timeout`.
    ///
    /// Never sends a request twice unless the first copy provably did not leave: only a
    /// failure to write the request head on a reused keep-alive connection (the other side
    /// had closed it) is retried, once, on a fresh connection. A request that was written
    /// and then got no answer is *not* retried — the gateway may have acted on it (a pay) —
    /// and becomes `Protocol` (`SIDECAR_GATEWAY_PROTOCOL_ERROR`, status U: inquire). Stale
    /// connections are kept rare by pool hygiene instead ([`POOL_IDLE_TIMEOUT`]).
    pub async fn exchange(
        &self,
        request: &UpstreamRequest,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let UpstreamRequest {
            head: req,
            body,
            max_response,
            timeout,
        } = request;
        let (max_response, timeout) = (*max_response, *timeout);
        let start = Instant::now();
        let work = async {
            let addr = self.resolve().await?;
            let peer = self.peer(addr);
            match self.attempt(&peer, req, body, max_response, false).await {
                Err(UpstreamError::Protocol {
                    maybe_delivered: false,
                    ..
                }) => self.attempt(&peer, req, body, max_response, true).await,
                other => other,
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok((header, body))) => Ok(UpstreamResponse {
                header,
                body,
                elapsed: start.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Timeout {
                target: self.target(),
                timeout,
            }),
        }
    }

    async fn attempt(
        &self,
        peer: &HttpPeer,
        req: &RequestHeader,
        body: &Bytes,
        max_response: usize,
        fresh: bool,
    ) -> Result<(ResponseHeader, Bytes), UpstreamError> {
        let (mut session, reused) = self.session(peer, fresh).await?;
        let proto = |detail: String| UpstreamError::Protocol {
            target: self.target(),
            detail,
            maybe_delivered: true,
        };
        send_request(&mut session, peer, req, body)
            .await
            .map_err(|(e, sent)| UpstreamError::Protocol {
                target: self.target(),
                detail: e.to_string(),
                // nothing left on a connection the other side had closed: safe to retry
                maybe_delivered: sent || !reused,
            })?;
        // skip interim 1xx answers (we never forward Expect, but be safe)
        let mut interim = 0;
        loop {
            session
                .read_response_header()
                .await
                .map_err(|e| proto(e.to_string()))?;
            let status = session
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            if (100..200).contains(&status) && status != 101 && interim < 5 {
                interim += 1;
                continue;
            }
            break;
        }
        let header = session
            .response_header()
            .cloned()
            .ok_or_else(|| proto("no response header".into()))?;
        // The announced size (bounded by the limit) is reserved once; a body that arrives in
        // one piece (the usual case) is kept as pingora hands it over, without a copy.
        let declared = header
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(max_response);
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        loop {
            match session.read_response_body().await {
                Ok(Some(chunk)) => {
                    let so_far = first.as_ref().map_or(0, Bytes::len) + buf.len();
                    if so_far + chunk.len() > max_response {
                        return Err(UpstreamError::TooLarge {
                            target: self.target(),
                            limit: max_response,
                        });
                    }
                    match first.take() {
                        None if buf.is_empty() => first = Some(chunk),
                        Some(f) => {
                            buf.reserve(declared.max(f.len() + chunk.len()));
                            buf.extend_from_slice(&f);
                            buf.extend_from_slice(&chunk);
                        }
                        None => buf.extend_from_slice(&chunk),
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(proto(e.to_string())),
            }
        }
        let body = first.unwrap_or_else(|| buf.freeze());
        if session.response_done() {
            match session {
                HttpSession::H1(h1) if !self.h2 => {
                    self.h1
                        .release_http_session(h1, peer, Some(POOL_IDLE_TIMEOUT))
                        .await
                }
                other => {
                    self.connector
                        .release_http_session(other, peer, Some(POOL_IDLE_TIMEOUT))
                        .await
                }
            }
        }
        Ok((header, body))
    }

    /// A connection to `peer`: a pooled one when there is one (and `fresh` is not asked),
    /// otherwise a new one; `true` with a pooled one. Connecting is boxed (see
    /// [`Upstream::h1`]): it happens once per connection, not once per request.
    async fn session(
        &self,
        peer: &HttpPeer,
        fresh: bool,
    ) -> Result<(HttpSession, bool), UpstreamError> {
        // bypass the pool for a fresh one: a different group key misses it
        let fresh_peer = fresh.then(|| self.fresh_peer(peer));
        let target = fresh_peer.as_ref().unwrap_or(peer);
        if self.h2 {
            let (s, reused) = Box::pin(self.connector.get_http_session(target))
                .await
                .map_err(|e| self.connect_error(&e))?;
            return Ok((s, reused && !fresh));
        }
        if !fresh {
            if let Some(s) = self.h1.reused_http_session(peer).await {
                return Ok((HttpSession::H1(s), true));
            }
        }
        let (s, reused) = Box::pin(self.h1.get_http_session(target))
            .await
            .map_err(|e| self.connect_error(&e))?;
        Ok((HttpSession::H1(s), reused && !fresh))
    }

    fn fresh_peer(&self, peer: &HttpPeer) -> HttpPeer {
        // a different group key keeps the pool from handing back the stale connection
        let mut p = peer.clone();
        p.group_key = p.group_key.wrapping_add(1);
        p
    }

    fn connect_error(&self, e: &pingora::Error) -> UpstreamError {
        let detail = e.to_string();
        match e.etype() {
            ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::TLSWantX509Lookup => UpstreamError::Tls {
                target: self.target(),
                detail,
                private_ca: self.ca_file.is_some(),
            },
            ErrorType::ConnectTimedout => UpstreamError::ConnectTimeout {
                target: self.target(),
                timeout: self.connect_timeout,
            },
            _ if detail.contains("certificate")
                || detail.contains("TLS")
                || detail.contains("tls") =>
            {
                UpstreamError::Tls {
                    target: self.target(),
                    detail,
                    private_ca: self.ca_file.is_some(),
                }
            }
            _ => UpstreamError::Connect {
                target: self.target(),
                detail,
            },
        }
    }
}

/// Largest body sent in the same buffer as the request head: below it, one copy of the body
/// is cheaper than a second write (and, over TLS, a second record); above it the head and the
/// body go out in one vectored write, without a copy.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Writes the request head and body in one write (one `writev`, or one buffer), so the other
/// side gets them in one segment (over TLS: one write of records) instead of pingora's client
/// flushing the head on its own and the body after it (two sends per request: issue 23).
///
/// pingora's HTTP/1 client has no way to hold back the head's flush, so on an HTTP/1
/// connection the request is serialised with pingora's own `http_req_header_to_wire`, written
/// on the connection's stream, and the stream is wrapped in a new client session that reads
/// the answer exactly as before. That session does not know the request it answers; what the
/// client reads from it (a `HEAD` request has no answer body, `Connection: close` in the
/// request ends keep-alive, an `Upgrade`) is therefore ruled out: every other request (and
/// HTTP/2) goes through pingora's own two writes.
///
/// The error's flag says whether any byte of the request may have left (see `attempt`).
async fn send_request(
    session: &mut HttpSession,
    peer: &HttpPeer,
    req: &RequestHeader,
    body: &Bytes,
) -> Result<(), (pingora::BError, bool)> {
    let one_write = matches!(session, HttpSession::H1(_)) && single_write_safe(req, body.len());
    if !one_write {
        session
            .write_request_header(Box::new(req.clone()))
            .await
            .map_err(|e| (e, false))?;
        if !body.is_empty() {
            session
                .write_request_body(body.clone(), true)
                .await
                .map_err(|e| (e, true))?;
        }
        return session
            .finish_request_body()
            .await
            .map(|_| ())
            .map_err(|e| (e, true));
    }
    let Some(mut head) = http_req_header_to_wire(req) else {
        let e = pingora::Error::explain(
            ErrorType::InvalidHTTPHeader,
            "request-line contains forbidden delimiter bytes or unsupported HTTP version",
        );
        return Err((e, false));
    };
    // take the stream out of the session (a placeholder session stands in meanwhile)
    let mut stream = match std::mem::replace(session, HttpSession::Custom(())) {
        HttpSession::H1(h1) => h1.into_inner(),
        other => {
            // not HTTP/1 after all (ruled out by `one_write`): put it back, refuse untouched
            *session = other;
            let e = pingora::Error::explain(ErrorType::InternalError, "not an HTTP/1 session");
            return Err((e, false));
        }
    };
    let result = if body.len() <= COALESCE_LIMIT {
        head.extend_from_slice(body);
        write_all(&mut stream, &head, &[]).await
    } else {
        write_all(&mut stream, &head, body).await
    };
    let sent = match result {
        Ok(()) => match stream.flush().await {
            Ok(()) => None,
            Err(e) => Some((e, true)),
        },
        Err((e, written)) => Some((e, written > 0)),
    };
    if let Some((e, sent)) = sent {
        let e = pingora::Error::because(ErrorType::WriteError, "while writing the request", e);
        return Err((e, sent));
    }
    *session = HttpSession::H1(H1Session::new_with_options(stream, peer));
    Ok(())
}

/// Whether a request may skip pingora's client writer: an HTTP/1.1 `POST` framed by a
/// `Content-Length` equal to the body, without the headers the answer's reading depends on.
fn single_write_safe(req: &RequestHeader, body_len: usize) -> bool {
    let h = &req.headers;
    req.method == http::Method::POST
        && req.version == http::Version::HTTP_11
        && h.get(http::header::CONNECTION).is_none()
        && h.get(http::header::UPGRADE).is_none()
        && h.get(http::header::TRANSFER_ENCODING).is_none()
        && h.get_all(http::header::CONTENT_LENGTH).iter().count() == 1
        && h.get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            == Some(body_len)
}

/// Writes `a` then `b` whole, as one vectored write when the stream takes it; the error
/// carries how many bytes had been written.
async fn write_all<S: tokio::io::AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    a: &[u8],
    b: &[u8],
) -> Result<(), (std::io::Error, usize)> {
    let total = a.len() + b.len();
    let mut done = 0;
    while done < total {
        let bufs = if done < a.len() {
            [IoSlice::new(&a[done..]), IoSlice::new(b)]
        } else {
            [IoSlice::new(&b[done - a.len()..]), IoSlice::new(&[])]
        };
        match stream.write_vectored(&bufs).await {
            Ok(0) => return Err((std::io::ErrorKind::WriteZero.into(), done)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, done)),
        }
    }
    Ok(())
}

/// The one upstream trait of the handlers and the delivery worker: one request out (signed
/// for the gateway, verified for the app), the whole answer back (bounded by
/// `request.max_response`, within `request.timeout`). Pingora's pooled connector in
/// production ([`Upstream`]: HTTPS to the gateway, plain HTTP to the app); an in-memory fake
/// in the handlers' unit tests, so they run without sockets.
///
/// Declared here, beside its production implementation, so that the handlers import the
/// connector and never the other way round.
pub trait UpstreamClient: Send + Sync + 'static {
    /// Sends the request and reads the whole answer.
    fn send(
        &self,
        request: &UpstreamRequest,
    ) -> impl std::future::Future<Output = Result<UpstreamResponse, UpstreamError>> + Send;
}

/// Production client: pingora's pooled connector.
impl UpstreamClient for std::sync::Arc<Upstream> {
    async fn send(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        self.exchange(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With ca_file set, a certificate its CA did not sign is blamed on that CA, not on a
    /// missing ca_file (issue 20, item 5: a fake gateway restarted with a new CA).
    #[test]
    fn a_certificate_not_signed_by_the_configured_ca_says_so() {
        let e = |detail: &str, private_ca| {
            UpstreamError::Tls {
                target: "127.0.0.1:8443".into(),
                detail: detail.into(),
                private_ca,
            }
            .to_string()
        };
        let bad = "invalid peer certificate: BadSignature";
        assert!(e(bad, true).contains("not signed by the CA in [outbound] ca_file"));
        assert!(!e(bad, true).contains("set [outbound] ca_file for a private CA"));
        assert!(e("invalid peer certificate: UnknownIssuer", false)
            .contains("not signed by a CA in the system roots"));
        assert!(e("handshake failure", true).contains("set [outbound] ca_file for a private CA"));
    }

    fn post(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/ams/api/v1/payments/pay", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn one_write_only_for_a_post_framed_by_its_content_length() {
        assert!(single_write_safe(&post(&[("Content-Length", "5")]), 5));
        assert!(!single_write_safe(&post(&[("Content-Length", "5")]), 6));
        assert!(!single_write_safe(&post(&[]), 0), "no Content-Length");
        assert!(!single_write_safe(
            &post(&[("Content-Length", "5"), ("Content-Length", "5")]),
            5
        ));
        // what the answer's reading depends on: left to pingora's own writer
        for extra in [
            ("Connection", "close"),
            ("Upgrade", "websocket"),
            ("Transfer-Encoding", "chunked"),
        ] {
            let req = post(&[("Content-Length", "5"), extra]);
            assert!(!single_write_safe(&req, 5), "{extra:?}");
        }
        let mut head = post(&[("Content-Length", "5")]);
        head.set_method(http::Method::HEAD);
        assert!(!single_write_safe(&head, 5));
    }

    /// A stream that takes at most 3 bytes per write: the head and body still arrive whole
    /// and in order.
    #[tokio::test]
    async fn partial_writes_send_the_head_and_body_whole() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server) = tokio::io::duplex(3);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all(&mut client, b"HEAD\r\n\r\n", b"body bytes")
            .await
            .unwrap();
        drop(client);
        assert_eq!(reader.await.unwrap(), b"HEAD\r\n\r\nbody bytes");
    }

    /// An HTTP/1.1 peer that answers every request on a connection with a keep-alive 200,
    /// counting the connections it accepts.
    async fn keep_alive_peer() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        // one answer per complete request (head + 2-byte body)
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            if seen.len() < end + 4 + 2 {
                                break;
                            }
                            seen.drain(..end + 4 + 2);
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if conn.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    /// The pooled connection is taken back for the next request (no new connection), and
    /// `fresh` (the retry after a stale pooled connection) bypasses the pool.
    #[tokio::test]
    async fn a_pooled_connection_is_reused_and_fresh_bypasses_the_pool() {
        use std::sync::atomic::Ordering;
        let (port, accepted) = keep_alive_peer().await;
        let upstream = Upstream::new("127.0.0.1", port, false, None, Duration::from_secs(2));
        let mut head = RequestHeader::build("POST", b"/notify", None).unwrap();
        head.insert_header("Host", "127.0.0.1").unwrap();
        head.insert_header("Content-Length", "2").unwrap();
        let request = UpstreamRequest {
            head,
            body: Bytes::from_static(b"{}"),
            max_response: 1024,
            timeout: Duration::from_secs(5),
        };
        for _ in 0..3 {
            let answer = upstream.exchange(&request).await.unwrap();
            assert_eq!(
                (answer.header.status.as_u16(), &answer.body[..]),
                (200, &b"ok"[..])
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "three requests, one connection"
        );
        let peer = upstream.peer(SocketAddr::from(([127, 0, 0, 1], port)));
        let (_, reused) = upstream.session(&peer, false).await.unwrap();
        assert!(reused, "the pooled connection is handed out");
        let (_, reused) = upstream.session(&peer, true).await.unwrap();
        assert!(!reused, "a fresh connection is never a pooled one");
        // the connect completes before the peer's task has counted the accept
        for _ in 0..500 {
            if accepted.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "fresh opened a new connection"
        );
    }
}
