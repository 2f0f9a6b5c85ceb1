//! Allocator tuning: freed buffers go back to the system.
//!
//! Why: the sidecar's memory follows its connections. An attack of many slow clients (1,000
//! heads of 32 KiB, 64 bodies of 1 MiB) makes glibc keep what they held, so the process would
//! stay at its peak after the attack. The listeners' limits ([`crate::limits`]) bound what
//! connections hold; this makes what they held go back once they close. glibc only: a no-op
//! with any other allocator.

/// Makes freed connection buffers go back to the system (glibc only; a no-op elsewhere).
///
/// glibc serves allocations above a *dynamic* threshold with `mmap`, and raises the threshold
/// each time such a chunk is freed, so after a burst (1,000 slow clients holding 32 KiB
/// heads, or 64 bodies of 1 MiB) the same sizes come from the heap arenas and stay resident
/// after they are freed. A fixed threshold of 32 KiB keeps every large buffer (head buffers
/// at the limit, bodies) in its own mapping that is returned on free; small allocations are
/// unaffected. Called once at the start of `run`.
pub fn return_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before the server starts threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

/// When a listener's last connection closed, hands the allocator's free pages back to the
/// system (glibc keeps them in its arenas otherwise), at most once a second: after an
/// attack of many slow connections the process shrinks back near its idle size.
pub fn trim_after_burst() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = LAST.load(Ordering::Relaxed);
        if now > last
            && LAST
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
