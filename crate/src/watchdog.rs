//! The slice watchdog's decisions: when to look at a running slice next, and whether it overran.
//!
//! A slice may run for its job's `slice_timeout_ms`, and (when the deployer set one) for at most
//! `no_progress_timeout_ms` between two `progress()` calls. On overrun the supervisor interrupts
//! Python first and only replaces the sandbox when that does not work within [`INTERRUPT_GRACE_MS`].
//! A timer that fires much later than asked means the page itself was throttled (a background
//! tab), not that the slice is slow: it looks again shortly instead of failing the slice.

use std::cell::Cell;

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

/// How often the watchdog looks at a slice still queued behind another in its sandbox.
pub const QUEUED_LOOK_MS: u64 = 1_000;

/// The order a sandbox runs its slices in. A sandbox runs them one after another, so a slice
/// queued behind another (pipelined) starts when that one's answer comes: its time limit, and the
/// time it is credited for, count from then, not from when it was sent.
#[derive(Debug, Default)]
pub struct SliceQueue {
    sent: Cell<u64>,
    answered: Cell<u64>,
    last_answer_at: Cell<u64>,
}

impl SliceQueue {
    /// Takes the next place in the queue, for a slice being sent now.
    pub fn enqueue(&self) -> u64 {
        let place = self.sent.get();
        self.sent.set(place + 1);
        place
    }

    /// When the slice at `place`, sent at `sent`, started running; `None` while a slice ahead of
    /// it has not answered.
    pub fn started(&self, place: u64, sent: u64) -> Option<u64> {
        (self.answered.get() >= place).then(|| sent.max(self.last_answer_at.get()))
    }

    /// The slice at the head of the queue answered (or was given up on) at `at`.
    pub fn answered(&self, at: u64) {
        self.answered.set(self.answered.get() + 1);
        self.last_answer_at.set(at);
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

    #[test]
    fn a_queued_slice_starts_when_the_one_ahead_answers() {
        let queue = SliceQueue::default();
        let (first, second) = (queue.enqueue(), queue.enqueue());
        assert_eq!(queue.started(first, 100), Some(100), "nothing ahead: it starts when sent");
        assert_eq!(queue.started(second, 110), None, "queued behind the first");
        queue.answered(3_100);
        assert_eq!(queue.started(second, 110), Some(3_100), "it started when the first answered");
        let third = queue.enqueue();
        queue.answered(3_400);
        assert_eq!(queue.started(third, 5_000), Some(5_000), "sent after the queue emptied: from its send");
    }
}
