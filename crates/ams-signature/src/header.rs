//! The `Signature` header: exact output format, tolerant input parsing (spec §2, §3).

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::error::VerifyError;

/// The only algorithm name the SDKs produce and the sidecar accepts.
pub const ALGORITHM: &str = "RSA256";

/// Form-encoding as Java's `URLEncoder`, Python's `quote_plus`, PHP's `urlencode` and Go's
/// `QueryEscape` do it: everything outside `[A-Za-z0-9-_.*]` becomes `%XX` with uppercase hex.
/// For base64 text only `+ / =` change.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'*');

/// Builds `algorithm=RSA256,keyVersion=<n>,signature=<enc>` byte-exactly as every SDK does:
/// that order, no spaces, standard base64 with padding, uppercase percent escapes.
pub fn format_signature_header(key_version: &str, signature: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
    format!(
        "algorithm={ALGORITHM},keyVersion={key_version},signature={}",
        utf8_percent_encode(&b64, FORM)
    )
}

/// A received `Signature` header split into its fields, before any cryptographic check.
///
/// Kept separate from verification so callers (CLI `verify`, logs) can show what was
/// received without holding keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// `algorithm` as received; `None` when absent (the gateway docs default it to RSA256).
    pub algorithm: Option<String>,
    /// `keyVersion` as received; selects among the configured Alipay public keys.
    pub key_version: Option<String>,
    /// The `signature` value exactly as received (still percent-encoded).
    pub signature: String,
}

impl SignatureHeader {
    /// Decodes the signature value: percent-decoding with case-insensitive `%xx` where `+`
    /// stays `+` (form-decoding would turn it into a space and break raw base64, vector
    /// RSP-10), then strict standard base64 (padding required, no whitespace).
    pub fn signature_bytes(&self) -> Result<Vec<u8>, VerifyError> {
        let decoded = percent_decode(self.signature.as_bytes());
        base64::engine::general_purpose::STANDARD
            .decode(&decoded)
            .map_err(|e| VerifyError::BadEncoding {
                reason: format!(
                    "the signature value is not valid standard base64 after percent-decoding ({e})"
                ),
            })
    }
}

