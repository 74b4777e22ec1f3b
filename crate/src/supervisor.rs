//! The supervisor: leases slices in batches, dispatches them to sandboxes, heartbeats held
//! leases and submits results in batches, until stopped or idle.
//!
//! It is platform-neutral: the scheduler, the sandboxes and time sit behind the traits below.
//! The web build plugs in `fetch`, Web Workers and browser timers (`crate::web`); the native
//! tests plug in in-memory doubles and drive the same loop with a plain executor.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use futures::future::{self, Either, LocalBoxFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde::Serialize;
use serde_json::Value;
use tessera_protocol::{
    bundle, BundleEntry, BundleLimits, ConsoleLine, HeartbeatItem, HeartbeatRequest, HeartbeatResponse, JobDescriptor,
    Lease, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse, ResultItem, ResultStatus, ResultsRequest,
    ResultsResponse, SliceOutcome, Worktime,
};

use crate::backoff::Backoff;
use crate::error::WorkerError;
use crate::pool::{Placement, Pool, PoolLimits};

/// A future the supervisor can hold across loop turns (single-threaded, so not `Send`).
pub type Task<T> = LocalBoxFuture<'static, T>;

/// The scheduler, as the supervisor needs it (protocol v1).
pub trait SchedulerClient {
    fn register(&self, request: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>>;
    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>>;
    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>>;
    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>>;
    /// The bytes of an uploaded bundle.
    fn bundle(&self, sha256: &str) -> Task<Result<Vec<u8>, WorkerError>>;
}

/// Time and randomness, so tests can run the loop on a simulated clock.
pub trait Clock {
    fn now_ms(&self) -> u64;
    fn sleep(&self, ms: u64) -> Task<()>;
    /// A uniform sample in [0, 1).
    fn random(&self) -> f64;
}

/// A job ready to set up in a sandbox: its descriptor and its validated bundle.
#[derive(Debug)]
pub struct PreparedJob {
    pub descriptor: JobDescriptor,
    pub bundle: Vec<BundleEntry>,
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

/// One isolated executor, bound to one job for its whole life.
pub trait Sandbox {
    /// Runs one slice, setting `job` up first when this sandbox has not done so yet. Progress the
    /// program reports is written to `progress`. Never fails: faults come back as outcomes.
    fn run(&self, job: Rc<PreparedJob>, slice: u64, datum: Value, progress: Rc<Cell<Option<f64>>>) -> Task<SliceRun>;
    /// Stops the sandbox at once (a running slice is abandoned).
    fn terminate(&self);
}

/// Makes sandboxes. A Pyodide sandbox starts loading its runtime as soon as it is created.
pub trait SandboxFactory {
    fn create(&self, worktime: Worktime) -> Result<Rc<dyn Sandbox>, WorkerError>;
}

/// What the page (or a test) can watch.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    Registered { worker_id: String, sandboxes: usize },
    Leased { count: usize },
    SandboxCreated { sandbox: usize, worktime: Worktime },
    SandboxRemoved { sandbox: usize, reason: String },
    SliceStarted { job: String, slice: u64, sandbox: usize },
    SliceFinished { job: String, slice: u64, sandbox: usize, outcome: &'static str, ms: u64 },
    Submitted { accepted: usize, duplicate: usize, stale: usize, requeued: usize },
    SchedulerUnreachable { message: String, retry_ms: u64 },
    Idle,
    Stopped { reason: String },
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
    /// How long a lease request may wait for work when the worker has nothing to do.
    pub long_poll_ms: u64,
    /// Stop after this long without work; `None` runs until stopped.
    pub idle_exit_ms: Option<u64>,
    /// A slice (including its sandbox's set-up) running longer than this is abandoned.
    pub slice_timeout_ms: u64,
    pub max_slices_per_sandbox: u32,
    /// Recycle a sandbox whose heap has grown past this many bytes.
    pub max_sandbox_heap_bytes: u64,
    pub max_sandbox_idle_ms: u64,
    /// Slices a warm sandbox may hold at once: the next one waits in its message queue, so the
    /// round trip to the sandbox is hidden. A slice's timeout starts when it is sent.
    pub pipeline_depth: u32,
    /// Keep one Pyodide sandbox loaded ahead of need while working on Pyodide jobs.
    pub prewarm_spare: bool,
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
            long_poll_ms: 10_000,
            idle_exit_ms: None,
            slice_timeout_ms: 5 * 60_000,
            max_slices_per_sandbox: 10_000,
            max_sandbox_heap_bytes: 1 << 30,
            max_sandbox_idle_ms: 60_000,
            pipeline_depth: 2,
            prewarm_spare: true,
            bundle_limits: BundleLimits::default(),
        }
    }
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

enum Event {
    Registered(Result<RegisterResponse, WorkerError>),
    Leased(Result<LeaseResponse, WorkerError>),
    BundleFetched(String, Result<Vec<u8>, WorkerError>),
    SliceDone { sandbox: usize, generation: u64, lease: Lease, run: SliceRun, timed_out: bool, ms: u64 },
    Submitted(Result<ResultsResponse, WorkerError>, Vec<ResultItem>),
    Heartbeat(Result<HeartbeatResponse, WorkerError>),
    Wake,
}

/// A lease this worker holds: its fencing token and the progress its program last reported.
struct HeldLease {
    token: String,
    progress: Rc<Cell<Option<f64>>>,
}

/// A job's state on this worker.
enum JobEntry {
    /// Descriptor known; its bundle is being fetched.
    Preparing(JobDescriptor),
    Ready(Rc<PreparedJob>),
    /// The job cannot run here (bad bundle): its slices report this as a job error.
    Broken(String),
}

/// The supervisor's whole state; `run` drives it.
pub struct Supervisor<C: SchedulerClient, F: SandboxFactory, K: Clock> {
    client: Rc<C>,
    factory: F,
    clock: Rc<K>,
    config: SupervisorConfig,
    on_event: Rc<dyn Fn(&WorkerEvent)>,
    stop: StopHandle,

