//! Tessera's worker core: pulls slices from a scheduler and runs them in sandboxes.
//!
//! Decisions live in plain Rust, tested natively with `cargo test`: [`supervisor`] (the loop
//! behind small traits) over its parts — [`lease_book`] (what is held), [`outbox`] (results on
//! their way), [`jobs`] (known jobs, bounded), [`pool`] (which sandbox runs a slice), [`gate`]
//! (per-request-kind backoff), [`watchdog`] (slice limits), [`runtime_files`] (what a sandbox may
//! ask the core to fetch), [`snapshot_book`] (which sandbox restores or makes the runtime snapshot)
//! and [`backoff`]. Effects live in `web`
//! (wasm32 only): HTTP with `fetch`, sandboxes as Web Workers inside opaque-origin iframes,
//! browser timers, and the JavaScript API the contribute page uses.

/// The core's allocator in the browser: Talc in place of Rust's default dlmalloc, for a smaller
/// wasm (issue 10's core size; dlmalloc was 7 KB of it before compression) and faster allocation.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

pub mod backoff;
pub mod error;
pub mod gate;
pub mod jobs;
pub mod lease_book;
pub mod outbox;
pub mod pool;
pub mod runtime_files;
pub mod small_map;
pub mod snapshot_book;
pub mod supervisor;
pub mod watchdog;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::WorkerError;
