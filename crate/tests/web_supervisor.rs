//! The supervisor in a real browser against a live scheduler on loopback
//! (`scripts/with-scheduler` starts one and passes its URL and API key at build time). The test
//! page is on another origin than the scheduler, so that scheduler lets any origin call its
//! deployer endpoints (`--deployer-origin '*'`); the key is still needed.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use gloo_net::http::Request;
use serde_json::{json, Value};
use tessera_worker::supervisor::{Supervisor, SupervisorConfig, WorkerEvent};
use tessera_worker::web::clock::BrowserClock;
use tessera_worker::web::http::HttpSchedulerClient;
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use wasm_bindgen_test::*;

mod common;
use common::{api_key, scheduler};

wasm_bindgen_test_configure!(run_in_browser);

/// The deployer's `Authorization` header.
fn authorization() -> String {
    format!("Bearer {}", api_key())
}

async fn post(path: &str, body: Value) -> Value {
    let response = Request::post(&format!("{}{path}", scheduler()))
        .header("authorization", &authorization())
        .json(&body)
        .unwrap()
        .send()
        .await
        .unwrap();
    assert!(response.ok(), "POST {path}: {}", response.status());
    response.json().await.unwrap()
}

/// Runs a supervisor with `sandboxes` against the live scheduler until it has been idle 1.5 s;
/// returns every event it emitted.
async fn run_until_idle(sandboxes: usize) -> Vec<WorkerEvent> {
    run_until_idle_timed(sandboxes).await.into_iter().map(|(_, event)| event).collect()
}

/// As [`run_until_idle`], each event with the time it came (`performance.now()`, ms).
async fn run_until_idle_timed(sandboxes: usize) -> Vec<(f64, WorkerEvent)> {
    let events = Rc::new(RefCell::new(Vec::new()));
    let log = events.clone();
    let mut config = SupervisorConfig::with_sandboxes(sandboxes);
    config.idle_exit_ms = Some(1_500);
    let supervisor = Supervisor::new(
        HttpSchedulerClient::new(scheduler()),
        IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap(),
        BrowserClock::new(),
        config,
        Rc::new(move |event: &WorkerEvent| log.borrow_mut().push((now_ms(), event.clone()))),
    );
    assert_eq!(supervisor.run().await, "idle");
    let events = events.borrow().clone();
    events
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|window| window.performance()).map_or(0.0, |performance| performance.now())
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_slice_queued_behind_another_is_timed_from_when_it_starts_not_when_it_was_sent() {
    // One sandbox, slices of ≈ 150 ms, pipelined two deep: each slice waits for the one before
    // it inside the sandbox. The time a slice is credited for must not include that wait, so the
    // slices' times add up to no more than the span they ran in.
    let program = "(x) => { const end = Date.now() + 150; while (Date.now() < end) {} return x; }";
    post("/v1/jobs", json!({"program": program, "range": {"start": 0, "end": 16}})).await;
    let events = run_until_idle_timed(1).await;
    let first_start = events.iter().find(|(_, e)| matches!(e, WorkerEvent::SliceStarted { .. })).unwrap().0;
    let last_end = events.iter().rev().find(|(_, e)| matches!(e, WorkerEvent::SliceFinished { .. })).unwrap().0;
    let credited: u64 = events
        .iter()
        .filter_map(|(_, e)| match e {
            WorkerEvent::SliceFinished { ms, outcome: "ok", .. } => Some(*ms),
            _ => None,
        })
        .sum();
    let span = last_end - first_start;
    assert!(credited >= 16 * 150, "every slice ran its 150 ms: {credited} ms");
    assert!((credited as f64) <= span + 50.0, "{credited} ms credited for {span:.0} ms of one sandbox's time");
}

async fn get(path: &str) -> Value {
    let response =
        Request::get(&format!("{}{path}", scheduler())).header("authorization", &authorization()).send().await.unwrap();
    assert!(response.ok(), "GET {path}: {}", response.status());
    response.json().await.unwrap()
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn leases_runs_and_submits_a_whole_job() {
    let deployed =
        post("/v1/jobs", json!({"program": "(x, k) => x + k", "range": {"start": 0, "end": 40}, "arguments": [100]}))
            .await;
    let job_id = deployed["job_id"].as_str().unwrap().to_string();

    let events = run_until_idle(2).await;

    let status = get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["done"], 40);
    let page = get(&format!("/v1/jobs/{job_id}/results")).await;
    for (index, record) in page["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(record["value"], json!(index as i64 + 100));
    }
    let created = events.iter().filter(|e| matches!(e, WorkerEvent::SandboxCreated { .. })).count();
    assert!(created <= 2, "sandboxes stayed warm across 40 slices: {created} created");
    assert!(
        events.iter().any(|e| matches!(e, WorkerEvent::Submitted { accepted, .. } if *accepted > 1)),
        "results went in batches"
    );
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_python_job_completes_on_four_sandboxes() {
    // Each slice takes a little while, so every sandbox that comes up finds work to take.
    let program = "import time, dcp\n\ndef handler(x):\n    end = time.time() + 0.2\n    while time.time() < end:\n        pass\n    return x * x\n\ndcp.set_slice_handler(handler)\n";
    let deployed =
        post("/v1/jobs", json!({"worktime": "pyodide", "program": program, "range": {"start": 0, "end": 24}})).await;
    let job_id = deployed["job_id"].as_str().unwrap().to_string();

    let events = run_until_idle(4).await;

    let status = get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(status["state"], "complete", "{status}");
    let page = get(&format!("/v1/jobs/{job_id}/results")).await;
    for (index, record) in page["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(record["value"], json!(index * index));
    }
    let finished: Vec<_> = events
        .iter()
        .filter_map(|event| match event {
            WorkerEvent::SliceFinished { sandbox, outcome, .. } => Some((*sandbox, *outcome)),
            _ => None,
        })
        .collect();
    assert!(finished.iter().all(|(_, outcome)| *outcome == "ok"), "{events:?}");
    let mut used: Vec<usize> = finished.iter().map(|(sandbox, _)| *sandbox).collect();
    used.sort();
    used.dedup();
    assert_eq!(used.len(), 4, "all four sandboxes came up and ran slices: {events:?}");
    let failed = events.iter().any(|event| {
        matches!(event, WorkerEvent::SandboxRemoved { reason, .. } if reason != "its job ended" && reason != "idle")
    });
    assert!(!failed, "no sandbox failed or was replaced: {events:?}");
}
