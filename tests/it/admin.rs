//! The admin listener: /healthz, /readyz, /metrics, POST /admin/reload, who may reach it, and
//! the `healthcheck` subcommand that probes it.

use std::io::{Read, Write};
use std::net::TcpListener;

use crate::inbound::start;
use crate::startup::{run, text, Setup};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::support::Sample;
use crate::support::{
    alipay_fingerprint, assert_verified_ok, flat, merchant_fingerprint, KeyMetrics,
};
use crate::support::{bin, request, App, Behaviour};

// ---------------------------------------------------------------- 1. admin listener

#[test]
fn admin_endpoints_metrics_and_healthcheck_subcommand() {
    let rig = flat();
    let admin = rig.sidecar.admin;
    let get = |path: &str| request(admin, "GET", path, &[], b"").unwrap();

    let h = get("/healthz");
    assert_eq!(h.status, 200, "/healthz");
    assert_eq!(get("/readyz").status, 200, "/readyz");
    assert_eq!(get("/no/such/path").status, 404);
    assert_eq!(
        request(admin, "POST", "/healthz", &[], b"").unwrap().status,
        405
    );
    assert_eq!(
        request(admin, "GET", "/admin/reload", &[], b"")
            .unwrap()
            .status,
        405,
        "reload is POST only"
    );

    let m = rig.scrape();
    let build: Vec<&Sample> = m.matching("alipay_sidecar_build_info", &[]).collect();
    assert_eq!(build.len(), 1, "{}", m.text);
    assert_eq!(
        build[0].labels.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(build[0].labels.contains_key("git_commit"));
    assert_eq!(build[0].value, 1.0);
    let expected: BTreeSet<_> = [
        (
            "merchant_private".to_string(),
            "1".to_string(),
            merchant_fingerprint(),
        ),
        (
            "alipay_public".to_string(),
            "1".to_string(),
            alipay_fingerprint(),
        ),
    ]
    .into();
    assert_eq!(m.key_info(), expected, "{}", m.text);
    assert!(
        m.sum("alipay_sidecar_key_last_reload_timestamp_seconds", &[]) > 1.6e9,
        "keys loaded at start-up are stamped"
    );
    let pay_labels = [("direction", "outbound"), ("api", "payments/pay")];
    assert_eq!(
        m.sum("alipay_sidecar_requests_total", &pay_labels),
        0.0,
        "no traffic yet"
    );

    let r = rig.pay("pay_admin_1", "");
    assert_verified_ok(&r, "pay", &rig.sidecar);
    // the request is counted in the logging phase, right after the answer: poll
    let m = rig.eventually("requests_total for the pay", || {
        let m = rig.scrape();
        (m.sum(
            "alipay_sidecar_requests_total",
            &[
                ("direction", "outbound"),
                ("api", "payments/pay"),
                ("outcome", "verified"),
                ("status", "200"),
            ],
        ) == 1.0)
            .then_some(m)
    });
    assert_eq!(
        m.sum("alipay_sidecar_requests_total", &pay_labels),
        1.0,
        "{}",
        m.text
    );
    assert!(
        m.sum("alipay_sidecar_request_duration_seconds_count", &pay_labels) >= 1.0,
        "{}",
        m.text
    );

    // the container HEALTHCHECK
    let healthcheck = |url: &str| {
        Command::new(bin())
            .args(["healthcheck", "--url", url])
            .output()
            .unwrap()
    };
    let ok = healthcheck(&format!("http://{admin}/readyz"));
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let down = App::down(Behaviour::Ack); // holds a port, listens on none
    let closed = healthcheck(&format!("{}/readyz", down.url()));
    assert_eq!(closed.status.code(), Some(1), "a closed port is unhealthy");
    assert!(!closed.stderr.is_empty(), "says why");
    let not_found = healthcheck(&format!("http://{admin}/nope"));
    assert_eq!(not_found.status.code(), Some(1), "only 200 is healthy");
}

#[test]
fn the_admin_listener_refuses_browsers_and_foreign_hosts() {
    let app = App::start(Behaviour::Ack);
    let s = start(&app.url(), "");
    let admin = s.sidecar.admin;
    let reloads = |s: &crate::inbound::Setup| s.sidecar.logs().matches("admin endpoint").count();
    let before = reloads(&s);
    let refused = [
        (
            "POST",
            "/admin/reload",
            vec![("Origin", "https://evil.example")],
            "SIDECAR_BROWSER_REQUEST_REFUSED",
        ),
        (
            "POST",
            "/admin/reload",
            vec![("Sec-Fetch-Site", "cross-site")],
            "SIDECAR_BROWSER_REQUEST_REFUSED",
        ),
        (
            "POST",
            "/admin/reload",
            vec![("Host", "evil.example")],
            "SIDECAR_HOST_NOT_ALLOWED",
        ),
        (
            "GET",
            "/metrics",
            vec![("Host", "rebound.evil.example:9090")],
            "SIDECAR_HOST_NOT_ALLOWED",
        ),
        (
            "GET",
            "/metrics",
            vec![("Sec-Fetch-Site", "same-site")],
            "SIDECAR_BROWSER_REQUEST_REFUSED",
        ),
    ];
    for (method, path, headers, code) in refused {
        let r = request(admin, method, path, &headers, b"").unwrap();
        assert_eq!(r.status, 403, "{method} {path} {headers:?}");
        assert_eq!(r.header("x-alipay-sidecar-error"), Some(code));
        assert!(
            !String::from_utf8_lossy(&r.body).contains("alipay_sidecar_"),
            "no metrics under a refused request"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reloads(&s), before, "no reload was triggered");
    // probes, scrapers and an operator's browser tab still work
    assert_eq!(s.sidecar.admin_get("/metrics").status, 200);
    for host in ["localhost:9090", "10.0.0.7:9090", "[::1]"] {
        let r = request(admin, "GET", "/healthz", &[("Host", host)], b"").unwrap();
        assert_eq!(r.status, 200, "Host {host}");
    }
    let r = request(
        admin,
        "GET",
        "/metrics",
        &[("Sec-Fetch-Site", "none"), ("Sec-Fetch-Mode", "navigate")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let r = request(admin, "POST", "/admin/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200);
}

/// Answers every connection with `answer`, or (`None`) accepts and stays silent. Serves
/// every connection, so a stray one from a parallel test cannot take the test's turn.
fn serve(answer: Option<&'static str>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf);
                match answer {
                    Some(a) => {
                        let _ = tcp.write_all(a.as_bytes());
                    }
                    // hold the connection until the client gives up
                    None => while tcp.read(&mut buf).is_ok_and(|n| n > 0) {},
                }
            });
        }
    });
    port
}

#[test]
fn healthcheck_takes_the_admin_address_from_the_config_and_has_a_timeout() {
    let port = serve(Some("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
    let s = Setup::new("T_111222333", "");
    // A wildcard admin address, as in a container: probed on loopback.
    s.set_admin(&format!("0.0.0.0:{port}"));
    let out = run(&["healthcheck", "--config", &s.path()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A listener that never answers: the timeout ends the probe, unhealthy.
    let port = serve(None);
    let url = format!("http://127.0.0.1:{port}/readyz");
    let out = run(&["healthcheck", "--url", &url, "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no answer"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["healthcheck", "--timeout", "soon"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad duration is a usage error"
    );
    let out = run(&["healthcheck", "--url", &url, "--config", &s.path()]);
    assert_eq!(out.status.code(), Some(2), "--url and --config conflict");
}
