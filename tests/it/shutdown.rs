//! Graceful shutdown: SIGTERM drains the requests in flight, then the process exits 0.

use crate::support::pay;
use crate::support::{assert_verified_ok, start, DEADLINE, FLAT_KEYS, JSON_LOGS};
use crate::support::{request, Rig};

// ---------------------------------------------------------------- 6. graceful shutdown

#[test]
fn sigterm_drains_a_slow_in_flight_request_then_exits_zero() {
    let mut rig = start(
        FLAT_KEYS,
        &format!("{JSON_LOGS}[server]\nshutdown_grace = \"1s\"\nshutdown_timeout = \"10s\"\n"),
        |_| {},
        |_| {},
    );
    let outbound = rig.outbound;
    let slow =
        std::thread::spawn(move || pay(outbound, "pay_slow", r#","mockFault":"delay:1500""#));
    let in_flight = |rig: &Rig| {
        rig.scrape().sum(
            "alipay_sidecar_in_flight_requests",
            &[("direction", "outbound")],
        )
    };
    rig.eventually("the slow request is in flight", || {
        (in_flight(&rig) >= 1.0).then_some(())
    });

    rig.sidecar.signal("TERM");
    // readiness turns 503 while the process still answers (a response proves it is alive)
    rig.eventually("/readyz turns 503 during the drain", || {
        match request(rig.sidecar.admin, "GET", "/readyz", &[], b"") {
            Ok(r) if r.status == 503 => Some(()),
            Ok(_) => None,
            Err(e) => panic!(
                "the admin listener stopped before readiness turned 503: {e}\n{}",
                rig.sidecar.logs()
            ),
        }
    });
    let r = slow.join().unwrap();
    assert_verified_ok(&r, "the slow in-flight request", &rig.sidecar);
    assert_eq!(r.json()["paymentRequestId"], "pay_slow");
    let code = rig.sidecar.wait_exit(DEADLINE);
    assert_eq!(
        code,
        Some(0),
        "exit code after a graceful shutdown\n{}",
        rig.sidecar.logs()
    );
    let logs = rig.sidecar.logs();
    assert!(logs.contains("all in-flight requests finished"), "{logs}");
}
