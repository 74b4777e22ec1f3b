//! Worker faults: a browser worker that dies mid-job, a sandbox that runs out of memory, a worker
//! whose Python runtime cannot load. Each costs the slices it touched at most one attempt per
//! fault, never the job, and every slice is still accepted exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::{json_lines, wait_until, Scheduler};

/// Outcomes that cost a slice an attempt without being its result.
const FAULTS: [&str; 3] = ["worker_fault", "expired", "timed_out"];

#[test]
fn a_killed_browser_worker_loses_no_slices() {
    let scheduler = Scheduler::start_with(&["--lease-ttl-ms", "3000"]);
    let program =
        scheduler.file("slow.js", "async (x) => { await new Promise((r) => setTimeout(r, 25)); return x * 3; }");
    let job_id = scheduler.deploy(&[&program, "--range", "0:300"]);

    // The first worker gets part of the way, then is interrupted (its leases are not returned
    // by a result; they expire or are released).
    let mut first = scheduler.worker_with(1, &["--exit-when-idle", "--idle-ms", "4000"]);
    scheduler.wait_for_done(&job_id, 40, Duration::from_secs(60));
    first.signal(libc::SIGINT);
    first.wait_exit(Duration::from_secs(20));
    let status = scheduler.status(&job_id);
    assert!(status["done"].as_u64().unwrap() < 300, "the job was interrupted: {status}\n{}", first.output());

    // A second worker finishes the job, including the slices the first one held.
    let mut second = scheduler.worker_with(2, &["--exit-when-idle", "--idle-ms", "4000"]);
    let exit = second.wait_exit(Duration::from_secs(120));
    assert!(exit.success(), "{exit}\n{}", second.output());
    let status = scheduler.status(&job_id);
    assert_eq!((status["state"].as_str(), status["done"].as_u64()), (Some("complete"), Some(300)), "{status}");
    let results = json_lines(&scheduler.tessera(&["results", "--json", &job_id]).stdout);
    assert_eq!(results.len(), 300);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result, &json!({"slice": index, "status": "ok", "value": index * 3}));
    }
    scheduler.store().assert_accepted_exactly_once(&job_id, 300);
}

const NUMPY_WORK: &str = r#"
import time

import dcp
import numpy as np

def handler(x):
    a = np.random.default_rng(x).random((48, 48))
    end = time.perf_counter() + 0.03
    while time.perf_counter() < end:
        a = (a @ a.T) / 48.0
    return {"x": x, "sum": int(np.arange(x + 1).sum())}

dcp.set_slice_handler(handler)
"#;

