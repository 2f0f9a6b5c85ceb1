//! Why a received signature was not accepted: the error of parsing and verifying a
//! `Signature` header ([`VerifyError`]) and its closed set of reasons ([`Reason`]).
//!
//! In a file of its own because both the header parser ([`crate::parse_signature_header`]) and
//! the verifier return it: with the error in either of them, the two would import each other.

/// Why a signature was not accepted. Each variant is a different fix, so they stay distinct
/// (an unknown key version is a configuration problem, not a forgery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `Signature` header at all.
    #[error("no Signature header: the message is unsigned")]
    MissingHeader,
    /// The header could not be split into its fields.
    #[error("malformed Signature header: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// Anything but RSA256.
    #[error("unsupported signature algorithm \"{algorithm}\": only RSA256 is accepted")]
    UnsupportedAlgorithm {
        /// As received.
        algorithm: String,
    },
    /// The header names a key version with no configured key.
    #[error("keyVersion \"{key_version}\" has no configured Alipay public key (configured: {}); add it under [keys] alipay_public_keys", configured.join(", "))]
    UnknownKeyVersion {
        /// As received.
        key_version: String,
        /// What is configured.
        configured: Vec<String>,
    },
    /// The signature value is not percent-encoded standard base64.
    #[error("bad signature encoding: {reason}")]
    BadEncoding {
        /// What was wrong.
        reason: String,
    },
    /// Decoded signature length differs from the key size.
    #[error("signature is {actual} bytes, but the key needs exactly {expected}")]
    WrongLength {
        /// Key size in bytes.
        expected: usize,
        /// Decoded length.
        actual: usize,
    },
    /// The cryptographic check failed: tampered content, different content on the two sides
    /// (path, client id, time, body bytes) or the wrong key.
    #[error("signature mismatch with keyVersion {key_version} (content sha256 {content_sha256}): the signed bytes differ from what was checked, or the wrong key signed")]
    Mismatch {
        /// SHA-256 of the content that was checked, for comparing with the other side.
        content_sha256: String,
        /// The key version used.
        key_version: String,
    },
}

impl VerifyError {
    /// Which of the [`Reason`]s this is.
    pub fn kind(&self) -> Reason {
        match self {
            VerifyError::MissingHeader => Reason::MissingHeader,
            VerifyError::Malformed { .. } => Reason::Malformed,
            VerifyError::UnsupportedAlgorithm { .. } => Reason::UnsupportedAlgorithm,
            VerifyError::UnknownKeyVersion { .. } => Reason::UnknownKeyVersion,
            VerifyError::BadEncoding { .. } => Reason::BadEncoding,
            VerifyError::WrongLength { .. } => Reason::WrongLength,
            VerifyError::Mismatch { .. } => Reason::Mismatch,
        }
    }

    /// A fixed, low-cardinality label for metrics and logs: `self.kind().label()`.
    pub fn reason(&self) -> &'static str {
        self.kind().label()
    }
}

/// Declares [`Reason`] from one table, so the variants, [`Reason::ALL`], the metric labels and
/// the words for people cannot drift apart.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $label:literal, $words:literal;)+) => {
        /// Why a received signature was not accepted, as a closed set: the label of
        /// `alipay_sidecar_signature_verifications_total{result}` and of the log lines, and the
        /// words `alipay-sidecar verify` prints. Every [`VerifyError`] has one
        /// ([`VerifyError::kind`]); [`Reason::DuplicateHeader`] is decided before parsing (a
        /// message with two `Signature` headers is refused, whichever would verify).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            /// Every reason, for creating the metric series at zero.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The metric and log label (snake_case, stable: part of the metrics interface).
            pub fn label(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)+
                }
            }

            /// A few words for people (the `verify` tool's `invalid: <words>: <error>`).
            pub fn words(self) -> &'static str {
                match self {
                    $(Reason::$variant => $words,)+
                }
            }
        }
    };
}

reasons! {
    /// No `Signature` header at all.
    MissingHeader => "missing_header", "missing signature";
    /// More than one `Signature` header.
    DuplicateHeader => "duplicate_header", "more than one Signature header";
    /// The header could not be split into its fields.
    Malformed => "malformed", "malformed Signature header";
    /// Anything but RSA256.
    UnsupportedAlgorithm => "unsupported_algorithm", "unsupported algorithm";
    /// The header names a key version with no configured key.
    UnknownKeyVersion => "unknown_key_version", "unknown key version";
    /// The signature value is not percent-encoded standard base64.
    BadEncoding => "bad_encoding", "bad signature encoding";
    /// The decoded signature length differs from the key size.
    WrongLength => "wrong_length", "wrong signature length";
    /// The cryptographic check failed.
    Mismatch => "mismatch", "signature mismatch";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_and_words_are_unique() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
                assert_ne!(a.words(), b.words());
            }
            assert!(a
                .label()
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c == b'_'));
        }
    }
}
