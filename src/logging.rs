//! Structured logs (tracing): JSON when stdout is not a terminal, text otherwise, or as
//! configured; level from `RUST_LOG` when set, else `[log] level`. pingora's own `log`
//! records are bridged into the same output.
//!
//! What is never logged: key material, `Signature` header values, bodies at info level.
//! Request lines carry direction, api, status, outcome, durations and sizes; the content
//! SHA-256 appears with verification failures so two sides can compare.
//!
//! `Signature` values and API keys are kept out at every level, also from pingora's own trace
//! output (which prints whole header maps): every line goes through [`Redacting`], which
//! replaces the value after any `signature=`, `Bearer ` or `isak_`/`irak_` with `<redacted>`
//! before it is written. pingora's
//! per-connection "Fail to proxy" errors are off by default (`pingora_proxy=off`): each
//! request already has the sidecar's own log line, and connections closed for breaking a
//! limit are logged at most once per second with a count ([`Throttle`]). `RUST_LOG`
//! replaces the default filter, redaction stays.
//!
//! One pingora ERROR line is demoted to DEBUG on its way in ([`DemoteKnownNoise`]):
//! `failed to acquire reusable stream` (pingora-core 0.9's connector, `reused_stream`). It
//! means a pooled gateway connection could not be taken back from the pool (its idle watcher
//! still held it, or it had gone stale); the connector then drops it and opens a new
//! connection, and the request goes on. It is not an error of the request: a request that
//! then fails gets the sidecar's own line with the real cause.
//!
//! Off the request path: a log line is formatted by tracing's fmt layer into its reused
//! per-thread buffer and copied into a bounded queue ([`LOG_QUEUE_BYTES`]); one writer
//! thread ([`queue`]) redacts them and writes them to stdout, one `write` per batch of
//! lines. A worker thread never waits on stdout: when the queue is full
//! (stdout blocked or far slower than the traffic) the line is dropped and counted in
//! `alipay_sidecar_log_lines_dropped_total`, not queued without bound. The queue is flushed
//! when the [`LogGuard`] that [`init`] returns is dropped: keep it until the process exits.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub mod queue;
use queue::{LogQueue, QueueGuard};

/// Bytes the log queue holds before it drops lines (≈ 2,000 JSON request lines, ≈ 0.4 s of
/// stalled stdout at the inbound listener's full rate on one core); allocated only as lines
/// arrive, so idle memory does not pay for it.
pub const LOG_QUEUE_BYTES: usize = 1024 * 1024;

/// Keeps the log writer thread alive; dropping it writes out what is still queued (waiting at
/// most a second). `None` when a subscriber was already installed.
#[must_use = "dropping the guard stops the log writer: keep it until the process exits"]
pub struct LogGuard(#[allow(dead_code)] Option<QueueGuard>);

/// Installs the global subscriber once; later calls are no-ops. Fails only when the log
/// writer thread cannot be started (the process is out of threads or memory).
pub fn init(cfg: &LogConfig) -> std::io::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},pingora_core=warn,pingora_proxy=off", cfg.level))
    });
    let json = match cfg.format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !std::io::stdout().is_terminal(),
    };
    // Redaction runs on the writer thread, off the worker, over each batch (a value never
    // runs past the end of its line: see `redact_signatures`).
    let (queue, guard) = LogQueue::start(Redacting(std::io::stdout()), LOG_QUEUE_BYTES)?;
    let dropped = queue.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || queue.clone())
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let installed = if json {
        tracing::subscriber::set_global_default(builder.json().flatten_event(true).finish())
    } else {
        tracing::subscriber::set_global_default(builder.finish())
    };
    if installed.is_ok() {
        // what `try_init` does for `log` records, through the demotion
        use tracing_log::AsLog as _;
        if log::set_boxed_logger(Box::new(DemoteKnownNoise(tracing_log::LogTracer::new()))).is_ok()
        {
            log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
        }
        let counter = crate::metrics::FnCounter::new(
            "alipay_sidecar_log_lines_dropped_total",
            "Log lines dropped because the log queue was full (stdout blocked or slower than the traffic).",
            move || dropped.dropped(),
        );
        match counter.map(|c| crate::metrics::metrics().register(Box::new(c))) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "registering the dropped-lines counter failed")
            }
            Err(error) => tracing::error!(%error, "registering the dropped-lines counter failed"),
        }
        Ok(LogGuard(Some(guard)))
    } else {
        Ok(LogGuard(None))
    }
}

