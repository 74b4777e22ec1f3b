//! Browser time: `Date.now`, `setTimeout` (gloo-timers) and `Math.random`.

use futures::FutureExt;

use crate::supervisor::{Clock, Task};

/// The [`Clock`] of a page or worker global scope.
#[derive(Clone, Copy, Debug, Default)]
pub struct BrowserClock;

impl Clock for BrowserClock {
    fn now_ms(&self) -> u64 {
        js_sys::Date::now() as u64
    }

    fn sleep(&self, ms: u64) -> Task<()> {
        gloo_timers::future::TimeoutFuture::new(ms.min(u32::MAX as u64) as u32).boxed_local()
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }
}
