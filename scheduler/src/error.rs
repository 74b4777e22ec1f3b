//! The scheduler crate's one error type, and how it becomes an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tessera_protocol::ApiError;

/// Everything that can go wrong in the scheduler: its store, its HTTP server and their checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing, malformed or out of range.
    #[error("{field}: {message}")]
    InvalidField { field: String, message: String },
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is over the configured size limit.
    #[error("request body is over the {limit}-byte limit")]
    TooLarge { limit: usize },
    /// Too many requests are being served; retry shortly. Refused before reading the body.
    #[error("the scheduler is busy; retry shortly")]
    Busy,
    /// The request took longer than its route allows (slow body, slow work); answered so a slow
    /// client cannot hold a connection and its memory for ever.
    #[error("the request took longer than {ms} ms")]
    Timeout { ms: u64 },
    /// A blocking task (bundle unpacking, body parsing) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// No such job, lease, bundle or worker.
    #[error("{what} `{id}` does not exist")]
    NotFound { what: &'static str, id: String },
    /// Missing or wrong worker token, or a lease token that does not match.
    #[error("{field}: {message}")]
    WrongToken { field: String, message: String },
    /// A deployer request without a valid API key: none, an unknown one, or a revoked one.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key that may not do this (an admin-only endpoint).
    #[error("{0}")]
    Forbidden(String),
    /// A deployer endpoint was sent a body of another type (a form, plain text): refused, so no
    /// cross-origin form or plain-text POST can reach it.
    #[error("this endpoint takes `Content-Type: {expected}`, not {}", got.as_deref().map(|got| format!("`{got}`")).unwrap_or_else(|| "a body without one".into()))]
    UnsupportedMediaType { expected: &'static str, got: Option<String> },
    /// The store failed; the request changed nothing.
    #[error("database: {0}")]
    Database(rusqlite::Error),
    /// The database holds a value this scheduler does not know (an unknown state, unreadable
    /// JSON, a newer schema): refused rather than guessed at.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The store's writer could not run or commit the operation; nothing was changed.
    #[error("store: {0}")]
    Store(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// `tessera serve` was configured with something it cannot use.
    #[error("{0}")]
    Config(String),
    /// The embedded sandbox host page cannot be served safely (a build defect).
    #[error("sandbox host page: {0}")]
    SandboxHost(String),
}

impl Error {
    /// Shorthand for the most common validation failure.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidField { field: field.into(), message: message.into() }
    }

    /// Shorthand for I/O failures with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    fn status_and_body(&self) -> (StatusCode, ApiError) {
        let body = |code: &str, field: Option<&str>| ApiError {
            code: code.into(),
            field: field.map(str::to_string),
            message: self.to_string(),
        };
        match self {
            Error::InvalidField { field, message } => (
                StatusCode::BAD_REQUEST,
                ApiError { code: "invalid_field".into(), field: Some(field.clone()), message: message.clone() },
            ),
            Error::MalformedJson(_) => (StatusCode::BAD_REQUEST, body("malformed_json", None)),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, body("too_large", None)),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, body("not_found", None)),
            Error::Busy => (StatusCode::SERVICE_UNAVAILABLE, body("busy", None)),
            Error::Timeout { .. } => (StatusCode::REQUEST_TIMEOUT, body("timeout", None)),
            Error::WrongToken { field, message } => (
                StatusCode::FORBIDDEN,
                ApiError { code: "wrong_token".into(), field: Some(field.clone()), message: message.clone() },
            ),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, body("unauthorized", Some("authorization"))),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, body("forbidden", Some("authorization"))),
            Error::UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, body("unsupported_media_type", Some("content-type")))
            }
            Error::Database(_)
            | Error::Corrupt(_)
            | Error::Store(_)
            | Error::Task(_)
            | Error::Io { .. }
            | Error::Config(_)
            | Error::SandboxHost(_) => (StatusCode::INTERNAL_SERVER_ERROR, body("internal", None)),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"tessera\""),
            );
        }
        response
    }
}

impl From<rusqlite::Error> for Error {
    /// A stored value that failed to parse (see `store::CorruptValue`) becomes [`Error::Corrupt`].
    fn from(error: rusqlite::Error) -> Self {
        if let rusqlite::Error::FromSqlConversionFailure(column, _, inner) = &error {
            if let Some(corrupt) = inner.downcast_ref::<crate::store::CorruptValue>() {
                return Error::Corrupt(format!("column {column}: {}", corrupt.0));
            }
        }
        Error::Database(error)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
