//! Open files for the tests that hold many sockets. A normal user's soft limit is 1,024
//! (root's is often far higher, so a CI running as root never saw the problem: issue 20,
//! item 1): such a test first raises this process's soft limit to the hard limit, and when
//! even that is too low it scales its connection count down and says so on stderr. The
//! sidecars the tests start inherit the raised limit and raise their own the same way
//! (`alipay_sidecar::limits::raise_open_files_limit`, at start-up).

use std::io::Write as _;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns the soft limit now
/// in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
    let soft = lim.rlim_cur as u64;
    soft
}

/// The tests that hold hundreds of sockets take turns: two of them at once would share one
/// limit that each sized itself against.
static CROWD_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A crowd of client sockets a test may open: `n` of them, for as long as it holds this
/// (its turn among the tests that open crowds, see [`CROWD_TURN`]).
pub struct Crowd {
    /// How many client sockets the test may open.
    pub n: usize,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// How many of `wanted` client sockets `test` may open here (waiting for its turn among the
/// tests that open crowds): all of them when the (raised) limit leaves `reserve` descriptors
/// for everything else this process and the ordinary tests running beside it hold (their
/// fake gateways run in this process: a crowd that takes every descriptor makes their
/// `accept` fail); fewer
/// otherwise, said on stderr as `SCALED <test>: …` (libtest hides a passing test's
/// `eprintln!`). Under `CI=true` scaling down is a failure: CI must run the test at full size.
pub fn scaled_connections(test: &str, wanted: usize, reserve: u64) -> Crowd {
    let turn = CROWD_TURN.lock().unwrap_or_else(|p| p.into_inner());
    let limit = raise_nofile();
    let fits = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    if fits >= wanted {
        return Crowd {
            n: wanted,
            _turn: turn,
        };
    }
    let why = format!(
        "{fits} connections instead of {wanted}: the open-files limit is {limit} even after \
         raising the soft limit to the hard limit (`ulimit -Hn`; `ulimit -n 4096` runs it at full size)"
    );
    assert!(
        !super::under_ci(),
        "CI=true: {test} must run at full size, but {why}"
    );
    let _ = writeln!(std::io::stderr().lock(), "SCALED {test}: {why}");
    Crowd {
        n: fits,
        _turn: turn,
    }
}
