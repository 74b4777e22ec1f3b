//! The worker core's one error type.

use tessera_protocol::{ApiError, BundleError};

/// Everything that can go wrong in the worker core. `JsValue` errors are turned into text at the
/// web boundary, so the decision modules never see JavaScript types.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkerError {
    /// The scheduler could not be reached or answered garbage: retry with backoff.
    #[error("scheduler unreachable: {0}")]
    Unreachable(String),
    /// The scheduler refused the request (4xx): retrying the same request cannot help.
    #[error("scheduler refused the request: {0}")]
    Rejected(ApiError),
    /// A bundle failed validation.
    #[error("{0}")]
    Bundle(BundleError),
    /// A sandbox could not be created or talked to.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// The page passed unusable options.
    #[error("invalid option: {0}")]
    Options(String),
}
