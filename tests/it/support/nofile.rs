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

/// How many of `wanted` client sockets `test` may open here: all of them when the (raised)
/// limit leaves `reserve` descriptors for everything else this process and the tests running
/// beside it hold; fewer otherwise, said on stderr as `SCALED <test>: …` (libtest hides a
/// passing test's `eprintln!`). Under `CI=true` scaling down is a failure: CI must run the
/// test at full size.
pub fn scaled_connections(test: &str, wanted: usize, reserve: u64) -> usize {
    let limit = raise_nofile();
    let fits = usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX);
    if fits >= wanted {
        return wanted;
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
    fits
}
