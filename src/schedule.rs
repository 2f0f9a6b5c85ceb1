//! When a retried job is due next and who holds its claim: one rule for the delivery worker's
//! attempts and the reconciler's inquiries, so both read their `*_schedule` setting the same
//! way, and one claim-owner id for both leases (two copies had drifted apart).
//!
//! Kept on its own because both background services use it and neither should import the
//! other for it.

use std::time::Duration;

/// Used when a schedule is empty (the config refuses that; belt and braces).
const FALLBACK_GAP: Duration = Duration::from_secs(60);

/// When the next attempt is due after `failures` failed attempts (this one included):
/// `delivery_schedule[failures]`, the last gap repeating, capped at `deadline` so that the
/// last attempt happens at `max_delivery_age`.
pub fn next_attempt_at(schedule: &[Duration], failures: i64, now: i64, deadline: i64) -> i64 {
    let index = usize::try_from(failures.max(0)).unwrap_or(usize::MAX);
    let gap = schedule
        .get(index)
        .or(schedule.last())
        .copied()
        .unwrap_or(FALLBACK_GAP);
    let gap = i64::try_from(gap.as_millis()).unwrap_or(i64::MAX);
    now.saturating_add(gap).min(deadline)
}

/// A claim owner unique to this process: host name, pid and 64 random bits (a restarted
/// process with the same pid in a new container must not look like the old one). Both
/// background services claim their rows (deliveries, pay records) under such an id, so that
/// with several replicas on one database each row is worked by one of them.
pub fn claim_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".into());
    let mut random = [0u8; 8];
    // without randomness the pid alone still separates the processes of one host
    let _ = getrandom::fill(&mut random);
    format!(
        "{host}-{}-{:016x}",
        std::process::id(),
        u64::from_be_bytes(random)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_owners_name_the_process_and_differ_per_call() {
        let a = claim_owner();
        let b = claim_owner();
        assert_ne!(a, b, "64 random bits separate two owners of one process");
        let mut parts = a.rsplitn(3, '-');
        let random = parts.next().unwrap();
        let pid = parts.next().unwrap();
        let host = parts.next().unwrap();
        assert_eq!(random.len(), 16, "{a}");
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(pid, std::process::id().to_string(), "{a}");
        assert!(!host.is_empty(), "{a}");
    }

    #[test]
    fn the_schedule_repeats_its_last_gap_and_stops_at_the_deadline() {
        let s = [
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(10),
        ];
        assert_eq!(next_attempt_at(&s, 1, 1000, i64::MAX), 3000);
        assert_eq!(next_attempt_at(&s, 2, 1000, i64::MAX), 11_000);
        assert_eq!(next_attempt_at(&s, 9, 1000, i64::MAX), 11_000);
        assert_eq!(next_attempt_at(&s, 9, 1000, 5000), 5000);
        assert_eq!(next_attempt_at(&[], 0, 0, i64::MAX), 60_000);
    }
}
