//! The supervisor loop against in-memory doubles of the scheduler, the sandboxes and the clock.
//!
//! The scheduler double enforces the real scheduler's rules (docs/PROTOCOL.md): a lease cap
//! from the register answer, worker and lease tokens, per-item refusals, attempts that only
//! faults cost, the second opinion on set-up errors, ended jobs. A kinder double is how a worker
//! that asked for more than the scheduler allows once slipped through.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use futures::channel::oneshot;
use futures::future::Shared;
use futures::FutureExt;
use serde_json::{json, Value};
use tessera_protocol::bundle::testing::{raw_archive, EntryType};
use tessera_protocol::{
    bundle, ApiError, BundleLimits, HeartbeatRequest, HeartbeatResponse, JobDescriptor, Lease, LeaseRequest,
    LeaseResponse, RegisterRequest, RegisterResponse, ResultAck, ResultStatus, ResultsRequest, ResultsResponse,
    SliceOutcome, WorkerLimits, Worktime,
};
use tessera_worker::supervisor::{
    rest_after, Clock, Controls, PreparedJob, Sandbox, SandboxActivity, SandboxFactory, SchedulerClient, SetupOutcome,
    SliceProgress, SliceRun, StopHandle, Supervisor, SupervisorConfig, Task, WorkerEvent, PROGRESS_EVENT_MS,
};
use tessera_worker::WorkerError;

const WORKER_TOKEN: &str = "worker-token";
const MAX_ATTEMPTS: u32 = 2;

/// A scheduler holding slices in memory with the real protocol's rules.
struct Scheduler {
    limits: WorkerLimits,
    /// The simulated clock of the run: a lease request with nothing to hand out waits on it.
    clock: FakeClock,
    queued: RefCell<Vec<(String, u64)>>,
    data: RefCell<HashMap<(String, u64), Value>>,
    jobs: RefCell<HashMap<String, JobDescriptor>>,
    /// Active leases: id → (token, job, slice).
    leases: RefCell<HashMap<String, (String, String, u64)>>,
    accepted: RefCell<BTreeMap<(String, u64), SliceOutcome>>,
    attempts: RefCell<HashMap<(String, u64), u32>>,
    setup_reports: RefCell<HashMap<String, u32>>,
    ended: RefCell<HashSet<String>>,
    /// Cancel this job once this many of its slices were accepted.
    cancel_after: RefCell<Option<(String, usize)>>,
    /// Requests that fail on the network before any answer (register, lease, submit).
    failures_left: Cell<u32>,
    lease_failures_left: Cell<u32>,
    lease_calls: Cell<u32>,
    largest_ask: Cell<u32>,
    /// A private pool that does not know this worker's key.
    refuse_registration: Cell<bool>,
    /// Served for every bundle request.
    bundle: RefCell<Option<Vec<u8>>>,
    next_id: Cell<u64>,
}

impl Scheduler {
    fn new(limits: WorkerLimits) -> Rc<Scheduler> {
        Rc::new(Scheduler {
            limits,
            clock: FakeClock::default(),
            queued: RefCell::default(),
            data: RefCell::default(),
            jobs: RefCell::default(),
            leases: RefCell::default(),
            accepted: RefCell::default(),
            attempts: RefCell::default(),
            setup_reports: RefCell::default(),
            ended: RefCell::default(),
            cancel_after: RefCell::default(),
            failures_left: Cell::new(0),
            lease_failures_left: Cell::new(0),
            lease_calls: Cell::new(0),
            largest_ask: Cell::new(0),
            refuse_registration: Cell::new(false),
            bundle: RefCell::default(),
            next_id: Cell::new(0),
        })
    }

    fn with_job(job: &str, slices: impl IntoIterator<Item = Value>) -> Rc<Scheduler> {
        let scheduler = Scheduler::new(WorkerLimits::default());
        scheduler.add_job(job, slices);
        scheduler
    }

    fn add_job(&self, job: &str, slices: impl IntoIterator<Item = Value>) {
        self.jobs.borrow_mut().insert(
            job.into(),
            JobDescriptor {
                job_id: job.into(),
                name: job.into(),
                worktime: Worktime::MapBasic,
                program: "double".into(),
                program_name: "work.js".into(),
                arguments: vec![],
                env: BTreeMap::new(),
                packages: vec![],
                bundle: None,
                slice_timeout_ms: 5_000,
                no_progress_timeout_ms: None,
            },
        );
        for (index, datum) in slices.into_iter().enumerate() {
            self.queued.borrow_mut().push((job.into(), index as u64));
            self.data.borrow_mut().insert((job.into(), index as u64), datum);
        }
    }

    /// Makes `job` a Python job loading `packages`.
    fn set_python(&self, job: &str, packages: &[&str]) {
        let mut jobs = self.jobs.borrow_mut();
        let descriptor = jobs.get_mut(job).unwrap();
        descriptor.worktime = Worktime::Pyodide;
        descriptor.packages = packages.iter().map(|name| name.to_string()).collect();
    }

    fn set_program(&self, job: &str, program: &str) {
        self.jobs.borrow_mut().get_mut(job).unwrap().program = program.into();
    }

    fn fail(&self) -> Option<WorkerError> {
        let left = self.failures_left.get();
        (left > 0).then(|| {
            self.failures_left.set(left - 1);
            WorkerError::Unreachable("connection refused".into())
        })
    }

    fn end_job(&self, job: &str) {
        self.ended.borrow_mut().insert(job.into());
        self.queued.borrow_mut().retain(|(j, _)| j != job);
        self.leases.borrow_mut().retain(|_, (_, j, _)| j != job);
    }

    fn requeue(&self, job: String, slice: u64, cost: bool) {
        if !cost {
            *self.attempts.borrow_mut().entry((job.clone(), slice)).or_default() -= 1;
        }
        let attempts = self.attempts.borrow()[&(job.clone(), slice)];
        if attempts >= MAX_ATTEMPTS && cost {
            let error = SliceOutcome::Error { message: format!("gave up after {attempts} attempts"), stack: None };
            self.accepted.borrow_mut().insert((job, slice), error);
        } else {
            self.queued.borrow_mut().push((job, slice));
        }
    }
}

fn refused(code: &str, message: &str) -> WorkerError {
    WorkerError::Rejected(ApiError { code: code.into(), field: None, message: message.into() })
}

