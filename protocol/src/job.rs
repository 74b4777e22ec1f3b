//! Jobs as the deployer sees them: deploy, status, results and console output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The runtime a job's program runs in inside a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Worktime {
    /// A JavaScript work function `(datum, ...args) => result`, possibly async.
    MapBasic,
    /// A Python program that registers a slice handler with `dcp.set_slice_handler`.
    Pyodide,
}

impl Worktime {
    /// The name used on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Worktime::MapBasic => "map-basic",
            Worktime::Pyodide => "pyodide",
        }
    }
}

impl std::str::FromStr for Worktime {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "map-basic" => Ok(Worktime::MapBasic),
            "pyodide" => Ok(Worktime::Pyodide),
            other => Err(format!("unknown worktime `{other}`; expected `map-basic` or `pyodide`")),
        }
    }
}

/// `START:END[:STEP]`, END exclusive: the slices are START, START+STEP, … below END.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Range {
    pub start: i64,
    pub end: i64,
    #[serde(default = "one")]
    pub step: i64,
}

fn one() -> i64 {
    1
}

impl Range {
    /// The values the range stands for, or a sentence saying why it is not a usable range.
    pub fn values(&self, max_len: usize) -> Result<Vec<i64>, String> {
        if self.step <= 0 {
            return Err(format!("step must be positive, got {}", self.step));
        }
        if self.end < self.start {
            return Err(format!("end {} is below start {}", self.end, self.start));
        }
        let span = (self.end as i128) - (self.start as i128);
        let len = ((span + self.step as i128 - 1) / self.step as i128) as u128;
        if len > max_len as u128 {
            return Err(format!("{len} slices is over the limit of {max_len}"));
        }
        Ok((self.start..self.end).step_by(self.step as usize).collect())
    }
}

impl std::str::FromStr for Range {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').collect();
        let number = |part: &str| {
            part.trim().parse::<i64>().map_err(|_| format!("`{part}` in range `{text}` is not an integer"))
        };
        match parts.as_slice() {
            [start, end] => Ok(Range { start: number(start)?, end: number(end)?, step: 1 }),
            [start, end, step] => Ok(Range { start: number(start)?, end: number(end)?, step: number(step)? }),
            _ => Err(format!("range `{text}` is not START:END[:STEP]")),
        }
    }
}

/// `POST /v1/jobs`: everything a job is made of. Exactly one of `slices` and `range` is given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// A name for people; defaults to the job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `map-basic` or `pyodide`.
    pub worktime: Option<Worktime>,
    /// The work function (map-basic) or the Python source (pyodide).
    pub program: String,
    /// `sys.argv[0]` for Python programs; defaults to `main.py`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_name: Option<String>,
    /// Static arguments: extra parameters of the work function, or `sys.argv[1:]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<Value>,
    /// One input per slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<Vec<Value>>,
    /// Integer inputs given as a range instead of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
    /// Environment of a Python program (`os.environ`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Pyodide packages to load before the program runs (imports are detected too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// sha256 of a bundle uploaded with `PUT /v1/bundles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// Longest one slice may run before the worker stops it (default [`DEFAULT_SLICE_TIMEOUT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice_timeout_ms: Option<u64>,
    /// Longest a slice may run without calling `progress()`; none (the default) means no such limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_progress_timeout_ms: Option<u64>,
    /// An open job: more slices may be added (`POST /v1/jobs/{id}/slices`) until it is closed
    /// (`POST /v1/jobs/{id}/close`), and it may start with none. It is never complete while open.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
}

/// `POST /v1/jobs/{id}/slices`: a page of slices added to an open job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddSlicesRequest {
    pub slices: Vec<Value>,
}

/// Answer to [`AddSlicesRequest`]: the index of the first slice added and the job's new total.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddSlicesResponse {
    pub first: u64,
    pub total: u64,
}

/// A slice's time limit when the deployer sets none: five minutes.
pub const DEFAULT_SLICE_TIMEOUT_MS: u64 = 5 * 60_000;

/// Answer to a deploy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployResponse {
    pub job_id: String,
    pub total: u64,
    /// Packages the workers will load: the declared ones plus those detected from imports.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Slices are still queued or leased.
    Running,
    /// Every slice has a result.
    Complete,
    /// Every slice has a final outcome and at least one of them is an error.
    CompleteWithErrors,
    /// The program itself failed (no handler, syntax error confirmed by a second worker, bad
    /// bundle): nothing more is handed out.
    Failed,
    /// The deployer cancelled it.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of its life.
    pub const ALL: [JobState; 5] =
        [JobState::Running, JobState::Complete, JobState::CompleteWithErrors, JobState::Failed, JobState::Cancelled];

    /// Whether no more slices will be handed out.
    pub fn is_final(self) -> bool {
        self != JobState::Running
    }

    /// The name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Complete => "complete",
            JobState::CompleteWithErrors => "complete_with_errors",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown job state `{text}`"))
    }
}

/// A slice being worked on right now, with the progress its program last reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunningSlice {
    pub slice: u64,
    pub worker_id: String,
    /// 0.0..=1.0 from `dcp.progress(x)`, when the program reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
}

/// `GET /v1/jobs/{id}`: counts a deployer or progress bar needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStatus {
    pub job_id: String,
    pub name: String,
    pub worktime: Worktime,
    pub state: JobState,
    pub total: u64,
    /// Slices with a result.
    pub done: u64,
    /// Slices that ended in an error.
    pub errors: u64,
    pub queued: u64,
    pub leased: u64,
    /// Why the job failed, when it did (with the Python traceback for program errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_ms: u64,
    /// The job's per-slice limits (see [`DeployRequest`]).
    pub slice_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_progress_timeout_ms: Option<u64>,
    /// Leased slices with their reported progress (at most 100, lowest slice first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<RunningSlice>,
    /// The job is open: slices may still be added, and it does not complete until closed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
}

