//! The worker side of the protocol: register, lease slices in batches, heartbeat, submit results.
//!
//! A lease is one attempt at one slice. It carries a fencing `token` that the heartbeat and the
//! result must present; once a lease expires its slice is queued again under a new lease, and a
//! result on the old token is refused (`stale`). A result for a slice already accepted is
//! acknowledged as `duplicate` and ignored, so a worker may safely resend a batch. Each item of a
//! batch is judged on its own: one bad item never costs the others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{ConsoleLine, Worktime};

/// `POST /v1/workers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The browser's user agent, for the operator's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// How many sandboxes the worker runs.
    #[serde(default)]
    pub sandboxes: u32,
    /// The pool's shared secret, when the scheduler runs a private pool (`tessera serve
    /// --worker-key`); an open scheduler ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_key: Option<String>,
    /// The contributor this worker earns credits for: a random id the browser keeps (16–64 of
    /// `A-Z a-z 0-9 _ -`). None: the scheduler opens a new contributor for this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributor: Option<String>,
}

/// The worker's identity and the timing rules it must follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    pub worker_id: String,
    /// The contributor credited for this worker's accepted slices (`GET /v1/workers/{contributor}`):
    /// the one asked for, or a new one.
    #[serde(default)]
    pub contributor: String,
    /// Sent as `Authorization: Bearer <token>` on every worker request.
    pub token: String,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: u64,
    /// How often the worker should heartbeat its held leases.
    pub heartbeat_ms: u64,
    /// What this scheduler accepts in one request: a worker never asks for more.
    #[serde(default)]
    pub limits: WorkerLimits,
}

/// Request limits a scheduler enforces on worker requests; sent at registration so a worker
/// sizes its requests to fit instead of learning them from refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct WorkerLimits {
    /// Most slices one lease request may ask for (`max_slices`).
    pub max_lease_slices: u32,
    /// Most leases one heartbeat may name.
    pub max_heartbeat_leases: u32,
    /// Most results one batch may carry.
    pub max_results_per_batch: u32,
    /// Largest JSON encoding of one result's value (or error) the scheduler stores; a larger one
    /// becomes that slice's error.
    pub max_result_bytes: u64,
    /// Largest request body the scheduler reads.
    pub max_request_bytes: u64,
    /// Longest a lease request may wait for work.
    pub max_wait_ms: u64,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            max_lease_slices: 1_000,
            max_heartbeat_leases: 10_000,
            max_results_per_batch: 1_000,
            max_result_bytes: 4 * 1024 * 1024,
            max_request_bytes: 64 * 1024 * 1024,
            max_wait_ms: 20_000,
        }
    }
}

/// `POST /v1/leases`: ask for up to `max_slices` slices, waiting up to `wait_ms` when there are none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseRequest {
    pub max_slices: u32,
    #[serde(default)]
    pub wait_ms: u64,
    /// Jobs whose descriptors the worker already holds (not sent again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_jobs: Vec<String>,
    /// Jobs the worker has warm sandboxes for: served first when they have work.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer_jobs: Vec<String>,
}

/// One attempt at one slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    pub lease_id: String,
    pub token: String,
    pub job_id: String,
    pub slice: u64,
    pub datum: Value,
    /// Milliseconds the lease lives from now unless heartbeated.
    pub ttl_ms: u64,
}

/// What a sandbox needs to set up a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDescriptor {
    pub job_id: String,
    pub name: String,
    pub worktime: Worktime,
    pub program: String,
    pub program_name: String,
    #[serde(default)]
    pub arguments: Vec<Value>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub packages: Vec<String>,
    /// sha256 of the job's bundle, fetched from `GET /v1/bundles/{sha256}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// Longest one slice may run; the worker interrupts, then replaces, a sandbox that overruns.
    #[serde(default = "default_slice_timeout")]
    pub slice_timeout_ms: u64,
    /// Longest a slice may run without reporting progress, when the deployer set such a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_progress_timeout_ms: Option<u64>,
}

fn default_slice_timeout() -> u64 {
    crate::job::DEFAULT_SLICE_TIMEOUT_MS
}

/// Answer to a lease request: the leases, and descriptors of jobs the worker did not know yet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseResponse {
    pub leases: Vec<Lease>,
    #[serde(default)]
    pub jobs: Vec<JobDescriptor>,
    /// Jobs named in `known_jobs` that are no longer running (cancelled, failed, complete): the
    /// worker stops their running slices, drops their queued ones and forgets them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_jobs: Vec<String>,
}

/// One held lease in a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatItem {
    pub lease_id: String,
    pub token: String,
    /// 0.0..=1.0 when the program reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
}

/// `POST /v1/leases/heartbeat`: extend held leases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatRequest {
    pub leases: Vec<HeartbeatItem>,
}

/// Which leases were extended, and which are no longer the worker's (expired, job cancelled).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    pub extended: Vec<String>,
    pub lost: Vec<String>,
    pub ttl_ms: u64,
    /// Jobs of the named leases that are no longer running: stop their slices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_jobs: Vec<String>,
}