struct Client(Rc<Scheduler>);

fn ready<T: 'static>(value: T) -> Task<T> {
    futures::future::ready(value).boxed_local()
}

impl SchedulerClient for Client {
    fn register(&self, _: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>> {
        if self.0.refuse_registration.get() {
            return ready(Err(refused("wrong_token", "this scheduler needs a worker key")));
        }
        ready(match self.0.fail() {
            Some(error) => Err(error),
            None => Ok(RegisterResponse {
                worker_id: "w1".into(),
                contributor: "c1".into(),
                token: WORKER_TOKEN.into(),
                lease_ttl_ms: 30_000,
                heartbeat_ms: 10_000,
                limits: self.0.limits,
            }),
        })
    }

    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        let s = &self.0;
        s.lease_calls.set(s.lease_calls.get() + 1);
        if let Some(error) = s.fail() {
            return ready(Err(error));
        }
        if s.lease_failures_left.get() > 0 {
            s.lease_failures_left.set(s.lease_failures_left.get() - 1);
            return ready(Err(WorkerError::Unreachable("lease timed out".into())));
        }
        if token != WORKER_TOKEN {
            return ready(Err(refused("wrong_token", "unknown worker token")));
        }
        if request.max_slices == 0 || request.max_slices > s.limits.max_lease_slices {
            let message = format!("ask for 1 to {} slices", s.limits.max_lease_slices);
            return ready(Err(refused("invalid_field", &message)));
        }
        s.largest_ask.set(s.largest_ask.get().max(request.max_slices));
        let mut response = LeaseResponse {
            ended_jobs: request.known_jobs.iter().filter(|job| s.ended.borrow().contains(*job)).cloned().collect(),
            ..LeaseResponse::default()
        };
        if s.queued.borrow().is_empty() && response.ended_jobs.is_empty() {
            // A long poll that found nothing: the answer comes after `wait_ms`.
            let wait = s.clock.sleep(request.wait_ms);
            return async move {
                wait.await;
                Ok(response)
            }
            .boxed_local();
        }
        let mut queued = s.queued.borrow_mut();
        let take = (request.max_slices as usize).min(queued.len());
        for (job, slice) in queued.drain(..take) {
            let id = s.next_id.get();
            s.next_id.set(id + 1);
            let (lease_id, lease_token) = (format!("l{id}"), format!("lease-token-{id}"));
            s.leases.borrow_mut().insert(lease_id.clone(), (lease_token.clone(), job.clone(), slice));
            *s.attempts.borrow_mut().entry((job.clone(), slice)).or_default() += 1;
            if !request.known_jobs.contains(&job) && !response.jobs.iter().any(|j| j.job_id == job) {
                response.jobs.push(s.jobs.borrow()[&job].clone());
            }
            let datum = s.data.borrow()[&(job.clone(), slice)].clone();
            response.leases.push(Lease { lease_id, token: lease_token, job_id: job, slice, datum, ttl_ms: 30_000 });
        }
        ready(Ok(response))
    }

    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        if token != WORKER_TOKEN {
            return ready(Err(refused("wrong_token", "unknown worker token")));
        }
        if request.leases.len() > self.0.limits.max_heartbeat_leases as usize {
            return ready(Err(refused("invalid_field", "too many leases")));
        }
        let leases = self.0.leases.borrow();
        let (extended, lost): (Vec<_>, Vec<_>) = request
            .leases
            .into_iter()
            .partition(|item| leases.get(&item.lease_id).is_some_and(|(token, _, _)| *token == item.token));
        ready(Ok(HeartbeatResponse {
            extended: extended.into_iter().map(|item| item.lease_id).collect(),
            lost: lost.into_iter().map(|item| item.lease_id).collect(),
            ttl_ms: 30_000,
            ended_jobs: vec![],
        }))
    }

    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        let s = &self.0;
        if let Some(error) = s.fail() {
            return ready(Err(error));
        }
        if token != WORKER_TOKEN {
            return ready(Err(refused("wrong_token", "unknown worker token")));
        }
        if request.results.len() > s.limits.max_results_per_batch as usize {
            return ready(Err(refused("invalid_field", "too many results")));
        }
        let mut acks = Vec::new();
        for item in request.results {
            let lease = s.leases.borrow().get(&item.lease_id).cloned();
            let Some((lease_token, job, slice)) = lease else {
                acks.push(ResultAck { lease_id: item.lease_id, status: ResultStatus::Refused, message: None });
                continue;
            };
            if lease_token != item.token {
                acks.push(ResultAck { lease_id: item.lease_id, status: ResultStatus::Refused, message: None });
                continue;
            }
            s.leases.borrow_mut().remove(&item.lease_id);
            let status = match item.outcome {
                SliceOutcome::WorkerFault { .. } | SliceOutcome::TimedOut { .. } => {
                    s.requeue(job, slice, true);
                    ResultStatus::Requeued
                }
                SliceOutcome::Released { .. } => {
                    s.requeue(job, slice, false);
                    ResultStatus::Released
                }
                SliceOutcome::JobError { .. } => {
                    let reports = {
                        let mut reports = s.setup_reports.borrow_mut();
                        let count = reports.entry(job.clone()).or_default();
                        *count += 1;
                        *count
                    };
                    if reports >= 2 {
                        s.end_job(&job);
                        ResultStatus::Accepted
                    } else {
                        s.requeue(job, slice, false);
                        ResultStatus::Requeued
                    }
                }
                outcome => {
                    let previous = s.accepted.borrow_mut().insert((job.clone(), slice), outcome);
                    assert!(previous.is_none(), "a slice was accepted twice");
                    let cancel = s.cancel_after.borrow().clone();
                    if let Some((victim, after)) = cancel {
                        let done = s.accepted.borrow().keys().filter(|(j, _)| *j == victim).count();
                        if victim == job && done >= after {
                            s.end_job(&victim);
                        }
                    }
                    ResultStatus::Accepted
                }
            };
            acks.push(ResultAck { lease_id: item.lease_id, status, message: None });
        }
        ready(Ok(ResultsResponse { acks }))
    }

    fn bundle(&self, sha256: &str, limits: &BundleLimits) -> Task<Result<Vec<u8>, WorkerError>> {
        if let Some(bytes) = self.0.bundle.borrow().clone() {
            return ready(bundle::inflate(&bytes, limits).map_err(WorkerError::Bundle));
        }
        ready(Err(refused("not_found", sha256)))
    }
}

