//! The worker side of the protocol: register, lease slices in batches, heartbeat, submit results.
//!
//! A lease is one attempt at one slice. It carries a fencing `token` that the heartbeat and the
//! result must present; once a lease expires its slice is queued again under a new lease, and a
//! result on the old token is refused (`stale`). A result for a slice already accepted is
//! acknowledged as `duplicate` and ignored, so a worker may safely resend a batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{ConsoleLine, Worktime};

/// `POST /v1/workers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The browser's user agent, for the operator's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// How many sandboxes the worker runs.
    #[serde(default)]
    pub sandboxes: u32,
}

/// The worker's identity and the timing rules it must follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub worker_id: String,
    /// Sent as `Authorization: Bearer <token>` on every worker request.
    pub token: String,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: u64,
    /// How often the worker should heartbeat its held leases.
    pub heartbeat_ms: u64,
}

/// `POST /v1/leases`: ask for up to `max_slices` slices, waiting up to `wait_ms` when there are none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
}

/// Answer to a lease request: the leases, and descriptors of jobs the worker did not know yet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub leases: Vec<Lease>,
    #[serde(default)]
    pub jobs: Vec<JobDescriptor>,
}

/// One held lease in a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatItem {
    pub lease_id: String,
    pub token: String,
    /// 0.0..=1.0 when the program reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
}

/// `POST /v1/leases/heartbeat`: extend held leases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub leases: Vec<HeartbeatItem>,
}

/// Which leases were extended, and which are no longer the worker's (expired, job cancelled).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub extended: Vec<String>,
    pub lost: Vec<String>,
    pub ttl_ms: u64,
}

/// How one attempt at a slice ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The program could not be set up at all (syntax error, no slice handler): the whole job fails.
    JobError {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stack: Option<String>,
    },
    /// The worker could not run the slice (sandbox crashed, timed out, stopping): try it elsewhere.
    WorkerFault { message: String },
}

/// One finished lease in a results batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultItem {
    pub lease_id: String,
    pub token: String,
    pub outcome: SliceOutcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<ConsoleLine>,
}

/// `POST /v1/results`: a batch of finished leases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultsRequest {
    pub results: Vec<ResultItem>,
}

/// What became of one submitted result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    /// Stored; this is the slice's outcome.
    Accepted,
    /// The slice already had an accepted outcome from this lease; nothing changed.
    Duplicate,
    /// The lease had expired or its job ended; the outcome was not stored.
    Stale,
    /// A worker fault: the slice was queued again (or failed after too many attempts).
    Requeued,
}

/// The answer for one submitted result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultAck {
    pub lease_id: String,
    pub status: ResultStatus,
}

/// Answer to a results batch, one ack per item in the same order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
            }],
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(serde_json::from_str::<LeaseResponse>(&text).unwrap(), response);
    }
}
