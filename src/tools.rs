//! The offline tools behind `sign`, `verify`, `keygen` and `check-config`.
//!
//! These are what a payments engineer reaches for when "signature verify fail" shows up: they
//! use exactly the library code the running sidecar uses, show the exact bytes that are signed,
//! and say which check failed. Each tool takes its parsed options plus the streams it may use
//! and returns the process exit code, so it can be tested without spawning a process; `cli.rs`
//! only parses arguments and dispatches here.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::cli::exit::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::config::{Acknowledge, CertSource, Config, InboundMode};
use crate::keyset::{Credential, KeySet, Severity};
use crate::protocol::{
    content_to_sign, generate_keypair, parse_signature_header, sha256_hex, sign_content,
    GeneratedKeyPair, PrivateKey, PublicKey, Verifier, VerifyError,
};

/// Default config path (the container image mounts config and keys under
/// `/etc/alipay-sidecar/`).
pub const DEFAULT_CONFIG: &str = "/etc/alipay-sidecar/sidecar.toml";

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

/// Options of `alipay-sidecar keygen`.
#[derive(clap::Args, Debug, Clone)]
pub struct KeygenArgs {
    /// Folder to write the key files into (created if missing; existing files are never
    /// overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// RSA modulus size. Alipay accepts 2048 (what its own tools generate); larger keys sign
    /// several times slower.
    #[arg(long, default_value = "2048", value_parser = ["2048", "3072", "4096"])]
    pub bits: String,
}

/// Options of `alipay-sidecar local-ca`.
#[derive(clap::Args, Debug, Clone)]
pub struct LocalCaArgs {
    /// Folder to write ca.pem (certificate, 0644) and ca.key (private key, 0600) into
    /// (created if missing; existing files are never overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Options of the commands that read the config file (`check-config`, `run`).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The config file.
    #[arg(long, value_name = "FILE", env = "ALIPAY_SIDECAR_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// Reads the body from `file`, or all of `stdin` when no file is given.
fn read_body(file: Option<&Path>, stdin: &mut dyn Read) -> Result<Vec<u8>, String> {
    match file {
        Some(f) => {
            std::fs::read(f).map_err(|e| format!("cannot read body file {}: {e}", f.display()))
        }
        None => {
            let mut body = Vec::new();
            stdin
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read the body from stdin: {e}"))?;
            Ok(body)
        }
    }
}

/// Checks a value that goes into the signed content and a header.
fn check_header_value(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{what} contains a control character (CR, LF, TAB …); pass the header value only"
        ));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return check_header_value("--path", path);
    }
    let hint = match path.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => format!(" (here: {})", &rest[i..]),
            None => String::new(),
        },
        None => String::new(),
    };
    Err(format!(
        "--path must be the request path starting with '/', without scheme and host, e.g. \
         /ams/api/v1/payments/pay{hint}"
    ))
}

fn check_key_version(v: &str) -> Result<(), String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "--key-version {v:?} is not a key version; use the number shown next to your key in \
             the Alipay dashboard (default 1)"
        ));
    }
    Ok(())
}

fn read_text(path: &Path, what: &str) -> Result<String, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| {
        format!(
            "{what} {} is not text (a binary DER key?); convert it to PEM with openssl",
            path.display()
        )
    })
}

/// Shows `content` with CR, LF, TAB, backslash, non-ASCII characters and non-UTF-8 bytes
/// escaped, so invisible differences (CRLF vs LF, NBSP, a BOM) can be seen. A line break
/// follows each `\n` to keep the output readable.
pub fn escape_content(content: &[u8]) -> String {
    let mut s = String::with_capacity(content.len() + 16);
    for chunk in content.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => s.push_str("\\n\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                '\\' => s.push_str("\\\\"),
                ' '..='~' => s.push(c),
                c => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
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
            let _ = writeln!(err, "invalid: {}: {e}", e.kind().words());
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
                let _ = writeln!(
                    err,
                    "hint: compare the content sha256 with the sender's; the usual causes are a \
                     different path (trailing slash, proxy rewrite, sandbox path), a reformatted \
                     time or body (CRLF, pretty-printed JSON), another client id, or the wrong \
                     public key"
                );
            }
            EXIT_INVALID
        }
    }
}

