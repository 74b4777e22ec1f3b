//! The supervisor: leases slices in batches, dispatches them to sandboxes, watches them, heartbeats
//! held leases and delivers results, until stopped or idle.
//!
//! It is a short loop over small owned parts, each tested alone: a [`LeaseBook`] (what is held),
//! an [`Outbox`] (finished results on their way), a [`JobCache`] (descriptors and bundles), a
//! [`Pool`] (which sandbox runs what), one [`RequestGate`] per request kind, and the
//! [`watchdog`](crate::watchdog) rules. One timer wakes the loop, whatever happens.
//!
//! It is platform-neutral: the scheduler, the sandboxes and time sit behind the traits below.
//! The web build plugs in `fetch`, Web Workers and browser timers (`crate::web`); the native
//! tests plug in in-memory doubles and drive the same loop with a plain executor.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use futures::future::{self, Either, LocalBoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde_json::Value;
use tessera_protocol::json::{ObjectWriter, ToJson};
use tessera_protocol::{
    bundle, BundleLimits, ConsoleLine, HeartbeatRequest, HeartbeatResponse, JobDescriptor, Lease, LeaseRequest,
    LeaseResponse, RegisterRequest, RegisterResponse, ResultItem, ResultStatus, ResultsRequest, ResultsResponse,
    SliceOutcome, WorkerLimits, Worktime,
};

use crate::backoff::Backoff;
use crate::error::WorkerError;
use crate::gate::RequestGate;
pub use crate::jobs::PreparedJob;
use crate::jobs::{JobCache, JobEntry};
use crate::lease_book::LeaseBook;
pub use crate::lease_book::{Farewell, SliceProgress};
use crate::outbox::{cap_console, fit_outcome, Outbox};
use crate::pool::{Placement, Pool, PoolLimits};
use crate::small_map::SmallMap;
use crate::watchdog::{throttled, SliceLimits, SliceQueue, INTERRUPT_GRACE_MS, QUEUED_LOOK_MS, SECOND_LOOK_MS};

/// A future the supervisor can hold across loop turns (single-threaded, so not `Send`).
pub type Task<T> = LocalBoxFuture<'static, T>;

/// The scheduler, as the supervisor needs it (protocol v1).
pub trait SchedulerClient {
    fn register(&self, request: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>>;
    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>>;
    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>>;
    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>>;
    /// An uploaded bundle's tar, inflated from its tar.gz: refused as [`tessera_protocol::BundleError::TooLarge`] if
    /// the tar.gz is over `limits.max_compressed_bytes`, and cut one byte past
    /// [`bundle::stream_cap`] (so that [`bundle::unpack_tar`] refuses a bomb). Inflating is the
    /// client's part because the browser does it natively (`DecompressionStream`).
    fn bundle(&self, sha256: &str, limits: &BundleLimits) -> Task<Result<Vec<u8>, WorkerError>>;
}

/// Time and randomness, so tests can run the loop on a simulated clock.
pub trait Clock {
    /// Milliseconds on a clock that never goes backwards.
    fn now_ms(&self) -> u64;
    fn sleep(&self, ms: u64) -> Task<()>;
    /// A uniform sample in [0, 1).
    fn random(&self) -> f64;
}

/// What one slice produced in a sandbox.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceRun {
    pub outcome: SliceOutcome,
    /// Output printed while the slice (and, for a sandbox's first slice, the program's set-up) ran.
    pub console: Vec<ConsoleLine>,
    /// The sandbox's heap size after the slice, when the sandbox can tell (Pyodide can).
    pub heap_bytes: Option<u64>,
}

/// How a sandbox's set-up of its job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum SetupOutcome {
    /// The program ran and registered its slice handler.
    Ready { console: Vec<ConsoleLine> },
    /// The program itself failed (syntax error, exception, no handler): a second opinion decides.
    ProgramFailed { message: String, stack: Option<String>, console: Vec<ConsoleLine> },
    /// The sandbox could not get that far (runtime, package or bundle failed to load): not the
    /// program's fault.
    Fault { message: String },
}

/// One isolated executor, bound to one job for its whole life.
pub trait Sandbox {
    /// Sets `job` up: runtime, packages, bundle, and the program run once. Called once, before
    /// the sandbox's first slice. Never fails: problems come back as outcomes.
    fn prepare(&self, job: Rc<PreparedJob>) -> Task<SetupOutcome>;
    /// Runs one slice of the job the sandbox was prepared for. Progress the program reports is
    /// written to `progress`. Never fails: faults come back as outcomes.
    fn run(&self, slice: u64, datum: Value, progress: Rc<SliceProgress>) -> Task<SliceRun>;
    /// Asks the running program to stop (Python's `KeyboardInterrupt`); false when this sandbox
    /// cannot be interrupted and must be terminated instead.
    fn interrupt(&self) -> bool;
    /// Stops a sandbox at fault or past its time at once (a running slice is abandoned);
    /// nothing it ran in is kept.
    fn terminate(&self);
    /// Stops a sandbox that is no longer needed and did nothing wrong (recycled, its job ended,
    /// replaced for another job, the worker stopping) at once, as `terminate` does; what it ran
    /// in may then serve the next sandbox (its frame, and the interpreter compiled there).
    fn retire(&self);
    /// Calls `observer` as the set-up reaches each [`SetupPhase`], for the page to show; a
    /// sandbox that cannot tell simply never calls it.
    fn watch_setup(&self, _observer: Box<dyn Fn(SetupPhase)>) {}
}

/// How a sandbox leaves the pool: terminated when it faulted or ran past its time (it may be
/// stuck, or its process gone), retired when it is merely no longer needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Terminate,
    Retire,
}

/// A step of a sandbox's set-up, as the sandbox reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupPhase {
    /// Loading the job's packages (Pyodide).
    Packages,
    /// Running the job's program once (it registers its slice handler).
    Program,
}

/// What a sandbox is doing, for the page's sandbox cards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize), serde(rename_all = "camelCase"))]
pub enum SandboxActivity {
    /// Loading the Python runtime (Pyodide), from a snapshot or afresh.
    LoadingRuntime,
    LoadingPackages,
    StartingProgram,
    Running,
    /// Idle on purpose after a slice, to keep to the worker's CPU share.
    Resting,
    Idle,
}

/// Makes sandboxes. A Pyodide sandbox starts loading its runtime as soon as it is created;
/// `packages` are those of the job it is expected to serve (none when not known), so that it can
/// start from a snapshot already holding them.
pub trait SandboxFactory {
    fn create(&self, worktime: Worktime, packages: &[String]) -> Result<Rc<dyn Sandbox>, WorkerError>;
}

/// What the page (or a test) can watch. In JavaScript every name is camelCase: the `type`
/// (`sliceFinished`), the fields (`retryMs`) and the values (`timedOut`). Written as JSON by hand
/// ([`ToJson`], to keep serde out of the core's wasm); the tests hold it to what serde's derive
/// writes.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[cfg_attr(test, serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase"))]
pub enum WorkerEvent {
    Registered {
        worker_id: String,
        /// Who this worker's accepted slices are credited to (`GET /v1/workers/{contributor}`).
        contributor: String,
        sandboxes: usize,
    },
    Leased {
        count: usize,
    },
    SandboxCreated {
        sandbox: usize,
        worktime: Worktime,
    },
    SandboxRemoved {
        sandbox: usize,
        reason: String,
    },
    /// A sandbox moved on to another activity (`job` once it is bound to one).
    SandboxState {
        sandbox: usize,
        state: SandboxActivity,
        job: Option<String>,
    },
    SliceStarted {
        job: String,
        slice: u64,
        sandbox: usize,
    },
    /// The program reported progress (`dcp.progress`); `progress` is 0–1, or none for a bare
    /// heartbeat. At most one every [`PROGRESS_EVENT_MS`] per slice, and always at 1.
    SliceProgress {
        job: String,
        slice: u64,
        sandbox: usize,
        progress: Option<f64>,
    },
    /// `outcome`: `ok`, `error`, `jobError`, `workerFault`, `timedOut` or `released`; `ms`: the
    /// time in the sandbox, which is also what the slice credits once accepted.
    SliceFinished {
        job: String,
        slice: u64,
        sandbox: usize,
        outcome: &'static str,
        ms: u64,
    },
    /// The watchdog interrupted a slice that overran (the sandbox is kept).
    SliceInterrupted {
        job: String,
        slice: u64,
        sandbox: usize,
        reason: String,
    },
    /// The scheduler said the job ended: its slices here were stopped and dropped.
    JobEnded {
        job: String,
    },
    Submitted {
        accepted: usize,
        duplicate: usize,
        stale: usize,
        requeued: usize,
        released: usize,
        refused: usize,
    },
    /// A request failed on the network; that kind of request is retried after `retry_ms`.
    SchedulerUnreachable {
        request: &'static str,
        message: String,
        retry_ms: u64,
    },
    /// The scheduler refused a request as malformed: a bug, reported once; that kind of request stops.
    RequestRefused {
        request: &'static str,
        message: String,
    },
    /// Sandboxes keep failing to start here: leasing pauses so other workers get the slices.
    SandboxesFailing {
        failures: u32,
        pause_ms: u64,
    },
    /// Pyodide's start-up snapshot (`web::snapshots`), or a package snapshot: `made` in this browser, `restored` into a
    /// new sandbox, `rejected` by one (it started afresh; `reason` says why) or `failed` to make.
    RuntimeSnapshot {
        outcome: &'static str,
        ms: Option<u64>,
        reason: Option<String>,
        /// `None` for the plain runtime snapshot; for a package snapshot (the `packageSnapshots`
        /// option), the packages it holds (empty when not known, e.g. one that was refused).
        packages: Option<Vec<String>>,
        /// For a restore: `reused` when the sandbox's frame had the interpreter compiled for an
        /// earlier sandbox (a frame serves the next sandbox once its own ended), else `compiled`.
        interpreter: Option<String>,
    },
    /// No new slices start until resumed; queued ones went back to the scheduler.
    Paused,
    Resumed,
    /// The number of sandboxes changed (`setSandboxes`).
    SandboxesChanged {
        sandboxes: usize,
    },
    Idle,
    Stopped {
        reason: String,
    },
}

