//! The CLI crate's one error type: what can go wrong between a person at a terminal and a
//! scheduler (or the browser `tessera worker` drives).

use tessera_protocol::ApiError;

/// Everything that can go wrong in a `tessera` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line argument or local file is unusable.
    #[error("{0}")]
    Usage(String),
    /// The scheduler answered with an error (its code, field and message).
    #[error("{0}")]
    Api(ApiError),
    /// The scheduler could not be reached.
    #[error("cannot reach the scheduler: {0}")]
    Unreachable(String),
    /// The worker's browser failed or exited.
    #[error("browser: {0}")]
    Browser(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The scheduler library failed: `tessera serve`, or a key written straight into a database.
    #[error(transparent)]
    Scheduler(#[from] tessera_scheduler::Error),
}

impl Error {
    /// Shorthand for I/O failures with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
