//! The multipart image upload (`POST /ams/api/v1/billing/product/uploadImage`, spec §8, E46):
//! which routes it is, what is signed, and which gateway it goes to.
//!
//! Why it is special: the signature does not cover the HTTP body. The official SDKs build a
//! compact JSON document `{"productId":…,"fileSha256":<hex sha256 of the file>}`, sign *that*
//! (`POST <path>\n<client id>.<time>.<json>`), and send it as the multipart part named `body`,
//! followed by the file (the Python SDK sends it twice, as `file` and as `imageFile`). The
//! sidecar therefore parses the multipart body (with `multer`, bounded), checks that the
//! `body` part's `fileSha256` is the digest of every file part (so the merchant never signs a
//! promise about a file it is not sending), signs the `body` part's exact bytes, and forwards
//! the multipart bytes unchanged — to the `open-big-*` upload host, not the API gateway.
//!
//! Pure apart from the parse: no sockets, no keys.

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The upload routes (production and sandbox form): the signature covers the `body` part.
pub const UPLOAD_ROUTES: &[&str] = &[
    "/ams/api/v1/billing/product/uploadImage",
    "/ams/sandbox/api/v1/billing/product/uploadImage",
];

/// Largest file part the SDKs send (their own limit, `max_file_size`).
pub const MAX_FILE_BYTES: usize = 2 * 1024 * 1024;

/// Largest `body` part (a product id of at most 64 characters and a 64-digit digest).
pub const MAX_BODY_PART_BYTES: usize = 4 * 1024;

/// The whole multipart body: the SDK sends the file twice (`file` and `imageFile`), plus the
/// `body` part and the part headers. `[outbound] max_body_bytes` applies first.
pub const MAX_UPLOAD_BYTES: usize = 2 * MAX_FILE_BYTES + 64 * 1024;

/// The names of the file parts (the Python SDK sends both, the Java and Go SDKs one).
pub const FILE_PARTS: &[&str] = &["file", "imageFile"];

/// Upload hosts by API gateway host (the SDKs' table, E64). Any other Alipay host has no
/// upload host: the SDKs ask for an explicit one.
pub const UPLOAD_HOSTS: &[(&str, &str)] = &[
    ("open-sea-global.alipay.com", "open-big-sea.alipay.com"),
    ("open-sea.alipay.com", "open-big-sea.alipay.com"),
    ("open-na-global.alipay.com", "open-big-na.alipay.com"),
    ("open-na.alipay.com", "open-big-na.alipay.com"),
    ("open-de-global.alipay.com", "open-big-de-global.alipay.com"),
];

/// Whether `target` (origin form) is an upload route (the path before any query).
pub fn is_upload_route(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    UPLOAD_ROUTES.contains(&path)
}

/// The upload gateway of a merchant whose API gateway is `gateway`, when
/// `[outbound] upload_gateway` is unset: the SDKs' table for Alipay's hosts; the gateway
/// itself for a host that is not Alipay's (a fake gateway, a test proxy, 127.0.0.1), which
/// serves the upload route beside the others. An Alipay host outside the table (e.g.
/// `open-eu.alipay.com`) has no upload host: `Err` with what to set.
/// `(host, port)` in, `(host, port)` out (plain values: the config imports this module).
pub fn derive_upload_gateway((gateway_host, port): (&str, u16)) -> Result<(String, u16), String> {
    let host = gateway_host.trim_end_matches('.').to_ascii_lowercase();
    if let Some((_, big)) = UPLOAD_HOSTS.iter().find(|(api, _)| *api == host) {
        return Ok(((*big).to_string(), port));
    }
    if host == "alipay.com" || host.ends_with(".alipay.com") {
        return Err(format!(
            "the gateway {gateway_host} has no known upload gateway for product/uploadImage (the SDKs map \
             only open-sea(-global), open-na(-global) and open-de-global); set [outbound] \
             upload_gateway = \"https://open-big-….alipay.com\", or leave the upload route out \
             of allowed_path_prefixes"
        ));
    }
    Ok((gateway_host.to_string(), port))
}

/// Whether an upload route lies inside `prefixes` (whole path segments, as
/// `allowed_path_prefixes` is matched): only then does the upload gateway matter.
pub fn upload_route_allowed(prefixes: &[String]) -> bool {
    UPLOAD_ROUTES.iter().any(|route| {
        prefixes.iter().any(|p| {
            route.starts_with(p.as_str())
                && (p.ends_with('/') || route.len() == p.len() || route[p.len()..].starts_with('/'))
        })
    })
}