impl ToJson for SandboxActivity {
    fn write_json(&self, out: &mut String) {
        let name = match self {
            SandboxActivity::LoadingRuntime => "loadingRuntime",
            SandboxActivity::LoadingPackages => "loadingPackages",
            SandboxActivity::StartingProgram => "startingProgram",
            SandboxActivity::Running => "running",
            SandboxActivity::Resting => "resting",
            SandboxActivity::Idle => "idle",
        };
        name.write_json(out);
    }
}

impl ToJson for WorkerEvent {
    fn write_json(&self, out: &mut String) {
        let mut event = ObjectWriter::new(out);
        let event = &mut event;
        match self {
            WorkerEvent::Registered { worker_id, contributor, sandboxes } => event
                .field("type", "registered")
                .field("workerId", worker_id)
                .field("contributor", contributor)
                .field("sandboxes", sandboxes),
            WorkerEvent::Leased { count } => event.field("type", "leased").field("count", count),
            WorkerEvent::SandboxCreated { sandbox, worktime } => {
                event.field("type", "sandboxCreated").field("sandbox", sandbox).field("worktime", worktime)
            }
            WorkerEvent::SandboxRemoved { sandbox, reason } => {
                event.field("type", "sandboxRemoved").field("sandbox", sandbox).field("reason", reason)
            }
            WorkerEvent::SandboxState { sandbox, state, job } => {
                event.field("type", "sandboxState").field("sandbox", sandbox).field("state", state).field("job", job)
            }
            WorkerEvent::SliceStarted { job, slice, sandbox } => {
                slice_event(event, "sliceStarted", job, *slice, *sandbox)
            }
            WorkerEvent::SliceProgress { job, slice, sandbox, progress } => {
                slice_event(event, "sliceProgress", job, *slice, *sandbox).field("progress", progress)
            }
            WorkerEvent::SliceFinished { job, slice, sandbox, outcome, ms } => {
                slice_event(event, "sliceFinished", job, *slice, *sandbox).field("outcome", *outcome).field("ms", ms)
            }
            WorkerEvent::SliceInterrupted { job, slice, sandbox, reason } => {
                slice_event(event, "sliceInterrupted", job, *slice, *sandbox).field("reason", reason)
            }
            WorkerEvent::JobEnded { job } => event.field("type", "jobEnded").field("job", job),
            WorkerEvent::Submitted { accepted, duplicate, stale, requeued, released, refused } => event
                .field("type", "submitted")
                .field("accepted", accepted)
                .field("duplicate", duplicate)
                .field("stale", stale)
                .field("requeued", requeued)
                .field("released", released)
                .field("refused", refused),
            WorkerEvent::SchedulerUnreachable { request, message, retry_ms } => event
                .field("type", "schedulerUnreachable")
                .field("request", *request)
                .field("message", message)
                .field("retryMs", retry_ms),
            WorkerEvent::RequestRefused { request, message } => {
                event.field("type", "requestRefused").field("request", *request).field("message", message)
            }
            WorkerEvent::SandboxesFailing { failures, pause_ms } => {
                event.field("type", "sandboxesFailing").field("failures", failures).field("pauseMs", pause_ms)
            }
            WorkerEvent::RuntimeSnapshot { outcome, ms, reason, packages, interpreter } => event
                .field("type", "runtimeSnapshot")
                .field("outcome", *outcome)
                .field("ms", ms)
                .field("reason", reason)
                .field("packages", packages)
                .field("interpreter", interpreter),
            WorkerEvent::Paused => event.field("type", "paused"),
            WorkerEvent::Resumed => event.field("type", "resumed"),
            WorkerEvent::SandboxesChanged { sandboxes } => {
                event.field("type", "sandboxesChanged").field("sandboxes", sandboxes)
            }
            WorkerEvent::Idle => event.field("type", "idle"),
            WorkerEvent::Stopped { reason } => event.field("type", "stopped").field("reason", reason),
        };
        event.end();
    }
}

/// The fields every slice event starts with: its `type`, then which slice in which sandbox.
fn slice_event<'e, 'o>(
    event: &'e mut ObjectWriter<'o>,
    kind: &str,
    job: &str,
    slice: u64,
    sandbox: usize,
) -> &'e mut ObjectWriter<'o> {
    event.field("type", kind).field("job", job).field("slice", &slice).field("sandbox", &sandbox)
}

/// The shortest gap between two `SliceProgress` events of one slice: a program may report
/// thousands of times a second, and each event costs the page main-thread work.
pub const PROGRESS_EVENT_MS: u64 = 250;

/// The most sandboxes a worker runs.
pub const MAX_SANDBOXES: usize = 64;

/// The smallest CPU share: below it a sandbox would rest twenty times as long as it works.
pub const MIN_CPU_SHARE: f64 = 0.05;

/// An outcome's name for the page: camelCase, like every other name in the JavaScript API.
fn outcome_name(outcome: &SliceOutcome) -> &'static str {
    match outcome {
        SliceOutcome::Ok { .. } => "ok",
        SliceOutcome::Error { .. } => "error",
        SliceOutcome::JobError { .. } => "jobError",
        SliceOutcome::WorkerFault { .. } => "workerFault",
        SliceOutcome::TimedOut { .. } => "timedOut",
        SliceOutcome::Released { .. } => "released",
    }
}

/// How long a sandbox rests after working `ms` so that it works `share` of the time.
pub fn rest_after(ms: u64, share: f64) -> u64 {
    if share >= 1.0 || ms == 0 {
        return 0;
    }
    let share = share.max(MIN_CPU_SHARE);
    (ms as f64 * (1.0 - share) / share).round() as u64
}

/// How the supervisor behaves.
#[derive(Clone, Copy, Debug)]
pub struct SupervisorConfig {
    /// Slices running at once (one sandbox each).
    pub sandboxes: usize,
    /// How much work, in milliseconds per sandbox, to hold ahead (running + queued); the number of
    /// slices that makes follows from the measured slice duration.
    pub buffer_ms: u64,
    /// Bounds on slices held per sandbox, whatever the slices' duration.
    pub min_held_per_sandbox: usize,
    pub max_held_per_sandbox: usize,
    /// Results are submitted once this many are finished…
    pub submit_batch: usize,
    /// …or once the oldest waited this long (ms), or when nothing else is running.
    pub submit_delay_ms: u64,
    /// Finished results kept while the scheduler is unreachable; no more slices are leased
    /// beyond this.
    pub max_undelivered: usize,
    /// How long a lease request may wait for work when the worker has nothing to do.
    pub long_poll_ms: u64,
    /// Stop after this long without work; `None` runs until stopped.
    pub idle_exit_ms: Option<u64>,
    /// How long a sandbox may take to load its runtime and set a job up.
    pub setup_timeout_ms: u64,
    /// Recycle a sandbox after this many slices: hygiene against what leaks without growing the
    /// heap, set high enough that a job of light slices (thousands a second) does not pay for a
    /// new sandbox every few seconds.
    pub max_slices_per_sandbox: u32,
    /// Recycle a sandbox whose heap has grown past this many bytes.
    pub max_sandbox_heap_bytes: u64,
    pub max_sandbox_idle_ms: u64,
    /// Most slices a warm sandbox may hold at once: the next ones wait in its message queue, so
    /// the round trip to the sandbox is hidden and light slices travel in batches. The depth in
    /// use follows the slices' pace ([`pipeline_depth_for`]).
    pub pipeline_depth: u32,
    /// Keep one Pyodide sandbox loaded ahead of need while working on Pyodide jobs.
    pub prewarm_spare: bool,
    /// The share of each sandbox's time spent on slices (0.05–1): after a slice of `t` ms a
    /// sandbox rests `t · (1 − share) / share` ms.
    pub cpu_share: f64,
    /// Jobs remembered (descriptor and bundle) beyond those in use.
    pub job_cache: usize,
    pub bundle_limits: BundleLimits,
}

