//! When a retried job is due next: one rule for the delivery worker's attempts and the
//! reconciler's inquiries, so both read their `*_schedule` setting the same way.
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

#[cfg(test)]
mod tests {
    use super::*;

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
