//! HTTP/1.1 read as bytes (httparse): the [`Response`] every helper returns, read from a stream
//! or parsed from everything read until the peer closed, and the header helpers.

use std::io::Read;

/// A response: from an HTTP client or from the raw helpers here.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes (de-chunked).
    pub body: Vec<u8>,
    /// The body is as long as its framing announced (false only from [`parse_response`]).
    pub complete: bool,
}

impl Response {
    /// First header value by name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }

    /// Fails unless the status is `status`, showing `what` and the body.
    pub fn assert_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `(result.resultStatus, result.resultCode)` of a JSON body ("" when absent).
    pub fn result_code(&self) -> (String, String) {
        let v = self.json();
        let s = |f: &str| v["result"][f].as_str().unwrap_or("").to_string();
        (s("resultStatus"), s("resultCode"))
    }
}

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
pub fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `(name as received, value)` pairs.
pub fn header_pairs(headers: &[httparse::Header]) -> Vec<(String, String)> {
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
pub fn fill(s: &mut dyn Read, buf: &mut Vec<u8>) -> std::io::Result<bool> {
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
        let mut complete = true;
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
                        complete = false;
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
            complete,
        });
    }
}
