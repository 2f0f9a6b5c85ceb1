//! The SDKs' other transports through the real binary (issue 24): the multipart
//! `product/uploadImage` (signed over its `body` part, sent to the upload host) and its
//! refusals; the upload gateway at check-config.

use alipay_sidecar::mock_gateway::MockGateway;
use sha2::{Digest, Sha256};

use crate::support::{request, vector_gateway, write_vector_keys, Response, RigConfig, Sidecar};
use crate::support::{run_bounded, CLIENT_ID};

const UPLOAD: &str = "/ams/api/v1/billing/product/uploadImage";
const BOUNDARY: &str = "----AntomBoundary0123456789abcdef";

/// The fake gateway and a sidecar in front of it; `upload_host` (e.g. `localhost`) is the
/// upload gateway's host name on the same listener, or `None` to leave it derived.
struct Upload {
    gw: MockGateway,
    sidecar: Sidecar,
    _dir: tempfile::TempDir,
}

fn start(upload_host: Option<&str>) -> Upload {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let gw = vector_gateway(dir.path(), |cfg| {
        cfg.expected_client_id = Some(CLIENT_ID.into())
    });
    let port = gw.local_addr().port();
    let outbound = upload_host
        .map(|h| format!("upload_gateway = \"https://{h}:{port}\"\nrequest_timeout = \"10s\"\n"))
        .unwrap_or_default();
    let toml = RigConfig {
        outbound: &outbound,
        ..Default::default()
    }
    .toml(&format!("https://127.0.0.1:{port}"), gw.ca_file());
    let sidecar = Sidecar::start(dir.path(), &toml);
    Upload {
        gw,
        sidecar,
        _dir: dir,
    }
}

fn sha(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The multipart body the Python SDK 1.7.1 builds (`net/multipart_http_rpc.py`).
fn sdk_multipart(json: &str, file: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"body\"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n").as_bytes());
    for n in parts {
        p.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"shoe.png\"\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n").as_bytes());
        p.extend_from_slice(file);
        p.extend_from_slice(b"\r\n");
    }
    p.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    p
}

fn body_json(file: &[u8]) -> String {
    format!(
        "{{\"productId\":\"prod_1\",\"fileSha256\":\"{}\"}}",
        sha(file)
    )
}

fn post(u: &Upload, content_type: &str, body: &[u8]) -> Response {
    request(
        u.sidecar.addr("outbound"),
        "POST",
        UPLOAD,
        &[("Content-Type", content_type)],
        body,
    )
    .unwrap()
}

fn multipart_ct() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A PNG-ish file with bytes that look like multipart framing inside.
fn image() -> Vec<u8> {
    let mut f = b"\x89PNG\r\n\x1a\n\r\n--fake\r\n\x00".to_vec();
    f.extend((0..70_000u32).map(|i| (i * 7 % 251) as u8));
    f
}

#[test]
fn an_upload_is_signed_over_its_body_part_and_sent_unchanged_to_the_upload_host() {
    let u = start(Some("localhost"));
    let file = image();
    let json = body_json(&file);
    let body = sdk_multipart(&json, &file, &["file", "imageFile"]);
    let r = post(&u, &multipart_ct(), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-alipay-sidecar-verified"), Some("true"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["result"]["resultStatus"], "S");
    assert_eq!(v["productId"], "prod_1");
    let got =
        u.gw.received()
            .into_iter()
            .find(|r| r.target == UPLOAD)
            .expect("the gateway got the upload");
    // the gateway verified the signature over the `body` part (its own reader), the bytes
    // are the app's, and it went to the upload host name
    assert!(
        got.verified,
        "the fake gateway did not verify the upload signature"
    );
    assert_eq!(got.body, body, "the multipart bytes changed on the way");
    let host = got.header("host").unwrap();
    assert!(host.starts_with("localhost:"), "sent to {host}");
    assert_eq!(got.header("content-type"), Some(multipart_ct().as_str()));
}

#[test]
fn an_upload_to_the_api_host_is_not_served_there() {
    // gateway 127.0.0.1 is not Alipay's: the upload gateway defaults to the gateway itself,
    // and the fake gateway serves uploads only on its upload host name
    let u = start(None);
    let file = image();
    let body = sdk_multipart(&body_json(&file), &file, &["file"]);
    let r = post(&u, &multipart_ct(), &body);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-alipay-sidecar-verified"),
        Some("unsigned-failure")
    );
    assert_eq!(r.result_code().1, "NO_INTERFACE_DEF");
}

