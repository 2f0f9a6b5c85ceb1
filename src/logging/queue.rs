//! The log queue: lines leave the request worker as a memory copy and reach stdout from one
//! writer thread, in batches (issue 23).
//!
//! Why not `tracing-appender`'s non-blocking writer, which this replaced: it wakes its writer
//! thread for every line (a `futex` wake on the worker, then the writer's spin-and-yield
//! before it parks again), which the harness measured as ≈ 6 extra syscalls per request at
//! one connection, more than the whole write it saved. Here the writer thread is woken only
//! when a batch starts (the queue goes from empty to not empty while it sleeps), then waits
//! [`BATCH_WINDOW`] so the lines of the next few requests go out with the same `write`.
//! Idle, it sleeps without a timer.
//!
//! Bounded and lossy: a line that would take the queue over its byte limit (stdout blocked
//! or far slower than the traffic) is dropped whole and counted; a worker never waits on
//! stdout, only on the queue's lock, which the writer holds for a buffer swap.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long the writer thread collects lines after the first one of a batch: a few
/// milliseconds of delay in the log for one `write` per batch instead of one per line.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// What the workers and the writer thread share.
struct Shared {
    /// Lines not yet taken by the writer thread, and whether it should stop.
    pending: Mutex<Pending>,
    /// Wakes the writer thread when a batch starts or at shutdown.
    wake: Condvar,
    /// The most bytes `pending` holds.
    limit: usize,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer thread is waiting on `wake` (a batch start must wake it).
    parked: bool,
    stop: bool,
}

/// The workers' side: one `write` call is one log line (tracing's fmt layer writes each event
/// with one `write_all`, and this writer always takes the whole buffer).
#[derive(Clone)]
pub struct LogQueue(Arc<Shared>);

