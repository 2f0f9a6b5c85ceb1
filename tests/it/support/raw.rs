//! Raw bytes for what a client library would refuse to send: any framing, a bent
//! target or Host header, malformed on purpose.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use test_support::{read_response, Response};

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