/// Simulated time: sleeping advances the clock and returns at once. Counts the timers alive at
/// once, so a test can tell one wake-up timer from a growing number of them.
#[derive(Clone, Default)]
struct FakeClock {
    now: Rc<Cell<u64>>,
    alive: Rc<Cell<usize>>,
    most_alive: Rc<Cell<usize>>,
}

/// A pending simulated sleep; dropping it (fired or abandoned) ends the timer.
struct Timer(Rc<Cell<usize>>);

impl Drop for Timer {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
    fn sleep(&self, ms: u64) -> Task<()> {
        self.alive.set(self.alive.get() + 1);
        self.most_alive.set(self.most_alive.get().max(self.alive.get()));
        let timer = Timer(self.alive.clone());
        let now = self.now.clone();
        async move {
            let _timer = timer;
            now.set(now.get() + ms.max(1));
        }
        .boxed_local()
    }
    fn random(&self) -> f64 {
        0.5
    }
}

/// Doubles numbers; throws on negative ones; never answers for `"hang"` (unless interrupted,
/// when it can be: then it answers timed out, as a real sandbox marks the KeyboardInterrupt);
/// answers `"stopped-behind"` timed out at once, as a real sandbox does for a slice its interrupt
/// stopped while the watchdog watched the slice before it, whose answer it held back. Its job's program decides how set-up goes: `"broken"` fails like a syntax
/// error, `"no-runtime"` fails like a runtime that cannot load. With a clock, `{"work_ms": n}`
/// works n simulated ms, reporting progress every 50 ms, and answers n.
struct DoublingSandbox {
    setups: Rc<RefCell<Vec<String>>>,
    /// How each sandbox ended: `terminated` or `retired`.
    endings: Rc<RefCell<Vec<&'static str>>>,
    interruptible: bool,
    hung: RefCell<Option<oneshot::Sender<()>>>,
    clock: Option<FakeClock>,
    /// Done when the last slice sent has answered: like a real sandbox's Web Worker, this one
    /// runs its slices one at a time, in the order they were sent.
    turn: RefCell<Shared<Task<()>>>,
}

impl Sandbox for DoublingSandbox {
    fn prepare(&self, job: Rc<PreparedJob>) -> Task<SetupOutcome> {
        self.setups.borrow_mut().push(job.descriptor.job_id.clone());
        ready(match job.descriptor.program.as_str() {
            "broken" => SetupOutcome::ProgramFailed {
                message: "SyntaxError: invalid syntax".into(),
                stack: Some("line 1".into()),
                console: vec![],
            },
            "no-runtime" => SetupOutcome::Fault { message: "Pyodide failed to load".into() },
            _ => SetupOutcome::Ready { console: vec![] },
        })
    }

    fn run(&self, _: u64, datum: Value, progress: Rc<SliceProgress>) -> Task<SliceRun> {
        let (answered, done) = oneshot::channel::<()>();
        let before = self.turn.replace(done.map(|_| ()).boxed_local().shared());
        let work = self.work(datum, progress);
        async move {
            before.await;
            let run = work.await;
            let _ = answered.send(());
            run
        }
        .boxed_local()
    }

    fn interrupt(&self) -> bool {
        match self.hung.borrow_mut().take() {
            Some(sender) => sender.send(()).is_ok(),
            None => self.interruptible,
        }
    }

    fn terminate(&self) {
        self.endings.borrow_mut().push("terminated");
    }

    fn retire(&self) {
        self.endings.borrow_mut().push("retired");
    }
}

impl DoublingSandbox {
    /// One slice's work, once its turn has come.
    fn work(&self, datum: Value, progress: Rc<SliceProgress>) -> Task<SliceRun> {
        if let (Some(work_ms), Some(clock)) = (datum["work_ms"].as_u64(), self.clock.clone()) {
            return async move {
                for step in 1..=work_ms / 50 {
                    clock.sleep(50).await;
                    progress.report(Some((step * 50) as f64 / work_ms as f64));
                }
                if work_ms % 50 > 0 {
                    clock.sleep(work_ms % 50).await;
                }
                SliceRun { outcome: SliceOutcome::Ok { value: json!(work_ms) }, console: vec![], heap_bytes: None }
            }
            .boxed_local();
        }
        if datum == json!("hang") {
            if !self.interruptible {
                return futures::future::pending().boxed_local();
            }
            let (sender, receiver) = oneshot::channel();
            self.hung.replace(Some(sender));
            return async move {
                let _ = receiver.await;
                let outcome = SliceOutcome::TimedOut { message: "interrupted: it ran past its time limit".into() };
                SliceRun { outcome, console: vec![], heap_bytes: None }
            }
            .boxed_local();
        }
        let outcome = match datum.as_i64() {
            None if datum == json!("stopped-behind") => {
                SliceOutcome::TimedOut { message: "interrupted: it ran past its time limit".into() }
            }
            Some(n) if n < 0 => {
                SliceOutcome::Error { message: format!("negative: {n}"), stack: Some("at work".into()) }
            }
            Some(n) => SliceOutcome::Ok { value: json!(n * 2) },
            None if datum.is_string() => SliceOutcome::Ok { value: datum },
            None => SliceOutcome::Error { message: "not a number".into(), stack: None },
        };
        ready(SliceRun { outcome, console: vec![], heap_bytes: None })
    }
}

#[derive(Default)]
struct Factory {
    setups: Rc<RefCell<Vec<String>>>,
    endings: Rc<RefCell<Vec<&'static str>>>,
    created: Rc<Cell<usize>>,
    /// What each sandbox was created for: its worktime and the packages it was told of.
    asked: Rc<RefCell<Vec<(Worktime, Vec<String>)>>>,
    interruptible: bool,
    /// Lets sandboxes work for simulated time (`{"work_ms": n}`).
    clock: Option<FakeClock>,
}

impl Factory {
    fn timed(clock: &FakeClock) -> Factory {
        Factory { clock: Some(clock.clone()), ..Factory::default() }
    }
}

impl SandboxFactory for Factory {
    fn create(&self, worktime: Worktime, packages: &[String]) -> Result<Rc<dyn Sandbox>, WorkerError> {
        self.created.set(self.created.get() + 1);
        self.asked.borrow_mut().push((worktime, packages.to_vec()));
        Ok(Rc::new(DoublingSandbox {
            setups: self.setups.clone(),
            endings: self.endings.clone(),
            interruptible: self.interruptible,
            hung: RefCell::new(None),
            clock: self.clock.clone(),
            turn: RefCell::new(ready(()).shared()),
        }))
    }
}