#[test]
fn a_worker_killed_mid_python_job_costs_each_slice_one_attempt_per_fault() {
    const TOTAL: u64 = 500;
    let scheduler = Scheduler::start_with(&["--lease-ttl-ms", "4000"]);
    let program = scheduler.file("numpy_work.py", NUMPY_WORK);
    let job_id = scheduler.deploy(&["--worktime", "pyodide", &program, "--range", &format!("0:{TOTAL}")]);
    let mut workers: Vec<_> = (0..3).map(|_| scheduler.worker_with(1, &["--log-slices"])).collect();
    scheduler.wait_for_done(&job_id, 100, Duration::from_secs(180));

    // The victim: a worker that has run slices of the job. Its worker id is the one on the
    // leases of the slices it started.
    let victim = wait_until(
        Duration::from_secs(30),
        || "a worker that started slices".into(),
        || workers.iter().position(|worker| worker.events().iter().any(|event| event.kind == "slice-start")),
    );
    let victim_id = {
        let store = scheduler.store();
        let leases = store.leases_by_slice(&job_id);
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for event in workers[victim].events().iter().filter(|event| event.kind == "slice-start") {
            assert_eq!(event.get("job"), job_id, "{}", event.text);
            let slice = event.number("slice").expect("slice number");
            for lease in leases.get(&slice).into_iter().flatten() {
                *votes.entry(lease.worker_id.clone()).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, count)| *count).expect("the victim's leases are in the store").0
    };
    // Kill it (launcher and browser, SIGKILL) while it holds leases.
    wait_until(
        Duration::from_secs(30),
        || format!("worker {victim_id} to hold an active lease"),
        || {
            let store = scheduler.store();
            store.leases(&job_id).iter().any(|l| l.worker_id == victim_id && l.state == "active").then_some(())
        },
    );
    workers[victim].kill_hard();
    let held: Vec<String> = scheduler
        .store()
        .leases(&job_id)
        .into_iter()
        .filter(|lease| lease.worker_id == victim_id && lease.state == "active")
        .map(|lease| lease.id)
        .collect();
    let status = scheduler.status(&job_id);
    assert!(status["done"].as_u64().unwrap() < TOTAL, "the job was still running at the kill: {status}");

    let status = scheduler.wait_for_state(&job_id, "complete", Duration::from_secs(240));
    assert_eq!(status["done"], TOTAL, "{status}");
    for result in scheduler.results(&job_id) {
        let x = result["slice"].as_u64().unwrap();
        assert_eq!(result, json!({"slice": x, "status": "ok", "value": {"x": x, "sum": x * (x + 1) / 2}}));
    }

    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, TOTAL);
    let leases = store.leases_by_slice(&job_id);
    let by_id: BTreeMap<&str, &tessera_e2e::LeaseRow> =
        leases.values().flatten().map(|lease| (lease.id.as_str(), lease)).collect();
    assert!(!held.is_empty(), "the victim held leases when it was killed");
    for id in &held {
        let lease = by_id[id.as_str()];
        assert!(
            lease.outcome == "expired" || lease.outcome == "worker_fault",
            "a lease the killed worker held ended as a fault: {lease:?}"
        );
    }
    let mut faulted = Vec::new();
    for slice in store.slices(&job_id) {
        let history = &leases[&slice.slice];
        let faults = history.iter().filter(|lease| FAULTS.contains(&lease.outcome.as_str())).count() as i64;
        assert_eq!(
            slice.attempts,
            1 + faults,
            "slice {} used one attempt per fault; its leases: {history:#?}",
            slice.slice
        );
        assert!(history.iter().all(|lease| lease.state != "active"), "no lease left active: {history:#?}");
        if faults > 0 {
            faulted.push(slice.slice);
        }
    }
    // The CLI's history tells the same story for the slices that suffered a fault.
    for slice in faulted.iter().take(5) {
        let history = scheduler.slice_history(&job_id, *slice);
        let stored = &leases[slice];
        assert_eq!(history["attempts"].as_array().map(Vec::len), Some(stored.len()), "{history}");
        let faults = stored.iter().filter(|lease| FAULTS.contains(&lease.outcome.as_str())).count() as u64;
        assert_eq!(history["attempts_counted"], 1 + faults, "{history}");
        let outcomes: Vec<&str> =
            history["attempts"].as_array().unwrap().iter().filter_map(|a| a["outcome"].as_str()).collect();
        assert!(outcomes.contains(&"ok") && outcomes.iter().any(|o| FAULTS.contains(o)), "{history}");
    }
}

#[test]
fn a_sandbox_that_runs_out_of_memory_is_replaced_and_only_its_slice_fails() {
    let scheduler = Scheduler::start_with(&["--max-attempts", "2"]);
    let program = scheduler.file(
        "hog.py",
        "import dcp\n\ndef handler(x):\n    if x == 7:\n        hog = []\n        while True:\n            hog.append(bytearray(200_000_000))\n    return x + 1\n\ndcp.set_slice_handler(handler)\n",
    );
    let job_id = scheduler.deploy(&["--worktime", "pyodide", &program, "--range", "0:20"]);
    let worker = scheduler.worker_with(2, &["--log-slices"]);
    let status = scheduler.wait_for_state(&job_id, "complete_with_errors", Duration::from_secs(240));
    let counts = ["queued", "leased", "errors"].map(|key| status[key].as_u64());
    assert_eq!(counts, [Some(0), Some(0), Some(1)], "every slice finished, one in error: {status}");

    let results = scheduler.results(&job_id);
    assert_eq!(results.len(), 20);
    for result in &results {
        let x = result["slice"].as_u64().unwrap();
        if x == 7 {
            assert_eq!(result["status"], "error", "the hog's failure is reported: {result}");
        } else {
            assert_eq!(result, &json!({"slice": x, "status": "ok", "value": x + 1}));
        }
    }
    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, 20);
    let hog_leases = &store.leases_by_slice(&job_id)[&7];
    assert!(
        hog_leases.iter().all(|lease| lease.outcome != "job_error"),
        "a dying sandbox is no program error: {hog_leases:#?}"
    );

    // The sandbox that ran the hog was removed (and the job went on in a new one).
    let events = worker.events();
    let hog_sandboxes: BTreeSet<(usize, String)> = events
        .iter()
        .filter(|e| e.kind == "slice-start" && e.get("job") == job_id && e.number("slice") == Some(7))
        .map(|e| (e.index, e.get("sandbox").to_string()))
        .collect();
    assert!(!hog_sandboxes.is_empty(), "the worker logged the hog's start\n{}", worker.output());
    let removed = hog_sandboxes.iter().any(|(start, sandbox)| {
        events.iter().any(|e| e.kind == "sandbox-removed" && e.index > *start && e.get("sandbox") == sandbox)
    });
    assert!(removed, "the sandbox that ran out of memory was removed\n{}", worker.output());
}

