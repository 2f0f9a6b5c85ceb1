//! pingora's own floor: a stock pingora-proxy with nothing of the sidecar in it, for
//! `benches/sidecar.sh` (issue 23, "why it cannot go lower on pingora").
//!
//! Why: the sidecar is built on pingora, so the CPU a request costs can go no lower than what
//! pingora itself spends to accept the request, find a pooled upstream connection, forward
//! the request and relay the answer. This binary is the canonical `pingora-proxy` example
//! (one `upstream_peer` hook, nothing else: no signing, verification, buffering, logging or
//! metrics) with the sidecar's settings (one thread, the plain listener without pingora's L4
//! read buffer and with an 8 KiB write buffer, aws-lc for TLS, the gateway's CA), measured in
//! the same run as the sidecar and nginx. What the sidecar costs above it is the sidecar's.
//!
//! usage: pingora_floor INBOUND_LISTEN APP_ADDR OUTBOUND_LISTEN GATEWAY_ADDR CA_FILE
//!   INBOUND_LISTEN → APP_ADDR over plain HTTP (the inbound floor), OUTBOUND_LISTEN →
//!   GATEWAY_ADDR over TLS verified with CA_FILE (the outbound floor; the SNI is the IP).
//!
//! usage: pingora_floor speed PRIVATE_KEY_PEM SECONDS
//!   the sidecar's own engine (aws-lc through `ams-signature`, the key parsed once as at
//!   start): signs and verifies a pay request's content for SECONDS each and prints
//!   `engine sign <µs> verify <µs>`, so the harness can set it beside `openssl speed` on the
//!   same CPU in the same run (a sign the engine cannot do faster is not the sidecar's cost).
//!
//! Built and started by the harness (`cargo bench --no-run --bench pingora_floor`); not a
//! test and not shipped.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// Forwards every request to one peer: `upstream_peer` is the only hook.
struct Floor {
    addr: SocketAddr,
    tls: bool,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let sni = if self.tls {
            self.addr.ip().to_string()
        } else {
            String::new()
        };
        Ok(Box::new(HttpPeer::new(self.addr, self.tls, sni)))
    }
}

/// `speed`: the engine's sign and verify time, each the mean over `seconds` of work.
fn speed(key_file: &str, seconds: f64) {
    use alipay_sidecar::protocol::{content_to_sign, PrivateKey};
    use std::time::{Duration, Instant};
    let text = std::fs::read_to_string(key_file).unwrap_or_else(|e| {
        eprintln!("pingora_floor: {key_file}: {e}");
        std::process::exit(2)
    });
    let key = PrivateKey::from_text(&text).unwrap_or_else(|e| {
        eprintln!("pingora_floor: {key_file}: {e}");
        std::process::exit(2)
    });
    let public = key.public_key();
    let body = br#"{"productCode":"CASHIER_PAYMENT","paymentRequestId":"pay_bench_1","paymentAmount":{"currency":"USD","value":"1000"}}"#;
    let content = content_to_sign(
        "POST",
        "/ams/api/v1/payments/pay",
        "BENCH_CLIENT_ID",
        "1714538096000",
        body,
    );
    let budget = Duration::from_secs_f64(seconds);
    let (mut n, start) = (0u32, Instant::now());
    let mut signature = Vec::new();
    while n == 0 || start.elapsed() < budget {
        signature = key.sign(std::hint::black_box(&content)).expect("sign");
        n += 1;
    }
    let sign_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let (mut m, start) = (0u32, Instant::now());
    while m == 0 || start.elapsed() < budget {
        assert!(public.verify_raw(std::hint::black_box(&content), &signature));
        m += 1;
    }
    let verify_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(m);
    println!("engine sign {sign_us:.1} verify {verify_us:.1}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, key, seconds] = args.as_slice() {
        if mode == "speed" {
            let Ok(seconds) = seconds.parse::<f64>() else {
                eprintln!("pingora_floor speed: SECONDS must be a number, not {seconds:?}");
                std::process::exit(2);
            };
            speed(key, seconds);
            return;
        }
    }
    let [inbound, app, outbound, gateway, ca] = args.as_slice() else {
        eprintln!(
            "usage: pingora_floor INBOUND_LISTEN APP_ADDR OUTBOUND_LISTEN GATEWAY_ADDR CA_FILE"
        );
        std::process::exit(2);
    };
    let parse = |s: &str| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("pingora_floor: {s}: {e}");
            std::process::exit(2)
        })
    };
    // the sidecar's TLS library (src/tls.rs) and its pingora settings (src/server.rs)
    alipay_sidecar::tls::install_tls_provider();
    let mut conf = ServerConf {
        threads: 1,
        ..Default::default()
    };
    conf.ca_file = Some(ca.clone());
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    let tmp = std::env::temp_dir();
    conf.upgrade_sock = tmp
        .join(format!("pingora-floor-{}.sock", std::process::id()))
        .display()
        .to_string();
    conf.pid_file = tmp
        .join(format!("pingora-floor-{}.pid", std::process::id()))
        .display()
        .to_string();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = Arc::clone(&server.configuration);
    for (listen, peer, tls, name) in [
        (inbound, app, false, "floor inbound"),
        (outbound, gateway, true, "floor outbound"),
    ] {
        let mut service = pingora::proxy::http_proxy_service_with_name(
            &conf,
            Floor {
                addr: parse(peer),
                tls,
            },
            name,
        );
        // the sidecar's plain listener (src/listen.rs)
        service.add_listener(ListenerConfig::tcp(parse(listen).to_string()).l4_buffer(
            L4BufferSettings {
                read: Some(0),
                write: Some(8 * 1024),
            },
        ));
        server.add_service(service);
    }
    server.run_forever();
}
