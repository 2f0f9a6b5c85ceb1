//! A counter whose value is read from elsewhere at scrape time (the log writer's dropped
//! lines, the allocation counts of a `count-allocs` build): the number lives with its code,
//! and the metric set shows it like any other counter.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntCounter;

/// A Prometheus counter that takes its value from `read` whenever it is gathered. `read`
/// must never go down (it is a counter); a smaller value is ignored.
pub struct FnCounter {
    counter: IntCounter,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Serialises the catch-up of concurrent scrapes (two would both add the same gap).
    catch_up: Mutex<()>,
}

impl FnCounter {
    /// The counter `name` (help text `help`) reading its value from `read`.
    pub fn new(
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> prometheus::Result<Self> {
        Ok(FnCounter {
            counter: IntCounter::new(name, help)?,
            read: Box::new(read),
            catch_up: Mutex::new(()),
        })
    }
}

impl Collector for FnCounter {
    fn desc(&self) -> Vec<&Desc> {
        self.counter.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.catch_up.lock().unwrap_or_else(|p| p.into_inner());
        let now = (self.read)();
        let shown = self.counter.get();
        if now > shown {
            self.counter.inc_by(now - shown);
        }
        self.counter.collect()
    }
}
