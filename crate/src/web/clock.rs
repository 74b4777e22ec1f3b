//! Browser time: `performance.now()` (monotonic: it never steps back when the wall clock is
//! changed), `setTimeout` (gloo-timers) and `Math.random`.

use futures::FutureExt;
use wasm_bindgen::JsCast;

use crate::supervisor::{Clock, Task};

/// The [`Clock`] of a page or worker global scope.
#[derive(Clone, Debug)]
pub struct BrowserClock {
    performance: Option<web_sys::Performance>,
}

impl BrowserClock {
    /// The clock of the current global scope (window or worker).
    pub fn new() -> BrowserClock {
        let performance = js_sys::Reflect::get(&js_sys::global(), &"performance".into())
            .ok()
            .and_then(|value| value.dyn_into::<web_sys::Performance>().ok());
        BrowserClock { performance }
    }
}

impl Default for BrowserClock {
    fn default() -> Self {
        BrowserClock::new()
    }
}

impl Clock for BrowserClock {
    fn now_ms(&self) -> u64 {
        match &self.performance {
            Some(performance) => performance.now() as u64,
            // No Performance API (never seen in a browser that runs wasm): wall-clock time.
            None => js_sys::Date::now() as u64,
        }
    }

    fn sleep(&self, ms: u64) -> Task<()> {
        gloo_timers::future::TimeoutFuture::new(ms.min(u32::MAX as u64) as u32).boxed_local()
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }
}
