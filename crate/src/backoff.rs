//! Exponential backoff with jitter, for while the scheduler is unreachable.

/// Delay schedule: `base · 2^failures`, capped at `max`, scaled by a random factor in [0.5, 1.0]
/// so that many workers losing the scheduler at once do not come back in lockstep.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64) -> Backoff {
        Backoff { base_ms, max_ms, failures: 0 }
    }

    /// Records a failure and returns how long to wait before trying again.
    /// `random` is a uniform sample in [0, 1) from the caller's source of randomness.
    pub fn next_delay(&mut self, random: f64) -> u64 {
        let exponent = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.base_ms.saturating_mul(1 << exponent).min(self.max_ms);
        let factor = 0.5 + 0.5 * random.clamp(0.0, 1.0);
        (ceiling as f64 * factor) as u64
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_until_the_cap_and_resets() {
        let mut backoff = Backoff::new(100, 1_000);
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay(1.0)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), 100);
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let mut backoff = Backoff::new(1_000, 10_000);
        assert_eq!(backoff.next_delay(0.0), 500);
        let delay = backoff.next_delay(0.5);
        assert!((1_000..=2_000).contains(&delay));
    }
}
