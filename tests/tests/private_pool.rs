//! A private pool (`tessera serve --worker-key`): the real browser worker registers with the key
//! given to `tessera worker --worker-key` and runs jobs; a worker without it is refused, says so,
//! and runs nothing.

use std::time::Duration;

use serde_json::json;
use tessera_e2e::{wait_until, Scheduler};

#[test]
fn only_workers_with_the_pool_key_run_its_jobs() {
    let scheduler = Scheduler::start_with(&["--worker-key", "pool-secret"]);
    let stranger = scheduler.worker_with(1, &[]);
    wait_until(
        Duration::from_secs(60),
        || format!("the keyless worker was not refused: {}", stranger.output()),
        || stranger.lines().iter().any(|line| line.text.contains("refused a register request")).then_some(()),
    );
    assert!(stranger.output().contains("worker_key"), "the refusal names the key: {}", stranger.output());

    let program = scheduler.file("double.js", "(x) => x * 2");
    let job = scheduler.deploy(&[&program, "--range", "0:10"]);
    let member = scheduler.worker_with(1, &["--worker-key", "pool-secret"]);
    scheduler.wait_for_state(&job, "complete", Duration::from_secs(60));
    let values: Vec<_> = scheduler.results(&job).iter().map(|result| result["value"].clone()).collect();
    assert_eq!(values, (0..10).map(|x| json!(x * 2)).collect::<Vec<_>>());
    let ran = |worker: &tessera_e2e::Worker| worker.lines().iter().filter(|line| line.text.contains("leased")).count();
    assert_eq!(ran(&stranger), 0, "the keyless worker leased nothing: {}", stranger.output());
    assert!(ran(&member) > 0, "{}", member.output());
}