fn config(sandboxes: usize) -> SupervisorConfig {
    SupervisorConfig { idle_exit_ms: Some(2_000), ..SupervisorConfig::with_sandboxes(sandboxes) }
}

/// Runs a supervisor to its end; `on_event` may act on events (e.g. stop it).
fn run_with(
    scheduler: &Rc<Scheduler>,
    factory: Factory,
    config: SupervisorConfig,
    on_event: impl Fn(&WorkerEvent, &StopHandle) + 'static,
) -> (String, Vec<WorkerEvent>) {
    let (reason, events) = run_steered(scheduler, factory, config, move |event, stop, _| on_event(event, stop));
    (reason, events.into_iter().map(|(_, event)| event).collect())
}

/// Runs a supervisor to its end; `on_event` may stop or steer it. Each event comes with the
/// simulated time it was seen at.
fn run_steered(
    scheduler: &Rc<Scheduler>,
    factory: Factory,
    config: SupervisorConfig,
    on_event: impl Fn(&WorkerEvent, &StopHandle, &Controls) + 'static,
) -> (String, Vec<(u64, WorkerEvent)>) {
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let handle = Rc::new(RefCell::new(None::<(StopHandle, Controls)>));
    let stop = handle.clone();
    let clock = scheduler.clock.clone();
    let supervisor = Supervisor::new(
        Client(scheduler.clone()),
        factory,
        scheduler.clock.clone(),
        config,
        Rc::new(move |event: &WorkerEvent| {
            if std::env::var_os("DEBUG_EVENTS").is_some() {
                eprintln!("{event:?}");
            }
            log.borrow_mut().push((clock.now_ms(), event.clone()));
            if let Some((stop, controls)) = stop.borrow().as_ref() {
                on_event(event, stop, controls);
            }
        }),
    );
    *handle.borrow_mut() = Some((supervisor.stop_handle(), supervisor.controls()));
    let reason = futures::executor::block_on(supervisor.run());
    let events = events.borrow().clone();
    (reason, events)
}

fn run(scheduler: &Rc<Scheduler>, factory: Factory, config: SupervisorConfig) -> (String, Vec<WorkerEvent>) {
    run_with(scheduler, factory, config, |_, _| {})
}

fn key(job: &str, slice: u64) -> (String, u64) {
    (job.to_string(), slice)
}

#[test]
fn every_slice_is_run_and_accepted_once() {
    let scheduler = Scheduler::with_job("j", (0..100).map(|n| json!(n)));
    let (reason, _) = run(&scheduler, Factory::default(), config(3));
    assert_eq!(reason, "idle");
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted.len(), 100);
    for ((_, slice), outcome) in accepted.iter() {
        assert_eq!(outcome, &SliceOutcome::Ok { value: json!(slice * 2) });
    }
}

#[test]
fn many_sandboxes_never_ask_for_more_than_the_scheduler_allows() {
    let scheduler = Scheduler::new(WorkerLimits { max_lease_slices: 1_000, ..WorkerLimits::default() });
    scheduler.add_job("j", (0..5_000).map(|n| json!(n)));
    // 8 sandboxes × 250 fast slices each would be 2,000 per lease: over the cap.
    let (reason, events) = run(&scheduler, Factory::default(), config(8));
    assert_eq!(reason, "idle");
    assert_eq!(scheduler.accepted.borrow().len(), 5_000);
    assert!(scheduler.largest_ask.get() <= 1_000, "asked for {}", scheduler.largest_ask.get());
    assert!(!events.iter().any(|e| matches!(e, WorkerEvent::RequestRefused { .. })), "{events:?}");
}

#[test]
fn a_refused_lease_request_is_reported_once_and_not_retried() {
    // A scheduler that refuses any ask (its cap is below the worker's smallest batch of one).
    let scheduler = Scheduler::new(WorkerLimits { max_lease_slices: 0, ..WorkerLimits::default() });
    scheduler.add_job("j", (0..10).map(|n| json!(n)));
    let (reason, events) = run(&scheduler, Factory::default(), SupervisorConfig { idle_exit_ms: None, ..config(1) });
    assert!(reason.contains("refused lease requests"), "{reason}");
    assert_eq!(scheduler.lease_calls.get(), 1, "a 4xx is a bug report, not an outage to retry");
    let refusals = events.iter().filter(|e| matches!(e, WorkerEvent::RequestRefused { request: "lease", .. }));
    assert_eq!(refusals.count(), 1);
}

#[test]
fn a_refused_registration_ends_the_worker_with_the_reason() {
    let scheduler = Scheduler::with_job("j", [json!(1)]);
    scheduler.refuse_registration.set(true);
    let (reason, events) = run(&scheduler, Factory::default(), SupervisorConfig { idle_exit_ms: None, ..config(1) });
    assert!(reason.contains("refused to register") && reason.contains("worker key"), "{reason}");
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::RequestRefused { request: "register", .. })));
}

#[test]
fn errors_are_reported_and_other_slices_succeed() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!(-2), json!(3)]);
    run(&scheduler, Factory::default(), config(1));
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted[&key("j", 0)], SliceOutcome::Ok { value: json!(2) });
    assert!(matches!(&accepted[&key("j", 1)], SliceOutcome::Error { message, .. } if message == "negative: -2"));
    assert_eq!(accepted[&key("j", 2)], SliceOutcome::Ok { value: json!(6) });
}

#[test]
fn sandboxes_stay_warm_and_never_mix_jobs() {
    let scheduler = Scheduler::with_job("a", (0..50).map(|n| json!(n)));
    scheduler.add_job("b", (0..50).map(|n| json!(n)));
    let factory = Factory::default();
    let setups = factory.setups.clone();
    run(&scheduler, factory, config(2));
    assert_eq!(scheduler.accepted.borrow().len(), 100);
    // Each sandbox set up one job; far fewer set-ups than slices.
    assert!(setups.borrow().len() <= 6, "set-ups: {:?}", setups.borrow());
}

