//! The supervisor loop against in-memory doubles of the scheduler, the sandboxes and the clock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use futures::FutureExt;
use serde_json::{json, Value};
use tessera_protocol::bundle::testing::{raw_archive, EntryType};
use tessera_protocol::{
    ApiError, HeartbeatRequest, HeartbeatResponse, JobDescriptor, Lease, LeaseRequest, LeaseResponse, RegisterRequest,
    RegisterResponse, ResultAck, ResultStatus, ResultsRequest, ResultsResponse, SliceOutcome, Worktime,
};
use tessera_worker::supervisor::{
    Clock, PreparedJob, Sandbox, SandboxFactory, SchedulerClient, SliceRun, Supervisor, SupervisorConfig, Task,
    WorkerEvent,
};
use tessera_worker::WorkerError;

/// A scheduler holding slices in memory with the real protocol's acceptance rules.
#[derive(Default)]
struct Scheduler {
    queued: RefCell<Vec<(String, u64, Value)>>,
    jobs: RefCell<HashMap<String, JobDescriptor>>,
    leases: RefCell<HashMap<String, (String, u64)>>,
    accepted: RefCell<BTreeMap<(String, u64), SliceOutcome>>,
    failures_left: Cell<u32>,
    /// Served for every bundle request.
    bundle: RefCell<Option<Vec<u8>>>,
    next_id: Cell<u64>,
}

impl Scheduler {
    fn with_job(job: &str, slices: impl IntoIterator<Item = Value>) -> Rc<Scheduler> {
        let scheduler = Rc::new(Scheduler::default());
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
            },
        );
        for (index, datum) in slices.into_iter().enumerate() {
            self.queued.borrow_mut().push((job.into(), index as u64, datum));
        }
    }

    fn fail(&self) -> Option<WorkerError> {
        let left = self.failures_left.get();
        (left > 0).then(|| {
            self.failures_left.set(left - 1);
            WorkerError::Unreachable("connection refused".into())
        })
    }
}

struct Client(Rc<Scheduler>);

fn ready<T: 'static>(value: T) -> Task<T> {
    futures::future::ready(value).boxed_local()
}

impl SchedulerClient for Client {
    fn register(&self, _: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>> {
        ready(match self.0.fail() {
            Some(error) => Err(error),
            None => Ok(RegisterResponse {
                worker_id: "w1".into(),
                token: "t".into(),
                lease_ttl_ms: 30_000,
                heartbeat_ms: 10_000,
            }),
        })
    }

    fn lease(&self, _: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        if let Some(error) = self.0.fail() {
            return ready(Err(error));
        }
        let mut queued = self.0.queued.borrow_mut();
        let take = (request.max_slices as usize).min(queued.len());
        let mut response = LeaseResponse::default();
        for (job, slice, datum) in queued.drain(..take) {
            let id = self.0.next_id.get();
            self.0.next_id.set(id + 1);
            let lease_id = format!("l{id}");
            self.0.leases.borrow_mut().insert(lease_id.clone(), (job.clone(), slice));
            if !request.known_jobs.contains(&job) && !response.jobs.iter().any(|j| j.job_id == job) {
                response.jobs.push(self.0.jobs.borrow()[&job].clone());
            }
            response.leases.push(Lease { lease_id, token: "tok".into(), job_id: job, slice, datum, ttl_ms: 30_000 });
        }
        ready(Ok(response))
    }

    fn heartbeat(&self, _: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        let extended = request.leases.into_iter().map(|item| item.lease_id).collect();
        ready(Ok(HeartbeatResponse { extended, lost: vec![], ttl_ms: 30_000 }))
    }

    fn submit(&self, _: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        if let Some(error) = self.0.fail() {
            return ready(Err(error));
        }
        let mut acks = Vec::new();
        for item in request.results {
            let Some((job, slice)) = self.0.leases.borrow_mut().remove(&item.lease_id) else {
                acks.push(ResultAck { lease_id: item.lease_id, status: ResultStatus::Duplicate });
                continue;
            };
            let status = if let SliceOutcome::WorkerFault { .. } = item.outcome {
                self.0.queued.borrow_mut().push((job, slice, json!(slice)));
                ResultStatus::Requeued
            } else {
                let previous = self.0.accepted.borrow_mut().insert((job, slice), item.outcome);
                assert!(previous.is_none(), "a slice was accepted twice");
                ResultStatus::Accepted
            };
            acks.push(ResultAck { lease_id: item.lease_id, status });
        }
        ready(Ok(ResultsResponse { acks }))
    }

    fn bundle(&self, sha256: &str) -> Task<Result<Vec<u8>, WorkerError>> {
        if let Some(bytes) = self.0.bundle.borrow().clone() {
            return ready(Ok(bytes));
        }
        ready(Err(WorkerError::Rejected(ApiError { code: "not_found".into(), field: None, message: sha256.into() })))
    }
}

/// Simulated time: sleeping advances the clock and returns at once.
#[derive(Clone, Default)]
struct FakeClock(Rc<Cell<u64>>);

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
    fn sleep(&self, ms: u64) -> Task<()> {
        let now = self.0.clone();
        async move {
            now.set(now.get() + ms.max(1));
        }
        .boxed_local()
    }
    fn random(&self) -> f64 {
        0.5
    }
}

