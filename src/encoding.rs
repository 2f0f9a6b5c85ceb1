//! Decoding a `Content-Encoding`d answer (gzip, deflate, br), bounded, so a compressed but
//! signed gateway answer can still be verified and handed to the app decoded.
//!
//! The sidecar asks the gateway for `identity`; this is for front ends that compress anyway.
//! Whether the signature covers the compressed or the decoded bytes is settled by trying both
//! (see `outbound.rs`); the decoder only has to be exact and bounded (a small "zip bomb" must
//! not become gigabytes in memory).

use std::io::Read;

use bytes::Bytes;

/// Decodes `body` as `encoding` (one coding: `gzip`/`x-gzip`, `deflate` (zlib or raw), `br`);
/// at most `limit` decoded bytes.
pub fn decode(encoding: &str, body: &[u8], limit: usize) -> Result<Bytes, String> {
    let enc = encoding.trim().to_ascii_lowercase();
    let read = |r: &mut dyn Read| -> Result<Bytes, String> {
        let mut out = Vec::new();
        r.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("{enc}: {e}"))?;
        if out.len() > limit {
            return Err(format!("decodes to more than {limit} bytes"));
        }
        Ok(Bytes::from(out))
    };
    match enc.as_str() {
        "gzip" | "x-gzip" => read(&mut flate2::read::MultiGzDecoder::new(body)),
        "deflate" => read(&mut flate2::read::ZlibDecoder::new(body))
            .or_else(|_| read(&mut flate2::read::DeflateDecoder::new(body))),
        "br" => read(&mut brotli::Decompressor::new(body, 4096)),
        other => Err(format!(
            "unsupported Content-Encoding {:?}",
            crate::exchange::echo(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_deflate_round_trip_and_are_bounded() {
        let text = br#"{"result":{"resultStatus":"S"}}"#.repeat(10);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&decode("gzip", &gz, 1 << 20).unwrap()[..], &text[..]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(
            &decode("deflate", &z.finish().unwrap(), 1 << 20).unwrap()[..],
            &text[..]
        );
        assert!(decode("gzip", &gz, 10)
            .unwrap_err()
            .contains("more than 10"));
        assert!(decode("gzip", b"not gzip", 100).is_err());
        assert!(decode("zstd", &gz, 100).is_err());
    }
}
