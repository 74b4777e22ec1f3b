//! A worker with more sandboxes than the machine has cores gets through a job of thousands of
//! tiny slices, and once the work is gone it idles quietly: it waits on the scheduler's long-poll
//! instead of spinning up wake-ups (an old bug started another 250 ms wake-up chain for each
//! failed request, so an idle worker's CPU use grew with every failure).

use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::{tree_cpu_share, Scheduler};

const SLICES: u64 = 5_000;

#[test]
fn an_oversubscribed_worker_finishes_5000_tiny_slices_then_idles_quietly() {
    let scheduler = Scheduler::start();
    // ~1 ms of busy work per slice.
    let program = scheduler.file(
        "busy.js",
        "(x) => { const end = Date.now() + 1; let n = 0; while (Date.now() < end) { n++; } return x * 2; }",
    );
    let job_id = scheduler.deploy(&[&program, "--range", &format!("0:{SLICES}"), "--name", "tiny"]);
    // Eight sandboxes on a two-core machine; it stays up after the job (no --exit-when-idle).
    let mut worker = scheduler.worker_with(8, &[]);
    let status = scheduler.wait_for_state(&job_id, "complete", Duration::from_secs(180));
    assert_eq!(status["done"], SLICES, "{status}");

    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, SLICES);
    for slice in store.slices(&job_id) {
        assert_eq!(slice.state, "ok", "{slice:?}");
        let value: Option<Value> = slice.result.as_deref().and_then(|text| serde_json::from_str(text).ok());
        assert_eq!(value, Some(json!(slice.slice * 2)), "{slice:?}");
    }

    // Let the last results, acknowledgements and sandbox clean-ups settle, then measure.
    std::thread::sleep(Duration::from_secs(3));
    assert!(worker.is_running(), "the worker stays up while idle\n{}", worker.output());
    let tree = worker.process_tree();
    assert!(tree.len() > 1, "the worker's browser runs under it: {tree:?}");
    let (share, detail) = tree_cpu_share(worker.pid(), Duration::from_secs(5));
    println!("idle worker CPU: {:.1} % of one core ({detail})", share * 100.0);
    assert!(
        share < 0.15,
        "an idle worker (launcher + Chromium) used {:.1} % of one core over 5 s; expected under 15 %\n{detail}\n{}",
        share * 100.0,
        worker.output()
    );
}