#[test]
fn a_worker_whose_python_runtime_fails_to_load_faults_without_failing_the_job() {
    const TOTAL: u64 = 200;
    let scheduler = Scheduler::start_with(&["--lease-ttl-ms", "6000"]);
    let program = scheduler
        .file("triple.py", "import dcp\nimport numpy as np\n\ndcp.set_slice_handler(lambda x: int(np.int64(x) * 3))\n");
    let job_id = scheduler.deploy(&["--worktime", "pyodide", &program, "--range", &format!("0:{TOTAL}")]);

    // The broken worker comes first and takes slices it cannot run.
    let broken = scheduler.worker_with(1, &["--log-slices", "--page-param", "pyodideUrl=http://127.0.0.1:1/"]);
    let broken_id = wait_until(
        Duration::from_secs(90),
        || format!("a worker_fault from the broken worker\n{}\n{}", broken.output(), scheduler.log()),
        || {
            let leases = scheduler.store().leases(&job_id);
            if let Some(lease) = leases.iter().find(|lease| lease.outcome == "job_error") {
                panic!("a runtime that cannot load is no program error: {lease:?}\n{}", broken.output());
            }
            leases.into_iter().find(|lease| lease.outcome == "worker_fault").map(|lease| lease.worker_id)
        },
    );
    let good = scheduler.worker_with(1, &["--log-slices"]);
    let status = scheduler.wait_for_state(&job_id, "complete", Duration::from_secs(240));
    assert_eq!(status["done"], TOTAL, "{status}\n{}\n{}", broken.output(), good.output());
    for result in scheduler.results(&job_id) {
        let x = result["slice"].as_u64().unwrap();
        assert_eq!(result, json!({"slice": x, "status": "ok", "value": x * 3}));
    }

    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, TOTAL);
    let leases = store.leases(&job_id);
    let job_errors: Vec<_> = leases.iter().filter(|lease| lease.outcome == "job_error").collect();
    assert!(job_errors.is_empty(), "no attempt ended as a program error: {job_errors:#?}");
    let broken_leases: Vec<_> = leases.iter().filter(|lease| lease.worker_id == broken_id).collect();
    assert!(
        broken_leases.iter().all(|lease| ["worker_fault", "released", "expired"].contains(&lease.outcome.as_str())),
        "the broken worker accepted nothing and faulted what it took: {broken_leases:#?}"
    );
    let workers_with_results: BTreeSet<&str> =
        leases.iter().filter(|lease| lease.outcome == "ok").map(|lease| lease.worker_id.as_str()).collect();
    assert!(!workers_with_results.contains(broken_id.as_str()), "{workers_with_results:?}");
    let faulted = broken_leases.iter().find(|lease| lease.outcome == "worker_fault").expect("a fault");
    let history: Value = scheduler.slice_history(&job_id, faulted.slice);
    let outcomes: Vec<&str> =
        history["attempts"].as_array().expect("attempts").iter().filter_map(|a| a["outcome"].as_str()).collect();
    assert!(outcomes.contains(&"worker_fault") && !outcomes.contains(&"job_error"), "{history}");
    assert!(!broken.output().contains("outcome=job_error"), "{}", broken.output());
}
