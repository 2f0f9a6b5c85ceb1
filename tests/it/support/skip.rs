//! The one way a test that cannot run here says so: `SKIPPED <test>: <why>` on the real
//! stderr, where a person running `cargo test` sees it; under `CI=true` a failure instead
//! (CI provides everything, so a missing piece there is a broken CI, not a reason to pass).
//!
//! Written straight to the process's stderr, not through `eprintln!`: libtest captures
//! `eprintln!` and shows it only for failing tests, which made a test that did not run look
//! like `ok` (issue 20, item 4). Used by every test with a precondition outside the
//! repository: the Python SDK venvs and port 443, the PostgreSQL server.

use std::io::Write as _;

/// Whether this run is CI's (`CI=true`), where nothing may skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Says that `test` cannot run here and why: panics under CI; elsewhere prints `SKIPPED
/// <test>: <why>` (the name libtest gave the test's thread when there is one, which is the
/// full `module::test` path) and returns, so the caller returns early.
pub fn skip(test: &str, why: &str) {
    let thread = std::thread::current();
    let name = thread
        .name()
        .filter(|n| n.ends_with(test) && *n != "main")
        .unwrap_or(test);
    assert!(!under_ci(), "CI=true: {name} must run, but {why}");
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {name}: {why}");
}

/// The helper as a person sees it: this test binary run again on one PostgreSQL test without
/// a server says `SKIPPED <full test name>: <why>` on stderr and passes; under `CI=true` the
/// same run fails and says what is missing.
#[test]
fn a_test_that_cannot_run_says_skipped_outside_ci_and_fails_under_ci() {
    const TEST: &str = "journal::two_replicas_on_one_postgresql_deliver_once";
    let run = |ci: Option<&str>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([TEST, "--exact", "--test-threads=1"])
            .env_remove("SIDECAR_TEST_PG_URL")
            .env_remove("CI");
        if let Some(ci) = ci {
            cmd.env("CI", ci);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(None);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "SKIPPED {TEST}: SIDECAR_TEST_PG_URL is not set (export SIDECAR_TEST_PG_URL="
        )),
        "{stderr}"
    );
    let (ok, stdout, stderr) = run(Some("true"));
    assert!(!ok, "under CI=true it must fail: {stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains(&format!(
            "CI=true: {TEST} must run, but SIDECAR_TEST_PG_URL is not set"
        )),
        "{stdout}{stderr}"
    );
}

/// No test reads `CI` or prints its own skip line: they all go through [`skip`] (the
/// state-store crate's tests, which cannot reach this file, print the same words).
#[test]
fn every_test_skips_through_the_one_helper() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    let mut stack = vec![root.join("tests/it")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("skip.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in ["var(\"CI\")", "\"skipping", "\"SKIPPED"] {
                    if text.contains(needle) {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "skip through support::skip: {offenders:#?}"
    );
}
