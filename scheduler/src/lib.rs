//! Tessera's scheduler and command-line tool.
//!
//! - [`store`]: the durable SQLite store; every state change is committed (grouped) before it is answered.
//! - [`server`]: protocol v1 over HTTP (axum), the Pyodide distribution and the static site.
//! - [`sandbox_host`]: `/sandbox.html`, the opaque-origin page the worker's sandboxes live in.
//! - [`site`]: the contribute page and the worker core, embedded in the binary at build time.
//! - [`validate`], [`packages`], [`syntax`]: deploy-time checks, unit-tested.
//! - [`client`], [`deploy`], [`keys`], [`credentials`], [`browser`]: the CLI's deployer commands, its
//!   API keys and where it finds them, and `tessera worker`.

pub mod browser;
pub mod client;
pub mod credentials;
pub mod deploy;
pub mod error;
pub mod keys;
pub mod packages;
pub mod sandbox_host;
pub mod server;
pub mod site;
pub mod store;
pub mod syntax;
pub mod validate;

pub use error::{Error, Result};