impl SupervisorConfig {
    /// Defaults for `sandboxes` concurrent slices.
    pub fn with_sandboxes(sandboxes: usize) -> SupervisorConfig {
        SupervisorConfig {
            sandboxes: sandboxes.max(1),
            buffer_ms: 3_000,
            min_held_per_sandbox: 2,
            max_held_per_sandbox: 250,
            submit_batch: 200,
            submit_delay_ms: 200,
            max_undelivered: 10_000,
            long_poll_ms: 10_000,
            idle_exit_ms: None,
            setup_timeout_ms: 120_000,
            max_slices_per_sandbox: 100_000,
            max_sandbox_heap_bytes: 1 << 30,
            max_sandbox_idle_ms: 60_000,
            pipeline_depth: 64,
            prewarm_spare: true,
            cpu_share: 1.0,
            job_cache: 16,
            bundle_limits: BundleLimits::default(),
        }
    }
}

/// Lets the page steer a running supervisor: pause and resume, the number of sandboxes, the CPU
/// share. The supervisor applies changes on its next turn.
#[derive(Clone)]
pub struct Controls(Rc<ControlState>);

struct ControlState {
    paused: Cell<bool>,
    sandboxes: Cell<usize>,
    cpu_share: Cell<f64>,
}

impl Controls {
    fn new(config: &SupervisorConfig) -> Controls {
        Controls(Rc::new(ControlState {
            paused: Cell::new(false),
            sandboxes: Cell::new(config.sandboxes),
            cpu_share: Cell::new(config.cpu_share),
        }))
    }

    /// No new slices start; running ones finish and queued ones go back to the scheduler.
    pub fn pause(&self) {
        self.0.paused.set(true);
    }

    pub fn resume(&self) {
        self.0.paused.set(false);
    }

    pub fn is_paused(&self) -> bool {
        self.0.paused.get()
    }

    /// Runs `sandboxes` slices at once (1–[`MAX_SANDBOXES`]); extra sandboxes end once idle.
    pub fn set_sandboxes(&self, sandboxes: usize) -> Result<(), WorkerError> {
        if !(1..=MAX_SANDBOXES).contains(&sandboxes) {
            return Err(WorkerError::Options(format!("sandboxes must be 1–{MAX_SANDBOXES}, not {sandboxes}")));
        }
        self.0.sandboxes.set(sandboxes);
        Ok(())
    }

    pub fn sandboxes(&self) -> usize {
        self.0.sandboxes.get()
    }

    /// Spends `share` (0.05–1) of each sandbox's time on slices, resting the rest.
    pub fn set_cpu_share(&self, share: f64) -> Result<(), WorkerError> {
        self.0.cpu_share.set(valid_cpu_share(share)?);
        Ok(())
    }

    pub fn cpu_share(&self) -> f64 {
        self.0.cpu_share.get()
    }
}

/// `share` if it is a CPU share the worker can keep to (0.05–1).
pub fn valid_cpu_share(share: f64) -> Result<f64, WorkerError> {
    if (MIN_CPU_SHARE..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(WorkerError::Options(format!("cpuShare must be 0.05–1, not {}", in_decimals(share))))
    }
}

/// `x` written out with up to six decimals (`2`, `0.5`), for messages; a number too small for
/// six decimals but not zero as `1e-7`, so that it never reads as `0`. Not `{x}`: Rust's float
/// formatting costs the core's wasm 17 KB.
pub fn in_decimals(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x < 0.0 {
            "-Infinity".into()
        } else {
            "Infinity".into()
        };
    }
    let millionths = (x.abs() * 1e6).round();
    if millionths >= u64::MAX as f64 {
        return if x < 0.0 { "-a huge number".into() } else { "a huge number".into() };
    }
    let millionths = millionths as u64;
    if millionths == 0 && x != 0.0 {
        // Below 0.0000005: scientific, its mantissa in [1, 10) (no libm: a few multiplications).
        let (mut mantissa, mut exponent) = (x.abs(), 0);
        while mantissa < 1.0 {
            mantissa *= 10.0;
            exponent -= 1;
        }
        let sign = if x < 0.0 { "-" } else { "" };
        return format!("{sign}{}e{exponent}", in_decimals(mantissa));
    }
    let sign = if x < 0.0 && millionths > 0 { "-" } else { "" };
    let (whole, fraction) = (millionths / 1_000_000, millionths % 1_000_000);
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let digits = format!("{fraction:06}");
    format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
}

/// Lets the page stop a running supervisor.
#[derive(Clone, Default)]
pub struct StopHandle(Rc<Cell<bool>>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.set(true);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.get()
    }
}

/// How the watchdog dealt with a slice.
#[derive(Clone, Debug, PartialEq)]
enum Watch {
    /// The slice ended by itself.
    Quiet,
    /// It overran and was interrupted; the sandbox is kept.
    Interrupted(String),
    /// It overran and could not be interrupted: the sandbox must go.
    Terminate(String),
}

enum Event {
    Registered(Result<RegisterResponse, WorkerError>),
    Leased(Result<LeaseResponse, WorkerError>),
    BundleFetched(String, Result<Vec<u8>, WorkerError>),
    SliceDone { slot: usize, generation: u64, lease: Lease, run: SliceRun, watch: Watch, ms: u64 },
    Submitted(Result<ResultsResponse, WorkerError>),
    Heartbeat(Result<HeartbeatResponse, WorkerError>),
}

/// Longest the loop sleeps without looking (a safety net; everything due sooner wakes it sooner).
const MAX_SLEEP_MS: u64 = 1_000;

/// How long stopping waits for requests still in flight.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Consecutive worker faults after which leasing pauses.
const FAULTS_BEFORE_PAUSE: u32 = 2;

/// The supervisor's whole state; `run` drives it.
pub struct Supervisor<C: SchedulerClient, F: SandboxFactory, K: Clock> {
    client: Rc<C>,
    factory: F,
    clock: Rc<K>,
    config: SupervisorConfig,
    on_event: Rc<dyn Fn(&WorkerEvent)>,
    stop: StopHandle,
    controls: Controls,
    /// The controls as last applied.
    paused: bool,
    cpu_share: f64,

    identity: Option<RegisterResponse>,
    limits: WorkerLimits,
    jobs: JobCache,
    book: LeaseBook,
    outbox: Outbox,
    pool: Pool,
    /// Live sandboxes by slot.
    sandboxes: SmallMap<usize, LiveSandbox>,
    generation: u64,
    /// Slices sent to sandboxes, by lease id: the slot and generation running them. A
    /// `HashMap`: each sandbox's pipeline holds up to 64 light slices, so this grows with the
    /// leases held (hundreds with 8 sandboxes), unlike the maps of sandboxes and jobs.
    running: HashMap<String, (usize, u64)>,
    /// Running slices whose sandbox was stopped for another slice's fault: given back free.
    bystanders: HashMap<String, String>,
    tasks: FuturesUnordered<Task<Event>>,
    register_gate: RequestGate,
    lease_gate: RequestGate,
    heartbeat_gate: RequestGate,
    submit_gate: RequestGate,
    next_lease_at: u64,
    next_heartbeat_at: u64,
    last_work_at: u64,
    last_worktime: Option<Worktime>,
    /// The packages of the job whose slice started last: the spare is started for them.
    last_packages: Vec<String>,
    /// Moving average of slice durations (ms), once one was measured.
    slice_ms: Option<f64>,
    /// Consecutive worker faults, and the pause they earn.
    faults_in_row: u32,
    fault_pause: Backoff,
}

/// A sandbox the supervisor holds.
#[derive(Clone)]
struct LiveSandbox {
    /// Tells a replaced sandbox from its successor in the same slot.
    generation: u64,
    sandbox: Rc<dyn Sandbox>,
    /// The slices sent to it, in the order it runs them: a pipelined slice's time limit and
    /// credited time count from when it starts, not from when it was sent.
    queue: Rc<SliceQueue>,
}

/// Work (ms) a warm sandbox holds queued behind the slice it runs: enough that light slices
/// travel to it by the dozen, little enough that none waits long behind another.
pub const PIPELINE_MS: f64 = 40.0;

/// The pipeline depth for slices of `slice_ms`: 2 (one running, one queued) until the pace is
/// known or for slices of `PIPELINE_MS` and more; up to `max` for light ones; 1 when a CPU share
/// makes sandboxes rest between slices (a queued slice would skip the rest).
pub fn pipeline_depth_for(max: u32, slice_ms: Option<f64>, cpu_share: f64) -> u32 {
    if cpu_share < 1.0 || max <= 1 {
        return 1;
    }
    let wanted = match slice_ms {
        Some(ms) => (PIPELINE_MS / ms.max(0.01)).ceil() as u32 + 1,
        None => 2,
    };
    wanted.clamp(2, max)
}