impl LogQueue {
    /// Starts the writer thread in front of `out`; lines beyond `limit` queued bytes are
    /// dropped. Dropping the [`QueueGuard`] writes out what is queued and stops the thread.
    pub fn start<W: Write + Send + 'static>(
        out: W,
        limit: usize,
    ) -> std::io::Result<(LogQueue, QueueGuard)> {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Condvar::new(),
            limit,
            dropped: AtomicU64::new(0),
        });
        let (done, finished) = mpsc::channel();
        std::thread::Builder::new()
            .name("alipay-sidecar-log".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    drain(&shared, out);
                    let _ = done.send(());
                }
            })?;
        Ok((LogQueue(shared.clone()), QueueGuard { shared, finished }))
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Write for LogQueue {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let Ok(mut p) = self.0.pending.lock() else {
            return Ok(line.len()); // the writer thread panicked: logs are lost, work goes on
        };
        if p.bytes.len() + line.len() > self.0.limit {
            drop(p);
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let starts_batch = p.bytes.is_empty() && p.parked;
        p.bytes.extend_from_slice(line);
        drop(p);
        if starts_batch {
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: waits for a batch, lets it gather for [`BATCH_WINDOW`], swaps it out
/// and writes it with one `write_all`; at stop, writes what is left and returns.
fn drain<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let stop = {
            let Ok(mut p) = shared.pending.lock() else {
                return;
            };
            while p.bytes.is_empty() && !p.stop {
                p.parked = true;
                p = match shared.wake.wait(p) {
                    Ok(p) => p,
                    Err(_) => return,
                };
            }
            p.parked = false;
            p.stop
        };
        if !stop {
            std::thread::sleep(BATCH_WINDOW);
        }
        let stop = {
            let Ok(mut p) = shared.pending.lock() else {
                return;
            };
            std::mem::swap(&mut p.bytes, &mut batch);
            p.stop && p.bytes.is_empty()
        };
        // a failed write (stdout closed) loses this batch, as a blocking writer would
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if stop {
            return;
        }
    }
}

/// How long dropping the [`QueueGuard`] waits for stdout to take the last batch: a blocked
/// stdout must not hold up the exit.
const FINAL_WRITE_WAIT: Duration = Duration::from_secs(1);

/// Keeps the writer thread; dropping it writes out the queue, waiting at most
/// [`FINAL_WRITE_WAIT`] for stdout to take it.
#[must_use = "dropping the guard stops the log writer: keep it until the process exits"]
pub struct QueueGuard {
    shared: Arc<Shared>,
    finished: Receiver<()>,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.stop = true;
        }
        self.shared.wake.notify_one();
        let _ = self.finished.recv_timeout(FINAL_WRITE_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Whether the gate is open, and the bytes of each `write` call.
    type Gate = (Mutex<(bool, Vec<Vec<u8>>)>, Condvar);

    /// An output (stdout stand-in) whose writes wait until its gate opens, telling when one
    /// is waiting, and keeping each `write` call's bytes apart.
    #[derive(Clone, Default)]
    struct Recorder {
        state: Arc<Gate>,
        waiting: Arc<AtomicBool>,
    }

    impl Recorder {
        fn open(&self) {
            self.state.0.lock().unwrap().0 = true;
            self.state.1.notify_all();
        }
        fn writes(&self) -> Vec<String> {
            let g = self.state.0.lock().unwrap();
            g.1.iter()
                .map(|w| String::from_utf8(w.clone()).unwrap())
                .collect()
        }
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.waiting.store(true, Ordering::SeqCst);
            let (lock, opened) = &*self.state;
            let mut g = opened.wait_while(lock.lock().unwrap(), |s| !s.0).unwrap();
            g.1.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The point of the queue: the lines that arrive while stdout takes a batch go out with
    /// one `write`, not one each (the writer thread is not woken per line).
    #[test]
    fn lines_queued_during_a_write_go_out_in_one_write() {
        let out = Recorder::default();
        let (mut queue, guard) = LogQueue::start(out.clone(), 1024).unwrap();
        queue.write_all(b"first\n").unwrap();
        while !out.waiting.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..10 {
            queue.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        out.open();
        drop(guard);
        let writes = out.writes();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(writes[0], "first\n");
        assert_eq!(writes[1].lines().count(), 10, "{writes:?}");
        assert_eq!(queue.dropped(), 0);
    }

    /// Idle, the writer thread waits without a timer and wakes for the next line.
    #[test]
    fn a_line_after_a_quiet_spell_is_written() {
        let out = Recorder::default();
        out.open();
        let (mut queue, guard) = LogQueue::start(out.clone(), 1024).unwrap();
        queue.write_all(b"one\n").unwrap();
        while out.writes().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // the writer thread is parked again (or about to be): the next line must wake it
        std::thread::sleep(BATCH_WINDOW * 4);
        queue.write_all(b"two\n").unwrap();
        while out.writes().len() < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(guard);
        assert_eq!(out.writes().concat(), "one\ntwo\n");
    }

    /// A stalled stdout: the worker's writes return at once, the queue keeps at most its
    /// byte limit, the rest is dropped and counted, and what was kept is written in order
    /// once stdout moves again.
    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking_or_growing() {
        let out = Recorder::default();
        // "line N\n" is 7 or 8 bytes: the queue holds 4 lines; the writer thread takes at most
        // one batch (≤ 4 lines) into its stalled write
        let (mut queue, guard) = LogQueue::start(out.clone(), 32).unwrap();
        for i in 0..50 {
            // returns at once whatever the output does (this test would hang otherwise)
            queue.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        let lost = queue.dropped() as usize;
        assert!(
            (42..=46).contains(&lost),
            "at most 4 queued + 4 in hand, the rest dropped and counted: {lost} dropped"
        );
        out.open();
        drop(guard); // writes out what was queued
        let written = out.writes().concat();
        assert_eq!(written.lines().count(), 50 - lost, "{written}");
        assert!(written.starts_with("line 0\n"), "{written}");
    }
}