/// The files `keygen` writes: (name, private?, what it is for).
const KEYGEN_FILES: [(&str, bool, &str); 4] = [
    (
        "merchant_private_key.pem",
        true,
        "PKCS#8 PEM, mode 0600: the sidecar's keys.merchant_private_key; keep it secret",
    ),
    (
        "merchant_public_key.pem",
        false,
        "SPKI PEM: your public key",
    ),
    (
        "merchant_private_key.base64.txt",
        true,
        "one-line base64 PKCS#8, mode 0600: for SDKs that take the key as a string; keep it secret",
    ),
    (
        "merchant_public_key.base64.txt",
        false,
        "one-line base64 SPKI: paste this into the Alipay dashboard as your public key",
    ),
];

fn write_new(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// A new key pair of `bits` bits (2048 through the library's own generator).
fn generate_pair(bits: usize) -> Result<GeneratedKeyPair, String> {
    use base64::Engine as _;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    if bits == 2048 {
        return generate_keypair().map_err(|e| e.to_string());
    }
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| e.to_string())?;
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?
        .to_string();
    // Parse it back: the same checks and fingerprint as any key the sidecar loads.
    let public = PrivateKey::from_text(&pem)
        .map_err(|e| e.to_string())?
        .public_key();
    Ok(GeneratedKeyPair {
        private_pkcs8_pem: pem,
        public_spki_pem: public.to_spki_pem(),
        private_pkcs8_base64: base64::engine::general_purpose::STANDARD.encode(der.as_bytes()),
        public_spki_base64: public.to_spki_base64(),
        fingerprint: public.fingerprint().to_string(),
    })
}

/// `alipay-sidecar keygen`: a new RSA merchant key pair, never overwriting a file.
pub fn keygen(args: &KeygenArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let dir = &args.out;
    let existing: Vec<String> = KEYGEN_FILES
        .iter()
        .map(|(name, _, _)| dir.join(name))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        let _ = writeln!(
            err,
            "error: refusing to overwrite existing key files: {}; choose another --out folder or \
             move them away first (nothing was written)",
            existing.join(", ")
        );
        return EXIT_USAGE;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        let _ = writeln!(err, "error: cannot create folder {}: {e}", dir.display());
        return EXIT_USAGE;
    }
    let bits: usize = args.bits.parse().unwrap_or(2048);
    let pair = match generate_pair(bits) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    let contents = [
        pair.private_pkcs8_pem.clone(),
        pair.public_spki_pem.clone(),
        format!("{}\n", pair.private_pkcs8_base64),
        format!("{}\n", pair.public_spki_base64),
    ];
    let mut written: Vec<PathBuf> = Vec::new();
    for ((name, private, _), text) in KEYGEN_FILES.iter().zip(contents.iter()) {
        let path = dir.join(name);
        if let Err(e) = write_new(&path, text, *private) {
            // Leave no half-written pair behind.
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            let _ = writeln!(
                err,
                "error: cannot write {}: {e} (nothing was kept)",
                path.display()
            );
            return EXIT_USAGE;
        }
        written.push(path);
    }
    for ((_, _, what), path) in KEYGEN_FILES.iter().zip(written.iter()) {
        let _ = writeln!(out, "wrote {} ({what})", path.display());
    }
    let _ = writeln!(out, "fingerprint: {} (RSA-{bits})", pair.fingerprint);
    let _ = writeln!(
        out,
        "next: upload merchant_public_key.base64.txt in the Alipay dashboard, download Alipay's \
         public key, and point [keys] in the config at merchant_private_key.pem and that file"
    );
    EXIT_OK
}

