//! `alipay-sidecar verify`: checks a captured signature (notification, response or request)
//! offline and says which check failed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::cli::exit::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::protocol::{
    content_to_sign, parse_signature_header, sha256_hex, PublicKey, Verifier, VerifyError,
};

use super::input::{check_header_value, check_path, read_body, read_text};

/// Extra help for `verify`: how to check a captured notification or response offline.
pub const VERIFY_HELP: &str = "\
Checking a captured Alipay notification offline:
  1. Capture the request exactly as it reached you: the path Alipay requested (as received,
     before any proxy rewrite, with the query string if there was one), the `client-id`,
     `Request-Time` and `Signature` header values, and the raw body bytes (save the body to a
     file without reformatting it: no JSON pretty-printing, no added newline).
  2. Run:
       alipay-sidecar verify --public-key alipay_public_key.pem \\
         --path /alipay/notify --client-id \"$CLIENT_ID_HEADER\" \\
         --time \"$REQUEST_TIME_HEADER\" --signature \"$SIGNATURE_HEADER\" \\
         --body-file notification-body.json
For an API response use the path of the request, your configured client id, the response's
`response-time` header and the response body.
With several Alipay keys (during a rotation) pass each as VERSION=FILE, e.g.
  --public-key 1=alipay_v1.pem --public-key 2=alipay_v2.pem
A single key given without a version is used whatever keyVersion the header names.
Exit status: 0 valid, 1 invalid (stderr says which check failed and prints the SHA-256 of the
checked content, to compare with the sender's), 2 usage or key-loading error.";

/// Options of `alipay-sidecar verify`.
#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Public key file of the signer (Alipay's for responses and notifications), optionally
    /// bound to a keyVersion as VERSION=FILE. Repeat for several versions.
    #[arg(long = "public-key", value_name = "[VERSION=]FILE", required = true)]
    pub public_key: Vec<String>,
    /// Client id in the signed content (a notification's `client-id` header; for a response,
    /// your configured client id).
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// Path in the signed content: the notify path as received, or the request's path.
    #[arg(long, value_name = "URI")]
    pub path: String,
    /// The `Request-Time` (notification) or `response-time` (response) header value, verbatim.
    #[arg(long, value_name = "T")]
    pub time: String,
    /// The Signature header value, e.g. 'algorithm=RSA256,keyVersion=1,signature=…'.
    #[arg(long, value_name = "HEADER VALUE", allow_hyphen_values = true)]
    pub signature: String,
    /// File holding the exact body bytes [default: read the body from stdin].
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
}

/// Splits `[VERSION=]FILE`; a prefix that is not all digits is part of the file name.
fn split_key_arg(arg: &str) -> (Option<&str>, &str) {
    match arg.split_once('=') {
        Some((v, file)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(v), file)
        }
        _ => (None, arg),
    }
}

/// Builds the verifier for `verify`: one bare key answers for any keyVersion; otherwise bare
/// keys are version 1 and each version may appear once.
fn build_verifier(args: &[String]) -> Result<Verifier, String> {
    let mut keys: Vec<(Option<String>, PublicKey)> = Vec::new();
    for arg in args {
        let (version, file) = split_key_arg(arg);
        let path = Path::new(file);
        let text = read_text(path, "public key file")?;
        let key = PublicKey::from_text(&text)
            .map_err(|e| format!("public key file {}: {e}", path.display()))?;
        keys.push((version.map(str::to_string), key));
    }
    if let [(None, key)] = keys.as_slice() {
        return Ok(Verifier::any_version(key.clone()));
    }
    let mut bound: Vec<(String, PublicKey)> = Vec::new();
    for (version, key) in keys {
        let version = version.unwrap_or_else(|| "1".to_string());
        if bound.iter().any(|(v, _)| *v == version) {
            return Err(format!(
                "two --public-key options bind keyVersion {version}; give each key its own \
                 version as VERSION=FILE (a key without a version is version 1 when several are given)"
            ));
        }
        bound.push((version, key));
    }
    Ok(Verifier::new(bound))
}

