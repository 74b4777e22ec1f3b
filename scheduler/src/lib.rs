//! Tessera's scheduler: the durable store and the HTTP server, as a library.
//!
//! - [`store`]: the durable SQLite store; every state change is committed (grouped) before it is answered.
//! - [`server`]: protocol v1 over HTTP (axum), the Pyodide distribution and the static site.
//! - [`sandbox_host`]: `/sandbox.html`, the opaque-origin page the worker's sandboxes live in.
//! - [`site`]: the contribute page and the worker core, embedded in the binary at build time.
//! - [`validate`], [`packages`], [`syntax`]: deploy-time checks, unit-tested.
//!
//! The `tessera` command (deploy, status, results, keys, the worker launcher, and `serve` on top of
//! [`server::serve`]) is the `tessera-cli` crate.

pub mod error;
pub mod packages;
pub mod sandbox_host;
pub mod server;
pub mod site;
pub mod store;
pub mod syntax;
pub mod validate;

pub use error::{Error, Result};