/// `alipay-sidecar local-ca`: a CA for the HTTPS listener that lives as long as the
/// deployment (`tls_ca_cert` / `tls_ca_key`): the sidecar issues a new leaf from it at every
/// start, so apps trust the CA once. Never overwrites a file.
pub fn local_ca(args: &LocalCaArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let dir = &args.out;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let existing: Vec<String> = [&cert_path, &key_path]
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        let _ = writeln!(
            err,
            "error: refusing to overwrite {}: apps already trusting that CA would stop \
             trusting the sidecar; choose another --out folder, or move the files away first \
             (nothing was written)",
            existing.join(", ")
        );
        return EXIT_USAGE;
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        let _ = writeln!(err, "error: cannot create folder {}: {e}", dir.display());
        return EXIT_USAGE;
    }
    let (cert, key, fingerprint) = match crate::tls::new_local_ca() {
        Ok(ca) => ca,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    // the key first (0600 from its creation), then the certificate (0644 whatever the umask)
    if let Err(e) = write_new(&key_path, &key, true) {
        let _ = writeln!(err, "error: cannot write {}: {e}", key_path.display());
        return EXIT_USAGE;
    }
    let cert_written = write_new(&cert_path, &cert, false).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cert_path, std::fs::Permissions::from_mode(0o644))
    });
    if let Err(e) = cert_written {
        let _ = std::fs::remove_file(&key_path);
        let _ = std::fs::remove_file(&cert_path);
        let _ = writeln!(
            err,
            "error: cannot write {}: {e} (nothing was kept)",
            cert_path.display()
        );
        return EXIT_USAGE;
    }
    let shown = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let (cert_shown, key_shown) = (shown(&cert_path), shown(&key_path));
    let _ = writeln!(
        out,
        "wrote {cert_shown} (the CA certificate, mode 0644: what apps trust)"
    );
    let _ = writeln!(
        out,
        "wrote {key_shown} (the CA private key, mode 0600: keep it secret, give it to the \
         sidecar only)"
    );
    let _ = writeln!(out, "CA SHA-256 fingerprint: {fingerprint}");
    let _ = writeln!(
        out,
        "\npaste into [outbound] of the sidecar's config (with tls_listen set):\n\
         tls_ca_cert = {cert_shown:?}\n\
         tls_ca_key = {key_shown:?}\n\
         tls_trust_out = \"/run/alipay-sidecar/trust/ca-bundle.pem\"   # system roots + this \
         CA, for the app's SSL_CERT_FILE\n"
    );
    let _ = writeln!(
        out,
        "then point the app at the bundle, e.g. SSL_CERT_FILE=/run/alipay-sidecar/trust/ca-bundle.pem \
         (Python SDK >= 1.7), or have it trust {cert_shown}"
    );
    EXIT_OK
}

/// Reports an error that makes the configuration unusable; the `check-config` exit code
/// (2, as `run` exits for the same error).
fn not_usable(err: &mut dyn Write, e: &dyn std::fmt::Display) -> i32 {
    let _ = writeln!(err, "error: {e}");
    let _ = writeln!(
        err,
        "NOT USABLE: fix the error above and run check-config again"
    );
    EXIT_USAGE
}

/// One merchant's line of the `check-config` summary (several merchants only): name, client
/// id, gateway, own listeners and where its notifications go.
fn summarise_merchant(out: &mut dyn Write, m: &crate::config::MerchantConfig) {
    let kind = if m.is_sandbox() { "sandbox" } else { "live" };
    let listeners: Vec<String> = m
        .listen
        .map(|a| format!("http://{a}"))
        .into_iter()
        .chain(m.tls_listen.map(|a| format!("https://{a}")))
        .collect();
    let _ =
        writeln!(
        out,
        "merchant {}: client id {} ({kind}); gateway {}; own listeners {}; notifications -> {}{}",
        m.name,
        m.client_id,
        m.gateway.as_ref().map_or("none (no [outbound])".into(), |g| g.url()),
        if listeners.is_empty() {
            "none (the shared listener with X-Alipay-Sidecar-Merchant)".to_string()
        } else {
            listeners.join(" and ")
        },
        m.forward_to.as_ref().map_or("none (no [inbound])".into(), |f| f.url()),
        if m.agent_token.is_some() { "; agent token set" } else { "" }
    );
}

