//! A small closed-loop load generator for the sidecar's outbound listener: N keep-alive
//! connections, each sending POSTs back to back for a fixed time, on loopback only.
//! Used by `scripts/load.sh`; prints requests/s and latency percentiles.
//!
//! `cargo run --release --example load -- ADDR PATH SECONDS CONNECTIONS`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: load ADDR PATH SECONDS CONNECTIONS (ADDR must be a 127.0.0.0/8 address)");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR like 127.0.0.1:8080");
    assert!(addr.ip().is_loopback(), "load tests target loopback only");
    let path = args[2].clone();
    let secs: u64 = args[3].parse().expect("SECONDS");
    let conns: usize = args[4].parse().expect("CONNECTIONS");
    let deadline = Instant::now() + Duration::from_secs(secs.min(120));
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || run(addr, &path, deadline, w))
        })
        .collect();
    let mut lat: Vec<Duration> = Vec::new();
    let (mut ok, mut other) = (0usize, 0usize);
    for w in workers {
        let (l, o, x) = w.join().expect("worker");
        lat.extend(l);
        ok += o;
        other += x;
    }
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{} requests in {secs}s over {conns} connections: {:.0} req/s; ok {ok}, other {other}; latency p50 {:.2} ms, p99 {:.2} ms",
        ok + other,
        (ok + other) as f64 / secs as f64,
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0
    );
}

/// One keep-alive connection; returns (latencies, ok count, other count).
fn run(
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
    worker: usize,
) -> (Vec<Duration>, usize, usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).ok();
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let (mut lat, mut ok, mut other) = (Vec::new(), 0, 0);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let body = format!(
            r#"{{"paymentRequestId":"load-{worker}-{n}","paymentAmount":{{"currency":"USD","value":"100"}}}}"#
        );
        let req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let start = Instant::now();
        writer.write_all(req.as_bytes()).expect("write");
        let (status, verified) = read_response(&mut reader);
        lat.push(start.elapsed());
        if status == 200 && verified {
            ok += 1;
        } else {
            other += 1;
        }
    }
    (lat, ok, other)
}

fn read_response(r: &mut BufReader<TcpStream>) -> (u16, bool) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut len, mut verified) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        // "true" (signed and verified) or "unsigned-failure" (the gateway's unsigned F rejection)
        verified |= lower.starts_with("x-alipay-sidecar-verified:");
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    (status, verified)
}
