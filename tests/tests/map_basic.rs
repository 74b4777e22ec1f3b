//! map-basic jobs end to end: `tessera serve` + `tessera deploy` + `tessera worker` (headless Chromium).

use serde_json::json;
use tessera_e2e::{text, Scheduler};

#[test]
fn a_thousand_slices_return_every_result_once_in_order() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("work.js", "async (x, k) => { progress(0.5); return { x, y: x * k }; }");
    let (results, deployed, worker) =
        scheduler.run_job(2, &[&program, "--range", "0:1000", "--arg", "7", "--name", "thousand"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    assert!(worker.status.success(), "{}", text(&worker));
    assert_eq!(results.len(), 1000, "{}", text(&deployed));
    for (index, result) in results.iter().enumerate() {
        let i = index as i64;
        assert_eq!(result, &json!({"slice": i, "status": "ok", "value": {"x": i, "y": i * 7}}));
    }
    assert!(String::from_utf8_lossy(&worker.stdout).contains("exit: idle; 1000 done, 0 errors"), "{}", text(&worker));
}

#[test]
fn thrown_errors_are_reported_and_other_slices_succeed() {
    let scheduler = Scheduler::start();
    let program =
        scheduler.file("throws.js", "(x) => { if (x % 10 === 3) throw new Error('unlucky ' + x); return x * x; }");
    let slices = scheduler.file("slices.json", &serde_json::to_string(&(0..50).collect::<Vec<_>>()).unwrap());
    let (results, deployed, _) = scheduler.run_job(1, &[&program, "--slices", &slices]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    assert_eq!(results.len(), 50);
    for result in &results {
        let x = result["slice"].as_i64().unwrap();
        if x % 10 == 3 {
            assert_eq!(result["status"], "error");
            assert_eq!(result["error"], format!("unlucky {x}"));
            assert!(result["stack"].as_str().unwrap().contains("unlucky"), "stack carried: {result}");
        } else {
            assert_eq!(result, &json!({"slice": x, "status": "ok", "value": x * x}));
        }
    }
}

#[test]
fn bad_deploys_are_one_readable_line_and_a_nonzero_exit() {
    let scheduler = Scheduler::start();
    let empty = scheduler.file("empty.js", "   ");
    let output = scheduler.tessera(&["deploy", &empty, "--range", "0:3"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("program"), "{stderr}");

    let program = scheduler.file("ok.js", "(x) => x");
    let not_array = scheduler.file("object.json", "{\"a\": 1}");
    let output = scheduler.tessera(&["deploy", &program, "--slices", &not_array]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JSON array"), "{}", text(&output));

    let output = scheduler.tessera(&["deploy", &program, "--range", "0:3", "--worktime", "lua"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("map-basic"), "{}", text(&output));

    let output = scheduler.tessera(&["results", "jdoesnotexist"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"), "{}", text(&output));
}

#[test]
fn a_worker_whose_browser_cannot_start_exits_nonzero() {
    let scheduler = Scheduler::start();
    let output = scheduler.tessera(&["worker", "--chromium", "/nonexistent/chromium", "--exit-when-idle"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot start /nonexistent/chromium"), "{stderr}");
    let output = scheduler.tessera(&["worker", "--chromium", "/bin/false", "--exit-when-idle"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Chromium exited unexpectedly"), "{}", text(&output));
}
