//! The process's exit codes, and the text of `--help` that documents them: one place for the
//! contract scripts and orchestrators read.
//!
//! A module of its own under [`crate::cli`] because the commands (`crate::tools`,
//! `crate::server`, `crate::notifications`) return these codes while the command line
//! dispatches to those commands: the commands import this file, never the dispatcher.

/// Exit code: success / signature valid / config usable / clean shutdown.
pub const EXIT_OK: i32 = 0;
/// Exit code: signature invalid (`verify`); runtime failure with a valid configuration (`run`).
pub const EXIT_INVALID: i32 = 1;
/// Exit code: usage error, or a config or key that cannot be used (every command).
pub const EXIT_USAGE: i32 = 2;

/// The exit-code rule of `run` and `check-config`, shown in `--help`; the README's table has
/// one row per code, each starting with the same headline (`tests/it/startup.rs` checks both
/// against [`EXIT_OK`], [`EXIT_INVALID`] and [`EXIT_USAGE`]).
pub const EXIT_CODES_HELP: &str = "\
Exit status (run and check-config):
  0  success: check-config found the configuration usable (warnings allowed); run stopped
     cleanly after SIGTERM/SIGINT/SIGQUIT
  1  runtime failure: the configuration is valid but the sidecar could not start or keep
     running (an address already in use, a file it must write, …)
  2  usage, configuration or key error: nothing was started; the message names the file, the
     line and what to change (check-config and run make the same checks, [store] included;
     a PostgreSQL that does not answer is only a warning: run starts without it)";