/// `log` records that pingora logs at ERROR although nothing failed: (target prefix, message).
const KNOWN_NOISE: &[(&str, &str)] = &[(
    "pingora_core::connectors",
    "failed to acquire reusable stream",
)];

/// A `log` bridge that passes every record on to `inner` unchanged, except the
/// [`KNOWN_NOISE`] ones, which go on at DEBUG (see the module doc).
pub struct DemoteKnownNoise<L>(pub L);

impl<L> DemoteKnownNoise<L> {
    fn is_noise(record: &log::Record<'_>) -> bool {
        record.level() <= log::Level::Warn
            && KNOWN_NOISE.iter().any(|(target, message)| {
                record.target().starts_with(target)
                    && record
                        .args()
                        .as_str()
                        .map_or_else(|| record.args().to_string() == *message, |s| s == *message)
            })
    }
}

impl<L: log::Log> log::Log for DemoteKnownNoise<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // a demoted record is asked about again at DEBUG in `log`
        self.0.enabled(metadata)
            || (metadata.level() <= log::Level::Warn
                && self.0.enabled(
                    &log::Metadata::builder()
                        .level(log::Level::Debug)
                        .target(metadata.target())
                        .build(),
                ))
    }

    fn log(&self, record: &log::Record<'_>) {
        if !Self::is_noise(record) {
            return self.0.log(record);
        }
        self.0.log(
            &log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// A writer that removes `Signature` values from each formatted line (tracing's fmt layer
/// writes one event per `write` call) before passing it on.
pub struct Redacting<W>(pub W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let redacted = redact_signatures(buf);
        self.0.write_all(&redacted)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `buf` with every secret-like value replaced by `<redacted>` (case-insensitive markers):
/// the value after `signature=` (the `signature=` field of a `Signature` header, base64 or
/// percent-encoded base64), after `Bearer `/`Basic ` (an `Authorization` or
/// `Proxy-Authorization` header: the app's or the sidecar's API key, proxy credentials),
/// after `isak_`/`irak_` (an API key wherever it appears, e.g. in an echoed error) and a
/// `Cookie` header's value in pingora's header dumps (`cookie": "…` / `cookie: …`).
pub fn redact_signatures(buf: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    // (marker, whether the value may hold spaces and `;`: a cookie header's whole value)
    const NEEDLES: [(&[u8], bool); 8] = [
        (b"signature=", false),
        (b"bearer ", false),
        (b"basic ", false),
        (b"isak_", false),
        (b"irak_", false),
        (b"cookie\\\": \\\"", true),
        (b"cookie\": \"", true),
        (b"cookie: ", true),
    ];
    let is_token = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'\'' | b',' | b'}');
    let is_text = |b: u8| (b.is_ascii_graphic() || b == b' ') && !matches!(b, b'"' | b'\\');
    // One pass over the line, trying the needles only where one could start (no two start at
    // the same place): eight scans of every line were ≈ 3 % of the inbound CPU.
    let find = |from: usize| {
        (from..buf.len()).find_map(|at| {
            if !matches!(buf[at] | 0x20, b's' | b'b' | b'i' | b'c') {
                return None;
            }
            let rest = &buf[at..];
            NEEDLES
                .iter()
                .find(|(needle, _)| {
                    rest.len() >= needle.len() && rest[..needle.len()].eq_ignore_ascii_case(needle)
                })
                .map(|(needle, text)| (at, needle.len(), *text))
        })
    };
    let Some((mut at, mut len, mut text)) = find(0) else {
        return std::borrow::Cow::Borrowed(buf);
    };
    let mut out = Vec::with_capacity(buf.len());
    let mut copied = 0;
    loop {
        let value_start = at + len;
        let mut end = value_start;
        let is_value = if text { is_text } else { is_token };
        while end < buf.len() && is_value(buf[end]) {
            end += 1;
        }
        out.extend_from_slice(&buf[copied..value_start]);
        if end > value_start {
            out.extend_from_slice(b"<redacted>");
        }
        copied = end;
        match find(end) {
            Some((next, l, t)) => (at, len, text) = (next, l, t),
            None => break,
        }
    }
    out.extend_from_slice(&buf[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Lets a log line through at most once per second, counting the events in between, so a
/// flood of bad connections or requests cannot flood the logs.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

impl Throttle {
    /// A throttle that lets the first event through.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one event; `Some(n)` (the events since the last line, this one included) when
    /// a line should be written now.
    pub fn hit(&self) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.1 += 1;
        if g.0.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        g.0 = Some(Instant::now());
        Some(std::mem::take(&mut g.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_values_are_redacted() {
        let line = br#"{"signature": "algorithm=RSA256,keyVersion=1,signature=ab%2Bc/d=="} Signature=XYZ end"#;
        let out = redact_signatures(line);
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("ab%2Bc") && !text.contains("XYZ"), "{text}");
        assert!(
            text.contains("signature=<redacted>\"}") && text.contains("Signature=<redacted> end")
        );
        assert!(matches!(
            redact_signatures(b"no secrets"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Records the level of every record it is given.
    struct Levels(Mutex<Vec<(log::Level, String)>>);

    impl log::Log for Levels {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((record.level(), record.args().to_string()));
        }
        fn flush(&self) {}
    }

    #[test]
    fn pingoras_reusable_stream_error_is_demoted_to_debug_and_nothing_else_is() {
        use log::Log as _;
        let bridge = DemoteKnownNoise(Levels(Mutex::new(Vec::new())));
        let record = |level, target: &str, args: std::fmt::Arguments<'_>| {
            bridge.log(
                &log::Record::builder()
                    .level(level)
                    .target(target)
                    .args(args)
                    .build(),
            )
        };
        // as pingora-core 0.9.1 writes it (src/connectors/mod.rs, `reused_stream`)
        record(
            log::Level::Error,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream"),
        );
        // other errors of the same module, and the same text elsewhere, stay errors
        record(
            log::Level::Error,
            "pingora_core::connectors",
            format_args!("failed to connect: {}", 7),
        );
        record(
            log::Level::Error,
            "other_crate",
            format_args!("failed to acquire reusable stream"),
        );
        let got = bridge.0 .0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                (
                    log::Level::Debug,
                    "failed to acquire reusable stream".to_string()
                ),
                (log::Level::Error, "failed to connect: 7".to_string()),
                (
                    log::Level::Error,
                    "failed to acquire reusable stream".to_string()
                ),
            ]
        );
    }

    #[test]
    fn api_keys_and_bearer_values_are_redacted() {
        let line = br#"{"authorization": "Bearer isak_TEST_VF8x_s3cr3t"} authorization: bearer app-s3cr3t, irak_PROD_eDE_k3y_2 end {\"proxy-authorization\": \"Basic s3cr3t\", \"cookie\": \"a=s3cr3t; b=s3cr3t\"} cookie: x=s3cr3t {"cookie": "y=s3cr3t"}"#;
        let text = String::from_utf8_lossy(&redact_signatures(line)).into_owned();
        assert!(
            !text.contains("s3cr3t") && !text.contains("k3y") && !text.contains("VF8x"),
            "{text}"
        );
        assert!(
            text.contains("\"Bearer <redacted>\"}") && text.contains("irak_<redacted> end"),
            "{text}"
        );
    }

    #[test]
    fn throttle_lets_one_line_a_second_through_with_a_count() {
        let t = Throttle::new();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        t.state.lock().unwrap().0 = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(
            t.hit(),
            Some(3),
            "the suppressed events are counted in the next line"
        );
    }
}