/// Slices to hold per sandbox: enough for `buffer_ms` of work at the measured pace, so fast
/// slices are leased in large batches and slow ones are not hoarded.
pub fn held_per_sandbox(config: &SupervisorConfig, slice_ms: Option<f64>) -> usize {
    let wanted = match slice_ms {
        Some(ms) => (config.buffer_ms as f64 / ms.max(0.01)).ceil() as usize,
        None => config.min_held_per_sandbox,
    };
    wanted.clamp(config.min_held_per_sandbox.max(1), config.max_held_per_sandbox.max(1))
}

impl<C: SchedulerClient + 'static, F: SandboxFactory, K: Clock + 'static> Supervisor<C, F, K> {
    pub fn new(client: C, factory: F, clock: K, config: SupervisorConfig, on_event: Rc<dyn Fn(&WorkerEvent)>) -> Self {
        let pool = Pool::new(PoolLimits {
            capacity: config.sandboxes,
            max_slices_per_sandbox: config.max_slices_per_sandbox,
            max_heap_bytes: config.max_sandbox_heap_bytes,
            max_idle_ms: config.max_sandbox_idle_ms,
            pipeline_depth: pipeline_depth_for(config.pipeline_depth, None, config.cpu_share),
        });
        let now = clock.now_ms();
        let limits = WorkerLimits::default();
        Supervisor {
            client: Rc::new(client),
            factory,
            clock: Rc::new(clock),
            config,
            on_event,
            stop: StopHandle::default(),
            controls: Controls::new(&config),
            paused: false,
            cpu_share: config.cpu_share,
            identity: None,
            limits,
            jobs: JobCache::new(config.job_cache),
            book: LeaseBook::default(),
            outbox: Outbox::new(config.submit_batch, (limits.max_request_bytes / 2) as usize),
            pool,
            sandboxes: SmallMap::new(),
            generation: 0,
            running: HashMap::new(),
            bystanders: HashMap::new(),
            tasks: FuturesUnordered::new(),
            register_gate: RequestGate::new(250, 30_000),
            lease_gate: RequestGate::new(250, 30_000),
            heartbeat_gate: RequestGate::new(250, 5_000),
            submit_gate: RequestGate::new(250, 10_000),
            next_lease_at: 0,
            next_heartbeat_at: 0,
            last_work_at: now,
            last_worktime: None,
            last_packages: Vec::new(),
            slice_ms: None,
            faults_in_row: 0,
            fault_pause: Backoff::new(1_000, 60_000),
        }
    }

    /// A handle that stops `run` from outside.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// A handle that pauses, resumes and resizes `run` from outside.
    pub fn controls(&self) -> Controls {
        self.controls.clone()
    }

    /// A handle that gives every unacknowledged lease back at once, for a closing page.
    pub fn farewell(&self) -> Farewell {
        self.book.farewell()
    }

    fn emit(&self, event: WorkerEvent) {
        (self.on_event)(&event);
    }

    /// Runs until stopped or (with `idle_exit_ms`) idle; returns why it stopped.
    pub async fn run(mut self) -> String {
        // One timer: until the next thing falls due, or an answer comes first. It is kept across
        // turns and replaced only when something falls due sooner, so a busy loop does not set
        // and clear a browser timer per event.
        let mut timer: Option<(u64, Task<()>)> = None;
        let reason = loop {
            if self.stop.is_stopped() {
                break "stopped".to_string();
            }
            if let Some(reason) = self.step() {
                break reason;
            }
            let now = self.clock.now_ms();
            let wake = self.next_wake(now);
            if timer.as_ref().is_none_or(|(due, _)| wake < *due) {
                timer = Some((wake, self.clock.sleep(wake.saturating_sub(now).max(1))));
            }
            let Some((_, sleeper)) = timer.as_mut() else { continue };
            if self.tasks.is_empty() {
                sleeper.await;
                timer = None;
                continue;
            }
            match future::select(self.tasks.next(), sleeper).await {
                Either::Left((Some(event), _)) => self.handle(event),
                Either::Left((None, _)) => {}
                Either::Right(_) => timer = None,
            }
        };
        self.shut_down(&reason).await;
        self.emit(WorkerEvent::Stopped { reason: reason.clone() });
        reason
    }

    /// Slices held and not finished: queued plus sent to sandboxes.
    fn holding(&self) -> usize {
        self.book.queued() + self.pool.in_flight()
    }

    fn wanted(&self) -> usize {
        self.config.sandboxes * held_per_sandbox(&self.config, self.slice_ms)
    }

    /// Whether a lease request would be sent if its gate were open.
    fn lease_wanted(&self) -> bool {
        !self.paused && self.holding() <= self.wanted() / 2 && self.outbox.len() < self.config.max_undelivered
    }

    fn nothing_running(&self) -> bool {
        self.book.queued() == 0 && self.pool.in_flight() == 0
    }

    /// When the loop must look again: the earliest of everything that falls due.
    fn next_wake(&self, now: u64) -> u64 {
        let mut wake = now + MAX_SLEEP_MS;
        let mut consider = |at: Option<u64>| {
            if let Some(at) = at {
                wake = wake.min(at.max(now + 1));
            }
        };
        if self.identity.is_none() {
            consider(self.register_gate.opens_at());
            return wake;
        }
        if let (Some(oldest), Some(open)) = (self.outbox.oldest_at(), self.submit_gate.opens_at()) {
            let due = if self.nothing_running() { now } else { oldest + self.config.submit_delay_ms };
            consider(Some(due.max(open)));
        }
        if self.book.held() > 0 {
            consider(self.heartbeat_gate.opens_at().map(|open| open.max(self.next_heartbeat_at)));
        }
        if self.lease_wanted() {
            consider(self.lease_gate.opens_at().map(|open| open.max(self.next_lease_at)));
        }
        if let Some(limit) = self.config.idle_exit_ms.filter(|_| !self.paused) {
            consider(Some(self.last_work_at + limit));
        }
        consider(self.pool.next_rest_end());
        wake
    }

    /// Starts whatever work is due; returns a reason when the supervisor should stop.
    fn step(&mut self) -> Option<String> {
        let now = self.clock.now_ms();
        let Some(identity) = self.identity.clone() else {
            if let Some(message) = self.register_gate.refused() {
                return Some(format!("the scheduler refused to register this worker: {message}"));
            }
            if self.register_gate.ready(now) {
                self.register_gate.begin();
                let request = RegisterRequest {
                    user_agent: None,
                    sandboxes: self.config.sandboxes as u32,
                    worker_key: None,
                    contributor: None,
                };
                let task = self.client.register(request);
                self.tasks.push(task.map(Event::Registered).boxed_local());
            }
            return None;
        };
        if let Some(message) = self.submit_gate.refused() {
            return Some(format!("the scheduler refused results: {message}"));
        }
        self.apply_controls(now);
        self.recycle(now);
        for slot in self.pool.wake_rested(now) {
            self.report_activity(slot, SandboxActivity::Idle);
        }
        if self.paused {
            // Other workers can run what this one no longer starts (including a lease that
            // was already on its way when the page paused).
            for lease in self.book.take_queued() {
                self.give_back(lease, "the worker paused", now);
            }
        } else {
            self.dispatch();
            self.prewarm();
        }
        self.submit_if_due(now, &identity);
        self.heartbeat_if_due(now, &identity);
        if self.paused {
            // A paused worker is not idle: it must not stop for want of work.
            self.last_work_at = now;
            return None;
        }
        self.lease_if_due(now, &identity)
    }

    /// Applies what the page changed through [`Controls`] since the last turn.
    fn apply_controls(&mut self, now: u64) {
        let sandboxes = self.controls.sandboxes();
        if sandboxes != self.config.sandboxes {
            self.config.sandboxes = sandboxes;
            self.pool.set_capacity(sandboxes);
            self.emit(WorkerEvent::SandboxesChanged { sandboxes });
        }
        let share = self.controls.cpu_share();
        if share != self.cpu_share {
            self.cpu_share = share;
            self.pool.set_pipeline_depth(pipeline_depth_for(self.config.pipeline_depth, self.slice_ms, share));
        }
        let paused = self.controls.is_paused();
        if paused != self.paused {
            self.paused = paused;
            if paused {
                self.emit(WorkerEvent::Paused);
            } else {
                self.last_work_at = now;
                self.next_lease_at = now;
                self.emit(WorkerEvent::Resumed);
            }
        }
    }