    identity: Option<RegisterResponse>,
    jobs: HashMap<String, JobEntry>,
    queue: VecDeque<Lease>,
    /// Leases this worker holds (queued or running), by lease id.
    held: HashMap<String, HeldLease>,
    finished: Vec<ResultItem>,
    pool: Pool,
    /// Live sandboxes by slot, with the generation that tells a replaced one from its successor.
    sandboxes: HashMap<usize, (u64, Rc<dyn Sandbox>)>,
    generation: u64,
    tasks: FuturesUnordered<Task<Event>>,
    lease_in_flight: bool,
    submit_in_flight: bool,
    /// A copy of the batch being submitted, resent at shutdown if the answer never came.
    submitting: Vec<ResultItem>,
    heartbeat_in_flight: bool,
    register_in_flight: bool,
    next_lease_at: u64,
    next_heartbeat_at: u64,
    last_work_at: u64,
    backoff: Backoff,
    retry_at: u64,
    last_worktime: Option<Worktime>,
    /// Moving average of slice durations (ms), once one was measured.
    slice_ms: Option<f64>,
    /// When the oldest result in `finished` was finished.
    first_finished_at: u64,
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
            pipeline_depth: config.pipeline_depth.max(1),
        });
        let now = clock.now_ms();
        Supervisor {
            client: Rc::new(client),
            factory,
            clock: Rc::new(clock),
            config,
            on_event,
            stop: StopHandle::default(),
            identity: None,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            held: HashMap::new(),
            finished: Vec::new(),
            pool,
            sandboxes: HashMap::new(),
            generation: 0,
            tasks: FuturesUnordered::new(),
            lease_in_flight: false,
            submit_in_flight: false,
            submitting: Vec::new(),
            heartbeat_in_flight: false,
            register_in_flight: false,
            next_lease_at: 0,
            next_heartbeat_at: 0,
            last_work_at: now,
            backoff: Backoff::new(250, 30_000),
            retry_at: 0,
            last_worktime: None,
            slice_ms: None,
            first_finished_at: 0,
        }
    }

    /// A handle that stops `run` from outside.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn emit(&self, event: WorkerEvent) {
        (self.on_event)(&event);
    }

    /// Runs until stopped or (with `idle_exit_ms`) idle; returns why it stopped.
    pub async fn run(mut self) -> String {
        self.spawn_wake(0);
        let reason = loop {
            if self.stop.is_stopped() {
                break "stopped".to_string();
            }
            if let Some(reason) = self.step() {
                break reason;
            }
            match self.tasks.next().await {
                Some(event) => self.handle(event),
                None => self.spawn_wake(100),
            }
        };
        self.shut_down(&reason).await;
        self.emit(WorkerEvent::Stopped { reason: reason.clone() });
        reason
    }

    /// Starts whatever work is due; returns a reason when the supervisor should stop.
    fn step(&mut self) -> Option<String> {
        let now = self.clock.now_ms();
        if now < self.retry_at {
            return None;
        }
        let Some(identity) = self.identity.clone() else {
            if !self.register_in_flight {
                self.register_in_flight = true;
                let request = RegisterRequest { user_agent: None, sandboxes: self.config.sandboxes as u32 };
                let task = self.client.register(request);
                self.tasks.push(task.map(Event::Registered).boxed_local());
            }
            return None;
        };
        self.recycle(now);
        self.dispatch();
        self.prewarm();
        self.submit_if_due(now, &identity);
        self.heartbeat_if_due(now, &identity);
        self.lease_if_due(now, &identity)
    }

    /// Submits finished results once enough are ready, the oldest waited long enough, or nothing runs.
    fn submit_if_due(&mut self, now: u64, identity: &RegisterResponse) {
        let nothing_running = self.queue.is_empty() && self.pool.in_flight() == 0;
        let submit_due = self.finished.len() >= self.config.submit_batch
            || now.saturating_sub(self.first_finished_at) >= self.config.submit_delay_ms
            || nothing_running;
        if !self.finished.is_empty() && !self.submit_in_flight && submit_due {
            self.submit_in_flight = true;
            let items = std::mem::take(&mut self.finished);
            self.submitting = items.clone();
            let task = self.client.submit(&identity.token, ResultsRequest { results: items.clone() });
            self.tasks.push(task.map(move |answer| Event::Submitted(answer, items)).boxed_local());
        }
    }

    /// Extends every held lease each `heartbeat_ms`, with the progress programs reported.
    fn heartbeat_if_due(&mut self, now: u64, identity: &RegisterResponse) {
        if !self.held.is_empty() && now >= self.next_heartbeat_at && !self.heartbeat_in_flight {
            self.heartbeat_in_flight = true;
            self.next_heartbeat_at = now + identity.heartbeat_ms.max(100);
            let leases = self
                .held
                .iter()
                .map(|(lease_id, held)| HeartbeatItem {
                    lease_id: lease_id.clone(),
                    token: held.token.clone(),
                    progress: held.progress.get(),
                })
                .collect();
            let task = self.client.heartbeat(&identity.token, HeartbeatRequest { leases });
            self.tasks.push(task.map(Event::Heartbeat).boxed_local());
        }
    }

    /// Leases more work when half of what is held is done; stops the loop when idle long enough.
    fn lease_if_due(&mut self, now: u64, identity: &RegisterResponse) -> Option<String> {
        let holding = self.queue.len() + self.pool.in_flight();
        let want = self.config.sandboxes * held_per_sandbox(&self.config, self.slice_ms);
        // Ask again once half the held work is done, so fast slices come in large batches.
        if !self.lease_in_flight && holding <= want / 2 && now >= self.next_lease_at {
            let idle = holding == 0 && self.finished.is_empty() && !self.submit_in_flight;
            if idle {
                if let Some(limit) = self.config.idle_exit_ms {
                    if now.saturating_sub(self.last_work_at) >= limit {
                        self.emit(WorkerEvent::Idle);
                        return Some("idle".into());
                    }
                }
            }
            self.lease_in_flight = true;
            let wait_ms = if idle {
                let left = self.config.idle_exit_ms.map(|limit| limit.saturating_sub(now - self.last_work_at));
                left.map_or(self.config.long_poll_ms, |left| left.min(self.config.long_poll_ms))
            } else {
                0
            };
            let request = LeaseRequest {
                max_slices: (want - holding) as u32,
                wait_ms,
                known_jobs: self.jobs.keys().cloned().collect(),
                prefer_jobs: self.pool.warm_jobs(),
            };
            let task = self.client.lease(&identity.token, request);
            self.tasks.push(task.map(Event::Leased).boxed_local());
        }
        None
    }

    fn handle(&mut self, event: Event) {
        let now = self.clock.now_ms();
        match event {
            Event::Wake => self.spawn_wake(250),
            Event::Registered(answer) => {
                self.register_in_flight = false;
                match answer {
                    Ok(identity) => {
                        self.backoff.reset();
                        self.last_work_at = now;
                        self.emit(WorkerEvent::Registered {
                            worker_id: identity.worker_id.clone(),
                            sandboxes: self.config.sandboxes,
                        });
                        self.identity = Some(identity);
                    }
                    Err(error) => self.unreachable(error),
                }
            }
            Event::Leased(answer) => {
                self.lease_in_flight = false;
                match answer {
                    Ok(response) => {
                        self.backoff.reset();
                        if response.leases.is_empty() {
                            // Nothing now: while slices still run, ask again in a second rather than spin.
                            self.next_lease_at = now + if self.pool.busy() > 0 { 1_000 } else { 0 };
                            return;
                        }
                        self.last_work_at = now;
                        self.emit(WorkerEvent::Leased { count: response.leases.len() });
                        for descriptor in response.jobs {
                            self.learn_job(descriptor);
                        }
                        for lease in response.leases {
                            self.held.insert(
                                lease.lease_id.clone(),
                                HeldLease { token: lease.token.clone(), progress: Rc::default() },
                            );
                            self.queue.push_back(lease);
                        }
                    }
                    Err(WorkerError::Rejected(error)) if error.code == "wrong_token" => {
                        // The scheduler forgot us (new database): register again.
                        self.identity = None;
                        self.jobs.clear();
                    }
                    Err(error) => self.unreachable(error),
                }
            }
            Event::BundleFetched(job_id, answer) => {
                let Some(JobEntry::Preparing(descriptor)) = self.jobs.remove(&job_id) else { return };
                let entry = match answer
                    .and_then(|bytes| bundle::unpack(&bytes, &self.config.bundle_limits).map_err(WorkerError::Bundle))
                {
                    Ok(entries) => JobEntry::Ready(Rc::new(PreparedJob { descriptor, bundle: entries })),
                    Err(WorkerError::Unreachable(message)) => {
                        // A network failure says nothing about the bundle: fetch it again later.
                        let delay = self.backoff.next_delay(self.clock.random());
                        self.emit(WorkerEvent::SchedulerUnreachable { message, retry_ms: delay });
                        self.fetch_bundle(&descriptor, delay);
                        JobEntry::Preparing(descriptor)
                    }
                    Err(error) => JobEntry::Broken(format!("bundle refused: {error}")),
                };
                self.jobs.insert(job_id, entry);
            }
            Event::SliceDone { sandbox, generation, lease, run, timed_out, ms } => {
                self.last_work_at = now;
                let outcome_name = match &run.outcome {
                    SliceOutcome::Ok { .. } => "ok",
                    SliceOutcome::Error { .. } => "error",
                    SliceOutcome::JobError { .. } => "job_error",
                    SliceOutcome::WorkerFault { .. } => "worker_fault",
                };
                self.emit(WorkerEvent::SliceFinished {
                    job: lease.job_id.clone(),
                    slice: lease.slice,
                    sandbox,
                    outcome: outcome_name,
                    ms,
                });
                // The slot may hold a newer sandbox by now (this one was removed while it ran).
                let current = self.sandboxes.get(&sandbox).is_some_and(|(live, _)| *live == generation);
                // The pace of work, from warm sandboxes only: a first slice also paid for the set-up.
                let warm = current && self.pool.slot(sandbox).is_some_and(|slot| slot.served > 0);
                if warm && matches!(run.outcome, SliceOutcome::Ok { .. } | SliceOutcome::Error { .. }) {
                    let sample = ms.max(1) as f64;
                    self.slice_ms = Some(self.slice_ms.map_or(sample, |average| 0.8 * average + 0.2 * sample));
                }
                let crashed = matches!(run.outcome, SliceOutcome::WorkerFault { .. });
                let job_failed = matches!(run.outcome, SliceOutcome::JobError { .. });
                let removal = if timed_out {
                    Some("slice timed out")
                } else if crashed {
                    Some("sandbox fault")
                } else if job_failed {
                    Some("job failed")
                } else {
                    None
                };
                match (current, removal) {
                    (false, _) => {}
                    (true, Some(reason)) => self.remove_sandbox(sandbox, reason),
                    (true, None) => self.pool.finished(sandbox, now, run.heap_bytes),
                }
                if job_failed {
                    // The job is over: its other slices here would only fail the same way.
                    self.jobs.insert(lease.job_id.clone(), JobEntry::Broken("job failed".into()));
                    self.drop_queued_of(&lease.job_id);
                }
                if self.held.remove(&lease.lease_id).is_some() {
                    if self.finished.is_empty() {
                        self.first_finished_at = now;
                    }
                    self.finished.push(ResultItem {
                        lease_id: lease.lease_id,
                        token: lease.token,
                        outcome: run.outcome,
                        console: run.console,
                    });
                }
            }
            Event::Submitted(answer, items) => {
                self.submit_in_flight = false;
                self.submitting.clear();
                match answer {
                    Ok(response) => {
                        self.backoff.reset();
                        let count = |status| response.acks.iter().filter(|ack| ack.status == status).count();
                        self.emit(WorkerEvent::Submitted {
                            accepted: count(ResultStatus::Accepted),
                            duplicate: count(ResultStatus::Duplicate),
                            stale: count(ResultStatus::Stale),
                            requeued: count(ResultStatus::Requeued),
                        });
                    }
                    Err(WorkerError::Rejected(error)) => {
                        // The scheduler refused the batch as a whole; resending it cannot help.
                        self.emit(WorkerEvent::SchedulerUnreachable { message: error.to_string(), retry_ms: 0 });
                    }
                    Err(error) => {
                        // Keep the results and send them again: acceptance is idempotent per lease.
                        self.finished.splice(0..0, items);
                        self.unreachable(error);
                    }
                }
            }
            Event::Heartbeat(answer) => {
                self.heartbeat_in_flight = false;
                if let Ok(response) = answer {
                    for lease_id in response.lost {
                        self.held.remove(&lease_id);
                        self.queue.retain(|lease| lease.lease_id != lease_id);
                    }
                }
            }
        }
    }

    fn unreachable(&mut self, error: WorkerError) {
        let delay = self.backoff.next_delay(self.clock.random());
        self.retry_at = self.clock.now_ms() + delay;
        self.emit(WorkerEvent::SchedulerUnreachable { message: error.to_string(), retry_ms: delay });
        self.spawn_wake(delay);
    }

    fn spawn_wake(&mut self, ms: u64) {
        self.tasks.push(self.clock.sleep(ms).map(|_| Event::Wake).boxed_local());
    }

    fn learn_job(&mut self, descriptor: JobDescriptor) {
        let job_id = descriptor.job_id.clone();
        match descriptor.bundle {
            Some(_) => {
                self.fetch_bundle(&descriptor, 0);
                self.jobs.insert(job_id, JobEntry::Preparing(descriptor));
            }
            None => {
                let prepared = PreparedJob { descriptor, bundle: Vec::new() };
                self.jobs.insert(job_id, JobEntry::Ready(Rc::new(prepared)));
            }
        }
    }

    /// Downloads a job's bundle (once per worker, shared by its sandboxes) after `delay_ms`.
    fn fetch_bundle(&mut self, descriptor: &JobDescriptor, delay_ms: u64) {
        let Some(sha256) = descriptor.bundle.clone() else { return };
        let (client, wait, job_id) = (self.client.clone(), self.clock.sleep(delay_ms), descriptor.job_id.clone());
        let task = async move {
            wait.await;
            Event::BundleFetched(job_id, client.bundle(&sha256).await)
        };
        self.tasks.push(task.boxed_local());
    }

    fn drop_queued_of(&mut self, job_id: &str) {
        let (dropped, kept): (Vec<Lease>, Vec<Lease>) = self.queue.drain(..).partition(|lease| lease.job_id == job_id);
        self.queue = kept.into();
        for lease in dropped {
            self.held.remove(&lease.lease_id);
        }
    }

    /// Sends queued slices to sandboxes, in lease order, skipping jobs not ready yet.
    fn dispatch(&mut self) {
        let mut index = 0;
        while index < self.queue.len() {
            let job_id = self.queue[index].job_id.clone();
            let job = match self.jobs.get(&job_id) {
                Some(JobEntry::Ready(job)) => job.clone(),
                Some(JobEntry::Broken(reason)) => {
                    let reason = reason.clone();
                    if let Some(lease) = self.queue.remove(index) {
                        self.held.remove(&lease.lease_id);
                        self.finished.push(ResultItem {
                            lease_id: lease.lease_id,
                            token: lease.token,
                            outcome: SliceOutcome::JobError { message: reason, stack: None },
                            console: vec![],
                        });
                    }
                    continue;
                }
                Some(JobEntry::Preparing(_)) | None => {
                    index += 1;
                    continue;
                }
            };
            let worktime = job.descriptor.worktime;
            let slot = match self.pool.place(&job_id, worktime) {
                Placement::Busy => return,
                Placement::Warm(slot) | Placement::Claim(slot) => slot,
                Placement::Create(slot) => match self.create_sandbox(slot, worktime) {
                    Some(slot) => slot,
                    None => return,
                },
                Placement::Replace(slot) => {
                    self.remove_sandbox(slot, "replaced for another job");
                    match self.create_sandbox(slot, worktime) {
                        Some(slot) => slot,
                        None => return,
                    }
                }
            };
            let Some(lease) = self.queue.remove(index) else { return };
            self.start_slice(slot, job, lease);
        }
    }

    fn create_sandbox(&mut self, slot: usize, worktime: Worktime) -> Option<usize> {
        match self.factory.create(worktime) {
            Ok(sandbox) => {
                self.generation += 1;
                self.sandboxes.insert(slot, (self.generation, sandbox));
                self.pool.created(slot, worktime, self.clock.now_ms());
                self.emit(WorkerEvent::SandboxCreated { sandbox: slot, worktime });
                Some(slot)
            }
            Err(error) => {
                self.emit(WorkerEvent::SandboxRemoved { sandbox: slot, reason: error.to_string() });
                None
            }
        }
    }

    fn remove_sandbox(&mut self, slot: usize, reason: &str) {
        if let Some((_, sandbox)) = self.sandboxes.remove(&slot) {
            sandbox.terminate();
        }
        self.pool.removed(slot);
        self.emit(WorkerEvent::SandboxRemoved { sandbox: slot, reason: reason.into() });
    }

    fn recycle(&mut self, now: u64) {
        for slot in self.pool.to_recycle(now) {
            self.remove_sandbox(slot, "recycled");
        }
    }

    /// Keeps one Pyodide sandbox loading ahead of need while Pyodide work is flowing. It starts
    /// only once a sandbox has finished a slice, so it never competes with a cold start.
    fn prewarm(&mut self) {
        if !self.config.prewarm_spare || self.last_worktime != Some(Worktime::Pyodide) {
            return;
        }
        if (self.queue.is_empty() && self.pool.busy() == 0) || !self.pool.any_warm() {
            return;
        }
        if !self.pool.has_spare(Worktime::Pyodide) {
            if let Some(slot) = self.pool.spare_index() {
                self.create_sandbox(slot, Worktime::Pyodide);
            }
        }
    }

    fn start_slice(&mut self, slot: usize, job: Rc<PreparedJob>, lease: Lease) {
        let Some((generation, sandbox)) = self.sandboxes.get(&slot).cloned() else { return };
        self.last_worktime = Some(job.descriptor.worktime);
        self.pool.started(slot, &lease.job_id);
        self.emit(WorkerEvent::SliceStarted { job: lease.job_id.clone(), slice: lease.slice, sandbox: slot });
        let progress = self.held.get(&lease.lease_id).map(|held| held.progress.clone()).unwrap_or_default();
        let run = sandbox.run(job, lease.slice, lease.datum.clone(), progress);
        let timeout = self.clock.sleep(self.config.slice_timeout_ms);
        let clock = self.clock.clone();
        let started = clock.now_ms();
        let limit = self.config.slice_timeout_ms;
        let task = async move {
            let (run, timed_out) = match future::select(run, timeout).await {
                Either::Left((run, _)) => (run, false),
                Either::Right(_) => (
                    SliceRun {
                        outcome: SliceOutcome::WorkerFault { message: format!("slice ran longer than {limit} ms") },
                        console: vec![],
                        heap_bytes: None,
                    },
                    true,
                ),
            };
            Event::SliceDone {
                sandbox: slot,
                generation,
                lease,
                run,
                timed_out,
                ms: clock.now_ms().saturating_sub(started),
            }
        };
        self.tasks.push(task.boxed_local());
    }

    /// Returns unfinished slices to the scheduler (so they are retried at once elsewhere),
    /// delivers finished results, and terminates every sandbox.
    async fn shut_down(&mut self, reason: &str) {
        for slot in self.pool.live() {
            self.remove_sandbox(slot, reason);
        }
        self.drain_in_flight().await;
        let unfinished: Vec<(String, String)> =
            self.held.iter().map(|(lease_id, held)| (lease_id.clone(), held.token.clone())).collect();
        for (lease_id, token) in unfinished {
            self.finished.push(ResultItem {
                lease_id,
                token,
                outcome: SliceOutcome::WorkerFault { message: format!("worker {reason}") },
                console: vec![],
            });
        }
        self.held.clear();
        self.queue.clear();
        self.tasks = FuturesUnordered::new();
        // A batch whose answer never came is sent again: acceptance is idempotent per lease.
        let unanswered = std::mem::take(&mut self.submitting);
        self.finished.splice(0..0, unanswered);
        if let (Some(identity), false) = (&self.identity, self.finished.is_empty()) {
            let items = std::mem::take(&mut self.finished);
            let _ = self.client.submit(&identity.token, ResultsRequest { results: items }).await;
        }
    }

    /// Waits briefly for a lease request and a submit still in flight, so slices leased at the
    /// last moment are returned too instead of waiting out their lease.
    async fn drain_in_flight(&mut self) {
        let mut grace = self.clock.sleep(SHUTDOWN_GRACE_MS);
        while self.lease_in_flight || self.submit_in_flight {
            let event = match future::select(self.tasks.next(), &mut grace).await {
                Either::Left((Some(event), _)) => event,
                Either::Left((None, _)) | Either::Right(_) => return,
            };
            match event {
                Event::Leased(answer) => {
                    self.lease_in_flight = false;
                    for lease in answer.map(|response| response.leases).unwrap_or_default() {
                        self.held.insert(lease.lease_id, HeldLease { token: lease.token, progress: Rc::default() });
                    }
                }
                Event::Submitted(answer, _) => {
                    self.submit_in_flight = false;
                    if answer.is_ok() {
                        self.submitting.clear();
                    }
                }
                _ => {}
            }
        }
    }
}

/// How long stopping waits for requests still in flight.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_more_of_fast_slices_and_fewer_of_slow_ones() {
        let config = SupervisorConfig::with_sandboxes(2);
        assert_eq!(held_per_sandbox(&config, None), 2, "unknown pace: a small first batch");
        assert_eq!(held_per_sandbox(&config, Some(1.0)), 250, "capped");
        assert_eq!(held_per_sandbox(&config, Some(100.0)), 30);
        assert_eq!(held_per_sandbox(&config, Some(60_000.0)), 2, "never fewer than the minimum");
    }
}