/// How one attempt at a slice ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SliceOutcome {
    /// The program returned a value.
    Ok { value: Value },
    /// The program raised or threw while handling this slice: a final error for the slice.
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stack: Option<String>,
    },
    /// The program failed while setting up (syntax error, no slice handler, an exception at import).
    /// The slice goes back unharmed; the job fails once a second opinion confirms the same error
    /// (another worker, or a second fresh sandbox when no other worker is connected).
    JobError {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stack: Option<String>,
    },
    /// The worker could not run the slice (sandbox crashed, the runtime or a package failed to
    /// load, out of memory): it costs an attempt and is tried on another worker.
    WorkerFault { message: String },
    /// The slice ran past its job's time limit and was stopped: it costs an attempt; after the
    /// last one the slice's error says it timed out.
    TimedOut { message: String },
    /// The worker gives the slice back unrun or unfinished through no fault of the slice
    /// (stopping, tab closed): queued again at once, costing no attempt.
    Released { reason: String },
}

impl SliceOutcome {
    /// The outcome's `kind` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            SliceOutcome::Ok { .. } => "ok",
            SliceOutcome::Error { .. } => "error",
            SliceOutcome::JobError { .. } => "job_error",
            SliceOutcome::WorkerFault { .. } => "worker_fault",
            SliceOutcome::TimedOut { .. } => "timed_out",
            SliceOutcome::Released { .. } => "released",
        }
    }
}

/// One finished lease in a results batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultItem {
    pub lease_id: String,
    pub token: String,
    pub outcome: SliceOutcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<ConsoleLine>,
    /// How long the slice ran in its sandbox (ms), as the worker core measured it around the
    /// sandbox call (never a figure from guest code). An accepted slice credits its contributor
    /// with this, capped by the lease's age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
}

/// `POST /v1/results`: a batch of finished leases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultsRequest {
    pub results: Vec<ResultItem>,
    /// The worker token, for a batch sent with `navigator.sendBeacon` (which cannot set the
    /// `Authorization` header) as the page closes. Ignored when the header is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_token: Option<String>,
}

/// What became of one submitted result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// Stored; this is the slice's outcome.
    Accepted,
    /// The slice already had an accepted outcome from this lease; nothing changed.
    Duplicate,
    /// The lease had expired or its job ended; the outcome was not stored.
    Stale,
    /// A worker fault, time-out or set-up error: the slice was queued again (or became an error
    /// after too many attempts).
    Requeued,
    /// Given back without cost: the slice was queued again.
    Released,
    /// The item itself was refused (unknown lease, wrong token, another worker's lease); `message`
    /// says why. Nothing was stored for it; the rest of the batch is unaffected.
    Refused,
}

/// The answer for one submitted result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultAck {
    pub lease_id: String,
    pub status: ResultStatus,
    /// Why an item was refused, or what the scheduler changed (e.g. a result over the size limit
    /// stored as the slice's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer to a results batch, one ack per item in the same order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultsResponse {
    pub acks: Vec<ResultAck>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_tagged_by_kind() {
        let ok = SliceOutcome::Ok { value: Value::from(4) };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"kind":"ok","value":4}"#);
        let error: SliceOutcome = serde_json::from_str(r#"{"kind":"error","message":"boom","stack":"at f"}"#).unwrap();
        assert_eq!(error, SliceOutcome::Error { message: "boom".into(), stack: Some("at f".into()) });
        let fault: SliceOutcome = serde_json::from_str(r#"{"kind":"worker_fault","message":"crashed"}"#).unwrap();
        assert_eq!(fault, SliceOutcome::WorkerFault { message: "crashed".into() });
        let released = SliceOutcome::Released { reason: "page closed".into() };
        assert_eq!(serde_json::to_string(&released).unwrap(), r#"{"kind":"released","reason":"page closed"}"#);
        assert_eq!(released.kind(), "released");
    }

    #[test]
    fn a_registration_carries_the_worker_key_only_when_there_is_one() {
        let open = RegisterRequest { user_agent: None, sandboxes: 2, worker_key: None, contributor: None };
        assert_eq!(serde_json::to_string(&open).unwrap(), r#"{"sandboxes":2}"#);
        let private: RegisterRequest = serde_json::from_str(r#"{"sandboxes":1,"worker_key":"k"}"#).unwrap();
        assert_eq!(private.worker_key.as_deref(), Some("k"));
    }

    #[test]
    fn an_old_register_answer_gets_default_limits() {
        let answer: RegisterResponse =
            serde_json::from_str(r#"{"worker_id":"w","token":"t","lease_ttl_ms":30000,"heartbeat_ms":10000}"#).unwrap();
        assert_eq!(answer.limits, WorkerLimits::default());
    }

    #[test]
    fn lease_response_round_trips() {
        let response = LeaseResponse {
            leases: vec![Lease {
                lease_id: "l1".into(),
                token: "t".into(),
                job_id: "j".into(),
                slice: 3,
                datum: serde_json::json!({"x": [1, 2]}),
                ttl_ms: 30_000,
            }],
            jobs: vec![JobDescriptor {
                job_id: "j".into(),
                name: "n".into(),
                worktime: Worktime::Pyodide,
                program: "import dcp".into(),
                program_name: "main.py".into(),
                arguments: vec![Value::from("a")],
                env: BTreeMap::from([("K".into(), "V".into())]),
                packages: vec!["numpy".into()],
                bundle: None,
                slice_timeout_ms: 60_000,
                no_progress_timeout_ms: Some(5_000),
            }],
            ended_jobs: vec!["j0".into()],
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(serde_json::from_str::<LeaseResponse>(&text).unwrap(), response);
    }
}
