//! Nothing is lost when a browser worker dies mid-job: its leases expire, the slices are queued
//! again, another worker finishes them, and every slice is accepted exactly once.

use std::time::{Duration, Instant};

use serde_json::json;
use tessera_e2e::{json_lines, text, Scheduler};

#[test]
fn a_killed_browser_worker_loses_no_slices() {
    let scheduler = Scheduler::start_with(&["--lease-ttl-ms", "3000"]);
    let program =
        scheduler.file("slow.js", "async (x) => { await new Promise((r) => setTimeout(r, 25)); return x * 3; }");
    let deployed = scheduler.tessera(&["deploy", &program, "--range", "0:300"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    let job_id = String::from_utf8_lossy(&deployed.stdout).trim().to_string();

    // The first worker gets part of the way, then its browser is killed (no chance to return leases).
    let first = scheduler.worker(1);
    let started = Instant::now();
    while scheduler.status(&job_id)["done"].as_u64().unwrap_or(0) < 40 {
        assert!(started.elapsed() < Duration::from_secs(60), "the first worker made no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    let interrupted = std::process::Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let first = first.wait_with_output().unwrap();
    let status = scheduler.status(&job_id);
    assert!(status["done"].as_u64().unwrap() < 300, "the job was interrupted: {status}\n{}", text(&first));

    // A second worker finishes the job, including the slices the dead one held.
    let second = scheduler.worker(2).wait_with_output().unwrap();
    assert!(second.status.success(), "{}", text(&second));
    let status = scheduler.status(&job_id);
    assert_eq!((status["state"].as_str(), status["done"].as_u64()), (Some("complete"), Some(300)), "{status}");
    let results = json_lines(&scheduler.tessera(&["results", "--json", &job_id]).stdout);
    assert_eq!(results.len(), 300);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result, &json!({"slice": index, "status": "ok", "value": index * 3}));
    }
}