#[test]
fn malformed_uploads_are_refused_and_nothing_is_sent() {
    let u = start(Some("localhost"));
    let file = image();
    let good = body_json(&file);
    let wrong = body_json(b"another file");
    let cut = {
        let mut b = sdk_multipart(&good, &file, &["file"]);
        b.truncate(b.len() - 20);
        b
    };
    let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "fileSha256 of another file",
            multipart_ct(),
            sdk_multipart(&wrong, &file, &["file", "imageFile"]),
            "SIDECAR_UPLOAD_DIGEST_MISMATCH",
        ),
        (
            "no file part",
            multipart_ct(),
            sdk_multipart(&good, &file, &[]),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "no body part",
            multipart_ct(),
            sdk_multipart(&good, &file, &["file"])
                .split(|_| false)
                .next()
                .map(|b| {
                    let s = String::from_utf8_lossy(b).replace("name=\"body\"", "name=\"meta\"");
                    s.into_bytes()
                })
                .unwrap(),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "a JSON body, not multipart",
            "application/json; charset=UTF-8".into(),
            good.clone().into_bytes(),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "no boundary",
            "multipart/form-data".into(),
            sdk_multipart(&good, &file, &["file"]),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "truncated multipart",
            multipart_ct(),
            cut,
            "SIDECAR_UPLOAD_MALFORMED",
        ),
        (
            "body part not JSON",
            multipart_ct(),
            sdk_multipart("productId=prod_1", &file, &["file"]),
            "SIDECAR_UPLOAD_MALFORMED",
        ),
    ];
    for (what, ct, body, code) in cases {
        let r = post(&u, &ct, &body);
        assert_eq!(
            r.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-alipay-sidecar-error"), Some(code), "{what}");
        assert_eq!(r.result_code().0, "F", "{what}");
    }
    assert!(
        u.gw.received().iter().all(|r| r.target != UPLOAD),
        "a refused upload reached the gateway"
    );
}

fn check_config(outbound: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let toml = RigConfig {
        outbound,
        ..Default::default()
    }
    .toml("https://open-eu.alipay.com", None);
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        toml.replacen("gateway = \"https://open-eu.alipay.com\"\n", "", 1),
    )
    .unwrap();
    let (code, out, err) = run_bounded(
        std::process::Command::new(crate::support::bin())
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        std::time::Duration::from_secs(60),
    );
    (code, format!("{out}{err}"))
}

#[test]
fn check_config_wants_an_upload_gateway_only_where_none_is_known() {
    // open-eu.alipay.com has no upload host in the SDKs' table
    let (code, out) = check_config("gateway = \"https://open-eu.alipay.com\"\n");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("upload_gateway"), "{out}");
    // an explicit upload gateway, or the upload route left out, is fine
    let (code, out) = check_config(
        "gateway = \"https://open-eu.alipay.com\"\nupload_gateway = \"https://open-big-sea.alipay.com\"\n",
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(
        "gateway = \"https://open-eu.alipay.com\"\nallowed_path_prefixes = [\"/ams/api/v1/payments/\"]\n",
    );
    assert_eq!(code, 0, "{out}");
    // every gateway of the table, and a non-Alipay one, derives its own
    for g in [
        "https://open-sea-global.alipay.com",
        "https://open-na.alipay.com",
        "https://open-de-global.alipay.com",
        "https://127.0.0.1:8443",
    ] {
        let (code, out) = check_config(&format!("gateway = \"{g}\"\n"));
        assert_eq!(code, 0, "{g}: {out}");
    }
}

