//! The worker core's browser edge where no scheduler is needed, so these run under a plain
//! `wasm-pack test --headless --chrome crate` (or `--firefox`): the JavaScript API's options, the
//! browser clock, `fetch` failures told apart, and the supervisor backing off on the browser clock
//! while its scheduler is not there. Nothing listens on 127.0.0.1 port 1.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use tessera_protocol::{
    BundleLimits, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
    ResultsRequest, ResultsResponse,
};
use tessera_worker::supervisor::{Clock, SchedulerClient, Supervisor, SupervisorConfig, Task, WorkerEvent};
use tessera_worker::web::clock::BrowserClock;
use tessera_worker::web::http::{get, HttpSchedulerClient};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use tessera_worker::web::TesseraWorker;
use tessera_worker::WorkerError;
use wasm_bindgen::{JsCast, JsError, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// A scheduler address where nothing answers (connections are refused at once).
const NOBODY: &str = "http://127.0.0.1:1";

/// `new TesseraWorker(JSON.parse(options))`, or the message of the error it throws.
fn new_worker(options: &str) -> Result<TesseraWorker, String> {
    let options = js_sys::JSON::parse(options).expect("test options are JSON");
    TesseraWorker::new(options).map_err(|error| {
        let error: JsValue = error.into();
        let error = error.dyn_into::<js_sys::Error>().expect("the constructor throws an Error");
        String::from(error.message())
    })
}

#[wasm_bindgen_test]
fn the_javascript_api_refuses_an_unusable_option_naming_it_and_what_it_got() {
    let refused = |options: &str| new_worker(options).err().expect("refused");
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "sandboxes": "x"}"#);
    assert_eq!(message, r#"invalid option: sandboxes: expected a whole number from 1 to 64, not the text "x""#);
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "sandboxes": 2.5}"#);
    assert_eq!(message, "invalid option: sandboxes: expected a whole number from 1 to 64, not the number 2.5");
    let message = refused(r#"{"scheduler": ["http://127.0.0.1:1"]}"#);
    assert_eq!(message, "invalid option: scheduler: expected text, not an array");
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "runtimeSnapshots": "no"}"#);
    assert_eq!(message, r#"invalid option: runtimeSnapshots: expected true or false, not the text "no""#);
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "cpushare": 0.5}"#);
    assert!(message.starts_with("invalid option: unknown option `cpushare` (the options are scheduler, "), "{message}");
    let message = refused("5");
    assert_eq!(message, "invalid option: expected an object, not the number 5");
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "idleExitMs": -5}"#);
    assert!(message.starts_with("invalid option: idleExitMs: ") && message.contains("-5"), "{message}");
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "sandboxes": 0}"#);
    assert_eq!(message, "invalid option: sandboxes: expected a whole number from 1 to 64, not the number 0");
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "maxSandboxHeapBytes": 1e17}"#);
    assert!(
        message.ends_with("expected a whole number from 0 to 9007199254740991, not the number 100000000000000000"),
        "{message}"
    );
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "cpuShare": 2}"#);
    assert_eq!(message, "invalid option: cpuShare must be 0.05–1, not 2");
    let message = refused(r#"{"scheduler": "http://127.0.0.1:1", "contributor": "short"}"#);
    assert!(message.starts_with("invalid option: contributor must be 16–64 characters"), "{message}");
}

