//! The slice watchdog: a Python slice that never returns is interrupted at its time limit
//! (KeyboardInterrupt through Pyodide's interrupt buffer; the page is cross-origin isolated), its
//! sandbox is kept, and after `--max-attempts` the slice is reported timed out while the rest of
//! the job succeeds.

use std::time::Duration;

use serde_json::json;
use tessera_e2e::Scheduler;

const LIMIT_MS: u64 = 3_000;

const SPINNER: &str = r#"
import time

import dcp

def handler(x):
    if x == 3:
        while True:
            pass
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        pass
    return x * 10

dcp.set_slice_handler(handler)
"#;

#[test]
fn an_endless_python_slice_is_interrupted_at_its_limit_and_reported_timed_out() {
    const TOTAL: u64 = 30;
    let scheduler = Scheduler::start_with(&["--max-attempts", "2"]);
    let program = scheduler.file("spin.py", SPINNER);
    let job_id = scheduler.deploy(&[
        "--worktime",
        "pyodide",
        &program,
        "--range",
        &format!("0:{TOTAL}"),
        "--slice-timeout",
        "3s",
    ]);
    let worker = scheduler.worker_with(2, &["--log-slices"]);
    let status = scheduler.wait_for_state(&job_id, "complete_with_errors", Duration::from_secs(180));
    let counts = ["queued", "leased", "errors"].map(|key| status[key].as_u64());
    assert_eq!(counts, [Some(0), Some(0), Some(1)], "every slice finished, one in error: {status}");

    // Results: the spinner timed out, everything else is right.
    for result in scheduler.results(&job_id) {
        let x = result["slice"].as_u64().unwrap();
        if x == 3 {
            assert_eq!(result["status"], "error", "{result}");
            assert!(result["error"].as_str().unwrap_or("").contains("timed out"), "the error says so: {result}");
        } else {
            assert_eq!(result, json!({"slice": x, "status": "ok", "value": x * 10}));
        }
    }

    // Store: two attempts, both timed out; every other slice accepted exactly once.
    let store = scheduler.store();
    let leases = store.leases_by_slice(&job_id);
    let spinner = &leases[&3];
    assert_eq!(spinner.len(), 2, "two attempts at the spinner: {spinner:#?}");
    assert!(spinner.iter().all(|lease| lease.outcome == "timed_out" && lease.state != "active"), "{spinner:#?}");
    for slice in store.slices(&job_id) {
        if slice.slice == 3 {
            assert_eq!((slice.state.as_str(), slice.attempts), ("error", 2), "{slice:?}");
            continue;
        }
        assert_eq!(slice.state, "ok", "{slice:?}");
        let accepted = leases[&slice.slice].iter().filter(|lease| lease.outcome == "ok").count();
        assert_eq!(accepted, 1, "slice {} accepted once: {:#?}", slice.slice, leases[&slice.slice]);
    }

    // The worker's own account: each attempt stopped within limit + 2 s, by an interrupt, and its
    // sandbox was kept rather than replaced.
    let events = worker.events();
    let starts: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "slice-start" && e.get("job") == job_id && e.number("slice") == Some(3))
        .collect();
    assert_eq!(starts.len(), 2, "both attempts ran on this worker\n{}", worker.output());
    for start in starts {
        let sandbox = start.get("sandbox");
        let is_this = |e: &&tessera_e2e::PageEvent| {
            e.index > start.index
                && e.get("job") == job_id
                && e.number("slice") == Some(3)
                && e.get("sandbox") == sandbox
        };
        let end = events
            .iter()
            .filter(is_this)
            .find(|e| e.kind == "slice-end")
            .unwrap_or_else(|| panic!("a slice-end for {}\n{}", start.text, worker.output()));
        assert_eq!(end.get("outcome"), "timedOut", "{}", end.text);
        let ms = end.number("ms").unwrap_or_else(|| panic!("ms in {}", end.text));
        assert!(ms <= LIMIT_MS + 2_000, "stopped within its limit + 2 s, took {ms} ms: {}", end.text);
        let interrupted = events.iter().filter(is_this).any(|e| e.kind == "interrupted" && e.index < end.index);
        assert!(interrupted, "the worker interrupted sandbox {sandbox} for it\n{}", worker.output());
        let replaced = events.iter().find(|e| {
            e.kind == "sandbox-removed"
                && e.get("sandbox") == sandbox
                && e.index > start.index
                && (e.index < end.index || e.at.duration_since(end.at) < Duration::from_secs(1))
        });
        assert!(
            replaced.is_none(),
            "the interrupted sandbox was kept, not replaced: {replaced:?}\n{}",
            worker.output()
        );
    }
}