// ---- HTTP/2 and the unsigned session route ----

const UPLOAD_EVENT: &str = "/ams/api/v1/meter/uploadEvent";

/// A rig with the HTTPS listener (CA written to `local-ca.pem`) and `server` lines.
fn start_tls(server: &str) -> (Upload, std::net::SocketAddr, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    write_vector_keys(dir.path());
    let gw = vector_gateway(dir.path(), |cfg| {
        cfg.expected_client_id = Some(CLIENT_ID.into())
    });
    let port = gw.local_addr().port();
    let outbound =
        "tls_listen = \"127.0.0.1:0\"\ntls_ca_out = \"local-ca.pem\"\nrequest_timeout = \"10s\"\n";
    let tail = format!("[log]\nformat = \"json\"\n{server}");
    let toml = RigConfig {
        outbound,
        tail: &tail,
        ..Default::default()
    }
    .toml(&format!("https://127.0.0.1:{port}"), gw.ca_file());
    let sidecar = Sidecar::start(dir.path(), &toml);
    let tls = sidecar.addr("outbound_tls");
    let ca = std::fs::read(dir.path().join("local-ca.pem")).expect("tls_ca_out");
    (
        Upload {
            gw,
            sidecar,
            _dir: dir,
        },
        tls,
        ca,
    )
}

/// A TLS connection to `addr` offering only ALPN `h2`, trusting `ca`.
async fn tls_h2(
    addr: std::net::SocketAddr,
    ca: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    tls
}

/// One POST over HTTP/2: (status, headers, body).
async fn h2_post(
    addr: std::net::SocketAddr,
    ca: &[u8],
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let tls = tls_h2(addr, ca).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{}{path}", addr.port()));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    send.send_data(bytes::Bytes::copy_from_slice(body), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let hs = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut rb = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = rb.data().await {
        let chunk = chunk.unwrap();
        let _ = rb.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, hs, out)
}

fn hdr<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn meter_upload_event_goes_unsigned_over_http2_and_every_other_route_is_signed() {
    let (u, tls, ca) = start_tls("");
    let rt = crate::support::rt();
    let event = b"{\n   \"meters\": [{\"meterId\": \"m1\", \"value\": 3}]\n}";
    let (status, hs, body) = rt.block_on(h2_post(
        tls,
        &ca,
        UPLOAD_EVENT,
        &[
            ("x-session-id", "sess-42"),
            ("content-type", "application/json; charset=UTF-8"),
        ],
        event,
    ));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        hdr(&hs, "x-alipay-sidecar-verified"),
        Some("unsigned-session")
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["result"]["resultStatus"], "S",
        "the fake gateway took it over HTTP/2"
    );
    let got =
        u.gw.received()
            .into_iter()
            .find(|r| r.target == UPLOAD_EVENT)
            .expect("the gateway got the event");
    assert_eq!(got.header("x-session-id"), Some("sess-42"));
    assert_eq!(got.body, event);
    for h in ["signature", "client-id", "request-time"] {
        assert_eq!(got.header(h), None, "{h} was added to an unsigned route");
    }

    // a signed route over h2: signed and verified as over HTTP/1.1
    let pay = crate::support::pay_body("h2-pay-1", "5800", "");
    let (status, hs, body) = rt.block_on(h2_post(
        tls,
        &ca,
        crate::support::PAY,
        &[("content-type", "application/json; charset=UTF-8")],
        pay.as_bytes(),
    ));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(hdr(&hs, "x-alipay-sidecar-verified"), Some("true"));

    // no session id: refused, nothing sent
    let before = u.gw.received().len();
    let (status, hs, _) = rt.block_on(h2_post(tls, &ca, UPLOAD_EVENT, &[], event));
    assert_eq!(status, 400);
    assert_eq!(
        hdr(&hs, "x-alipay-sidecar-error"),
        Some("SIDECAR_SESSION_ID_MISSING")
    );
    assert_eq!(
        u.gw.received().len(),
        before,
        "a refused event reached the gateway"
    );
}

