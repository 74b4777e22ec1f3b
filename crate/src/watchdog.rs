//! The slice watchdog's decisions: when to look at a running slice next, and whether it overran.
//!
//! A slice may run for its job's `slice_timeout_ms`, and (when the deployer set one) for at most
//! `no_progress_timeout_ms` between two `progress()` calls. On overrun the supervisor interrupts
//! Python first and only replaces the sandbox when that does not work within [`INTERRUPT_GRACE_MS`].
//! A timer that fires much later than asked means the page itself was throttled (a background
//! tab), not that the slice is slow: it looks again shortly instead of failing the slice.

use tessera_protocol::JobDescriptor;

/// How long an interrupted slice may take to stop before its sandbox is terminated.
pub const INTERRUPT_GRACE_MS: u64 = 1_500;

/// A timer this late (ms) means the page was throttled; the watchdog takes another look first.
pub const THROTTLED_LATENESS_MS: u64 = 1_000;

/// How long to wait before that second look.
pub const SECOND_LOOK_MS: u64 = 500;

/// A job's limits on one slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceLimits {
    pub timeout_ms: u64,
    pub no_progress_ms: Option<u64>,
}

impl SliceLimits {
    /// The limits a job's descriptor sets.
    pub fn of(descriptor: &JobDescriptor) -> SliceLimits {
        SliceLimits {
            timeout_ms: descriptor.slice_timeout_ms.max(1),
            no_progress_ms: descriptor.no_progress_timeout_ms,
        }
    }

    /// When the slice, started at `started` and last heard from at `last_progress`, must be looked at.
    pub fn check_at(&self, started: u64, last_progress: u64) -> u64 {
        let overall = started.saturating_add(self.timeout_ms);
        match self.no_progress_ms {
            Some(quiet) => overall.min(last_progress.saturating_add(quiet)),
            None => overall,
        }
    }

    /// Why the slice must be stopped at `now`, if it must.
    pub fn overrun(&self, now: u64, started: u64, last_progress: u64) -> Option<String> {
        if now >= started.saturating_add(self.timeout_ms) {
            return Some(format!("slice ran longer than its {} ms limit", self.timeout_ms));
        }
        match self.no_progress_ms {
            Some(quiet) if now >= last_progress.saturating_add(quiet) => {
                Some(format!("slice reported no progress for {quiet} ms"))
            }
            _ => None,
        }
    }
}

/// Whether a timer due at `due` that fired at `now` was held back by page throttling.
pub fn throttled(due: u64, now: u64) -> bool {
    now.saturating_sub(due) > THROTTLED_LATENESS_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overall_limit_applies_without_a_progress_limit() {
        let limits = SliceLimits { timeout_ms: 3_000, no_progress_ms: None };
        assert_eq!(limits.check_at(1_000, 1_000), 4_000);
        assert_eq!(limits.overrun(3_999, 1_000, 1_000), None);
        assert!(limits.overrun(4_000, 1_000, 1_000).unwrap().contains("3000 ms"));
    }

    #[test]
    fn progress_resets_the_quiet_limit_but_not_the_overall_one() {
        let limits = SliceLimits { timeout_ms: 10_000, no_progress_ms: Some(2_000) };
        assert_eq!(limits.check_at(0, 0), 2_000);
        assert!(limits.overrun(2_000, 0, 0).unwrap().contains("no progress"));
        assert_eq!(limits.overrun(2_000, 0, 1_500), None, "progress at 1.5 s");
        assert_eq!(limits.check_at(0, 9_000), 10_000, "the overall limit comes first");
        assert!(limits.overrun(10_000, 0, 9_500).unwrap().contains("longer than"));
    }

    #[test]
    fn a_very_late_timer_means_a_throttled_page() {
        assert!(!throttled(1_000, 1_900));
        assert!(throttled(1_000, 2_500));
        assert!(!throttled(1_000, 500), "early is not late");
    }
}