/// Doubles numbers; throws on negative ones; never answers for `"hang"`.
struct DoublingSandbox {
    setups: Rc<RefCell<Vec<String>>>,
    bound: RefCell<Option<String>>,
}

impl Sandbox for DoublingSandbox {
    fn run(&self, job: Rc<PreparedJob>, _: u64, datum: Value, _: Rc<Cell<Option<f64>>>) -> Task<SliceRun> {
        let job_id = job.descriptor.job_id.clone();
        let mut bound = self.bound.borrow_mut();
        match bound.as_ref() {
            None => {
                self.setups.borrow_mut().push(job_id.clone());
                *bound = Some(job_id);
            }
            Some(existing) => assert_eq!(existing, &job_id, "a sandbox served two jobs"),
        }
        if datum == json!("hang") {
            return futures::future::pending().boxed_local();
        }
        let outcome = match datum.as_i64() {
            Some(n) if n < 0 => {
                SliceOutcome::Error { message: format!("negative: {n}"), stack: Some("at work".into()) }
            }
            Some(n) => SliceOutcome::Ok { value: json!(n * 2) },
            None => SliceOutcome::Error { message: "not a number".into(), stack: None },
        };
        ready(SliceRun { outcome, console: vec![], heap_bytes: None })
    }

    fn terminate(&self) {}
}

#[derive(Default)]
struct Factory {
    setups: Rc<RefCell<Vec<String>>>,
    created: Rc<Cell<usize>>,
}

impl SandboxFactory for Factory {
    fn create(&self, _: Worktime) -> Result<Rc<dyn Sandbox>, WorkerError> {
        self.created.set(self.created.get() + 1);
        Ok(Rc::new(DoublingSandbox { setups: self.setups.clone(), bound: RefCell::new(None) }))
    }
}

fn config(sandboxes: usize) -> SupervisorConfig {
    SupervisorConfig { idle_exit_ms: Some(2_000), ..SupervisorConfig::with_sandboxes(sandboxes) }
}

fn run(scheduler: &Rc<Scheduler>, factory: Factory, config: SupervisorConfig) -> (String, Vec<WorkerEvent>) {
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let supervisor = Supervisor::new(
        Client(scheduler.clone()),
        factory,
        FakeClock::default(),
        config,
        Rc::new(move |event: &WorkerEvent| log.borrow_mut().push(event.clone())),
    );
    let reason = futures::executor::block_on(supervisor.run());
    let events = events.borrow().clone();
    (reason, events)
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
fn errors_are_reported_and_other_slices_succeed() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!(-2), json!(3)]);
    run(&scheduler, Factory::default(), config(1));
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted[&("j".to_string(), 0)], SliceOutcome::Ok { value: json!(2) });
    assert!(
        matches!(&accepted[&("j".to_string(), 1)], SliceOutcome::Error { message, .. } if message == "negative: -2")
    );
    assert_eq!(accepted[&("j".to_string(), 2)], SliceOutcome::Ok { value: json!(6) });
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
fn backs_off_while_the_scheduler_is_unreachable() {
    let scheduler = Scheduler::with_job("j", (0..10).map(|n| json!(n)));
    scheduler.failures_left.set(4);
    let (_, events) = run(&scheduler, Factory::default(), config(1));
    let delays: Vec<u64> = events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::SchedulerUnreachable { retry_ms, .. } => Some(*retry_ms),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 4);
    assert!(delays.windows(2).all(|pair| pair[1] > pair[0]), "growing delays: {delays:?}");
    assert_eq!(scheduler.accepted.borrow().len(), 10);
}