/// The lower-case hex SHA-256 of `data`, as the SDKs write `fileSha256`.
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Why an upload request is refused before anything is signed or sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
    /// Not a `multipart/form-data` body with a boundary, broken framing, a part too large,
    /// an unexpected or repeated part, a missing part, or a `body` part that is not the
    /// SDKs' JSON.
    #[error("{0}")]
    Malformed(String),
    /// `fileSha256` in the `body` part is not the SHA-256 of a file part.
    #[error("{0}")]
    DigestMismatch(String),
}

/// Checks an upload request's multipart body and returns the bytes to sign: the `body`
/// part exactly as received. `content_type` is the request's `Content-Type`.
pub async fn signed_part(content_type: Option<&str>, body: Bytes) -> Result<Bytes, UploadError> {
    let malformed = |m: String| UploadError::Malformed(m);
    let ct = content_type.unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return Err(malformed(format!(
            "product/uploadImage takes a multipart/form-data body (the `body` JSON part the \
             signature covers and the file part); the request's Content-Type is \"{}\"",
            crate::exchange::echo(ct)
        )));
    }
    let boundary = multer::parse_boundary(ct).map_err(|e| {
        malformed(format!(
            "the multipart Content-Type has no usable boundary ({e})"
        ))
    })?;
    if body.len() > MAX_UPLOAD_BYTES {
        return Err(malformed(format!(
            "the upload body is {} bytes, more than the {MAX_UPLOAD_BYTES} an image of at most \
             {MAX_FILE_BYTES} bytes (sent as `file` and `imageFile`) needs",
            body.len()
        )));
    }
    let mut allowed = vec!["body"];
    allowed.extend_from_slice(FILE_PARTS);
    let constraints = multer::Constraints::new()
        .allowed_fields(allowed)
        .size_limit(
            multer::SizeLimit::new()
                .whole_stream(MAX_UPLOAD_BYTES as u64)
                .per_field(MAX_FILE_BYTES as u64)
                .for_field("body", MAX_BODY_PART_BYTES as u64),
        );
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut parts = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut signed: Option<Bytes> = None;
    let mut files: Vec<(String, Bytes)> = Vec::new();
    let bad = |e: multer::Error| malformed(format!("the multipart body is malformed: {e}"));
    while let Some(field) = parts.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        let data = field.bytes().await.map_err(bad)?;
        if name == "body" {
            if signed.replace(data).is_some() {
                return Err(malformed("the multipart body has two `body` parts".into()));
            }
        } else if files.iter().any(|(n, _)| *n == name) {
            return Err(malformed(format!(
                "the multipart body has two `{name}` parts"
            )));
        } else {
            files.push((name, data));
        }
    }
    let Some(signed) = signed else {
        return Err(malformed(
            "the multipart body has no `body` part (the JSON {\"productId\",\"fileSha256\"} the \
             signature covers)"
                .into(),
        ));
    };
    if files.is_empty() {
        return Err(malformed(format!(
            "the multipart body has no file part (named {})",
            FILE_PARTS.join(" or ")
        )));
    }
    let json: serde_json::Value = serde_json::from_slice(&signed)
        .map_err(|e| malformed(format!("the `body` part is not JSON ({e})")))?;
    let Some(claimed) = json.get("fileSha256").and_then(|v| v.as_str()) else {
        return Err(malformed(
            "the `body` part has no string fileSha256 (the hex SHA-256 of the file)".into(),
        ));
    };
    if json.get("productId").and_then(|v| v.as_str()).is_none() {
        return Err(malformed("the `body` part has no string productId".into()));
    }
    for (name, data) in &files {
        if data.is_empty() {
            return Err(malformed(format!("the `{name}` part is empty")));
        }
        let actual = sha256_hex(data);
        if !actual.eq_ignore_ascii_case(claimed) {
            return Err(UploadError::DigestMismatch(format!(
                "fileSha256 in the `body` part is \"{}\" but the `{name}` part's SHA-256 is \
                 {actual}; the merchant signs the digest, so it must be the file's",
                crate::exchange::echo(claimed)
            )));
        }
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "----AntomBoundaryx";

    fn ct() -> String {
        format!("multipart/form-data; boundary={B}")
    }

    fn sha(d: &[u8]) -> String {
        sha256_hex(d)
    }

    /// The multipart body the Python SDK builds (net/multipart_http_rpc.py).
    fn sdk_body(json: &str, file: &[u8], names: &[&str]) -> Bytes {
        let mut p = Vec::new();
        p.extend_from_slice(format!("--{B}\r\nContent-Disposition: form-data; name=\"body\"\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n").as_bytes());
        for n in names {
            p.extend_from_slice(format!("--{B}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"a.png\"\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n").as_bytes());
            p.extend_from_slice(file);
            p.extend_from_slice(b"\r\n");
        }
        p.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        Bytes::from(p)
    }

    fn run(ct: &str, body: Bytes) -> Result<Bytes, UploadError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(signed_part(Some(ct), body))
    }

    #[test]
    fn the_body_part_is_signed_byte_for_byte() {
        let file = b"\x89PNG\r\n--not-a-boundary\r\n\x00\xff";
        let json = format!("{{\"productId\":\"p1\",\"fileSha256\":\"{}\"}}", sha(file));
        for names in [&["file", "imageFile"][..], &["file"], &["imageFile"]] {
            let got = run(&ct(), sdk_body(&json, file, names)).unwrap();
            assert_eq!(got, json.as_bytes());
        }
    }

    #[test]
    fn refusals() {
        let file = b"abc";
        let good = format!("{{\"productId\":\"p1\",\"fileSha256\":\"{}\"}}", sha(file));
        let wrong = format!("{{\"productId\":\"p1\",\"fileSha256\":\"{}\"}}", sha(b"x"));
        let digest = |r| matches!(r, Err(UploadError::DigestMismatch(_)));
        let malformed = |r| matches!(r, Err(UploadError::Malformed(_)));
        assert!(digest(run(&ct(), sdk_body(&wrong, file, &["file"]))));
        assert!(malformed(run(&ct(), sdk_body(&good, file, &[]))));
        assert!(malformed(run(
            "application/json",
            sdk_body(&good, file, &["file"])
        )));
        assert!(malformed(run(
            "multipart/form-data",
            sdk_body(&good, file, &["file"])
        )));
        assert!(malformed(run(&ct(), sdk_body("{}", file, &["file"]))));
        assert!(malformed(run(&ct(), sdk_body("not json", file, &["file"]))));
        assert!(malformed(run(
            &ct(),
            sdk_body(&good, file, &["file", "file"])
        )));
        assert!(malformed(run(&ct(), sdk_body(&good, file, &["other"]))));
        assert!(malformed(run(&ct(), Bytes::from_static(b"--x\r\ngarbage"))));
        let mut cut = sdk_body(&good, file, &["file"]).to_vec();
        cut.truncate(cut.len() - 10);
        assert!(malformed(run(&ct(), Bytes::from(cut))));
        let big = vec![7u8; MAX_FILE_BYTES + 1];
        let j = format!("{{\"productId\":\"p1\",\"fileSha256\":\"{}\"}}", sha(&big));
        assert!(malformed(run(&ct(), sdk_body(&j, &big, &["file"]))));
    }

    #[test]
    fn upload_gateways_follow_the_sdks_table() {
        let g = |h: &'static str| (h, 443u16);
        assert_eq!(
            derive_upload_gateway(g("open-sea-global.alipay.com"))
                .unwrap()
                .0,
            "open-big-sea.alipay.com"
        );
        assert_eq!(
            derive_upload_gateway(g("open-na.alipay.com")).unwrap().0,
            "open-big-na.alipay.com"
        );
        assert_eq!(
            derive_upload_gateway(g("open-de-global.alipay.com"))
                .unwrap()
                .0,
            "open-big-de-global.alipay.com"
        );
        assert!(derive_upload_gateway(g("open-eu.alipay.com")).is_err());
        assert_eq!(
            derive_upload_gateway(g("127.0.0.1")).unwrap(),
            ("127.0.0.1".to_string(), 443)
        );
        assert!(is_upload_route("/ams/api/v1/billing/product/uploadImage"));
        assert!(is_upload_route(
            "/ams/sandbox/api/v1/billing/product/uploadImage?x=1"
        ));
        assert!(!is_upload_route("/ams/api/v1/billing/product/create"));
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(upload_route_allowed(&p(&["/ams/api/"])));
        assert!(upload_route_allowed(&p(&["/ams/sandbox/api/v1/billing"])));
        assert!(!upload_route_allowed(&p(&["/ams/api/v1/payments/"])));
        assert!(!upload_route_allowed(&p(&[
            "/ams/api/v1/billing/product/upload"
        ])));
    }
}