/// `alipay-sidecar check-config`: loads the config and every key, runs the preflight and
/// prints a summary; exit 0 when the sidecar could start with it.
pub fn check_config(args: &ConfigArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return not_usable(err, &e),
    };
    let mut sets = Vec::with_capacity(config.merchants.len());
    for m in &config.merchants {
        match KeySet::load_unchecked(&config, m) {
            Ok(k) => sets.push((m, k)),
            Err(e) => return not_usable(err, &e),
        }
    }
    let shared_ca = config.outbound.as_ref().and_then(|o| o.ca_file.as_ref());
    let cas = shared_ca
        .map(|ca| ("outbound.ca_file".to_string(), ca))
        .into_iter()
        .chain(config.merchants.iter().filter_map(|m| {
            let ca = m.ca_file.as_ref().filter(|ca| Some(*ca) != shared_ca)?;
            Some((m.key("outbound.ca_file"), ca))
        }));
    for (key, path) in cas {
        if let Err(m) = crate::tls::ca_bundle(path) {
            let e = config.error_at(&key, format!("cannot use {}: {m}", path.display()));
            return not_usable(err, &e);
        }
    }
    let tls_line = match config.outbound.as_ref().and_then(|o| o.tls.as_ref()) {
        None => None,
        Some(t) => {
            let trust = t.trust_out.as_ref().map_or(String::new(), |p| {
                format!("; trust bundle for apps -> {}", p.display())
            });
            match &t.source {
                CertSource::Files { cert, key } => match crate::tls::from_files(cert, key) {
                    Ok(id) => Some(format!(
                        "https listener certificate: {} (SHA-256 {}; apps trust {}){trust}",
                        cert.display(),
                        id.fingerprint,
                        id.ca_fingerprint
                    )),
                    Err(m) => return not_usable(err, &config.error_at("outbound.tls_cert", m)),
                },
                CertSource::Ca { cert, key } => match crate::tls::load_ca(cert, key) {
                    Ok(ca) => Some(format!(
                        "https listener certificate: issued at every start from the CA {} \
                         (CA SHA-256 {}){trust}",
                        cert.display(),
                        ca.fingerprint()
                    )),
                    Err(m) => return not_usable(err, &config.error_at("outbound.tls_ca_cert", m)),
                },
                CertSource::Generated => Some(format!(
                    "https listener certificate: generated at start, in memory, under a new CA \
                     at every start (its SHA-256 is logged by `run`; for a CA that survives \
                     restarts see `alipay-sidecar local-ca`){trust}"
                )),
            }
        }
    };
    let pairs: Vec<_> = sets.iter().map(|(m, k)| (*m, k)).collect();
    let findings: Vec<_> = crate::preflight::run(&config, &pairs)
        .all()
        .cloned()
        .collect();

    let _ = writeln!(out, "config: {}", config.path.display());
    let several = sets.len() > 1;
    if !several {
        let m = &config.merchants[0];
        let kind = if m.is_sandbox() { "sandbox" } else { "live" };
        let _ = writeln!(out, "client id: {} ({kind})", m.client_id);
    }
    match &config.outbound {
        Some(o) => {
            let _ = writeln!(
                out,
                "outbound: listening on {} -> gateway {} (allowed paths: {}; response verification {})",
                o.listen_addrs()
                    .iter()
                    .zip(o.listen.map_or(vec!["https"], |_| vec!["http", "https"]))
                    .map(|(a, scheme)| format!("{scheme}://{a}"))
                    .collect::<Vec<_>>()
                    .join(" and "),
                o.gateway.url(),
                o.allowed_path_prefixes.join(" "),
                if o.verify_responses { "on" } else { "OFF" }
            );
        }
        None => {
            let _ = writeln!(out, "outbound: off (no [outbound] section)");
        }
    }
    match &config.inbound {
        Some(i) => {
            let _ = writeln!(
                out,
                "inbound: listening on {} -> app {} (mode {}, acknowledge {})",
                i.listen,
                i.forward_to.url(),
                match i.mode {
                    InboundMode::Enforce => "enforce",
                    InboundMode::Shadow => "shadow",
                },
                match i.acknowledge {
                    Acknowledge::App => "app",
                    Acknowledge::Sidecar => "sidecar",
                    Acknowledge::AfterStore => "after-store",
                }
            );
        }
        None => {
            let _ = writeln!(out, "inbound: off (no [inbound] section)");
        }
    }
    if let Some(line) = tls_line {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "admin: listening on {}", config.admin.listen);
    for (m, keys) in &sets {
        let indent = if several {
            summarise_merchant(out, m);
            "  "
        } else {
            ""
        };
        match &keys.credential {
            Credential::Signing(private) => {
                let _ = writeln!(
                    out,
                    "{indent}merchant private key: keyVersion {}, {} ({}-bit {}) from {}",
                    keys.merchant_key_version,
                    private.fingerprint(),
                    private.bits(),
                    private.encoding_label(),
                    keys.sources.credential.display()
                );
            }
            Credential::ApiKey(api_key) => {
                // the kind, environment and a SHA-256 prefix: never the key
                let _ = writeln!(
                    out,
                    "{indent}API key: {} {}, {} (client id {}) from {}; requests carry \
                     Authorization: Bearer instead of a signature",
                    api_key.kind().as_str(),
                    api_key.env().as_str(),
                    api_key.fingerprint(),
                    crate::exchange::echo(api_key.client_id()),
                    keys.sources.credential.display()
                );
            }
        }
        for (version, key) in keys.alipay.versions() {
            let source = keys
                .sources
                .alipay_public_keys
                .get(version)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{indent}Alipay public key: keyVersion {version}, {} ({}-bit {}) from {source}",
                key.fingerprint(),
                key.bits(),
                key.encoding()
            );
        }
    }
    for f in &findings {
        let _ = writeln!(err, "{f}");
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        let _ = writeln!(
            err,
            "NOT USABLE: fix the errors above and run check-config again"
        );
        EXIT_USAGE
    } else {
        let warnings = findings.len();
        let _ = writeln!(
            out,
            "OK: the configuration is usable{}",
            if warnings > 0 {
                format!(" ({warnings} warning(s) above)")
            } else {
                String::new()
            }
        );
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_shows_invisible_bytes() {
        assert_eq!(escape_content(b"a\r\nb\t\\"), "a\\r\\n\nb\\t\\\\");
        assert_eq!(escape_content("é🧋".as_bytes()), "\\u{e9}\\u{1f9cb}");
        assert_eq!(escape_content(b"\xff"), "\\xff");
    }

    #[test]
    fn key_args() {
        assert_eq!(split_key_arg("2=a.pem"), (Some("2"), "a.pem"));
        assert_eq!(split_key_arg("a=b.pem"), (None, "a=b.pem"));
        assert_eq!(split_key_arg("a.pem"), (None, "a.pem"));
    }

    #[test]
    fn path_must_be_a_path() {
        assert!(check_path("/ams/api/v1/payments/pay").is_ok());
        let e =
            check_path("https://open-sea-global.alipay.com/ams/api/v1/payments/pay").unwrap_err();
        assert!(e.contains("(here: /ams/api/v1/payments/pay)"), "{e}");
        assert!(check_path("").is_err());
    }
}