#[test]
fn backs_off_while_the_scheduler_is_unreachable_with_one_timer() {
    let scheduler = Scheduler::with_job("j", (0..10).map(|n| json!(n)));
    scheduler.failures_left.set(12);
    let clock = scheduler.clock.clone();
    let (_, events) = run_with(&scheduler, Factory::default(), config(1), |_, _| {});
    let delays: Vec<u64> = events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::SchedulerUnreachable { retry_ms, .. } => Some(*retry_ms),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 12);
    assert!(delays.windows(2).take(5).all(|pair| pair[1] > pair[0]), "growing delays: {delays:?}");
    assert_eq!(scheduler.accepted.borrow().len(), 10);
    // The loop's one timer, plus at most one per running slice: failures never add timers.
    assert!(clock.most_alive.get() <= 3, "{} timers alive at once", clock.most_alive.get());
}

#[test]
fn a_failing_lease_call_does_not_hold_back_results() {
    let scheduler = Scheduler::with_job("j", (0..4).map(|n| json!(n)));
    // After the first lease, every further lease attempt fails for a long while.
    scheduler.lease_failures_left.set(0);
    let (_, events) = run_with(&scheduler, Factory::default(), config(2), {
        let scheduler = scheduler.clone();
        move |event, _| {
            if matches!(event, WorkerEvent::Leased { .. }) {
                scheduler.lease_failures_left.set(50);
            }
        }
    });
    // The first batch was delivered while leasing kept failing.
    assert!(!scheduler.accepted.borrow().is_empty());
    let first_failure = events.iter().position(|e| matches!(e, WorkerEvent::SchedulerUnreachable { .. })).unwrap();
    let delivered_after = events[first_failure..].iter().any(|e| matches!(e, WorkerEvent::Submitted { .. }));
    assert!(delivered_after, "results went out between failed lease calls: {events:?}");
    assert!(events.iter().all(|e| !matches!(e, WorkerEvent::SchedulerUnreachable { request: "submit", .. })));
}

#[test]
fn a_hung_slice_that_cannot_be_interrupted_times_out_and_its_sandbox_is_replaced() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("hang"), json!(3)]);
    let factory = Factory::default();
    let (created, endings) = (factory.created.clone(), factory.endings.clone());
    let (_, events) = run(&scheduler, factory, config(1));
    assert!(events
        .iter()
        .any(|e| matches!(e, WorkerEvent::SandboxRemoved { reason, .. } if reason == "slice timed out")));
    assert!(created.get() >= 2, "a fresh sandbox replaced the hung one");
    // A sandbox past its time is terminated: nothing of it serves another.
    let endings = endings.borrow();
    assert_eq!(endings.iter().filter(|ending| **ending == "terminated").count() as u32, MAX_ATTEMPTS, "{endings:?}");
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted[&key("j", 0)], SliceOutcome::Ok { value: json!(2) });
    assert_eq!(accepted[&key("j", 2)], SliceOutcome::Ok { value: json!(6) });
    // Timed out on every attempt: the scheduler gave up on it.
    assert!(matches!(&accepted[&key("j", 1)], SliceOutcome::Error { message, .. } if message.contains("gave up")));
    assert_eq!(scheduler.attempts.borrow()[&key("j", 1)], MAX_ATTEMPTS);
}

#[test]
fn a_slice_that_stops_reporting_progress_is_stopped_at_the_quiet_limit() {
    let scheduler = Scheduler::with_job("j", [json!("hang")]);
    scheduler.jobs.borrow_mut().get_mut("j").unwrap().no_progress_timeout_ms = Some(1_000);
    let (_, events) = run(&scheduler, Factory::default(), config(1));
    let durations: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::SliceFinished { outcome: "timedOut", ms, .. } => Some(*ms),
            _ => None,
        })
        .collect();
    assert_eq!(durations.len() as u32, MAX_ATTEMPTS, "{events:?}");
    assert!(durations.iter().all(|ms| *ms < 5_000), "stopped at the 1 s quiet limit, not the 5 s one: {durations:?}");
}

#[test]
fn a_hung_slice_that_can_be_interrupted_keeps_its_sandbox() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("hang"), json!(3)]);
    let factory = Factory { interruptible: true, ..Factory::default() };
    let created = factory.created.clone();
    let (_, events) = run(&scheduler, factory, SupervisorConfig { pipeline_depth: 1, ..config(1) });
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::SliceInterrupted { slice: 1, .. })), "{events:?}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, WorkerEvent::SandboxRemoved { reason, .. } if reason == "slice timed out")));
    assert_eq!(created.get(), 1, "interrupted, not replaced");
    let timed_out = events.iter().filter(|e| matches!(e, WorkerEvent::SliceFinished { outcome: "timedOut", .. }));
    assert_eq!(timed_out.count() as u32, MAX_ATTEMPTS);
    assert_eq!(scheduler.accepted.borrow()[&key("j", 2)], SliceOutcome::Ok { value: json!(6) });
}

#[test]
fn a_slice_the_sandbox_reports_interrupted_is_the_one_timed_out_and_the_sandbox_is_kept() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("stopped-behind"), json!(3)]);
    let factory = Factory { interruptible: true, ..Factory::default() };
    let created = factory.created.clone();
    let (_, events) = run(&scheduler, factory, config(1));
    let interrupted: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::SliceInterrupted { slice, .. } => Some(*slice),
            _ => None,
        })
        .collect();
    assert!(!interrupted.is_empty() && interrupted.iter().all(|slice| *slice == 1), "{events:?}");
    assert_eq!(created.get(), 1, "interrupted, not replaced");
    assert_eq!(scheduler.accepted.borrow()[&key("j", 0)], SliceOutcome::Ok { value: json!(2) });
    assert_eq!(scheduler.accepted.borrow()[&key("j", 2)], SliceOutcome::Ok { value: json!(6) });
    assert_eq!(scheduler.attempts.borrow()[&key("j", 1)], MAX_ATTEMPTS, "each attempt timed out");
}

#[test]
fn a_program_that_fails_to_set_up_gets_a_second_fresh_sandbox_then_fails_the_job() {
    let scheduler = Scheduler::with_job("j", (0..6).map(|n| json!(n)));
    scheduler.set_program("j", "broken");
    let factory = Factory::default();
    let setups = factory.setups.clone();
    run(&scheduler, factory, config(1));
    assert_eq!(setups.borrow().len(), 2, "tried in two fresh sandboxes, no more");
    assert!(scheduler.ended.borrow().contains("j"), "the second report failed the job");
    assert!(scheduler.accepted.borrow().is_empty());
    assert!(scheduler.attempts.borrow().values().all(|attempts| *attempts <= 1), "set-up errors cost no attempt");
}