#[wasm_bindgen_test]
fn the_javascript_api_takes_good_options_and_defaults_the_rest() {
    assert_eq!(new_worker(r#"{"scheduler": "http://127.0.0.1:1", "sandboxes": 4}"#).unwrap().sandboxes(), 4);
    let cores = web_sys::window().unwrap().navigator().hardware_concurrency() as usize;
    let default = new_worker(r#"{"scheduler": "http://127.0.0.1:1/"}"#).unwrap().sandboxes();
    assert_eq!(default, cores.saturating_sub(1).max(1), "one core is left to the person at the machine");
    // Every option the core knows, at once: none is refused as unknown.
    let every = new_worker(
        r#"{"scheduler": "http://127.0.0.1:1", "sandboxes": 2, "cpuShare": 1, "contributor": "c0123456789abcdef",
            "idleExitMs": 1000, "maxSlicesPerSandbox": 10, "maxSandboxHeapBytes": 1000000000, "sandboxIdleMs": 5000,
            "pyodideUrl": "/pyodide/", "prewarmSpare": false, "setupTimeoutMs": 60000, "workerKey": "k",
            "runtimeSnapshots": true, "packageSnapshots": false, "onEvent": null}"#,
    );
    assert_eq!(every.unwrap().sandboxes(), 2);
    let worker = new_worker(
        r#"{"scheduler": "http://127.0.0.1:1", "runtimeSnapshots": false, "cpuShare": 0.5,
            "contributor": "c0123456789abcdef"}"#,
    )
    .unwrap();
    assert_eq!(worker.cpu_share(), 0.5);
    worker.stop();
    assert!(worker.run().is_ok());
    assert!(worker.run().is_err(), "a worker runs once");
}

#[wasm_bindgen_test]
fn the_javascript_api_steers_a_worker_and_refuses_what_it_cannot_do() {
    let worker = new_worker(r#"{"scheduler": "http://127.0.0.1:1", "sandboxes": 2}"#).unwrap();
    assert!(!worker.paused());
    worker.pause();
    assert!(worker.paused());
    worker.resume();
    assert!(!worker.paused());
    worker.set_sandboxes(3.0).unwrap();
    assert_eq!(worker.sandboxes(), 3);
    worker.set_cpu_share(0.25).unwrap();
    assert_eq!(worker.cpu_share(), 0.25);
    let message = |error: JsError| {
        let error: JsValue = error.into();
        String::from(error.dyn_into::<js_sys::Error>().expect("an Error").message())
    };
    for bad in [0.0, 2.5, 65.0, f64::NAN] {
        let error = message(worker.set_sandboxes(bad).unwrap_err());
        assert!(error.starts_with("invalid option: sandboxes must be a whole number 1–64, not "), "{error}");
    }
    let error = message(worker.set_cpu_share(0.0).unwrap_err());
    assert_eq!(error, "invalid option: cpuShare must be 0.05–1, not 0");
    assert_eq!((worker.sandboxes(), worker.cpu_share()), (3, 0.25), "refused values change nothing");
}

#[wasm_bindgen_test]
async fn the_browser_clock_is_monotonic_and_sleeps_at_least_as_asked() {
    let clock = BrowserClock::new();
    let before = clock.now_ms();
    clock.sleep(60).await;
    let after = clock.now_ms();
    // `now_ms` drops the fraction of a millisecond, and timers may be clamped to 1 ms.
    assert!(after + 1 >= before + 60, "slept {} ms of 60", after - before);
    let samples: Vec<f64> = (0..100).map(|_| clock.random()).collect();
    assert!(samples.iter().all(|sample| (0.0..1.0).contains(sample)), "{samples:?}");
    assert!(samples.windows(2).any(|pair| pair[0] != pair[1]), "random varies");
}

#[wasm_bindgen_test]
async fn fetch_failures_are_told_apart_from_refusals() {
    match get(&format!("{NOBODY}/v1/health"), 10_000).await {
        Err(WorkerError::Unreachable(_)) => {}
        other => panic!("a refused connection is worth a retry: {other:?}"),
    }
    // The test runner's own server answers 404 for a path it does not have.
    let origin = web_sys::window().unwrap().location().origin().unwrap();
    match get(&format!("{origin}/no-such-file"), 10_000).await {
        Err(WorkerError::Rejected(error)) => assert_eq!(error.code, "404", "{error:?}"),
        other => panic!("a 4xx is a refusal, not worth a retry: {other:?}"),
    }
}

/// The HTTP client, noting when each registration is asked for: a retry is measured from the
/// attempt before it, which the supervisor's own clock reading can only follow.
struct NotingClient {
    http: HttpSchedulerClient,
    clock: BrowserClock,
    register_calls: Rc<RefCell<Vec<u64>>>,
}

impl SchedulerClient for NotingClient {
    fn register(&self, request: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>> {
        self.register_calls.borrow_mut().push(self.clock.now_ms());
        self.http.register(request)
    }
    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        self.http.lease(token, request)
    }
    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        self.http.heartbeat(token, request)
    }
    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        self.http.submit(token, request)
    }
    fn bundle(&self, sha256: &str, limits: &BundleLimits) -> Task<Result<Vec<u8>, WorkerError>> {
        self.http.bundle(sha256, limits)
    }
}

#[wasm_bindgen_test]
async fn without_a_scheduler_the_worker_retries_registration_with_growing_delays() {
    let clock = BrowserClock::new();
    let delays: Rc<RefCell<Vec<u64>>> = Rc::default();
    let register_calls: Rc<RefCell<Vec<u64>>> = Rc::default();
    let log = delays.clone();
    let client = NotingClient {
        http: HttpSchedulerClient::new(NOBODY),
        clock: clock.clone(),
        register_calls: register_calls.clone(),
    };
    let supervisor = Supervisor::new(
        client,
        IsolatedSandboxFactory::new(NOBODY, &format!("{NOBODY}/pyodide/")).unwrap(),
        clock.clone(),
        SupervisorConfig::with_sandboxes(1),
        Rc::new(move |event: &WorkerEvent| match event {
            WorkerEvent::SchedulerUnreachable { request, retry_ms, .. } => {
                assert_eq!(*request, "register", "nothing else is asked before registering");
                log.borrow_mut().push(*retry_ms);
            }
            WorkerEvent::Stopped { .. } => {}
            other => panic!("no scheduler, yet {other:?}"),
        }),
    );
    let stop = supervisor.stop_handle();
    wasm_bindgen_futures::spawn_local(async move {
        gloo_timers::future::TimeoutFuture::new(2_500).await;
        stop.stop();
    });
    assert_eq!(supervisor.run().await, "stopped");
    let (delays, calls) = (delays.borrow(), register_calls.borrow());
    assert!(delays.len() >= 3, "it kept trying: {delays:?}");
    assert!(calls.len() >= delays.len(), "each failure followed an attempt: {calls:?} {delays:?}");
    for (n, &retry_ms) in delays.iter().enumerate() {
        // 250 ms · 2^n, scaled by a jitter in [0.5, 1]: the delays grow, and no retry comes early.
        let ceiling = 250u64 << n;
        assert!((ceiling / 2..=ceiling).contains(&retry_ms), "delay {n} is {retry_ms} ms: {delays:?}");
        if n > 0 {
            assert!(retry_ms >= delays[n - 1], "the delays grow: {delays:?}");
        }
        if let Some(&next_call) = calls.get(n + 1) {
            assert!(next_call >= calls[n] + retry_ms, "retried before its delay: calls {calls:?}, delays {delays:?}");
        }
    }
}
