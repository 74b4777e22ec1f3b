//! The `tessera` command's library: everything it does besides serving, which is
//! `tessera_scheduler::server`.
//!
//! - [`client`]: the deployer side of protocol v1 over HTTP.
//! - [`deploy`]: `tessera deploy`, `status`, `results`: reading programs, bundles and inputs, and
//!   printing what comes back.
//! - [`keys`], [`credentials`]: API keys, and the per-user file where the CLI finds them.
//! - [`browser`]: `tessera worker`, headless Chromium driven over the DevTools pipe.

pub mod browser;
pub mod client;
pub mod credentials;
pub mod deploy;
pub mod error;
pub mod keys;

pub use error::{Error, Result};
