//! Shared by the browser tests that need a live scheduler.

/// The scheduler `scripts/with-scheduler` started for this run (its URL is fixed at build time).
#[allow(clippy::option_env_unwrap)] // Failing at run time, with this message, is the point.
pub fn scheduler() -> &'static str {
    option_env!("TESSERA_TEST_SCHEDULER").expect(
        "TESSERA_TEST_SCHEDULER is not set: run the browser tests through scripts/with-scheduler (make test-browser)",
    )
}
