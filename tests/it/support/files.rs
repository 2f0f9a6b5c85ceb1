//! Files a sidecar reads: the vector keys and config sections written into a test's folder.

use std::path::Path;

/// `[keys]` for the files [`write_vector_keys`] writes next to the config file.
pub const VECTOR_KEYS: &str = "merchant_private_key = \"merchant_private_key.pem\"\nmerchant_key_version = 1\nalipay_public_keys = { \"1\" = \"alipay_public_key.pem\" }\n";

/// Writes the vectors' merchant private key and Alipay public key into `dir` and returns
/// `(merchant_private_key.pem, alipay_public_key.pem)` file names.
pub fn write_vector_keys(dir: &Path) -> (String, String) {
    write_key(
        dir,
        "merchant_private_key.pem",
        "merchant",
        "private_pkcs8_pem",
    );
    write_key(dir, "alipay_public_key.pem", "alipay", "public_spki_pem");
    (
        "merchant_private_key.pem".into(),
        "alipay_public_key.pem".into(),
    )
}

/// Writes [`key`]`(who, form)` to `dir/file`.
pub fn write_key(dir: &Path, file: &str, who: &str, form: &str) {
    std::fs::write(dir.join(file), key(who, form)).unwrap();
}

/// An `[inbound]` section on port 0 forwarding to `forward_to`.
pub fn inbound_section(forward_to: &str) -> String {
    format!("[inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"{forward_to}\"\n")
}

use test_support::key;
