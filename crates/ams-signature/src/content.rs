//! The bytes that get signed (spec §1).

/// Builds `<METHOD> <URI>\n<client-id>.<time>.<body>` over the raw body bytes.
///
/// The body is taken as bytes, never as text: a proxy must sign exactly what it forwards, so
/// nothing is trimmed, re-encoded or canonicalised (a body that is not UTF-8 is still signed
/// as its bytes).
pub fn content_to_sign(
    method: &str,
    uri: &str,
    client_id: &str,
    time: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        method.len() + uri.len() + client_id.len() + time.len() + body.len() + 4,
    );
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(client_id.as_bytes());
    out.push(b'.');
    out.extend_from_slice(time.as_bytes());
    out.push(b'.');
    out.extend_from_slice(body);
    out
}

/// Lowercase hex SHA-256, the value two parties compare when a signature does not verify.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(super::engine::sha256(data).as_bytes())
}

/// The digest of `content_to_sign(method, uri, client_id, time, body)` without building it:
/// what signing and verifying need, minus a copy of the body.
pub fn content_digest(
    method: &str,
    uri: &str,
    client_id: &str,
    time: &str,
    body: &[u8],
) -> ContentDigest {
    let mut h = ContentHasher::new(method, uri, client_id, time);
    h.body(body);
    h.finish()
}

/// The SHA-256 of the content to sign (spec §1), computed over its pieces where they lie.
///
/// Signing and verifying only ever need this digest, so a proxy does not have to copy the
/// body (up to `max_body_bytes`) into a [`content_to_sign`] buffer first: hash the prefix,
/// then the body in as many chunks as it arrived in. The result is exactly the digest of
/// `content_to_sign(method, uri, client_id, time, body)`.
pub struct ContentHasher(super::engine::EngineHasher);

impl ContentHasher {
    /// Starts with `<METHOD> <URI>\n<client-id>.<time>.`; feed the body with
    /// [`ContentHasher::body`].
    pub fn new(method: &str, uri: &str, client_id: &str, time: &str) -> Self {
        let mut h = super::engine::EngineHasher::new();
        h.update(method.as_bytes());
        h.update(b" ");
        h.update(uri.as_bytes());
        h.update(b"\n");
        h.update(client_id.as_bytes());
        h.update(b".");
        h.update(time.as_bytes());
        h.update(b".");
        Self(h)
    }

    /// Appends body bytes (call once per chunk, in order).
    pub fn body(&mut self, chunk: &[u8]) -> &mut Self {
        self.0.update(chunk);
        self
    }

    /// The digest to sign or verify.
    pub fn finish(self) -> ContentDigest {
        ContentDigest(self.0.finish())
    }
}

/// The SHA-256 of some content to sign; see [`ContentHasher`].
#[derive(Clone)]
pub struct ContentDigest(pub(super) super::engine::EngineDigest);

impl ContentDigest {
    /// The digest of already assembled content (e.g. from [`content_to_sign`]).
    pub fn of(content: &[u8]) -> Self {
        Self(super::engine::sha256(content))
    }

    /// The 32 digest bytes: what an external signer (a PKCS#11 token) is given, wrapped in
    /// the PKCS#1 v1.5 DigestInfo, so the content itself never leaves the process.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Lowercase hex, as [`sha256_hex`] of the content.
    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }
}

impl std::fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentDigest({})", self.to_hex())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_the_pieces_equals_hashing_the_content() {
        let body = b"{\"a\":1}\n\xff tail";
        let content = content_to_sign("POST", "/ams/api/v1/x?y=1", "C_1", "1714538096000", body);
        let mut h = ContentHasher::new("POST", "/ams/api/v1/x?y=1", "C_1", "1714538096000");
        h.body(&body[..3]).body(&body[3..]).body(b"");
        assert_eq!(h.finish().to_hex(), sha256_hex(&content));
        assert_eq!(ContentDigest::of(&content).to_hex(), sha256_hex(&content));
        assert_eq!(
            content_digest("POST", "/ams/api/v1/x?y=1", "C_1", "1714538096000", body).to_hex(),
            sha256_hex(&content)
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