#[test]
fn a_runtime_that_cannot_load_is_a_worker_fault_and_pauses_leasing() {
    let scheduler = Scheduler::with_job("j", (0..3).map(|n| json!(n)));
    scheduler.set_program("j", "no-runtime");
    let (_, events) = run(&scheduler, Factory::default(), config(1));
    assert!(!scheduler.ended.borrow().contains("j"), "not blamed on the program");
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::SliceFinished { outcome: "workerFault", .. })));
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::SandboxesFailing { .. })), "{events:?}");
}

#[test]
fn an_oversized_result_is_that_slices_error_and_the_rest_are_accepted() {
    let scheduler = Scheduler::new(WorkerLimits { max_result_bytes: 100, ..WorkerLimits::default() });
    scheduler.add_job("j", [json!(1), json!("x".repeat(300)), json!(3)]);
    run(&scheduler, Factory::default(), config(1));
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted[&key("j", 0)], SliceOutcome::Ok { value: json!(2) });
    assert!(matches!(&accepted[&key("j", 1)], SliceOutcome::Error { message, .. } if message.contains("limit of 100")));
    assert_eq!(accepted[&key("j", 2)], SliceOutcome::Ok { value: json!(6) });
}

#[test]
fn an_ended_job_stops_running_here() {
    let scheduler = Scheduler::with_job("j", (0..400).map(|n| json!(n)));
    *scheduler.cancel_after.borrow_mut() = Some(("j".into(), 50));
    let (_, events) = run(&scheduler, Factory::default(), config(2));
    let ended = events.iter().position(|e| matches!(e, WorkerEvent::JobEnded { job } if job == "j"));
    let ended = ended.expect("the worker learned that the job ended");
    assert!(
        !events[ended..].iter().any(|e| matches!(e, WorkerEvent::SliceStarted { .. })),
        "no slice of it started afterwards"
    );
    assert!(scheduler.accepted.borrow().len() < 400);
}

#[test]
fn the_worker_refuses_a_bad_bundle_again_and_never_runs_the_job() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!(2)]);
    scheduler.jobs.borrow_mut().get_mut("j").unwrap().bundle = Some("ab".repeat(32));
    *scheduler.bundle.borrow_mut() = Some(raw_archive("../evil.p", EntryType::Regular));
    let factory = Factory::default();
    let created = factory.created.clone();
    let (_, events) = run(&scheduler, factory, config(1));
    assert_eq!(created.get(), 0, "no sandbox ever saw the bundle");
    assert!(scheduler.ended.borrow().contains("j"), "reported as the job's error: {events:?}");
}

#[test]
fn a_bundle_download_that_fails_on_the_network_is_retried_not_blamed_on_the_job() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!(2)]);
    scheduler.jobs.borrow_mut().get_mut("j").unwrap().bundle = Some("ab".repeat(32));
    let good = tessera_protocol::bundle::pack(&[tessera_protocol::BundleEntry::File {
        path: "m.py".into(),
        bytes: b"X = 1".to_vec(),
    }])
    .unwrap();
    *scheduler.bundle.borrow_mut() = Some(good);
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let client = FlakyBundles { inner: Client(scheduler.clone()), failures: Cell::new(2) };
    let supervisor = Supervisor::new(
        client,
        Factory::default(),
        scheduler.clock.clone(),
        config(1),
        Rc::new(move |e: &WorkerEvent| log.borrow_mut().push(e.clone())),
    );
    futures::executor::block_on(supervisor.run());
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted.len(), 2);
    assert!(accepted.values().all(|outcome| matches!(outcome, SliceOutcome::Ok { .. })), "{accepted:?}");
    let unreachable = events.borrow().iter().filter(|e| matches!(e, WorkerEvent::SchedulerUnreachable { .. })).count();
    assert_eq!(unreachable, 2);
}

/// A client whose first bundle downloads fail with a network error.
struct FlakyBundles {
    inner: Client,
    failures: Cell<u32>,
}

impl SchedulerClient for FlakyBundles {
    fn register(&self, request: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>> {
        self.inner.register(request)
    }
    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        self.inner.lease(token, request)
    }
    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        self.inner.heartbeat(token, request)
    }
    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        self.inner.submit(token, request)
    }
    fn bundle(&self, sha256: &str, limits: &BundleLimits) -> Task<Result<Vec<u8>, WorkerError>> {
        if self.failures.get() > 0 {
            self.failures.set(self.failures.get() - 1);
            return ready(Err(WorkerError::Unreachable("connection reset".into())));
        }
        self.inner.bundle(sha256, limits)
    }
}

#[test]
fn stopping_releases_unfinished_slices_at_no_cost() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("hang"), json!(3), json!(4)]);
    scheduler.jobs.borrow_mut().get_mut("j").unwrap().slice_timeout_ms = u64::MAX / 4;
    let config = SupervisorConfig { idle_exit_ms: None, ..config(1) };
    let (reason, events) = run_with(&scheduler, Factory::default(), config, |event, stop| {
        if matches!(event, WorkerEvent::SliceStarted { slice: 1, .. }) {
            stop.stop();
        }
    });
    assert_eq!(reason, "stopped");
    // Slice 0 was accepted; the hung slice 1 and whatever else was held went back, free.
    assert_eq!(scheduler.accepted.borrow().len(), 1);
    let queued: Vec<u64> = scheduler.queued.borrow().iter().map(|(_, slice)| *slice).collect();
    assert!(queued.contains(&1), "the running slice was returned: {queued:?}");
    assert!(scheduler.leases.borrow().is_empty(), "no lease is left dangling");
    for slice in queued {
        assert_eq!(
            scheduler.attempts.borrow().get(&key("j", slice)).copied().unwrap_or(0),
            0,
            "slice {slice} lost no attempt"
        );
    }
    assert!(matches!(events.last(), Some(WorkerEvent::Stopped { reason }) if reason == "stopped"));
}