/// Percent-decoding as `percent_encoding::percent_decode` does it (`%` and two hex digits of
/// either case become that byte; any other `%` stays), copying the runs between escapes
/// whole: its byte-by-byte iterator was ≈ 2 % of a notification's instructions (issue 23).
/// Without a `%` the input comes back as it is.
fn percent_decode(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16)).map(|d| d as u8);
    if !input.contains(&b'%') {
        return input.into();
    }
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.iter().position(|b| *b == b'%') {
        out.extend_from_slice(&rest[..at]);
        match (hex(rest.get(at + 1)), hex(rest.get(at + 2))) {
            (Some(high), Some(low)) => {
                out.push(high << 4 | low);
                rest = &rest[at + 3..];
            }
            _ => {
                out.push(b'%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
    out.into()
}

/// Parses a received header tolerantly: split on `,`, trim spaces (the ZOLOZ sibling gateway
/// writes `, `), split each item on its first `=`, any field order, case-sensitive names,
/// unknown names ignored. Never panics, whatever the input.
pub fn parse_signature_header(value: &str) -> Result<SignatureHeader, VerifyError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(VerifyError::MissingHeader);
    }
    let mut algorithm = None;
    let mut key_version = None;
    let mut signature = None;
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((name, val)) = item.split_once('=') else {
            return Err(VerifyError::Malformed {
                reason: format!(
                    "item \"{}\" has no '='; expected name=value pairs such as keyVersion=1",
                    super::echo(item)
                ),
            });
        };
        let slot = match name.trim() {
            "algorithm" => &mut algorithm,
            "keyVersion" => &mut key_version,
            "signature" => &mut signature,
            _ => continue,
        };
        if slot.is_some() {
            return Err(VerifyError::Malformed {
                reason: format!("field \"{}\" appears twice", name.trim()),
            });
        }
        *slot = Some(val.trim().to_string());
    }
    let signature = match signature {
        Some(s) if !s.is_empty() => s,
        Some(_) => {
            return Err(VerifyError::Malformed {
                reason: "the signature field is empty".into(),
            })
        }
        None => {
            return Err(VerifyError::Malformed {
                reason: "no signature= field; expected algorithm=RSA256,keyVersion=N,signature=..."
                    .into(),
            })
        }
    };
    if matches!(&key_version, Some(v) if v.is_empty()) {
        return Err(VerifyError::Malformed {
            reason: "the keyVersion field is empty".into(),
        });
    }
    Ok(SignatureHeader {
        algorithm,
        key_version,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-copying decoder gives what `percent_encoding`'s iterator gives, on escapes of
    /// both cases, stray and truncated `%`, non-hex digits and multi-byte text.
    #[test]
    fn percent_decode_matches_percent_encoding() {
        for input in [
            "",
            "abc",
            "%",
            "%%",
            "%2",
            "%2B",
            "%2b%2F",
            "a%zzb",
            "%%41",
            "%4",
            "x%41%",
            "é%C3%A9",
            "%2B%2F%2F%2B",
            "+/=",
            "%3D%3d%3",
            "%%%2F",
        ] {
            let want: Vec<u8> = percent_encoding::percent_decode_str(input).collect();
            assert_eq!(&*percent_decode(input.as_bytes()), &want[..], "{input:?}");
        }
    }

    #[test]
    fn format_uses_uppercase_escapes_and_fixed_order() {
        let h = format_signature_header("3", &[0xfb, 0xff, 0xfe]);
        // base64 of fb ff fe is "+//+"
        assert_eq!(h, "algorithm=RSA256,keyVersion=3,signature=%2B%2F%2F%2B");
        let h = format_signature_header("1", &[0xff]);
        assert_eq!(h, "algorithm=RSA256,keyVersion=1,signature=%2Fw%3D%3D");
    }

    #[test]
    fn parse_tolerates_spaces_order_and_lowercase_escapes() {
        let h = parse_signature_header(" signature=%2fw%3d%3d , keyVersion=2, algorithm=rsa256 ")
            .unwrap();
        assert_eq!(h.key_version.as_deref(), Some("2"));
        assert_eq!(h.algorithm.as_deref(), Some("rsa256"));
        assert_eq!(h.signature_bytes().unwrap(), vec![0xff]);
    }

    #[test]
    fn plus_is_not_a_space() {
        let h = parse_signature_header("algorithm=RSA256,keyVersion=1,signature=+//+").unwrap();
        assert_eq!(h.signature_bytes().unwrap(), vec![0xfb, 0xff, 0xfe]);
    }

    #[test]
    fn strict_base64() {
        for bad in ["%2Fw", "%2Fw%3D%3D%20", "/w\n==", "/w=="] {
            let h = parse_signature_header(&format!("signature={bad}")).unwrap();
            let r = h.signature_bytes();
            if bad == "/w==" {
                assert_eq!(r.unwrap(), vec![0xff]);
            } else {
                assert!(
                    matches!(r, Err(VerifyError::BadEncoding { .. })),
                    "{bad}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn malformed_inputs_are_named() {
        assert!(matches!(
            parse_signature_header(""),
            Err(VerifyError::MissingHeader)
        ));
        assert!(matches!(
            parse_signature_header("algorithm=RSA256,keyVersion=1"),
            Err(VerifyError::Malformed { .. })
        ));
        assert!(matches!(
            parse_signature_header("garbage"),
            Err(VerifyError::Malformed { .. })
        ));
        assert!(matches!(
            parse_signature_header("signature=a,signature=b"),
            Err(VerifyError::Malformed { .. })
        ));
        assert!(matches!(
            parse_signature_header("signature="),
            Err(VerifyError::Malformed { .. })
        ));
    }
}
