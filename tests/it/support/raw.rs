//! Raw bytes (httparse) for what a client library would refuse to send: any framing, a bent
//! target or Host header, malformed on purpose.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The bytes of a request with `Content-Length` and `Connection: close` (for
/// [`raw_request`] when the test needs to bend one part: the target, the Host header, …).
pub fn raw_bytes(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// Sends raw bytes (a whole request, any framing, malformed on purpose) and reads one
/// response.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

use super::http::Response;

/// Reads one HTTP/1.1 response from a stream (Content-Length, chunked, or until close),
/// skipping interim 1xx answers.
pub fn read_response(s: &mut dyn Read) -> std::io::Result<Response> {
    read_framed(s, false)
}

/// Parses a whole response as read until the peer closed; a body cut short is returned
/// with `complete: false`.
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    read_framed(&mut std::io::Cursor::new(raw), true)
}

/// The values of header `name` (any case), in order.
pub(super) fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `(name as received, value)` pairs.
pub(super) fn header_pairs(headers: &[httparse::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect()
}

fn eof(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string())
}

/// Reads more into `buf`; false at the end of the stream.
pub(super) fn fill(s: &mut dyn Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut tmp = [0u8; 8192];
    let n = s.read(&mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n > 0)
}

fn read_framed(s: &mut dyn Read, allow_short: bool) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 100];
        let mut head = httparse::Response::new(&mut slots);
        let parsed = head
            .parse(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let httparse::Status::Complete(head_len) = parsed else {
            if !fill(s, &mut buf)? {
                return Err(eof("connection closed before the response head"));
            }
            continue;
        };
        let status = head.code.unwrap_or(0);
        let headers: Vec<(String, String)> = header_pairs(head.headers)
            .into_iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        buf.drain(..head_len);
        if (100..200).contains(&status) {
            continue; // interim answer: the real one follows
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                match httparse::parse_chunk_size(&buf) {
                    Ok(httparse::Status::Complete((at, 0))) => {
                        buf.drain(..at);
                        break;
                    }
                    Ok(httparse::Status::Complete((at, size))) => {
                        let end = at + size as usize + 2;
                        while buf.len() < end {
                            if !fill(s, &mut buf)? {
                                return Err(eof("connection closed inside a chunk"));
                            }
                        }
                        body.extend_from_slice(&buf[at..at + size as usize]);
                        buf.drain(..end);
                    }
                    Ok(httparse::Status::Partial) => {
                        if !fill(s, &mut buf)? {
                            return Err(eof("connection closed before the last chunk"));
                        }
                    }
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "bad chunk size",
                        ))
                    }
                }
            }
            body
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while buf.len() < len {
                if !fill(s, &mut buf)? {
                    if allow_short {
                        break;
                    }
                    return Err(eof("body shorter than Content-Length"));
                }
            }
            buf.truncate(len);
            buf
        } else {
            s.read_to_end(&mut buf)?;
            buf
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}