#[test]
fn a_closing_page_can_give_back_every_unacknowledged_lease_at_once() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("hang"), json!(3)]);
    scheduler.jobs.borrow_mut().get_mut("j").unwrap().slice_timeout_ms = u64::MAX / 4;
    let farewells = Rc::new(RefCell::new(Vec::new()));
    let seen = farewells.clone();
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let handle = Rc::new(RefCell::new(None::<(StopHandle, tessera_worker::supervisor::Farewell)>));
    let hooks = handle.clone();
    let supervisor = Supervisor::new(
        Client(scheduler.clone()),
        Factory::default(),
        scheduler.clock.clone(),
        SupervisorConfig { idle_exit_ms: None, ..config(1) },
        Rc::new(move |event: &WorkerEvent| {
            log.borrow_mut().push(event.clone());
            if matches!(event, WorkerEvent::SliceStarted { slice: 1, .. }) {
                if let Some((stop, farewell)) = hooks.borrow().as_ref() {
                    seen.borrow_mut().push(farewell.batch("page closed", 100));
                    stop.stop();
                }
            }
        }),
    );
    *handle.borrow_mut() = Some((supervisor.stop_handle(), supervisor.farewell()));
    futures::executor::block_on(supervisor.run());
    let batch = farewells.borrow()[0].clone().expect("held leases to give back");
    assert_eq!(batch.worker_token.as_deref(), Some(WORKER_TOKEN), "the beacon carries the worker token");
    assert!(batch.results.iter().all(|item| item.outcome == SliceOutcome::Released { reason: "page closed".into() }));
    let leased: HashSet<String> = (0..3).map(|n| format!("l{n}")).collect();
    let named: HashSet<String> = batch.results.iter().map(|item| item.lease_id.clone()).collect();
    assert!(named.is_subset(&leased) && named.contains("l1"), "{named:?}");
}

#[test]
fn a_paused_worker_starts_nothing_gives_its_queue_back_and_resumes() {
    let scheduler = Scheduler::with_job("j", (1..=12).map(|n| json!(n)));
    let resumed = Rc::new(Cell::new(false));
    let seen = resumed.clone();
    let (reason, events) = run_steered(&scheduler, Factory::default(), config(1), move |event, _, controls| {
        match event {
            WorkerEvent::SliceFinished { slice: 2, .. } if !seen.get() => controls.pause(),
            // Once the queue went back, resume.
            WorkerEvent::Submitted { released, .. } if controls.is_paused() && *released > 0 => {
                controls.resume();
                seen.set(true);
            }
            _ => {}
        }
    });
    assert_eq!(reason, "idle");
    assert_eq!(scheduler.accepted.borrow().len(), 12, "every slice ran once resumed");
    let position = |wanted: fn(&WorkerEvent) -> bool| events.iter().position(|(_, event)| wanted(event));
    let paused = position(|e| matches!(e, WorkerEvent::Paused)).expect("a paused event");
    let resumed = position(|e| matches!(e, WorkerEvent::Resumed)).expect("a resumed event");
    assert!(
        events[paused..resumed].iter().all(|(_, event)| !matches!(event, WorkerEvent::SliceStarted { .. })),
        "no slice started while paused"
    );
    assert!(
        events[paused..resumed]
            .iter()
            .any(|(_, event)| matches!(event, WorkerEvent::Submitted { released, .. } if *released > 0)),
        "the queued slices went back"
    );
    assert!(scheduler.attempts.borrow().values().all(|attempts| *attempts <= 1), "giving back cost no attempt");
}

#[test]
fn sandboxes_are_created_for_their_jobs_packages_and_the_spare_for_the_last_jobs() {
    let scheduler = Scheduler::with_job("j", (0..12).map(|_| json!({"work_ms": 100})));
    scheduler.set_python("j", &["numpy"]);
    let clock = scheduler.clock.clone();
    let factory = Factory::timed(&clock);
    let asked = factory.asked.clone();
    let (reason, _) = run_with(&scheduler, factory, config(1), |_, _| {});
    assert_eq!(reason, "idle");
    assert_eq!(scheduler.accepted.borrow().len(), 12);
    let asked = asked.borrow();
    assert!(asked.len() >= 2, "a sandbox, then a spare: {asked:?}");
    let numpy = vec!["numpy".to_string()];
    assert!(asked.iter().all(|(worktime, packages)| *worktime == Worktime::Pyodide && *packages == numpy), "{asked:?}");
}

#[test]
fn a_sandbox_takes_no_more_slices_than_its_limit_queued_ones_included() {
    let scheduler = Scheduler::with_job("j", (0..6).map(|n| json!(n)));
    let factory = Factory::default();
    let endings = factory.endings.clone();
    let config = SupervisorConfig { max_slices_per_sandbox: 2, ..config(1) };
    let (reason, events) = run(&scheduler, factory, config);
    // Never more slices than the limit, slices queued behind a running one included.
    let mut served = 0;
    for event in &events {
        match event {
            WorkerEvent::SandboxCreated { .. } => served = 0,
            WorkerEvent::SliceStarted { .. } => {
                served += 1;
                assert!(served <= 2, "{events:?}");
            }
            _ => {}
        }
    }
    assert_eq!(reason, "idle");
    assert_eq!(scheduler.accepted.borrow().len(), 6);
    // Three sandboxes of two slices each, each retired (the last one when the worker stops).
    assert_eq!(*endings.borrow(), ["retired", "retired", "retired"]);
}

#[test]
fn fewer_sandboxes_end_the_extra_ones_once_idle() {
    let scheduler = Scheduler::with_job("j", (0..24).map(|_| json!({"work_ms": 100})));
    let clock = scheduler.clock.clone();
    let factory = Factory::timed(&clock);
    let endings = factory.endings.clone();
    let (_, events) = run_steered(&scheduler, factory, config(3), |event, _, controls| {
        if matches!(event, WorkerEvent::SliceFinished { slice: 5, .. }) {
            controls.set_sandboxes(1).unwrap();
        }
    });
    assert_eq!(scheduler.accepted.borrow().len(), 24);
    let changed = events.iter().position(|(_, e)| matches!(e, WorkerEvent::SandboxesChanged { sandboxes: 1 })).unwrap();
    let removed = events[changed..]
        .iter()
        .filter(|(_, e)| matches!(e, WorkerEvent::SandboxRemoved { reason, .. } if reason == "recycled"))
        .count();
    assert_eq!(removed, 1, "one sandbox beyond the new capacity and its spare ended");
    assert!(
        endings.borrow().iter().all(|ending| *ending == "retired"),
        "ended, never at fault: {:?}",
        endings.borrow()
    );
    // Slices that were running go on; once the worker is down to one slice at a time it stays there.
    let mut running: HashMap<usize, i32> = HashMap::new();
    let mut settled = false;
    for (index, (_, event)) in events.iter().enumerate() {
        match event {
            WorkerEvent::SliceStarted { sandbox, .. } => *running.entry(*sandbox).or_default() += 1,
            WorkerEvent::SliceFinished { sandbox, .. } => *running.entry(*sandbox).or_default() -= 1,
            _ => {}
        }
        let busy = running.values().filter(|count| **count > 0).count();
        settled = settled || (index > changed && busy <= 1);
        assert!(!settled || busy <= 1, "two sandboxes ran at once after the worker settled at one");
    }
    assert!(settled);
}

