//! When each kind of scheduler request may be sent next.
//!
//! Every request kind (register, lease, heartbeat, submit) has its own gate, so a failing lease
//! call never holds back submits, heartbeats or running slices. A network failure backs that one
//! kind off with jitter; a refusal (4xx) is a bug report, not an outage, and closes the gate for
//! good instead of being retried.

use crate::backoff::Backoff;

/// One request kind's state: in flight or not, when it may go again, refused for good or not.
#[derive(Clone, Debug)]
pub struct RequestGate {
    backoff: Backoff,
    retry_at: u64,
    in_flight: bool,
    refused: Option<String>,
}

impl RequestGate {
    /// A gate whose retries start at `base_ms` and grow to at most `max_ms`.
    pub fn new(base_ms: u64, max_ms: u64) -> RequestGate {
        RequestGate { backoff: Backoff::new(base_ms, max_ms), retry_at: 0, in_flight: false, refused: None }
    }

    /// Whether a request of this kind may be sent now.
    pub fn ready(&self, now: u64) -> bool {
        !self.in_flight && self.refused.is_none() && now >= self.retry_at
    }

    /// Marks a request as sent.
    pub fn begin(&mut self) {
        self.in_flight = true;
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The answer came: forget past failures.
    pub fn succeeded(&mut self) {
        self.in_flight = false;
        self.backoff.reset();
        self.retry_at = 0;
    }

    /// The scheduler could not be reached: wait before the next try. Returns the wait (ms).
    pub fn failed(&mut self, now: u64, random: f64) -> u64 {
        self.in_flight = false;
        let delay = self.backoff.next_delay(random);
        self.retry_at = now + delay;
        delay
    }

    /// Holds the next request back until at least `at` (without counting a failure).
    pub fn hold_until(&mut self, at: u64) {
        self.retry_at = self.retry_at.max(at);
    }

    /// The scheduler refused this kind of request: never send it again.
    pub fn refuse(&mut self, message: String) {
        self.in_flight = false;
        self.refused = Some(message);
    }

    /// Why the scheduler refused this kind of request, if it did.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// When this gate opens again, if it is waiting on time (not on an answer or a refusal).
    pub fn opens_at(&self) -> Option<u64> {
        (!self.in_flight && self.refused.is_none()).then_some(self.retry_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_and_success_reopens() {
        let mut gate = RequestGate::new(100, 1_000);
        assert!(gate.ready(0));
        gate.begin();
        assert!(!gate.ready(0), "one request of a kind at a time");
        assert_eq!(gate.failed(0, 1.0), 100);
        assert!(!gate.ready(99) && gate.ready(100));
        gate.begin();
        assert_eq!(gate.failed(100, 1.0), 200);
        gate.begin();
        gate.succeeded();
        assert!(gate.ready(0));
        gate.begin();
        assert_eq!(gate.failed(0, 1.0), 100, "a success forgets past failures");
    }

    #[test]
    fn a_refusal_closes_the_gate_for_good() {
        let mut gate = RequestGate::new(100, 1_000);
        gate.begin();
        gate.refuse("invalid_field (max_slices): ask for 1 to 1000 slices".into());
        assert!(!gate.ready(u64::MAX));
        assert_eq!(gate.opens_at(), None);
        assert!(gate.refused().unwrap().contains("max_slices"));
    }

    #[test]
    fn holding_never_shortens_a_wait() {
        let mut gate = RequestGate::new(100, 1_000);
        gate.failed(0, 1.0);
        gate.hold_until(50);
        assert_eq!(gate.opens_at(), Some(100));
        gate.hold_until(500);
        assert_eq!(gate.opens_at(), Some(500));
    }
}