#[test]
fn an_http1_app_gets_meter_upload_event_through_too() {
    // the sidecar speaks HTTP/2 to the gateway whatever the app spoke
    let (u, _tls, _ca) = start_tls("");
    let r = request(
        u.sidecar.addr("outbound"),
        "POST",
        UPLOAD_EVENT,
        &[
            ("X-Session-Id", "sess-h1"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("x-alipay-sidecar-verified"),
        Some("unsigned-session")
    );
}

/// Reads frames from `s` until the server's first SETTINGS; returns its (id, value) pairs.
async fn server_settings<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<(u16, u32)> {
    use tokio::io::AsyncReadExt;
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        if head[3] == 0x4 && head[4] & 1 == 0 {
            return payload
                .chunks(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
        }
    }
}

/// Whether the server closes `s` within `within` (reads until EOF or error).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];

#[test]
fn http2_connections_are_bounded() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let (u, tls, ca) = start_tls(
        "[server]\nheader_read_timeout = \"2s\"\nidle_timeout = \"2s\"\nmax_header_bytes = 8192\n",
    );
    let rt = crate::support::rt();
    rt.block_on(async {
        // the advertised limits: streams per connection, header list size
        let mut s = tls_h2(tls, &ca).await;
        s.write_all(PREFACE).await.unwrap();
        s.write_all(EMPTY_SETTINGS).await.unwrap();
        let settings = server_settings(&mut s).await;
        assert!(
            settings.contains(&(0x3, 100)),
            "MAX_CONCURRENT_STREAMS 100: {settings:?}"
        );
        assert!(
            settings.contains(&(0x6, 8192)),
            "MAX_HEADER_LIST_SIZE = max_header_bytes: {settings:?}"
        );

        // a HEADERS frame that never ends (no END_HEADERS, no CONTINUATION): closed after
        // idle_timeout, not held
        let headers = [0u8, 0, 1, 0x1, 0x0, 0, 0, 0, 1, 0x82];
        s.write_all(&headers).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(30)).await,
            "a connection with an unfinished HEADERS frame stayed open"
        );

        // h2 chosen, no preface: closed after header_read_timeout
        let mut silent = tls_h2(tls, &ca).await;
        assert!(
            closed_within(&mut silent, Duration::from_secs(30)).await,
            "a silent h2 connection stayed open"
        );

        // a SETTINGS flood from a peer that never reads: the server stops reading (it
        // acknowledges each before the next), and others are still served
        let mut flood = tls_h2(tls, &ca).await;
        flood.write_all(PREFACE).await.unwrap();
        let frames: Vec<u8> = EMPTY_SETTINGS.repeat(20_000);
        let _ = tokio::time::timeout(Duration::from_secs(10), flood.write_all(&frames)).await;
    });
    let (status, hs, body) = rt.block_on(h2_post(
        tls,
        &ca,
        UPLOAD_EVENT,
        &[("x-session-id", "after-flood")],
        b"{}",
    ));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        hdr(&hs, "x-alipay-sidecar-verified"),
        Some("unsigned-session")
    );
    drop(u);
}

#[test]
fn prior_knowledge_http2_on_the_plain_listener_gets_an_http1_refusal() {
    // no h2c on the plain listener: the h2 preface (`PRI * HTTP/2.0`) is answered in
    // HTTP/1.1, refused, and nothing reaches the gateway
    let (u, _tls, _ca) = start_tls("");
    let mut raw = PREFACE.to_vec();
    raw.extend_from_slice(EMPTY_SETTINGS);
    let r = crate::support::raw_request(u.sidecar.addr("outbound"), &raw);
    match r {
        Ok(r) => {
            assert!(r.status >= 400, "status {}", r.status);
        }
        // closed without an answer is a refusal too
        Err(e) => eprintln!("closed: {e}"),
    }
    assert!(u.gw.received().is_empty());
}
