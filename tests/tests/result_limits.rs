//! A result over the scheduler's `--max-result-bytes` becomes that slice's error; the other
//! results travelling with it are accepted.

use std::time::Duration;

use serde_json::json;
use tessera_e2e::Scheduler;

#[test]
fn an_oversized_result_errors_its_slice_and_spares_its_batch() {
    const TOTAL: u64 = 200;
    const BIG: u64 = 50;
    let scheduler = Scheduler::start_with(&["--max-result-bytes", "100000"]);
    let program = scheduler.file("big.js", &format!("(x) => x === {BIG} ? 'x'.repeat(300000) : x * 2"));
    let job_id = scheduler.deploy(&[&program, "--range", &format!("0:{TOTAL}")]);
    // One sandbox: results of neighbouring slices share submit batches with the big one.
    let worker = scheduler.worker_with(1, &[]);
    let status = scheduler.wait_for_state(&job_id, "complete_with_errors", Duration::from_secs(90));
    let counts = ["queued", "leased", "errors"].map(|key| status[key].as_u64());
    assert_eq!(counts, [Some(0), Some(0), Some(1)], "every slice finished, one in error: {status}");

    for result in scheduler.results(&job_id) {
        let x = result["slice"].as_u64().unwrap();
        if x == BIG {
            assert_eq!(result["status"], "error", "{result:.200}");
            let error = result["error"].as_str().unwrap_or("");
            assert!(
                ["100000", "100,000", "100 000", "100 kB", "97.7 KiB"].iter().any(|limit| error.contains(limit)),
                "the error names the limit: {error:.300}"
            );
        } else {
            assert_eq!(result, json!({"slice": x, "status": "ok", "value": x * 2}));
        }
    }

    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, TOTAL);
    let big = &store.slices(&job_id)[BIG as usize];
    assert_eq!(big.state, "error", "{big:.300?}");
    assert!(big.result.as_deref().unwrap_or("").len() < 100_000, "the oversized value was not stored");
    assert!(big.error.as_deref().unwrap_or("").len() < 10_000, "the error is a sentence, not the value");
    drop(worker);
}