/// `alipay-sidecar verify`: checks a captured signature offline (see [`VERIFY_HELP`]).
pub fn verify(
    args: &VerifyArgs,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let usage = |err: &mut dyn Write, msg: String| {
        let _ = writeln!(err, "error: {msg}");
        EXIT_USAGE
    };
    if let Err(e) =
        check_path(&args.path).and_then(|_| check_header_value("--client-id", &args.client_id))
    {
        return usage(err, e);
    }
    // The time is copied verbatim (an unsigned response may have none), but it is one header
    // value.
    if args.time.chars().any(|c| c.is_control()) {
        return usage(
            err,
            "--time contains a control character; pass the header value only".to_string(),
        );
    }
    let verifier = match build_verifier(&args.public_key) {
        Ok(v) => v,
        Err(e) => return usage(err, e),
    };
    let body = match read_body(args.body_file.as_deref(), stdin) {
        Ok(b) => b,
        Err(e) => return usage(err, e),
    };
    // Accept a pasted "Signature: …" line as well as the bare value.
    let mut header = args.signature.trim();
    if let Some(prefix) = header.get(..10) {
        if prefix.eq_ignore_ascii_case("signature:") {
            header = header[10..].trim_start();
        }
    }
    if let Some(e) = bare_signature(header) {
        return usage(err, e);
    }
    let content = content_to_sign("POST", &args.path, &args.client_id, &args.time, &body);
    match verifier.verify(&content, header) {
        Ok(v) => {
            let _ = writeln!(
                out,
                "valid: verified with keyVersion {} (key {})",
                v.key_version, v.fingerprint
            );
            EXIT_OK
        }
        Err(e) => {
            let _ = writeln!(
                err,
                "invalid: {}",
                prefixed(e.kind().words(), &e.to_string())
            );
            let _ = writeln!(err, "content sha256: {}", sha256_hex(&content));
            if let Ok(h) = parse_signature_header(header) {
                let _ = writeln!(
                    err,
                    "header: algorithm={}, keyVersion={}",
                    h.algorithm.as_deref().unwrap_or("(absent)"),
                    h.key_version.as_deref().unwrap_or("(absent)")
                );
            }
            if let VerifyError::UnknownKeyVersion { key_version, .. } = &e {
                let _ = writeln!(
                    err,
                    "hint: bind the key for that version with --public-key {key_version}=FILE, or \
                     pass a single --public-key without a version to use it for any keyVersion"
                );
            }
            if matches!(e, VerifyError::Mismatch { .. }) {
                let what = if args.body_file.is_some() {
                    "the body file"
                } else {
                    "the body read from stdin"
                };
                let unsigned_newline = trailing_newline(&body).filter(|stripped| {
                    let content =
                        content_to_sign("POST", &args.path, &args.client_id, &args.time, stripped);
                    verifier.verify(&content, header).is_ok()
                });
                if let Some(stripped) = unsigned_newline {
                    let ending = if body.len() - stripped.len() == 2 {
                        "a CRLF line ending"
                    } else {
                        "a newline"
                    };
                    let _ = writeln!(
                        err,
                        "hint: {what} ends with {ending} that was not signed: without it the \
                         signature verifies. Save the body exactly as received, without the \
                         added line ending (editors and `echo` add one; `printf '%s'` and \
                         `truncate -s -{} FILE` do not)",
                        body.len() - stripped.len()
                    );
                } else {
                    let _ = writeln!(
                        err,
                        "hint: compare the content sha256 with the sender's; the usual causes \
                         are a different path (trailing slash, proxy rewrite, sandbox path), a \
                         reformatted time or body (CRLF, pretty-printed JSON, a trailing newline \
                         added by an editor or `echo`), another client id, or the wrong public \
                         key"
                    );
                }
            }
            EXIT_INVALID
        }
    }
}

/// "`words`: `detail`", unless `detail` already starts with those words (a [`VerifyError`]'s
/// own text often does: "signature mismatch with keyVersion 1 …"), so a message never reads
/// "signature mismatch: signature mismatch …" (issue 20).
fn prefixed(words: &str, detail: &str) -> String {
    let starts = detail
        .get(..words.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(words));
    if starts {
        detail.to_string()
    } else {
        format!("{words}: {detail}")
    }
}

/// The body without one trailing `\r\n` or `\n`, when it ends with one.
fn trailing_newline(body: &[u8]) -> Option<&[u8]> {
    body.strip_suffix(b"\r\n")
        .or_else(|| body.strip_suffix(b"\n"))
}

/// A usage error when `--signature` holds only the signature (base64, possibly
/// percent-encoded) instead of the whole header value: nothing was captured wrongly, the
/// argument is, so it is not reported as an invalid signature (exit 2, not 1).
fn bare_signature(header: &str) -> Option<String> {
    let lower = header.to_ascii_lowercase();
    let base64ish = !header.is_empty()
        && header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=%-_".contains(&b));
    if lower.contains("signature=") || header.contains(',') || !base64ish {
        return None;
    }
    Some(
        "--signature takes the whole Signature header value, not the signature alone: pass the \
         whole header value, e.g. --signature 'algorithm=RSA256,keyVersion=1,signature=…' \
         (copy it from the Signature header as received)"
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_doubled_prefixes() {
        assert_eq!(
            prefixed("signature mismatch", "signature mismatch with keyVersion 1"),
            "signature mismatch with keyVersion 1"
        );
        assert_eq!(
            prefixed(
                "malformed Signature header",
                "malformed Signature header: x"
            ),
            "malformed Signature header: x"
        );
        assert_eq!(
            prefixed(
                "missing signature",
                "no Signature header: the message is unsigned"
            ),
            "missing signature: no Signature header: the message is unsigned"
        );
    }

    #[test]
    fn bare_signatures_are_told_apart_from_headers() {
        assert!(bare_signature("BMZZ5qy6Fzl27lF0imNw%2FnsT7orN%2BSYo%3D%3D").is_some());
        assert!(bare_signature("BMZZ5qy6Fzl27lF0imNw/nsT7orN+SYo==").is_some());
        assert!(bare_signature("algorithm=RSA256,keyVersion=1,signature=AAAA").is_none());
        assert!(bare_signature("signature=AAAA").is_none());
        assert!(bare_signature("algorithm=RSA256,keyVersion=1").is_none());
        assert!(bare_signature("").is_none());
    }

    #[test]
    fn trailing_newlines() {
        assert_eq!(trailing_newline(b"{}\n"), Some(&b"{}"[..]));
        assert_eq!(trailing_newline(b"{}\r\n"), Some(&b"{}"[..]));
        assert_eq!(trailing_newline(b"{}"), None);
    }

    #[test]
    fn key_args() {
        assert_eq!(split_key_arg("2=a.pem"), (Some("2"), "a.pem"));
        assert_eq!(split_key_arg("a=b.pem"), (None, "a=b.pem"));
        assert_eq!(split_key_arg("a.pem"), (None, "a.pem"));
    }
}
