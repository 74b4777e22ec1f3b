//! Tessera's worker core: pulls slices from a scheduler and runs them in sandboxes.
//!
//! Decisions live in plain Rust, tested natively with `cargo test`:
//! [`supervisor`] (the lease → dispatch → submit loop behind small traits), [`pool`] (which
//! sandbox runs a slice), [`backoff`]. Effects live in `web` (wasm32 only): HTTP with `fetch`,
//! sandboxes as Web Workers, browser timers, and the JavaScript API the contribute page uses.

pub mod backoff;
pub mod error;
pub mod pool;
pub mod supervisor;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::WorkerError;
