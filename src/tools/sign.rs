//! `alipay-sidecar sign`: the three headers for a request, signed offline with the library
//! code the running sidecar uses.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::cli::exit::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::protocol::{content_to_sign, sha256_hex, sign_content, PrivateKey};

use super::input::{
    check_header_value, check_key_version, check_path, escape_content, read_body, read_text,
};

/// Options of `alipay-sidecar sign`.
#[derive(clap::Args, Debug, Clone)]
pub struct SignArgs {
    /// Merchant private key file: PEM (PKCS#8 or PKCS#1) or the one-line base64 form.
    #[arg(long, value_name = "FILE")]
    pub private_key: PathBuf,
    /// Client id to sign as (Client-Id header).
    #[arg(long, value_name = "ID")]
    pub client_id: String,
    /// Request path exactly as sent, e.g. /ams/api/v1/payments/pay (with ?query if any).
    #[arg(long, value_name = "URI")]
    pub path: String,
    /// Request-Time value, signed verbatim [default: now, in epoch milliseconds].
    #[arg(long, value_name = "T")]
    pub request_time: Option<String>,
    /// keyVersion written into the Signature header (not signed).
    #[arg(long, value_name = "N", default_value = "1")]
    pub key_version: String,
    /// File holding the exact body bytes [default: read the body from stdin].
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Also print on stderr the exact content signed (escaped), its SHA-256 and the key
    /// fingerprint.
    #[arg(long)]
    pub explain: bool,
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `alipay-sidecar sign`: prints the three headers for a request. `now_ms` is the default
/// Request-Time (passed in so tests are deterministic).
pub fn sign(
    args: &SignArgs,
    now_ms: Option<i64>,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let usage = |err: &mut dyn Write, msg: String| {
        let _ = writeln!(err, "error: {msg}");
        EXIT_USAGE
    };
    if let Err(e) = check_path(&args.path)
        .and_then(|_| check_header_value("--client-id", &args.client_id))
        .and_then(|_| check_key_version(&args.key_version))
    {
        return usage(err, e);
    }
    let time = match &args.request_time {
        Some(t) => t.clone(),
        None => crate::protocol::format_epoch_millis(now_ms.unwrap_or_else(now_millis)),
    };
    if let Err(e) = check_header_value("--request-time", &time) {
        return usage(err, e);
    }
    let key = match read_text(&args.private_key, "private key file").and_then(|text| {
        PrivateKey::from_text(&text)
            .map_err(|e| format!("private key file {}: {e}", args.private_key.display()))
    }) {
        Ok(k) => k,
        Err(e) => return usage(err, e),
    };
    let body = match read_body(args.body_file.as_deref(), stdin) {
        Ok(b) => b,
        Err(e) => return usage(err, e),
    };
    let content = content_to_sign("POST", &args.path, &args.client_id, &time, &body);
    let header = match sign_content(&key, &args.key_version, &content) {
        Ok(h) => h,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_INVALID;
        }
    };
    if args.explain {
        let _ = writeln!(
            err,
            "--- content to sign ({} bytes; escaped: \\n = LF (a line break follows it), \\r = CR, \\t = TAB, \\\\ = backslash, \\u{{…}} = non-ASCII character, \\xNN = byte that is not UTF-8) ---",
            content.len()
        );
        let shown = escape_content(&content);
        let _ = if shown.ends_with('\n') {
            write!(err, "{shown}")
        } else {
            writeln!(err, "{shown}")
        };
        let _ = writeln!(err, "--- end of content ---");
        let _ = writeln!(err, "content sha256: {}", sha256_hex(&content));
        let _ = writeln!(
            err,
            "signing key: {} ({}-bit, {}), keyVersion {}",
            key.fingerprint(),
            key.bits(),
            key.encoding(),
            args.key_version
        );
    }
    let written = writeln!(out, "Client-Id: {}", args.client_id)
        .and_then(|_| writeln!(out, "Request-Time: {time}"))
        .and_then(|_| writeln!(out, "Signature: {header}"))
        .and_then(|_| out.flush());
    match written {
        Ok(()) => EXIT_OK,
        Err(e) => usage(err, format!("cannot write to stdout: {e}")),
    }
}
