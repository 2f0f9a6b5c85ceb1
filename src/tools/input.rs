//! What the offline tools read and check before they sign or verify: the body, key files,
//! and the path, header values and key version that go into the signed content; and the
//! escaped view of signed bytes.

use std::io::Read;
use std::path::Path;

/// Reads the body from `file`, or all of `stdin` when no file is given.
pub(super) fn read_body(file: Option<&Path>, stdin: &mut dyn Read) -> Result<Vec<u8>, String> {
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
pub(super) fn check_header_value(what: &str, value: &str) -> Result<(), String> {
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

pub(super) fn check_path(path: &str) -> Result<(), String> {
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

pub(super) fn check_key_version(v: &str) -> Result<(), String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "--key-version {v:?} is not a key version; use the number shown next to your key in \
             the Alipay dashboard (default 1)"
        ));
    }
    Ok(())
}

pub(super) fn read_text(path: &Path, what: &str) -> Result<String, String> {
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
    fn path_must_be_a_path() {
        assert!(check_path("/ams/api/v1/payments/pay").is_ok());
        let e =
            check_path("https://open-sea-global.alipay.com/ams/api/v1/payments/pay").unwrap_err();
        assert!(e.contains("(here: /ams/api/v1/payments/pay)"), "{e}");
        assert!(check_path("").is_err());
    }
}
