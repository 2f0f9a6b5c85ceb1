//! The HTTP side: accept loop, TLS, one hyper HTTP/1.1 connection per client, request
//! verification, fault injection and response signing.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::api::{self, envelope, Effect, Status};
use super::clock::{response_time, stamp, STALE_RESPONSE_TIME};
use super::fault::Fault;
use super::state::{stopped, ReceivedRequest, Shared};
use super::switches::{InquiryAnswer, NotifyMode};
use super::{control, crypto, notify};

/// Largest request body the gateway reads (the sidecar's default limit is 1 MiB).
pub(crate) const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// How long shutdown waits for open connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the partial body and the cut for `reset_mid_body`, so the partial bytes are
/// flushed to the client before the connection closes.
const RESET_PAUSE: Duration = Duration::from_millis(50);

const JSON_UTF8: &str = "application/json; charset=UTF-8";

/// Accepts connections until shutdown, then drains them (bounded by [`SHUTDOWN_GRACE`]).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown_rx.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(serve(tcp, tls.clone(), shared.clone()));
                }
                Err(e) => {
                    // Typically EMFILE; back off briefly instead of spinning.
                    tracing::warn!(error = %e, "mock-gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        conns.abort_all();
    }
}

async fn serve(tcp: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    match tls {
        None => serve_io(tcp, shared).await,
        Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
        {
            Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                serve_h2(stream, shared).await
            }
            Ok(Ok(stream)) => serve_io(stream, shared).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "mock-gateway: TLS handshake failed"),
            Err(_) => tracing::debug!("mock-gateway: TLS handshake timed out"),
        },
    }
}

async fn serve_io<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown_rx.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| handle(svc_shared.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "mock-gateway: connection ended with an error");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// An HTTP/2 connection (ALPN `h2`): the same service.
async fn serve_h2<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown_rx.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req| handle(svc_shared.clone(), req));
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "mock-gateway: h2 connection ended with an error");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Returned by the service to make hyper close the connection without answering
/// (fault `drop`, or a client that vanished mid-body).
#[derive(Debug)]
pub(crate) struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on purpose by the mock gateway")
    }
}

impl std::error::Error for CloseConnection {}

/// Response body: complete bytes, or (fault `reset_mid_body`) the first half followed by an
/// error that makes hyper cut the connection short of the announced Content-Length.
pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Partial {
        first: Option<Bytes>,
        total: u64,
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl hyper::body::Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            MockBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            MockBody::Partial { first, pause, .. } => {
                if let Some(d) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                let sleep = pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(RESET_PAUSE)));
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "mock fault reset_mid_body",
                    )))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Partial { total, .. } => SizeHint::with_exact(*total),
        }
    }
}

/// The gateway's answer before faults that touch the wire are applied.
enum Reply {
    /// Alipay's unsigned rejection (bad request signature etc.): no signature headers.
    Unsigned(Vec<u8>),
    /// A normal answer, signed for `client_id` unless a fault says otherwise.
    Signed { client_id: String, body: Vec<u8> },
}

