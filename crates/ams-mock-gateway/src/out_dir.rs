//! `mock-gateway --out-dir DIR`: the fake gateway as a stable place to point a sidecar at.
//!
//! Why: a sidecar trusts the gateway's CA (`ca_file`) and its "Alipay" public key for as long
//! as it runs. With both new at every start, restarting the gateway broke a running sidecar
//! with a TLS error (issue 20, item 5). So DIR keeps them: each file is reused when present,
//! created when absent (private keys mode 0600, DIR itself 0700 when created), and a file
//! that is present but unusable stops the start with its name rather than being replaced
//! behind the back of a sidecar that trusts it. DIR also gets a merchant key pair and a
//! complete `sidecar.toml`, so `alipay-sidecar run --config DIR/sidecar.toml` needs no edits.

use std::net::SocketAddr;
use std::path::Path;

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::{crypto, tls};

/// The CA certificate the sidecar trusts (`[outbound] ca_file`).
pub(crate) const CA_CERT: &str = "ca.pem";
/// The CA key that signs a new server certificate at each start.
pub(crate) const CA_KEY: &str = "ca_key.pem";
/// The gateway's "Alipay" key pair: it signs answers and notifications.
pub(crate) const ALIPAY_PRIVATE_KEY: &str = "alipay_private_key.pem";
/// Its public half, the sidecar's `[keys] alipay_public_keys`.
pub(crate) const ALIPAY_PUBLIC_KEY: &str = "alipay_public_key.pem";
/// The merchant key pair: the sidecar signs with the private half, the gateway verifies with
/// the public half (as if registered in the Alipay dashboard).
pub(crate) const MERCHANT_PRIVATE_KEY: &str = "merchant_private_key.pem";
/// The merchant public key.
pub(crate) const MERCHANT_PUBLIC_KEY: &str = "merchant_public_key.pem";
/// The sidecar's config, rewritten at every start.
pub(crate) const SIDECAR_TOML: &str = "sidecar.toml";

