//! The scheduler dies (`kill -9`) mid-job and comes back on the same database and port: workers
//! reconnect, the work they held is not wasted (no lease expires across the restart, results
//! finished during the outage are delivered), nothing is lost and nothing accepted twice.
//!
//! The kill comes when no slice is queued: a lease request in flight at that moment can then not
//! have been granted slices whose answer the kill swallowed (such a lease would rightly expire).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_e2e::{now_ms, wait_until, Scheduler};

#[test]
fn a_scheduler_killed_mid_job_restarts_on_the_same_db_and_port_without_loss_or_waste() {
    const TOTAL: u64 = 60;
    // A lease lifetime (8 s) shorter than the outage plus the workers' reconnect backoff: only
    // the restart's extension of active leases keeps the held work from expiring.
    let mut scheduler = Scheduler::start_with(&["--lease-ttl-ms", "8000"]);
    let program =
        scheduler.file("nap.js", "async (x) => { await new Promise((r) => setTimeout(r, 500)); return x * 5; }");
    let job_id = scheduler.deploy(&[&program, "--range", &format!("0:{TOTAL}")]);
    let workers = [scheduler.worker_with(2, &[]), scheduler.worker_with(2, &[])];
    wait_for_all_leased(&scheduler, &job_id, 4);

    scheduler.kill();
    let killed_ms = now_ms();
    let held = scheduler.store().active_lease_ids(&job_id);
    assert!(!held.is_empty(), "work was in progress at the kill");
    std::thread::sleep(Duration::from_secs(5));
    scheduler.start_again();
    let when = format!("killed at {killed_ms} ms, restarted at {} ms", now_ms());

    let status = scheduler.wait_for_state(&job_id, "complete", Duration::from_secs(120));
    assert_eq!(status["done"], TOTAL, "{status}");
    for result in scheduler.results(&job_id) {
        let x = result["slice"].as_u64().unwrap();
        assert_eq!(result, json!({"slice": x, "status": "ok", "value": x * 5}));
    }
    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, TOTAL);
    let leases = store.leases(&job_id);
    let expired: Vec<_> = leases.iter().filter(|lease| lease.outcome == "expired").collect();
    assert!(expired.is_empty(), "no lease expired across the restart ({when}): {expired:#?}");
    let wasted: Vec<_> = leases.iter().filter(|lease| held.contains(&lease.id) && lease.outcome != "ok").collect();
    assert!(wasted.is_empty(), "every lease held at the kill ended with its result ({when}): {wasted:#?}");
    drop(workers);
}

#[test]
fn results_finished_while_the_scheduler_is_down_for_30_s_are_delivered_after_its_restart() {
    const TOTAL: u64 = 24;
    // The default lease lifetime (30 s) is shorter than the outage plus reconnect backoff.
    let mut scheduler = Scheduler::start();
    let program =
        scheduler.file("nap.js", "async (x) => { await new Promise((r) => setTimeout(r, 1500)); return x + 1000; }");
    let job_id = scheduler.deploy(&[&program, "--range", &format!("0:{TOTAL}")]);
    let worker = scheduler.worker_with(2, &["--log-slices"]);
    wait_for_all_leased(&scheduler, &job_id, 2);

    scheduler.kill();
    let killed_at = Instant::now();
    let killed_ms = now_ms();
    let held = scheduler.store().active_lease_ids(&job_id);
    assert!(!held.is_empty(), "the worker held leases at the kill");
    std::thread::sleep(Duration::from_secs(30));
    let restarted_at = Instant::now();
    scheduler.start_again();
    let when = format!("killed at {killed_ms} ms, restarted at {} ms", now_ms());

    let status = scheduler.wait_for_state(&job_id, "complete", Duration::from_secs(120));
    assert_eq!(status["done"], TOTAL, "{status}");
    for result in scheduler.results(&job_id) {
        let x = result["slice"].as_u64().unwrap();
        assert_eq!(result, json!({"slice": x, "status": "ok", "value": x + 1000}));
    }

    // The worker finished slices during the outage and held their results.
    let finished_in_outage: BTreeSet<u64> = worker
        .events()
        .into_iter()
        .filter(|e| {
            e.kind == "slice-end"
                && e.get("job") == job_id
                && e.get("outcome") == "ok"
                && e.at > killed_at
                && e.at < restarted_at
        })
        .filter_map(|e| e.number("slice"))
        .collect();
    assert!(!finished_in_outage.is_empty(), "slices finished during the outage\n{}", worker.output());

    let store = scheduler.store();
    store.assert_accepted_exactly_once(&job_id, TOTAL);
    let by_slice = store.leases_by_slice(&job_id);
    for slice in &finished_in_outage {
        let history = &by_slice[slice];
        assert_eq!(history.len(), 1, "slice {slice}, finished in the outage, was not run again: {history:#?}");
        assert!(
            held.contains(&history[0].id) && history[0].outcome == "ok",
            "its held result was delivered: {history:#?}"
        );
    }
    let leases: Vec<_> = by_slice.values().flatten().collect();
    let expired: Vec<_> = leases.iter().filter(|lease| lease.outcome == "expired").collect();
    assert!(expired.is_empty(), "no lease expired across the outage ({when}): {expired:#?}");
    let wasted: Vec<_> = leases.iter().filter(|lease| held.contains(&lease.id) && lease.outcome != "ok").collect();
    assert!(wasted.is_empty(), "every lease held at the kill ended with its result ({when}): {wasted:#?}");
}

/// Waits until `done` slices have results and every other slice is leased (none queued).
fn wait_for_all_leased(scheduler: &Scheduler, job_id: &str, done: u64) {
    let last = std::sync::Mutex::new(serde_json::Value::Null);
    wait_until(
        Duration::from_secs(120),
        || format!("{done} slices done and none queued; last status {}\n{}", last.lock().unwrap(), scheduler.log()),
        || {
            let status = scheduler.status(job_id);
            let ready = status["done"].as_u64() >= Some(done)
                && status["queued"].as_u64() == Some(0)
                && status["leased"].as_u64() > Some(0);
            *last.lock().unwrap() = status;
            ready.then_some(())
        },
    );
}
