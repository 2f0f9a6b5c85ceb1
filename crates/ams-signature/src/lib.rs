//! The AMS ("Antom") message-signature protocol, pure: no I/O, no clock, no globals.
//!
//! Every signed AMS message (API request, API response, payment notification and the optional
//! notification acknowledgement) signs the same shape of bytes (spec §1):
//!
//! ```text
//! <METHOD> SP <URI> LF <CLIENT-ID> "." <TIME> "." <BODY>
//! ```
//!
//! with RSASSA-PKCS1-v1_5 / SHA-256, carried in a `Signature` header
//! `algorithm=RSA256,keyVersion=<n>,signature=<percent-encoded base64>` (spec §2, §3).
//!
//! Keeping this crate free of I/O makes it testable against the published vectors and lets
//! the proxy, the CLI and the reload logic share one implementation. The crypto engine
//! (aws-lc-rs: see `engine.rs` for why) is hidden in `engine.rs`, so it can be swapped in one
//! file; `rsa` is used only for key formats, conversion and keygen.
//!
//! The AMS domain data the sidecar labels its traffic with lives here too, one list each, so
//! that metrics, logs and tools cannot disagree: the AMS API list ([`api_label`]), the
//! verification failure reasons
//! ([`Reason`]), the gateway's credential rejections ([`CREDENTIAL_REJECTIONS`]) and the
//! API-key format ([`ApiKey`]).
//!
//! The sidecar re-exports this crate as `alipay_sidecar::protocol`.

mod ack;
mod api;
mod api_key;
mod content;
mod engine;
mod error;
mod header;
mod keys;
mod rejection;
mod time;
mod verify;

pub use ack::{ack_signature_headers, ACK_BODY};
pub use api::{api_label, api_label_index, API_LABEL_COUNT, INBOUND_API_LABEL, OTHER_API_LABEL};
pub use api_key::{ApiKey, ApiKeyEnv, ApiKeyError, ApiKeyKind, MAX_API_KEY_LEN};
pub use content::{content_digest, content_to_sign, sha256_hex, ContentDigest, ContentHasher};
pub use rejection::{
    credential_rejection, rejection_meaning, CREDENTIAL_REJECTIONS, OTHER_REJECTION_LABEL,
};

/// The crypto engine this build signs and verifies with, so logs and `check-config` can say
/// which one runs.
pub const ENGINE: &str = engine::ENGINE;
pub use error::{Reason, VerifyError};
pub use header::{format_signature_header, parse_signature_header, SignatureHeader, ALGORITHM};
pub use keys::{generate_keypair, GeneratedKeyPair, KeyEncoding, KeyError, PrivateKey, PublicKey};
pub use time::{format_epoch_millis, format_iso8601, parse_request_time};
pub use verify::{Verified, Verifier};

/// Received text made safe to echo in an error, a response or a log line: at most
/// [`ECHO_CHARS`] characters, control and non-ASCII characters escaped, an ellipsis when cut.
/// Everything the protocol puts from its input into a message goes through here, so a 1 MB
/// `keyVersion` or PEM label cannot become a 1 MB answer or log line.
pub fn echo(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == ECHO_CHARS {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// How many characters of received text [`echo`] keeps.
pub const ECHO_CHARS: usize = 64;

/// Signing failed inside the crypto engine. With a key that loaded this does not happen in
/// practice; it exists so no panic is reachable from the signing path.
#[derive(Debug, thiserror::Error)]
#[error("RSA signing failed in the crypto engine: {0}")]
pub struct SignError(String);

/// Signs `content` with the merchant key and returns the complete `Signature` header value.
///
/// `key_version` only goes into the header; it is not part of the signed bytes (spec §3).
pub fn sign_content(
    key: &PrivateKey,
    key_version: &str,
    content: &[u8],
) -> Result<String, SignError> {
    sign_digest(key, key_version, &ContentDigest::of(content))
}

/// [`sign_content`] for content given by its digest ([`ContentHasher`]): the same header,
/// without assembling the content (a copy of the body) first.
pub fn sign_digest(
    key: &PrivateKey,
    key_version: &str,
    digest: &ContentDigest,
) -> Result<String, SignError> {
    let signature = key.sign_digest(digest)?;
    Ok(format_signature_header(key_version, &signature))
}
