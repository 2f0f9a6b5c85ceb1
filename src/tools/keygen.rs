//! `alipay-sidecar keygen` and `local-ca`: new key material (a merchant key pair, a CA for the
//! HTTPS listener), written without ever overwriting a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::exit::{EXIT_OK, EXIT_USAGE};
use crate::protocol::{generate_keypair, GeneratedKeyPair, PrivateKey};

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
