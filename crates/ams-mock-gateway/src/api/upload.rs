//! `product/uploadImage` (multipart, spec §8, E46), served only on the upload host name
//! [`UPLOAD_HOST`] — Alipay serves it on separate `open-big-*` hosts, so a test can tell
//! whether a client sent it to the right one.
//!
//! The request signature covers the multipart part named `body` (the SDKs' compact JSON
//! `{"productId","fileSha256"}`), not the HTTP body. This reader is deliberately small and
//! independent of the sidecar's (which uses `multer`): a bug in one is not mirrored by the
//! other.

use super::json::{js, obj, result, Status};
use crate::crypto::sha256_hex;

/// The host name the fake gateway serves uploads on (its certificate covers it); the
/// API gateway is the listener's IP address.
pub(crate) const UPLOAD_HOST: &str = "localhost";

/// The upload routes (production and sandbox form).
pub(crate) fn is_upload(path: &str) -> bool {
    matches!(
        path,
        "/ams/api/v1/billing/product/uploadImage"
            | "/ams/sandbox/api/v1/billing/product/uploadImage"
    )
}

/// An upload request as read: the signed `body` part and its product id.
pub(crate) struct Upload {
    /// The `body` part, exactly as sent: the signed bytes.
    pub(crate) part: Vec<u8>,
    product_id: String,
    file_name: String,
}

/// Why an upload is refused (code, message); answered as an F envelope.
pub(crate) type Refusal = (&'static str, String);

/// Reads an upload: `host` must be [`UPLOAD_HOST`], the body `multipart/form-data` with a
/// `body` part whose `fileSha256` is the SHA-256 of every file part.
pub(crate) fn read(host: &str, content_type: &str, body: &[u8]) -> Result<Upload, Refusal> {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    if !name.eq_ignore_ascii_case(UPLOAD_HOST) {
        return Err((
            "NO_INTERFACE_DEF",
            format!("product/uploadImage is served on the upload host ({UPLOAD_HOST}), not on `{host}` (mock-gateway)"),
        ));
    }
    let bad = |m: &str| ("PARAM_ILLEGAL", format!("{m} (mock-gateway)"));
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|_| content_type.trim_start().starts_with("multipart/form-data"))
        .ok_or_else(|| bad("the body is not multipart/form-data with a boundary"))?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut part: Option<Vec<u8>> = None;
    let mut files: Vec<(Vec<u8>, String)> = Vec::new();
    let mut rest = body;
    let mut first = true;
    loop {
        let at = find(rest, &delimiter).ok_or_else(|| bad("the multipart body is not closed"))?;
        if !first {
            // the part before this delimiter, without its trailing CRLF
            let chunk = &rest[..at];
            let chunk = chunk
                .strip_suffix(b"\r\n")
                .ok_or_else(|| bad("a multipart part does not end with CRLF"))?;
            let split = find(chunk, b"\r\n\r\n")
                .ok_or_else(|| bad("a multipart part has no header end"))?;
            let head = String::from_utf8_lossy(&chunk[..split]).to_ascii_lowercase();
            let data = chunk[split + 4..].to_vec();
            let filename = head
                .split("filename=\"")
                .nth(1)
                .and_then(|f| f.split('"').next())
                .unwrap_or("")
                .to_string();
            if head.contains("name=\"body\"") {
                part = Some(data);
            } else if head.contains("name=\"file\"") || head.contains("name=\"imagefile\"") {
                files.push((data, filename));
            }
        }
        first = false;
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
    }
    let part = part.ok_or_else(|| bad("the multipart body has no `body` part"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&part).map_err(|_| bad("the `body` part is not JSON"))?;
    let claimed = json["fileSha256"].as_str().unwrap_or("");
    let product_id = json["productId"].as_str().unwrap_or("").to_string();
    if files.is_empty() {
        return Err(bad("the multipart body has no file part"));
    }
    if files.iter().any(|(f, _)| sha256_hex(f) != claimed) {
        return Err(bad("fileSha256 is not the SHA-256 of the file"));
    }
    Ok(Upload {
        part,
        product_id,
        file_name: files[0].1.clone(),
    })
}

/// The success answer (the SDK's `AlipayProductUploadImageResponse` fields).
pub(crate) fn answer(upload: &Upload) -> String {
    let name = if upload.file_name.is_empty() {
        "image".to_string()
    } else {
        upload.file_name.clone()
    };
    obj(&[
        ("result", result("SUCCESS", Status::S, "success")),
        ("productId", js(&upload.product_id)),
        (
            "imageUrl",
            js(&format!(
                "https://{UPLOAD_HOST}/mock/images/{}",
                upload.product_id
            )),
        ),
        ("imageName", js(&name)),
    ])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