    /// Tells the page what the sandbox in `slot` is doing now.
    fn report_activity(&self, slot: usize, state: SandboxActivity) {
        let job = self.pool.slot(slot).and_then(|s| s.job.clone());
        self.emit(WorkerEvent::SandboxState { sandbox: slot, state, job });
    }

    /// Submits finished results once enough are ready, the oldest waited long enough, or nothing runs.
    fn submit_if_due(&mut self, now: u64, identity: &RegisterResponse) {
        let Some(oldest) = self.outbox.oldest_at() else { return };
        let due = self.outbox.waiting() >= self.config.submit_batch
            || now.saturating_sub(oldest) >= self.config.submit_delay_ms
            || self.nothing_running();
        if due && self.submit_gate.ready(now) {
            self.submit_gate.begin();
            let results = self.outbox.take_batch();
            let task = self.client.submit(&identity.token, ResultsRequest { results, worker_token: None });
            self.tasks.push(task.map(Event::Submitted).boxed_local());
        }
    }

    /// Extends every held lease each `heartbeat_ms`, with the progress programs reported.
    fn heartbeat_if_due(&mut self, now: u64, identity: &RegisterResponse) {
        if self.book.held() == 0 || now < self.next_heartbeat_at || !self.heartbeat_gate.ready(now) {
            return;
        }
        self.heartbeat_gate.begin();
        self.next_heartbeat_at = now + identity.heartbeat_ms.max(100);
        let requests: Vec<_> = self
            .book
            .heartbeat_chunks(self.limits.max_heartbeat_leases as usize)
            .into_iter()
            .map(|leases| self.client.heartbeat(&identity.token, HeartbeatRequest { leases }))
            .collect();
        let task = future::join_all(requests).map(|answers| {
            let mut merged = HeartbeatResponse::default();
            for answer in answers {
                let answer = answer?;
                merged.extended.extend(answer.extended);
                merged.lost.extend(answer.lost);
                merged.ended_jobs.extend(answer.ended_jobs);
                merged.ttl_ms = answer.ttl_ms;
            }
            Ok(merged)
        });
        self.tasks.push(task.map(Event::Heartbeat).boxed_local());
    }

    /// Leases more work when half of what is held is done; stops the loop when idle long enough.
    fn lease_if_due(&mut self, now: u64, identity: &RegisterResponse) -> Option<String> {
        let idle = self.holding() == 0 && self.outbox.is_empty();
        if let Some(message) = self.lease_gate.refused() {
            return idle.then(|| format!("the scheduler refused lease requests: {message}"));
        }
        if !self.lease_wanted() || now < self.next_lease_at || !self.lease_gate.ready(now) {
            return None;
        }
        if idle {
            if let Some(limit) = self.config.idle_exit_ms {
                if now.saturating_sub(self.last_work_at) >= limit {
                    self.emit(WorkerEvent::Idle);
                    return Some("idle".into());
                }
            }
        }
        let wait_ms = if idle {
            let left = self.config.idle_exit_ms.map(|limit| limit.saturating_sub(now - self.last_work_at));
            left.map_or(self.config.long_poll_ms, |left| left.min(self.config.long_poll_ms))
        } else {
            0
        }
        .min(self.limits.max_wait_ms);
        let max_slices = (self.wanted() - self.holding()).clamp(1, self.limits.max_lease_slices.max(1) as usize);
        self.lease_gate.begin();
        let request = LeaseRequest {
            max_slices: max_slices as u32,
            wait_ms,
            known_jobs: self.jobs.ids(),
            prefer_jobs: self.pool.warm_jobs(),
        };
        let task = self.client.lease(&identity.token, request);
        self.tasks.push(task.map(Event::Leased).boxed_local());
        None
    }

    fn handle(&mut self, event: Event) {
        let now = self.clock.now_ms();
        match event {
            Event::Registered(answer) => match answer {
                Ok(identity) => {
                    self.register_gate.succeeded();
                    self.last_work_at = now;
                    self.limits = identity.limits;
                    self.outbox.set_limits(
                        self.config.submit_batch.min(self.limits.max_results_per_batch as usize),
                        (self.limits.max_request_bytes / 2) as usize,
                    );
                    self.book.set_worker_token(Some(identity.token.clone()));
                    self.emit(WorkerEvent::Registered {
                        worker_id: identity.worker_id.clone(),
                        contributor: identity.contributor.clone(),
                        sandboxes: self.config.sandboxes,
                    });
                    self.identity = Some(identity);
                }
                Err(WorkerError::Rejected(error)) => {
                    self.register_gate.refuse(error.to_string());
                    self.emit(WorkerEvent::RequestRefused { request: "register", message: error.to_string() });
                }
                Err(error) => {
                    let retry_ms = self.register_gate.failed(now, self.clock.random());
                    self.emit(WorkerEvent::SchedulerUnreachable {
                        request: "register",
                        message: error.to_string(),
                        retry_ms,
                    });
                }
            },
            Event::Leased(answer) => self.on_leased(answer, now),
            Event::BundleFetched(job_id, answer) => self.on_bundle(job_id, answer, now),
            Event::SliceDone { slot, generation, lease, run, watch, ms } => {
                self.on_slice_done(slot, generation, lease, run, watch, ms, now)
            }
            Event::Submitted(answer) => self.on_submitted(answer, now),
            Event::Heartbeat(answer) => match answer {
                Ok(response) => {
                    self.heartbeat_gate.succeeded();
                    for lease_id in &response.lost {
                        self.book.lose(lease_id);
                    }
                    for job_id in response.ended_jobs {
                        self.end_job(&job_id);
                    }
                }
                Err(error) => self.request_failed("heartbeat", error, now),
            },
        }
    }

    /// A failed request of `kind`: a refusal closes that kind for good, anything else backs it off.
    fn request_failed(&mut self, kind: &'static str, error: WorkerError, now: u64) {
        let gate = match kind {
            "lease" => &mut self.lease_gate,
            "heartbeat" => &mut self.heartbeat_gate,
            _ => &mut self.submit_gate,
        };
        match error {
            WorkerError::Rejected(error) => {
                gate.refuse(error.to_string());
                self.emit(WorkerEvent::RequestRefused { request: kind, message: error.to_string() });
            }
            error => {
                let retry_ms = gate.failed(now, self.clock.random());
                self.emit(WorkerEvent::SchedulerUnreachable { request: kind, message: error.to_string(), retry_ms });
            }
        }
    }

    fn on_leased(&mut self, answer: Result<LeaseResponse, WorkerError>, now: u64) {
        match answer {
            Ok(response) => {
                self.lease_gate.succeeded();
                for job_id in &response.ended_jobs {
                    self.end_job(job_id);
                }
                if response.leases.is_empty() {
                    // Nothing now: while slices still run, ask again in a second rather than spin.
                    self.next_lease_at = now + if self.holding() > 0 { 1_000 } else { 0 };
                    return;
                }
                self.last_work_at = now;
                self.emit(WorkerEvent::Leased { count: response.leases.len() });
                for descriptor in response.jobs {
                    self.learn_job(descriptor, now);
                }
                for lease in response.leases {
                    self.jobs.touch(&lease.job_id, now);
                    self.book.add(lease);
                }
            }
            Err(WorkerError::Rejected(error)) if error.code == "wrong_token" => {
                // The scheduler forgot us (new database): what we hold means nothing there now.
                self.lease_gate.succeeded();
                self.identity = None;
                self.book.clear();
                self.jobs = JobCache::new(self.config.job_cache);
            }
            Err(error) => self.request_failed("lease", error, now),
        }
    }