fn result_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["result"]["resultCode"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Picks the fault for this request: the body's `mockFault` wins over the configured one.
/// An unparseable `mockFault` is reported (after signature verification) as PARAM_ILLEGAL.
fn pick_fault(shared: &Shared, json: Option<&Value>) -> (Option<Fault>, Option<String>) {
    match json.and_then(|j| j.get("mockFault")) {
        None => (shared.fault, None),
        Some(Value::String(s)) => match s.parse::<Fault>() {
            Ok(f) => (Some(f), None),
            Err(e) => (shared.fault, Some(format!("mockFault: {e}"))),
        },
        Some(_) => (
            shared.fault,
            Some("mockFault must be a string such as \"unsigned\" or \"delay:500\"".into()),
        ),
    }
}

fn header<'a>(req: &'a hyper::http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Who a request authenticated as.
pub(crate) struct Caller {
    client_id: String,
    /// With an API key (`Authorization: Bearer`): the answer carries no signature, as the
    /// API-key protocol has none.
    api_key: bool,
}

/// Why a request was refused: the result code and the detail for the message.
pub(crate) struct Refused {
    code: &'static str,
    detail: String,
}

impl Refused {
    fn signature(detail: impl Into<String>) -> Self {
        Refused {
            code: "INVALID_SIGNATURE",
            detail: detail.into(),
        }
    }

    fn oauth(detail: impl Into<String>) -> Self {
        Refused {
            code: "OAUTH_FAIL",
            detail: detail.into(),
        }
    }

    fn reply(&self) -> Reply {
        match self.code {
            "INVALID_SIGNATURE" => invalid_signature(&self.detail),
            code => Reply::Unsigned(
                envelope(
                    code,
                    Status::F,
                    &format!(
                        "The API key is invalid or not authorized. (mock-gateway: {})",
                        self.detail
                    ),
                )
                .into_bytes(),
            ),
        }
    }
}

/// The client id of an API key `{isak|irak}_{TEST|PROD}_{base64(client id)}_{secret}` and
/// whether it is a TEST key; `None` when the key does not have that shape. Decoded here with
/// the gateway's own code (not the sidecar's parser), like every check of this crate.
fn api_key_identity(key: &str) -> Option<(String, bool)> {
    use base64::Engine as _;
    let mut parts = key.splitn(3, '_');
    let (kind, env, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if !matches!(kind, "isak" | "irak") || !matches!(env, "TEST" | "PROD") {
        return None;
    }
    let (id, secret) = rest.split_once('_')?;
    if secret.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(id)
        .ok()?;
    Some((String::from_utf8(bytes).ok()?, env == "TEST"))
}

fn invalid_signature(detail: &str) -> Reply {
    Reply::Unsigned(
        envelope(
            "INVALID_SIGNATURE",
            Status::F,
            &format!("The signature is invalid. (mock-gateway: {detail})"),
        )
        .into_bytes(),
    )
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, CloseConnection> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let body = envelope(
                "PARAM_ILLEGAL",
                Status::F,
                &format!("The request body exceeds {MAX_REQUEST_BYTES} bytes."),
            );
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                body.into_bytes(),
            ));
        }
        Err(_) => return Err(CloseConnection),
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or("/")
        .to_string();
    if target.starts_with("/mock/") {
        // The test's remote control: no signature, no faults, not in the received() log
        // (which shows what API clients sent).
        let (status, answer) = control::http(&shared, &parts.method, &target);
        tracing::info!(method = %parts.method, %target, status = status.as_u16(), "mock-gateway: control");
        return Ok(json_response(status, answer.into_bytes()));
    }
    let json = serde_json::from_slice::<Value>(&body).ok();
    let (fault, fault_error) = pick_fault(&shared, json.as_ref());
    // product/uploadImage: the signature covers the multipart `body` part
    let path = target.split('?').next().unwrap_or(&target);
    let upload = api::upload::is_upload(path).then(|| {
        let host = header(&parts, "host")
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        api::upload::read(host, header(&parts, "content-type").unwrap_or(""), &body)
    });
    let signed_body = match &upload {
        Some(Ok(u)) => &u.part[..],
        _ => &body[..],
    };
    let checked = check_request(&shared, &parts, &target, signed_body);
    let api_key_caller = matches!(&checked, Ok(Caller { api_key: true, .. }));
    shared.record_request(ReceivedRequest {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        verified: checked.is_ok(),
        fault,
    });

    if api::session::is_session_route(path) {
        let (status, answer) = api::session::answer(
            parts.version == hyper::Version::HTTP_2,
            header(&parts, "x-session-id"),
        );
        tracing::info!(%target, status = status.as_u16(), "mock-gateway: session route");
        return Ok(json_response(status, answer.into_bytes()));
    }
    if let Some(Fault::Delay(d)) = fault {
        tokio::time::sleep(d).await;
    }
    if target
        .split('?')
        .next()
        .unwrap_or("")
        .ends_with("/v1/payments/cancel")
    {
        let mut stop = shared.shutdown_rx.clone();
        shared
            .cancel_hold
            .pass(async move { crate::state::stopped(&mut stop).await })
            .await;
    }
    match fault {
        Some(Fault::Drop) => {
            tracing::info!(%target, "mock-gateway: fault drop: closing the connection");
            return Err(CloseConnection);
        }
        Some(Fault::HttpStatus(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let page = format!(
                "<html><body><h1>{} {}</h1><p>mock-gateway fault http_status</p></body></html>",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            let mut resp = Response::new(MockBody::Full(Some(Bytes::from(page))));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            return Ok(resp);
        }
        _ => {}
    }

    let reply = if parts.method == Method::POST {
        match respond(
            &shared,
            checked,
            &target,
            &body,
            fault,
            fault_error,
            upload.as_ref(),
        ) {
            // the API-key protocol has no response signature
            Reply::Signed { body, .. } if api_key_caller => Reply::Unsigned(body),
            reply => reply,
        }
    } else {
        Reply::Unsigned(
            envelope("METHOD_NOT_SUPPORTED", Status::F, "Only POST is supported.").into_bytes(),
        )
    };
    let reset = matches!(fault, Some(Fault::ResetMidBody));
    let (client_id, body, signed) = match reply {
        Reply::Unsigned(body) => (None, body, false),
        Reply::Signed { client_id, body } => (Some(client_id), body, true),
    };
    tracing::info!(
        method = %parts.method,
        %target,
        result = %result_code(&body),
        signed,
        fault = %fault.map(|f| f.to_string()).unwrap_or_default(),
        "mock-gateway: request"
    );

    let mut headers = Vec::new();
    if let Some(client_id) = client_id {
        match fault {
            Some(Fault::Unsigned) | Some(Fault::Status { signed: false, .. }) => {}
            _ => {
                let time = if fault == Some(Fault::StaleResponseTime) {
                    STALE_RESPONSE_TIME.to_string()
                } else {
                    response_time()
                };
                let signed_body: Vec<u8> = if fault == Some(Fault::Tampered) {
                    let mut other = body.clone();
                    other.extend_from_slice(b" ");
                    other
                } else {
                    body.clone()
                };
                let content = crypto::content(
                    parts.method.as_str(),
                    &target,
                    &client_id,
                    &time,
                    &signed_body,
                );
                let hold = match fault {
                    Some(Fault::SlowSign(d)) => Some(d),
                    _ => None,
                };
                match shared
                    .signer
                    .signature_header_off_runtime(content, hold)
                    .await
                {
                    Ok(sig) => {
                        headers.push(("client-id", client_id));
                        headers.push(("response-time", time));
                        headers.push(("signature", sig));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "mock-gateway: signing the response failed");
                        let body = envelope("UNKNOWN_EXCEPTION", Status::U, "signing failed");
                        return Ok(json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            body.into_bytes(),
                        ));
                    }
                }
            }
        }
    }

    let body = if fault == Some(Fault::Gzip) {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = gz.write_all(&body);
        headers.push(("content-encoding", "gzip".to_string()));
        gz.finish().unwrap_or(body)
    } else {
        body
    };
    let total = body.len();
    let body = Bytes::from(body);
    let mock_body = if reset {
        MockBody::Partial {
            first: Some(body.slice(..total / 2)),
            total: total as u64,
            pause: None,
        }
    } else {
        MockBody::Full(Some(body))
    };
    let mut resp = Response::new(mock_body);
    if let Some(Fault::Status { code, .. }) = fault {
        *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    }
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    Ok(resp)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::Full(Some(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    resp
}

/// Authenticates a request as Alipay does: an `Authorization: Bearer` API key when the
/// request carries one (refused with `OAUTH_FAIL`), else the RSA signature (refused with
/// `INVALID_SIGNATURE`).
fn check_request(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    target: &str,
    body: &[u8],
) -> Result<Caller, Refused> {
    if let Some(auth) = header(parts, "authorization") {
        return check_api_key(shared, auth, target);
    }
    let client_id =
        header(parts, "client-id").ok_or(Refused::signature("the Client-Id header is missing"))?;
    let request_time = header(parts, "request-time")
        .ok_or(Refused::signature("the Request-Time header is missing"))?;
    if let Some(expected) = &shared.expected_client_id {
        if expected != client_id {
            return Err(Refused::signature(format!(
                "client id `{client_id}` is not the one this gateway was started for (`{expected}`)"
            )));
        }
    }
    let signature =
        header(parts, "signature").ok_or(Refused::signature("the Signature header is missing"))?;
    let content = crypto::content(parts.method.as_str(), target, client_id, request_time, body);
    if let Err(reason) = shared.verifier.verify(&content, signature) {
        let sha = crypto::sha256_hex(&content);
        tracing::info!(%target, content_sha256 = %sha, %reason, "mock-gateway: request signature rejected");
        return Err(Refused::signature(format!(
            "{reason}; verified content = `{} <request-target>\\n<Client-Id>.<Request-Time>.<body>` \
             for target `{target}`, SHA-256 {sha}",
            parts.method
        )));
    }
    Ok(Caller {
        client_id: client_id.to_string(),
        api_key: false,
    })
}

/// `Authorization: Bearer <key>`: accepted only when it is exactly the configured API key,
/// on a path of the key's environment (TEST keys: `/ams/sandbox/…`).
fn check_api_key(shared: &Shared, auth: &str, target: &str) -> Result<Caller, Refused> {
    let key = auth.strip_prefix("Bearer ").ok_or(Refused::oauth(
        "the Authorization header is not `Bearer <API key>`",
    ))?;
    let Some(expected) = &shared.api_key else {
        return Err(Refused::oauth(
            "this gateway accepts no API key (start it with --api-key)",
        ));
    };
    if key != expected {
        tracing::info!(%target, "mock-gateway: API key rejected");
        return Err(Refused::oauth(
            "the API key is not the one this gateway was started with",
        ));
    }
    let (client_id, test) =
        api_key_identity(key).ok_or(Refused::oauth("the API key is malformed"))?;
    if test != target.starts_with("/ams/sandbox/") {
        return Err(Refused::oauth(if test {
            "a TEST API key is valid only on /ams/sandbox/ paths"
        } else {
            "a PROD API key is not valid on /ams/sandbox/ paths"
        }));
    }
    Ok(Caller {
        client_id,
        api_key: true,
    })
}

/// Method check, verification outcome, fault results and routing, in Alipay's order.
fn respond(
    shared: &Arc<Shared>,
    checked: Result<Caller, Refused>,
    target: &str,
    body: &[u8],
    fault: Option<Fault>,
    fault_error: Option<String>,
    upload: Option<&Result<api::upload::Upload, api::upload::Refusal>>,
) -> Reply {
    if let Some(Err((code, msg))) = upload {
        // a malformed upload, or one sent to the API host: nothing to verify it against
        return Reply::Unsigned(envelope(code, Status::F, msg).into_bytes());
    }
    let client_id = match checked {
        Ok(caller) => caller.client_id,
        Err(refused) => return refused.reply(),
    };
    let signed = |body: String| Reply::Signed {
        client_id: client_id.clone(),
        body: body.into_bytes(),
    };
    if fault == Some(Fault::InvalidSignature) {
        return invalid_signature("fault invalid_signature");
    }
    if let Some(e) = fault_error {
        return signed(envelope("PARAM_ILLEGAL", Status::F, &e));
    }
    match fault {
        Some(Fault::UnknownException) => {
            return signed(envelope(
                "UNKNOWN_EXCEPTION",
                Status::U,
                "An API calling is failed, which is caused by unknown reasons.",
            ))
        }
        Some(Fault::SignedFailure) => {
            return signed(envelope(
                "PROCESS_FAIL",
                Status::F,
                "A general business failure occurred. (mock-gateway fault signed_failure)",
            ))
        }
        _ => {}
    }

    if let Some(Ok(u)) = upload {
        return signed(api::upload::answer(u));
    }
    if api::session::is_create_session(target.split('?').next().unwrap_or(target)) {
        return signed(api::session::create());
    }
    let path = target.split('?').next().unwrap_or(target);
    if let Some(answer) = shared.events.lock().ok().and_then(|log| {
        log.answer(
            path,
            &client_id,
            body,
            chrono::Utc::now(),
            shared.event_page_max,
        )
    }) {
        return signed(answer);
    }
    let route = path
        .strip_prefix("/ams/api/v1/payments/")
        .or_else(|| path.strip_prefix("/ams/sandbox/api/v1/payments/"))
        .filter(|r| api::ROUTES.contains(r));
    let Some(route) = route else {
        return signed(envelope(
            "NO_INTERFACE_DEF",
            Status::F,
            "The API is not defined.",
        ));
    };
    let stamp = stamp();
    let ctx = api::PayContext {
        client_id: &client_id,
        notify: if fault == Some(Fault::NoNotify) {
            NotifyMode::Held
        } else {
            shared.notify_mode
        },
        outcome: &shared.outcome,
        tampered: fault == Some(Fault::NotifyTampered),
    };
    let lie = match route {
        "inquiryPayment" => shared.inquiry_answer.lock().ok().and_then(|a| a.clone()),
        _ => None,
    };
    let asked_about;
    let body = match &lie {
        Some(InquiryAnswer::AboutPayment(other)) => {
            asked_about = api::obj(&[("paymentRequestId", api::js(other))]);
            asked_about.as_bytes()
        }
        Some(InquiryAnswer::SuccessWithoutIds) => {
            return signed(api::success_without_ids());
        }
        Some(InquiryAnswer::Unsigned) | None => body,
    };
    let outcome = match shared.store.lock() {
        Ok(mut store) => store.call(route, body, &stamp, &ctx),
        Err(_) => {
            return signed(envelope(
                "UNKNOWN_EXCEPTION",
                Status::U,
                "internal state unavailable",
            ))
        }
    };
    // Started before the answer goes out, so notifications_settled() sees them.
    match outcome.effect {
        Some(Effect::Final(request_id)) => notify::due(shared, &request_id),
        Some(Effect::Refunded(job)) => notify::refunded(shared, *job),
        Some(Effect::SettleAfter {
            request_id,
            after,
            result,
        }) => control::settle_after(shared, request_id, after, result),
        None => {}
    }
    if lie == Some(InquiryAnswer::Unsigned) {
        return Reply::Unsigned(outcome.body);
    }
    Reply::Signed {
        client_id,
        body: outcome.body,
    }
}
