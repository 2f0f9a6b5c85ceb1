//! Counts the process's heap allocations (feature `count-allocs`, off by default), so the
//! benchmark harness can print allocations and bytes per request (`COUNT=1
//! benches/sidecar.sh`, issue 23: count before cutting).
//!
//! Why a global allocator and not heaptrack or valgrind: it runs inside the release binary at
//! almost full speed (two relaxed atomic adds per allocation), under the same load as the
//! CPU figures, and the harness reads the totals from `/metrics` before and after a phase;
//! a profiler run would be a separate, much slower one-off. The counts are exported as
//! `alipay_sidecar_allocations_total` and `alipay_sidecar_allocated_bytes_total` (see
//! [`crate::metrics`]) only in such a build: a production binary has neither the counters nor
//! the metrics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator (glibc malloc, tuned in `crate::memory`), counting every
/// `alloc`, `alloc_zeroed` and `realloc` call and the bytes each asked for.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every call is passed on unchanged to `System`, which upholds the contract; the
// counters only observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) since the process started.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes those calls asked for (a `realloc` counts its new size).
pub fn allocated_bytes() -> u64 {
    BYTES.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_allocation_is_counted_with_its_size() {
        let (n0, b0) = (super::allocations(), super::allocated_bytes());
        let v: Vec<u8> = Vec::with_capacity(4096);
        std::hint::black_box(&v);
        // other test threads allocate too: at least ours is in the totals
        assert!(super::allocations() > n0);
        assert!(super::allocated_bytes() >= b0 + 4096);
    }
}
