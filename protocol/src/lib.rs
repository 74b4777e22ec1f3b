//! Wire types of Tessera's scheduler protocol, version 1 (HTTP + JSON under `/v1`).
//!
//! Both the worker core (compiled to wasm) and the scheduler (native) depend on this crate, so a
//! message can only change shape in one place. `docs/PROTOCOL.md` describes every endpoint with
//! examples; the tests at the bottom of each module pin the JSON spelling.

pub mod bundle;
pub mod credits;
pub mod job;
pub mod json;
pub mod keys;
pub mod lease;

pub use bundle::{BundleEntry, BundleError, BundleLimits};
pub use credits::{is_contributor_id, ContributorTotals, COMPUTE_MS_PER_CREDIT};
pub use job::{
    AddSlicesRequest, AddSlicesResponse, Attempt, AttemptOutcome, ConsoleLine, DeployRequest, DeployResponse,
    JobDeleted, JobState, JobStatus, JobSummary, Range, ResultsPage, RunningSlice, SliceHistory, SliceRecord,
    SliceStatus, Worktime, DEFAULT_SLICE_TIMEOUT_MS,
};
pub use keys::{ApiKeyInfo, CreateKeyRequest, CreatedKey, KEY_PREFIX};
pub use lease::{
    HeartbeatItem, HeartbeatRequest, HeartbeatResponse, JobDescriptor, Lease, LeaseRequest, LeaseResponse,
    RegisterRequest, RegisterResponse, ResultAck, ResultItem, ResultStatus, ResultsRequest, ResultsResponse,
    SliceOutcome, WorkerLimits,
};

use serde::{Deserialize, Serialize};

/// Path prefix of every protocol endpoint.
pub const API_PREFIX: &str = "/v1";

/// The body of every 4xx/5xx answer: a stable machine-readable code, the offending field when
/// there is one, and a sentence for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Stable code such as `invalid_field`, `not_found`, `wrong_token`, `unauthorized`, `too_large`.
    pub code: String,
    /// The request field at fault (`slices`, `program`, `results[3].token`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A readable explanation, complete enough to act on.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({}): {}", self.code, field, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}