    fn on_bundle(&mut self, job_id: String, answer: Result<Vec<u8>, WorkerError>, now: u64) {
        let Some(JobEntry::Preparing(descriptor)) = self.jobs.take(&job_id) else { return };
        let entry = match answer
            .and_then(|tar| bundle::unpack_tar(&tar[..], &self.config.bundle_limits).map_err(WorkerError::Bundle))
        {
            Ok(entries) => JobEntry::Ready(Rc::new(PreparedJob { descriptor, bundle: entries })),
            Err(WorkerError::Unreachable(message)) => {
                // A network failure says nothing about the bundle: fetch it again later.
                let retry_ms = self.fault_pause.next_delay(self.clock.random());
                self.emit(WorkerEvent::SchedulerUnreachable { request: "bundle", message, retry_ms });
                self.fetch_bundle(&descriptor, retry_ms);
                JobEntry::Preparing(descriptor)
            }
            Err(error) => JobEntry::Broken { message: format!("bundle refused: {error}"), stack: None },
        };
        self.jobs.insert(job_id, entry, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_slice_done(
        &mut self,
        slot: usize,
        generation: u64,
        lease: Lease,
        run: SliceRun,
        watch: Watch,
        ms: u64,
        now: u64,
    ) {
        self.last_work_at = now;
        self.running.remove(&lease.lease_id);
        let mut outcome = run.outcome;
        // Who was interrupted: the slice the watchdog stopped, or — when the sandbox held this
        // slice's answer back while running the next one — the next one, which then comes back
        // timed out under a quiet watch. An answer that comes back `ok` was not stopped.
        let interrupted = match (&watch, &outcome) {
            (Watch::Interrupted(_), SliceOutcome::Ok { .. }) => None,
            (Watch::Interrupted(reason), _) => {
                // The program stopped with KeyboardInterrupt (or some other error): it timed out.
                outcome = SliceOutcome::TimedOut { message: reason.clone() };
                Some(reason.clone())
            }
            (Watch::Quiet, SliceOutcome::TimedOut { message }) => Some(message.clone()),
            (Watch::Quiet, _) => None,
            (Watch::Terminate(reason), _) => {
                outcome = SliceOutcome::TimedOut { message: reason.clone() };
                None
            }
        };
        if let Some(reason) = interrupted {
            self.emit(WorkerEvent::SliceInterrupted {
                job: lease.job_id.clone(),
                slice: lease.slice,
                sandbox: slot,
                reason,
            });
        }
        if let Some(reason) = self.bystanders.remove(&lease.lease_id) {
            if matches!(outcome, SliceOutcome::WorkerFault { .. }) {
                outcome = SliceOutcome::Released { reason };
            }
        }
        self.emit(WorkerEvent::SliceFinished {
            job: lease.job_id.clone(),
            slice: lease.slice,
            sandbox: slot,
            outcome: outcome_name(&outcome),
            ms,
        });
        // The slot may hold a newer sandbox by now (this one was removed while it ran).
        let current = self.sandboxes.get(&slot).is_some_and(|live| live.generation == generation);
        // The pace of work, from warm sandboxes only: a first slice also paid for the imports.
        let warm = current && self.pool.slot(slot).is_some_and(|s| s.served > 0);
        if warm && matches!(outcome, SliceOutcome::Ok { .. } | SliceOutcome::Error { .. }) {
            let sample = ms.max(1) as f64;
            self.slice_ms = Some(self.slice_ms.map_or(sample, |average| 0.8 * average + 0.2 * sample));
            self.pool.set_pipeline_depth(pipeline_depth_for(self.config.pipeline_depth, self.slice_ms, self.cpu_share));
        }
        let removal = match (&watch, &outcome) {
            (Watch::Terminate(_), _) => Some(("slice timed out", Ending::Terminate)),
            (_, SliceOutcome::WorkerFault { .. }) => Some(("sandbox fault", Ending::Terminate)),
            // The program's own failure says nothing against the sandbox it failed in.
            (_, SliceOutcome::JobError { .. }) => Some(("the program failed to set up", Ending::Retire)),
            _ => None,
        };
        match (current, removal) {
            (false, _) => {}
            (true, Some((reason, ending))) => self.remove_sandbox(slot, reason, ending),
            (true, None) => {
                self.pool.finished(slot, now, run.heap_bytes);
                let rest = rest_after(ms, self.cpu_share);
                if rest > 0 {
                    self.pool.rest(slot, now + rest);
                    self.report_activity(slot, SandboxActivity::Resting);
                } else if self.pool.slot(slot).is_some_and(|s| s.running == 0) {
                    self.report_activity(slot, SandboxActivity::Idle);
                }
            }
        }
        self.count_fault(&outcome, now);
        if let SliceOutcome::JobError { message, stack } = &outcome {
            if self.jobs.setup_failed(&lease.job_id, message, stack.as_deref(), now) {
                // Failed in two fresh sandboxes here: its other slices would only fail the same way.
                self.report_broken_queued(&lease.job_id, now);
            }
        }
        if self.book.finish(&lease.lease_id) {
            let item = ResultItem {
                lease_id: lease.lease_id,
                token: lease.token,
                outcome: fit_outcome(outcome, self.limits.max_result_bytes),
                console: cap_console(run.console),
                compute_ms: Some(ms),
            };
            self.outbox.push(item, now);
        }
    }

    /// Worker faults in a row pause leasing, so a machine whose sandboxes cannot start stops
    /// taking slices from workers that can run them.
    fn count_fault(&mut self, outcome: &SliceOutcome, now: u64) {
        match outcome {
            SliceOutcome::WorkerFault { .. } => {
                self.faults_in_row += 1;
                if self.faults_in_row >= FAULTS_BEFORE_PAUSE {
                    let pause_ms = self.fault_pause.next_delay(self.clock.random());
                    self.lease_gate.hold_until(now + pause_ms);
                    self.emit(WorkerEvent::SandboxesFailing { failures: self.faults_in_row, pause_ms });
                }
            }
            SliceOutcome::Ok { .. } | SliceOutcome::Error { .. } => {
                self.faults_in_row = 0;
                self.fault_pause.reset();
            }
            _ => {}
        }
    }

    fn on_submitted(&mut self, answer: Result<ResultsResponse, WorkerError>, now: u64) {
        match answer {
            Ok(response) => {
                self.submit_gate.succeeded();
                self.outbox.delivered();
                for ack in &response.acks {
                    self.book.acknowledged(&ack.lease_id);
                }
                let count = |status| response.acks.iter().filter(|ack| ack.status == status).count();
                self.emit(WorkerEvent::Submitted {
                    accepted: count(ResultStatus::Accepted),
                    duplicate: count(ResultStatus::Duplicate),
                    stale: count(ResultStatus::Stale),
                    requeued: count(ResultStatus::Requeued),
                    released: count(ResultStatus::Released),
                    refused: count(ResultStatus::Refused),
                });
            }
            Err(WorkerError::Rejected(error)) if error.code == "too_large" => {
                // Send smaller batches: the results themselves are fine.
                self.outbox.undelivered(now);
                self.outbox.shrink();
                self.submit_gate.succeeded();
            }
            Err(error) => {
                // Kept and sent again: acceptance is idempotent per lease.
                self.outbox.undelivered(now);
                self.request_failed("submit", error, now);
            }
        }
    }

    /// The scheduler ended a job: stop its slices here and forget it.
    fn end_job(&mut self, job_id: &str) {
        let dropped = self.book.drop_job(job_id);
        if dropped == 0 && !self.jobs.contains(job_id) {
            return;
        }
        self.jobs.forget(job_id);
        for slot in self.pool.live() {
            if self.pool.slot(slot).and_then(|s| s.job.as_deref()) == Some(job_id) {
                self.remove_sandbox(slot, "its job ended", Ending::Retire);
            }
        }
        self.emit(WorkerEvent::JobEnded { job: job_id.to_string() });
    }

    fn learn_job(&mut self, descriptor: JobDescriptor, now: u64) {
        let job_id = descriptor.job_id.clone();
        let entry = match descriptor.bundle {
            Some(_) => {
                self.fetch_bundle(&descriptor, 0);
                JobEntry::Preparing(descriptor)
            }
            None => JobEntry::Ready(Rc::new(PreparedJob { descriptor, bundle: Vec::new() })),
        };
        self.jobs.insert(job_id, entry, now);
        let mut in_use = self.book.held_jobs();
        in_use.extend(self.pool.warm_jobs());
        self.jobs.evict(|id| in_use.iter().any(|job| job == id));
    }

    /// Downloads a job's bundle (once per worker, shared by its sandboxes) after `delay_ms`.
    fn fetch_bundle(&mut self, descriptor: &JobDescriptor, delay_ms: u64) {
        let Some(sha256) = descriptor.bundle.clone() else { return };
        let (client, wait, job_id) = (self.client.clone(), self.clock.sleep(delay_ms), descriptor.job_id.clone());
        let limits = self.config.bundle_limits;
        let task = async move {
            wait.await;
            Event::BundleFetched(job_id, client.bundle(&sha256, &limits).await)
        };
        self.tasks.push(task.boxed_local());
    }

    /// Reports every queued slice of a job that cannot run here with the job's error.
    fn report_broken_queued(&mut self, job_id: &str, now: u64) {
        let Some(JobEntry::Broken { message, stack }) = self.jobs.get(job_id) else { return };
        let outcome = SliceOutcome::JobError { message: message.clone(), stack: stack.clone() };
        for lease in self.book.take_queued_of(job_id) {
            if self.book.finish(&lease.lease_id) {
                let item = ResultItem {
                    lease_id: lease.lease_id,
                    token: lease.token,
                    outcome: outcome.clone(),
                    console: vec![],
                    compute_ms: None,
                };
                self.outbox.push(item, now);
            }
        }
    }

    /// Sends queued slices to sandboxes, in lease order, skipping jobs not ready yet.
    fn dispatch(&mut self) {
        let now = self.clock.now_ms();
        let mut index = 0;
        while index < self.book.queued() {
            let Some(job_id) = self.book.queued_job(index).map(str::to_string) else { return };
            let job = match self.jobs.get(&job_id) {
                Some(JobEntry::Ready(job)) => job.clone(),
                Some(JobEntry::Broken { .. }) => {
                    self.report_broken_queued(&job_id, now);
                    continue;
                }
                Some(JobEntry::Preparing(_)) => {
                    index += 1;
                    continue;
                }
                None => {
                    // Not described to us (forgotten): give it back so a fresh lease brings the job.
                    if let Some((lease, _)) = self.book.start(index) {
                        self.give_back(lease, "the worker no longer knew the job", now);
                    }
                    continue;
                }
            };
            let worktime = job.descriptor.worktime;
            let slot = match self.pool.place(&job_id, worktime) {
                Placement::Busy => return,
                Placement::Warm(slot) | Placement::Claim(slot) => slot,
                Placement::Create(slot) => match self.create_sandbox(slot, worktime, &job.descriptor.packages) {
                    Some(slot) => slot,
                    None => return,
                },
                Placement::Replace(slot) => {
                    self.remove_sandbox(slot, "replaced for another job", Ending::Retire);
                    match self.create_sandbox(slot, worktime, &job.descriptor.packages) {
                        Some(slot) => slot,
                        None => return,
                    }
                }
            };
            let Some((lease, progress)) = self.book.start(index) else { return };
            self.start_slice(slot, job, lease, progress);
        }
    }

    /// Hands a lease back unrun, at no cost to the slice.
    fn give_back(&mut self, lease: Lease, reason: &str, now: u64) {
        if self.book.finish(&lease.lease_id) {
            let outcome = SliceOutcome::Released { reason: reason.to_string() };
            let item =
                ResultItem { lease_id: lease.lease_id, token: lease.token, outcome, console: vec![], compute_ms: None };
            self.outbox.push(item, now);
        }
    }

    fn create_sandbox(&mut self, slot: usize, worktime: Worktime, packages: &[String]) -> Option<usize> {
        match self.factory.create(worktime, packages) {
            Ok(sandbox) => {
                self.generation += 1;
                let live = LiveSandbox { generation: self.generation, sandbox, queue: Rc::default() };
                self.sandboxes.insert(slot, live);
                self.pool.created(slot, worktime, self.clock.now_ms());
                self.emit(WorkerEvent::SandboxCreated { sandbox: slot, worktime });
                let state = match worktime {
                    Worktime::Pyodide => SandboxActivity::LoadingRuntime,
                    Worktime::MapBasic => SandboxActivity::Idle,
                };
                self.report_activity(slot, state);
                Some(slot)
            }
            Err(error) => {
                self.emit(WorkerEvent::SandboxRemoved { sandbox: slot, reason: error.to_string() });
                None
            }
        }
    }

    /// Ends a sandbox as `ending` says; slices it was still running go back at no cost (not their
    /// fault).
    fn remove_sandbox(&mut self, slot: usize, reason: &str, ending: Ending) {
        if let Some(LiveSandbox { generation, sandbox, .. }) = self.sandboxes.remove(&slot) {
            for (lease_id, (running_slot, running_generation)) in &self.running {
                if *running_slot == slot && *running_generation == generation {
                    self.bystanders.insert(lease_id.clone(), format!("its sandbox was stopped: {reason}"));
                }
            }
            match ending {
                Ending::Terminate => sandbox.terminate(),
                Ending::Retire => sandbox.retire(),
            }
        }
        self.pool.removed(slot);
        self.emit(WorkerEvent::SandboxRemoved { sandbox: slot, reason: reason.into() });
    }

    fn recycle(&mut self, now: u64) {
        for slot in self.pool.to_recycle(now) {
            self.remove_sandbox(slot, "recycled", Ending::Retire);
        }
    }

    /// Keeps one Pyodide sandbox loading ahead of need while Pyodide work is flowing. It starts
    /// only once a sandbox has finished a slice, so it never competes with a cold start.
    fn prewarm(&mut self) {
        if !self.config.prewarm_spare || self.last_worktime != Some(Worktime::Pyodide) {
            return;
        }
        if (self.book.queued() == 0 && self.pool.busy() == 0) || !self.pool.any_warm() {
            return;
        }
        if !self.pool.has_spare(Worktime::Pyodide) {
            if let Some(slot) = self.pool.spare_index() {
                let packages = self.last_packages.clone();
                self.create_sandbox(slot, Worktime::Pyodide, &packages);
            }
        }
    }

    fn start_slice(&mut self, slot: usize, job: Rc<PreparedJob>, lease: Lease, progress: Rc<SliceProgress>) {
        let Some(LiveSandbox { generation, sandbox, queue }) = self.sandboxes.get(&slot).cloned() else {
            return;
        };
        let needs_setup = self.pool.slot(slot).is_some_and(|s| s.job.is_none());
        self.last_worktime = Some(job.descriptor.worktime);
        if self.last_packages != job.descriptor.packages {
            self.last_packages = job.descriptor.packages.clone();
        }
        self.pool.started(slot, &lease.job_id);
        self.running.insert(lease.lease_id.clone(), (slot, generation));
        self.emit(WorkerEvent::SliceStarted { job: lease.job_id.clone(), slice: lease.slice, sandbox: slot });
        let activity = |state| WorkerEvent::SandboxState { sandbox: slot, state, job: Some(lease.job_id.clone()) };
        let running = activity(SandboxActivity::Running);
        if needs_setup {
            self.emit(activity(match job.descriptor.worktime {
                Worktime::Pyodide => SandboxActivity::LoadingRuntime,
                Worktime::MapBasic => SandboxActivity::StartingProgram,
            }));
            let (on_event, job_id) = (self.on_event.clone(), lease.job_id.clone());
            sandbox.watch_setup(Box::new(move |phase| {
                let state = match phase {
                    SetupPhase::Packages => SandboxActivity::LoadingPackages,
                    SetupPhase::Program => SandboxActivity::StartingProgram,
                };
                on_event(&WorkerEvent::SandboxState { sandbox: slot, state, job: Some(job_id.clone()) });
            }));
        } else {
            self.emit(running.clone());
        }
        self.watch_progress(&progress, &lease, slot);
        let on_event = self.on_event.clone();
        let clock = self.clock.clone();
        let limits = SliceLimits::of(&job.descriptor);
        let setup_timeout = self.config.setup_timeout_ms;
        let task = async move {
            let mut console = Vec::new();
            if needs_setup {
                let setup = sandbox.prepare(job);
                let outcome = match future::select(setup, clock.sleep(setup_timeout)).await {
                    Either::Left((SetupOutcome::Ready { console: lines }, _)) => {
                        console.extend(lines);
                        None
                    }
                    Either::Left((SetupOutcome::ProgramFailed { message, stack, console: lines }, _)) => {
                        console.extend(lines);
                        Some(SliceOutcome::JobError { message, stack })
                    }
                    Either::Left((SetupOutcome::Fault { message }, _)) => Some(SliceOutcome::WorkerFault { message }),
                    Either::Right(_) => Some(SliceOutcome::WorkerFault {
                        message: format!("the sandbox did not load its runtime within {setup_timeout} ms"),
                    }),
                };
                if let Some(outcome) = outcome {
                    let run = SliceRun { outcome, console, heap_bytes: None };
                    return Event::SliceDone { slot, generation, lease, run, watch: Watch::Quiet, ms: 0 };
                }
                on_event(&running);
            }
            let (sent, place) = (clock.now_ms(), queue.enqueue());
            let run = sandbox.run(lease.slice, lease.datum.clone(), progress.clone());
            let started = || queue.started(place, sent);
            let (mut run, watch) =
                watch_slice(run, sandbox.as_ref(), clock.as_ref(), limits, &progress, &started).await;
            console.append(&mut run.console);
            run.console = console;
            let answered = clock.now_ms();
            let ms = answered.saturating_sub(started().unwrap_or(sent));
            queue.answered(answered);
            Event::SliceDone { slot, generation, lease, run, watch, ms }
        };
        self.tasks.push(task.boxed_local());
    }

    /// Reports the program's progress on `lease` as `SliceProgress` events, throttled.
    fn watch_progress(&self, progress: &SliceProgress, lease: &Lease, slot: usize) {
        let (on_event, clock) = (self.on_event.clone(), self.clock.clone());
        let (job, slice) = (lease.job_id.clone(), lease.slice);
        let last_sent = Cell::new(None::<u64>);
        progress.observe(move |value| {
            let now = clock.now_ms();
            let due = last_sent.get().is_none_or(|at| now.saturating_sub(at) >= PROGRESS_EVENT_MS);
            if due || value == Some(1.0) {
                last_sent.set(Some(now));
                on_event(&WorkerEvent::SliceProgress { job: job.clone(), slice, sandbox: slot, progress: value });
            }
        });
    }

    /// Returns unfinished slices to the scheduler at no cost (so they are retried at once
    /// elsewhere), delivers finished results, and retires every sandbox.
    async fn shut_down(&mut self, reason: &str) {
        for slot in self.pool.live() {
            self.remove_sandbox(slot, reason, Ending::Retire);
        }
        self.drain_in_flight().await;
        let released = SliceOutcome::Released { reason: format!("the worker {reason}") };
        let now = self.clock.now_ms();
        for item in self.book.release_all(&released) {
            self.outbox.push(item, now);
        }
        self.tasks = FuturesUnordered::new();
        let Some(identity) = self.identity.clone() else { return };
        // Bounded: each round either delivers a batch or gives up.
        for _ in 0..64 {
            if self.outbox.is_empty() || self.submit_gate.refused().is_some() {
                return;
            }
            let mut batch = self.outbox.take_batch();
            for item in &mut batch {
                item.console.clear();
            }
            let submit = self.client.submit(&identity.token, ResultsRequest { results: batch, worker_token: None });
            match future::select(submit, self.clock.sleep(SHUTDOWN_GRACE_MS)).await {
                Either::Left((Ok(_), _)) => self.outbox.delivered(),
                Either::Left((Err(WorkerError::Rejected(error)), _)) if error.code == "too_large" => {
                    self.outbox.undelivered(now);
                    self.outbox.shrink();
                }
                _ => return,
            }
        }
    }

    /// Waits briefly for a lease request and a submit still in flight, so slices leased at the
    /// last moment are returned too instead of waiting out their lease.
    async fn drain_in_flight(&mut self) {
        let mut grace = self.clock.sleep(SHUTDOWN_GRACE_MS);
        while self.lease_gate.in_flight() || self.submit_gate.in_flight() {
            let event = match future::select(self.tasks.next(), &mut grace).await {
                Either::Left((Some(event), _)) => event,
                Either::Left((None, _)) | Either::Right(_) => return,
            };
            let now = self.clock.now_ms();
            match event {
                Event::Leased(answer) => self.on_leased(answer, now),
                Event::Submitted(answer) => self.on_submitted(answer, now),
                _ => {}
            }
        }
    }
}

/// Waits for a running slice under its job's limits: on overrun, interrupts it, and when that
/// does not stop it within the grace period, gives up on the sandbox.
async fn watch_slice<K: Clock>(
    mut run: Task<SliceRun>,
    sandbox: &dyn Sandbox,
    clock: &K,
    limits: SliceLimits,
    progress: &SliceProgress,
    started: &dyn Fn() -> Option<u64>,
) -> (SliceRun, Watch) {
    let mut reports = progress.reports();
    let mut heard = 0;
    let mut second_look_until = 0;
    let reason = loop {
        let now = clock.now_ms();
        let due = match started() {
            Some(started) => limits.check_at(started, heard.max(started)).max(second_look_until),
            // Still queued behind another slice in its sandbox: its limits have not begun.
            None => now + QUEUED_LOOK_MS,
        };
        let timer = clock.sleep(due.saturating_sub(now).max(1));
        match future::select(run, timer).await {
            Either::Left((result, _)) => return (result, Watch::Quiet),
            Either::Right((_, pending)) => run = pending,
        }
        let now = clock.now_ms();
        let Some(started) = started() else { continue };
        heard = heard.max(started);
        if progress.reports() != reports {
            reports = progress.reports();
            heard = now;
            continue;
        }
        if throttled(due, now) && second_look_until < due {
            // The page was throttled, not the slice slow: let queued answers arrive first.
            second_look_until = now + SECOND_LOOK_MS;
            continue;
        }
        if let Some(reason) = limits.overrun(now, started, heard) {
            break reason;
        }
    };
    if sandbox.interrupt() {
        if let Either::Left((result, _)) = future::select(run, clock.sleep(INTERRUPT_GRACE_MS)).await {
            return (result, Watch::Interrupted(reason));
        }
    }
    let run =
        SliceRun { outcome: SliceOutcome::TimedOut { message: reason.clone() }, console: vec![], heap_bytes: None };
    (run, Watch::Terminate(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_messages_read_as_written_and_a_tiny_one_never_as_zero() {
        let cases = [
            (2.0, "2"),
            (0.5, "0.5"),
            (-1.25, "-1.25"),
            (0.0, "0"),
            (-0.0, "0"),
            (0.0000004, "4e-7"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (-2.5e-9, "-2.5e-9"),
            (4.9e-7, "4.9e-7"),
            (1.5e-300, "1.5e-300"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (1e30, "a huge number"),
        ];
        for (x, written) in cases {
            assert_eq!(in_decimals(x), written, "{x:e}");
        }
        assert!(in_decimals(f64::from_bits(1)).ends_with("e-324"), "{}", in_decimals(f64::from_bits(1)));
        assert_eq!(valid_cpu_share(1e-7).unwrap_err().to_string(), "invalid option: cpuShare must be 0.05–1, not 1e-7");
    }

    #[test]
    fn every_event_is_written_as_serde_writes_it() {
        let text = || "say \"hi\"\n é".to_string();
        let job = text;
        let activities = [
            SandboxActivity::LoadingRuntime,
            SandboxActivity::LoadingPackages,
            SandboxActivity::StartingProgram,
            SandboxActivity::Running,
            SandboxActivity::Resting,
            SandboxActivity::Idle,
        ];
        let mut events = vec![
            WorkerEvent::Registered { worker_id: text(), contributor: text(), sandboxes: 8 },
            WorkerEvent::Leased { count: 3 },
            WorkerEvent::SandboxCreated { sandbox: 1, worktime: Worktime::MapBasic },
            WorkerEvent::SandboxCreated { sandbox: 2, worktime: Worktime::Pyodide },
            WorkerEvent::SandboxRemoved { sandbox: 1, reason: text() },
            WorkerEvent::SandboxState { sandbox: 1, state: SandboxActivity::Idle, job: None },
            WorkerEvent::SliceStarted { job: job(), slice: u64::MAX, sandbox: 0 },
            WorkerEvent::SliceProgress { job: job(), slice: 1, sandbox: 0, progress: None },
            WorkerEvent::SliceProgress { job: job(), slice: 1, sandbox: 0, progress: Some(0.125) },
            WorkerEvent::SliceFinished { job: job(), slice: 2, sandbox: 0, outcome: "timedOut", ms: 17 },
            WorkerEvent::SliceInterrupted { job: job(), slice: 2, sandbox: 0, reason: text() },
            WorkerEvent::JobEnded { job: job() },
            WorkerEvent::Submitted { accepted: 1, duplicate: 2, stale: 3, requeued: 4, released: 5, refused: 6 },
            WorkerEvent::SchedulerUnreachable { request: "lease", message: text(), retry_ms: 250 },
            WorkerEvent::RequestRefused { request: "results", message: text() },
            WorkerEvent::SandboxesFailing { failures: 3, pause_ms: 60_000 },
            WorkerEvent::RuntimeSnapshot { outcome: "made", ms: None, reason: None, packages: None, interpreter: None },
            WorkerEvent::RuntimeSnapshot {
                outcome: "restored",
                ms: Some(240),
                reason: Some(text()),
                packages: Some(vec!["numpy".into(), "pandas".into()]),
                interpreter: Some("reused".into()),
            },
            WorkerEvent::Paused,
            WorkerEvent::Resumed,
            WorkerEvent::SandboxesChanged { sandboxes: 64 },
            WorkerEvent::Idle,
            WorkerEvent::Stopped { reason: text() },
        ];
        events.extend(activities.map(|state| WorkerEvent::SandboxState { sandbox: 3, state, job: Some(job()) }));
        for event in events {
            assert_eq!(tessera_protocol::json::write(&event), serde_json::to_string(&event).unwrap());
        }
    }

    #[test]
    fn holds_more_of_fast_slices_and_fewer_of_slow_ones() {
        let config = SupervisorConfig::with_sandboxes(2);
        assert_eq!(held_per_sandbox(&config, None), 2, "unknown pace: a small first batch");
        assert_eq!(held_per_sandbox(&config, Some(1.0)), 250, "capped");
        assert_eq!(held_per_sandbox(&config, Some(100.0)), 30);
        assert_eq!(held_per_sandbox(&config, Some(60_000.0)), 2, "never fewer than the minimum");
    }

    #[test]
    fn pipelines_deeper_for_light_slices_and_not_at_all_under_a_cpu_share() {
        assert_eq!(pipeline_depth_for(64, None, 1.0), 2, "unknown pace: one running, one queued");
        assert_eq!(pipeline_depth_for(64, Some(1.0), 1.0), 41, "40 ms of work queued");
        assert_eq!(pipeline_depth_for(64, Some(0.1), 1.0), 64, "capped");
        assert_eq!(pipeline_depth_for(64, Some(500.0), 1.0), 2);
        assert_eq!(pipeline_depth_for(64, Some(1.0), 0.5), 1, "a queued slice would skip its rest");
        assert_eq!(pipeline_depth_for(1, Some(1.0), 1.0), 1, "pipelining turned off");
    }
}