#[test]
fn a_cpu_share_makes_each_sandbox_rest_in_proportion_to_its_work() {
    let scheduler = Scheduler::with_job("j", (0..6).map(|_| json!({"work_ms": 300})));
    let clock = scheduler.clock.clone();
    let config = SupervisorConfig { cpu_share: 0.25, ..config(1) };
    let (_, events) = run_steered(&scheduler, Factory::timed(&clock), config, |_, _, _| {});
    assert_eq!(scheduler.accepted.borrow().len(), 6);
    let mut finished_at = None;
    let mut gaps = Vec::new();
    for (at, event) in &events {
        match event {
            WorkerEvent::SliceFinished { ms, .. } => {
                assert_eq!(*ms, 300);
                finished_at = Some(*at);
            }
            WorkerEvent::SliceStarted { .. } => {
                if let Some(finished) = finished_at {
                    gaps.push(at - finished);
                }
            }
            _ => {}
        }
    }
    assert_eq!(gaps.len(), 5);
    assert!(gaps.iter().all(|gap| *gap >= 900), "each slice of 300 ms is followed by 900 ms of rest: {gaps:?}");
    assert!(events.iter().any(|(_, e)| matches!(e, WorkerEvent::SandboxState { state: SandboxActivity::Resting, .. })));
}

#[test]
fn the_cpu_share_can_change_while_running() {
    let scheduler = Scheduler::with_job("j", (0..8).map(|_| json!({"work_ms": 200})));
    let clock = scheduler.clock.clone();
    let (_, events) = run_steered(&scheduler, Factory::timed(&clock), config(1), |event, _, controls| {
        if matches!(event, WorkerEvent::SliceFinished { slice: 3, .. }) {
            controls.set_cpu_share(0.5).unwrap();
        }
    });
    let starts: Vec<u64> =
        events.iter().filter(|(_, e)| matches!(e, WorkerEvent::SliceStarted { .. })).map(|(at, _)| *at).collect();
    let finishes: Vec<u64> =
        events.iter().filter(|(_, e)| matches!(e, WorkerEvent::SliceFinished { .. })).map(|(at, _)| *at).collect();
    // Slices 0–3 ran back to back (pipelined, even); from slice 4 on each waited 200 ms.
    assert!(starts[5] >= finishes[4] + 200 && starts[7] >= finishes[6] + 200, "{starts:?} {finishes:?}");
}

#[test]
fn controls_refuse_values_the_worker_cannot_honour() {
    let scheduler = Scheduler::with_job("j", [json!(1)]);
    let supervisor = Supervisor::new(
        Client(scheduler.clone()),
        Factory::default(),
        scheduler.clock.clone(),
        config(1),
        Rc::new(|_: &WorkerEvent| {}),
    );
    let controls = supervisor.controls();
    for bad in [0, 65] {
        let error = controls.set_sandboxes(bad).unwrap_err().to_string();
        assert!(error.contains("sandboxes must be 1–64") && error.contains(&bad.to_string()), "{error}");
    }
    for bad in [0.0, 0.01, 1.5, f64::NAN] {
        let error = controls.set_cpu_share(bad).unwrap_err().to_string();
        assert!(error.contains("cpuShare must be 0.05–1"), "{error}");
    }
    assert_eq!((controls.sandboxes(), controls.cpu_share()), (1, 1.0), "refused values change nothing");
    assert_eq!(rest_after(100, 1.0), 0);
    assert_eq!(rest_after(100, 0.5), 100);
    assert_eq!(rest_after(100, 0.25), 300);
    assert_eq!(rest_after(0, 0.25), 0);
}

#[test]
fn progress_reaches_the_page_throttled_and_always_at_the_end() {
    let scheduler = Scheduler::with_job("j", [json!({"work_ms": 1_000})]);
    let clock = scheduler.clock.clone();
    let (_, events) = run_steered(&scheduler, Factory::timed(&clock), config(1), |_, _, _| {});
    let reports: Vec<(u64, Option<f64>)> = events
        .iter()
        .filter_map(|(at, e)| match e {
            WorkerEvent::SliceProgress { job, slice: 0, sandbox: 0, progress } if job == "j" => Some((*at, *progress)),
            _ => None,
        })
        .collect();
    assert_eq!(reports.first().map(|r| r.1), Some(Some(0.05)), "the first report goes out at once");
    assert_eq!(reports.last().map(|r| r.1), Some(Some(1.0)), "so does the last");
    assert!(reports.len() < 20 / 2, "20 reports were throttled: {reports:?}");
    for pair in reports[..reports.len() - 1].windows(2) {
        assert!(pair[1].0 - pair[0].0 >= PROGRESS_EVENT_MS, "{reports:?}");
    }
}

#[test]
fn the_page_sees_what_each_sandbox_is_doing() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!(2)]);
    let (_, events) = run_steered(&scheduler, Factory::default(), config(1), |_, _, _| {});
    let states: Vec<(SandboxActivity, Option<String>)> = events
        .iter()
        .filter_map(|(_, e)| match e {
            WorkerEvent::SandboxState { sandbox: 0, state, job } => Some((*state, job.clone())),
            _ => None,
        })
        .collect();
    let j = || Some("j".to_string());
    // Created (a JavaScript sandbox has no runtime to load), set up, then slice by slice.
    assert_eq!(
        states[..4],
        [
            (SandboxActivity::Idle, None),
            (SandboxActivity::StartingProgram, j()),
            (SandboxActivity::Running, j()),
            (SandboxActivity::Idle, j()),
        ]
    );
}