/// Creates DIR (mode 0700: it holds private keys) when it does not exist.
pub(crate) fn create_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn read_if_present(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a new private file, mode 0600 from the start (never readable by others, not even
/// for a moment).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes a public file whole: into a temporary file, then renamed over the old one, so a
/// sidecar reading it at that moment never sees half of it.
pub(crate) fn write_public(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The CA kept in `dir`: `ca.pem` and `ca_key.pem` reused when both are there (and belong
/// together), created when neither is.
pub(crate) fn load_or_create_ca(dir: &Path) -> Result<tls::Ca, String> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    match (read_if_present(&cert_path)?, read_if_present(&key_path)?) {
        (Some(cert), Some(key)) => tls::load_ca(cert, &key).map_err(|e| {
            format!(
                "{} and {}: {e}; remove both to make a new CA (a sidecar trusting the old one \
                 then needs a restart)",
                cert_path.display(),
                key_path.display()
            )
        }),
        (None, None) => {
            create_dir(dir)?;
            let ca = tls::new_ca()?;
            write_private(&key_path, &ca.key.serialize_pem())?;
            write_public(&cert_path, &ca.cert_pem)?;
            Ok(ca)
        }
        (Some(_), None) => Err(format!(
            "{} is there but {} is not (a CA of a mock-gateway that kept no CA key): remove {} \
             to make a new CA kept in {}",
            cert_path.display(),
            key_path.display(),
            cert_path.display(),
            dir.display()
        )),
        (None, Some(_)) => Err(format!(
            "{} is there but {} is not: remove {} to make a new CA",
            key_path.display(),
            cert_path.display(),
            key_path.display()
        )),
    }
}

/// An RSA private key file in `dir`: read and checked when present, generated (RSA-2048,
/// PKCS#8 PEM, mode 0600) when absent; its public half is (re)written next to it as
/// `public_file`. Returns the PEM texts of both halves and whether the pair was generated now.
pub(crate) fn load_or_create_key(
    dir: &Path,
    private_file: &str,
    public_file: &str,
) -> Result<(String, String, bool), String> {
    let path = dir.join(private_file);
    let (pem, key, created) = match read_if_present(&path)? {
        Some(pem) => {
            let key = crypto::parse_private_key(&pem).map_err(|e| {
                format!(
                    "{}: {e}; remove it to generate a new key pair",
                    path.display()
                )
            })?;
            (pem, key, false)
        }
        None => {
            create_dir(dir)?;
            let key = crypto::generate_private_key()?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| format!("cannot encode the new key as PEM ({e})"))?
                .to_string();
            write_private(&path, &pem)?;
            (pem, key, true)
        }
    };
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the public key as PEM ({e})"))?;
    write_public(&dir.join(public_file), &public)?;
    Ok((pem, public, created))
}

/// What `--out-dir` keeps for this start: the key texts the gateway uses and what was
/// generated now (file, what it is), to say so.
#[derive(Default)]
pub(crate) struct Kept {
    /// The Alipay private key kept in DIR (`None` when given with `--alipay-private-key`).
    pub(crate) alipay_private_pem: Option<String>,
    /// The public half of DIR's merchant key (`None` when given with `--merchant-public-key`).
    pub(crate) merchant_public_pem: Option<String>,
    pub(crate) generated: Vec<(&'static str, &'static str)>,
}

/// Reads (or makes) the key pairs DIR keeps: the Alipay one unless the user gives it, the
/// merchant one unless the user gives its public half. (The CA is the gateway's, at start.)
pub(crate) fn prepare(dir: &Path, own_alipay: bool, own_merchant: bool) -> Result<Kept, String> {
    create_dir(dir)?;
    let mut kept = Kept::default();
    if own_alipay {
        let (private, _, created) = load_or_create_key(dir, ALIPAY_PRIVATE_KEY, ALIPAY_PUBLIC_KEY)?;
        kept.alipay_private_pem = Some(private);
        if created {
            kept.generated
                .push((ALIPAY_PRIVATE_KEY, "the gateway's Alipay private key"));
        }
    }
    if own_merchant {
        let (_, public, created) =
            load_or_create_key(dir, MERCHANT_PRIVATE_KEY, MERCHANT_PUBLIC_KEY)?;
        kept.merchant_public_pem = Some(public);
        if created {
            kept.generated.push((
                MERCHANT_PRIVATE_KEY,
                "the merchant private key the sidecar signs with; the gateway verifies with merchant_public_key.pem",
            ));
        }
    }
    Ok(kept)
}

/// A sidecar config for a gateway and an app on this machine: the parts the demo and
/// `mock-gateway --out-dir` share. Paths are written as given (relative ones are resolved
/// against the config file's folder).
pub struct SidecarToml<'a> {
    /// `client_id` (a `SANDBOX_` one: the sandbox paths only).
    pub client_id: &'a str,
    /// `[keys] merchant_private_key` (keyVersion 1).
    pub merchant_private_key: &'a Path,
    /// The Alipay key version and its public key file, `[keys] alipay_public_keys`.
    pub alipay_public_key: (&'a str, &'a Path),
    /// `[outbound] gateway`.
    pub gateway: &'a str,
    /// `[outbound] ca_file`.
    pub ca_file: &'a Path,
    /// `[outbound] listen`.
    pub outbound: SocketAddr,
    /// `[inbound] listen`.
    pub inbound: SocketAddr,
    /// `[inbound] forward_to`: the app (receiver) on this machine.
    pub forward_to: SocketAddr,
    /// `[admin] listen`.
    pub admin: SocketAddr,
}

impl SidecarToml<'_> {
    /// The TOML text: the top-level `client_id`, `[keys]`, `[outbound]`, `[inbound]`,
    /// `[admin]`; more sections may follow it.
    pub fn render(&self) -> String {
        let (version, alipay) = self.alipay_public_key;
        format!(
            r#"client_id = "{}"
[keys]
merchant_private_key = {:?}
merchant_key_version = 1
alipay_public_keys = {{ "{version}" = {:?} }}
[outbound]
listen = "{}"
gateway = "{}"
ca_file = {:?}
# a SANDBOX_ client id calls the sandbox paths only
allowed_path_prefixes = ["/ams/sandbox/api/"]
[inbound]
listen = "{}"
forward_to = "http://{}"
[admin]
listen = "{}"
"#,
            self.client_id,
            self.merchant_private_key.display().to_string(),
            alipay.display().to_string(),
            self.outbound,
            self.gateway,
            self.ca_file.display().to_string(),
            self.inbound,
            self.forward_to,
            self.admin,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_ca_is_reused_and_a_half_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_ca(dir.path()).unwrap();
        let again = load_or_create_ca(dir.path()).unwrap();
        assert_eq!(first.cert_pem, again.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // a key of another CA does not pass for this one
        let other = tls::new_ca().unwrap();
        std::fs::write(dir.path().join(CA_KEY), other.key.serialize_pem()).unwrap();
        let e = load_or_create_ca(dir.path()).err().unwrap();
        assert!(e.contains("does not belong"), "{e}");

        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let e = load_or_create_ca(dir.path()).err().unwrap();
        assert!(e.contains("remove"), "{e}");
    }

    #[test]
    fn an_unusable_key_file_is_named_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ALIPAY_PRIVATE_KEY), "not a key").unwrap();
        let e = load_or_create_key(dir.path(), ALIPAY_PRIVATE_KEY, ALIPAY_PUBLIC_KEY)
            .err()
            .unwrap();
        assert!(e.contains(ALIPAY_PRIVATE_KEY), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ALIPAY_PRIVATE_KEY)).unwrap(),
            "not a key"
        );
    }
}