/// How one attempt (lease) at a slice ended, in the slice's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Still leased.
    Running,
    /// Its result was accepted.
    Ok,
    /// Its program error was accepted as the slice's outcome.
    Error,
    /// The program failed to set up in that sandbox.
    JobError,
    /// The worker could not run it (sandbox crashed, runtime failed to load): retried elsewhere.
    WorkerFault,
    /// It ran past the job's time limit and was stopped.
    TimedOut,
    /// The worker gave it back unrun (stopping, tab closed): costs no attempt.
    Released,
    /// Its lease ran out without a result or heartbeat.
    Expired,
    /// Its job ended (cancelled, failed) while it was leased.
    Abandoned,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 9] = [
        AttemptOutcome::Running,
        AttemptOutcome::Ok,
        AttemptOutcome::Error,
        AttemptOutcome::JobError,
        AttemptOutcome::WorkerFault,
        AttemptOutcome::TimedOut,
        AttemptOutcome::Released,
        AttemptOutcome::Expired,
        AttemptOutcome::Abandoned,
    ];

    /// The name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Error => "error",
            AttemptOutcome::JobError => "job_error",
            AttemptOutcome::WorkerFault => "worker_fault",
            AttemptOutcome::TimedOut => "timed_out",
            AttemptOutcome::Released => "released",
            AttemptOutcome::Expired => "expired",
            AttemptOutcome::Abandoned => "abandoned",
        }
    }
}

impl std::str::FromStr for AttemptOutcome {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AttemptOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
            .ok_or_else(|| format!("unknown attempt outcome `{text}`"))
    }
}

/// One attempt at a slice: who ran it, how long, how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    pub lease_id: String,
    pub worker_id: String,
    pub started_ms: u64,
    /// When the attempt ended; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub outcome: AttemptOutcome,
    /// The fault, error or release reason, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The sandbox compute time (ms) this attempt credited its contributor with: present only for
    /// an attempt accepted with outcome `ok`, so the credits of a job are the sum over its slices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
}

/// `GET /v1/jobs/{id}/slices/{slice}`: a slice's status and every attempt at it, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SliceHistory {
    pub job_id: String,
    pub slice: u64,
    pub status: SliceStatus,
    /// Attempts that counted against the job's `--max-attempts` (released ones do not).
    pub attempts_counted: u32,
    pub attempts: Vec<Attempt>,
}

/// One line of `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSummary {
    pub job_id: String,
    pub name: String,
    pub state: JobState,
    pub total: u64,
    pub done: u64,
    pub errors: u64,
}

/// Answer to `DELETE /v1/jobs/{id}`: the job is gone, with everything stored for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDeleted {
    pub job_id: String,
    /// Slices deleted with their data and results.
    pub slices: u64,
    /// Whether the job's bundle went too (it stays while another job names it, or was uploaded
    /// within the last hour).
    pub bundle_deleted: bool,
}

/// A slice's final or current status in a results page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SliceStatus {
    Pending,
    Ok,
    Error,
}

/// One slice in a results page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SliceRecord {
    pub slice: u64,
    pub status: SliceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// `GET /v1/jobs/{id}/results?from=N&limit=M`: slices in order; `next` is where the next page starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultsPage {
    pub results: Vec<SliceRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// Output a program printed, as shipped with results and read back by the deployer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsoleLine {
    /// The slice that was running, or none for output of the program's set-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<u64>,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
    /// Position in the job's console log; set by the scheduler when read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worktime_spelling_is_kebab_case() {
        assert_eq!(serde_json::to_string(&Worktime::MapBasic).unwrap(), "\"map-basic\"");
        let err = serde_json::from_str::<Worktime>("\"lua\"").unwrap_err().to_string();
        assert!(err.contains("map-basic"), "{err}");
    }

    #[test]
    fn range_parses_and_expands() {
        let range: Range = "0:10:3".parse().unwrap();
        assert_eq!(range.values(100).unwrap(), vec![0, 3, 6, 9]);
        assert_eq!("5:8".parse::<Range>().unwrap().values(100).unwrap(), vec![5, 6, 7]);
        assert!("1:2:0".parse::<Range>().unwrap().values(10).is_err());
        assert!("0:1000".parse::<Range>().unwrap().values(10).is_err());
        assert!("a:3".parse::<Range>().is_err());
    }

    #[test]
    fn deploy_request_round_trips() {
        let request = DeployRequest {
            name: Some("squares".into()),
            worktime: Some(Worktime::MapBasic),
            program: "(x) => x * x".into(),
            arguments: vec![Value::from(2)],
            slices: Some(vec![Value::from(1), Value::from(2)]),
            ..Default::default()
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<DeployRequest>(&text).unwrap(), request);
    }

    #[test]
    fn states_and_outcomes_spell_as_stored() {
        for state in JobState::ALL {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{}\"", state.as_str()));
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), format!("\"{}\"", outcome.as_str()));
            assert_eq!(outcome.as_str().parse::<AttemptOutcome>(), Ok(outcome));
        }
        assert!("active".parse::<JobState>().is_err(), "no silent fallback for unknown states");
    }

    #[test]
    fn deploy_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<DeployRequest>(r#"{"program":"x","slicez":[]}"#).unwrap_err();
        assert!(err.to_string().contains("slicez"));
    }
}