#[test]
fn a_hung_slice_times_out_and_its_sandbox_is_replaced() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("hang"), json!(3)]);
    let factory = Factory::default();
    let created = factory.created.clone();
    let config = SupervisorConfig { slice_timeout_ms: 5_000, ..config(1) };
    let (_, events) = run(&scheduler, factory, config);
    assert!(events
        .iter()
        .any(|e| matches!(e, WorkerEvent::SandboxRemoved { reason, .. } if reason == "slice timed out")));
    assert!(created.get() >= 2, "a fresh sandbox replaced the hung one");
    // The hung slice went back to the queue (worker fault) and slices 0 and 2 were accepted.
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted[&("j".to_string(), 0)], SliceOutcome::Ok { value: json!(2) });
    assert_eq!(accepted[&("j".to_string(), 2)], SliceOutcome::Ok { value: json!(6) });
}

#[test]
fn the_worker_refuses_a_bad_bundle_again_and_never_runs_the_job() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!(2)]);
    scheduler.jobs.borrow_mut().get_mut("j").unwrap().bundle = Some("ab".repeat(32));
    *scheduler.bundle.borrow_mut() = Some(raw_archive("../evil.p", EntryType::Regular));
    let factory = Factory::default();
    let created = factory.created.clone();
    run(&scheduler, factory, config(1));
    assert_eq!(created.get(), 0, "no sandbox ever saw the bundle");
    for outcome in scheduler.accepted.borrow().values() {
        assert!(
            matches!(outcome, SliceOutcome::JobError { message, .. } if message.contains("`../evil.p`")),
            "{outcome:?}"
        );
    }
    assert_eq!(scheduler.accepted.borrow().len(), 2);
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
    // Register and lease succeed; then the bundle download fails twice.
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let client = FlakyBundles { inner: Client(scheduler.clone()), failures: Cell::new(2) };
    let supervisor = Supervisor::new(
        client,
        Factory::default(),
        FakeClock::default(),
        config(1),
        Rc::new(move |e: &WorkerEvent| log.borrow_mut().push(e.clone())),
    );
    futures::executor::block_on(supervisor.run());
    let accepted = scheduler.accepted.borrow();
    assert_eq!(accepted.len(), 2);
    assert!(accepted.values().all(|outcome| matches!(outcome, SliceOutcome::Ok { .. })), "{accepted:?}");
    assert_eq!(events.borrow().iter().filter(|e| matches!(e, WorkerEvent::SchedulerUnreachable { .. })).count(), 2);
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
    fn bundle(&self, sha256: &str) -> Task<Result<Vec<u8>, WorkerError>> {
        if self.failures.get() > 0 {
            self.failures.set(self.failures.get() - 1);
            return ready(Err(WorkerError::Unreachable("connection reset".into())));
        }
        self.inner.bundle(sha256)
    }
}

#[test]
fn stopping_returns_unfinished_slices_to_the_scheduler() {
    let scheduler = Scheduler::with_job("j", [json!(1), json!("hang"), json!(3), json!(4)]);
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let stopper = Rc::new(RefCell::new(None::<tessera_worker::supervisor::StopHandle>));
    let stop = stopper.clone();
    let config = SupervisorConfig { idle_exit_ms: None, slice_timeout_ms: u64::MAX / 4, ..config(1) };
    let supervisor = Supervisor::new(
        Client(scheduler.clone()),
        Factory::default(),
        FakeClock::default(),
        config,
        Rc::new(move |event: &WorkerEvent| {
            if matches!(event, WorkerEvent::SliceStarted { slice: 1, .. }) {
                if let Some(handle) = stop.borrow().as_ref() {
                    handle.stop();
                }
            }
            log.borrow_mut().push(event.clone());
        }),
    );
    *stopper.borrow_mut() = Some(supervisor.stop_handle());
    assert_eq!(futures::executor::block_on(supervisor.run()), "stopped");
    // Slice 0 was accepted; the hung slice 1 and whatever else was held went back to the queue.
    assert_eq!(scheduler.accepted.borrow().len(), 1);
    let queued: Vec<u64> = scheduler.queued.borrow().iter().map(|(_, slice, _)| *slice).collect();
    assert!(queued.contains(&1), "the running slice was returned: {queued:?}");
    assert!(scheduler.leases.borrow().is_empty(), "no lease is left dangling");
    assert!(matches!(events.borrow().last(), Some(WorkerEvent::Stopped { reason }) if reason == "stopped"));
}
