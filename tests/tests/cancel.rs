//! Cancelling a job mid-run: every worker learns the job ended and starts none of its slices
//! afterwards, and the scheduler accepts no result of it after the cancel.

use std::time::Duration;

use tessera_e2e::{now_ms, text, Scheduler};

#[test]
fn a_cancelled_job_stops_on_every_worker_and_accepts_nothing_more() {
    // A short lease lifetime: heartbeats (which carry the news of ended jobs) every 3 s.
    let scheduler = Scheduler::start_with(&["--lease-ttl-ms", "9000"]);
    let program = scheduler.file("nap.js", "async (x) => { await new Promise((r) => setTimeout(r, 200)); return x; }");
    let job_id = scheduler.deploy(&[&program, "--range", "0:600", "--name", "to-cancel"]);
    let workers = [scheduler.worker_with(2, &["--log-slices"]), scheduler.worker_with(2, &["--log-slices"])];
    scheduler.wait_for_done(&job_id, 40, Duration::from_secs(90));
    for worker in &workers {
        worker.wait_for_event("a slice of the job started", Duration::from_secs(30), |e| {
            e.kind == "slice-start" && e.get("job") == job_id
        });
    }

    let cancelled = scheduler.tessera(&["cancel", &job_id]);
    assert!(cancelled.status.success(), "{}", text(&cancelled));
    let cancelled_ms = now_ms() as i64;
    let finished_at_cancel =
        scheduler.store().slices(&job_id).iter().filter(|slice| slice.state == "ok" || slice.state == "error").count();
    assert!(finished_at_cancel < 600, "the job was cancelled mid-run ({finished_at_cancel} slices finished)");

    // Each worker says the job ended, then starts none of its slices.
    let ended: Vec<usize> = workers
        .iter()
        .map(|worker| {
            worker
                .wait_for_event("job-ended for the cancelled job", Duration::from_secs(45), |e| {
                    e.kind == "job-ended" && e.get("job") == job_id
                })
                .index
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    for (worker, ended) in workers.iter().zip(ended) {
        let late: Vec<String> = worker
            .events()
            .into_iter()
            .filter(|e| e.index > ended && e.kind == "slice-start" && e.get("job") == job_id)
            .map(|e| e.text)
            .collect();
        assert!(late.is_empty(), "slices started after job-ended: {late:?}\n{}", worker.output());
    }

    let status = scheduler.status(&job_id);
    assert_eq!(status["state"], "cancelled", "{status}");
    let store = scheduler.store();
    let late: Vec<_> = store
        .leases(&job_id)
        .into_iter()
        .filter(|lease| {
            (lease.outcome == "ok" || lease.outcome == "error") && lease.ended_ms.is_some_and(|ms| ms > cancelled_ms)
        })
        .collect();
    assert!(late.is_empty(), "results accepted after the cancel: {late:#?}");
    let finished_now =
        store.slices(&job_id).iter().filter(|slice| slice.state == "ok" || slice.state == "error").count();
    assert_eq!(finished_now, finished_at_cancel, "no slice finished after the cancel");
    let active: Vec<_> = store.leases(&job_id).into_iter().filter(|lease| lease.state == "active").collect();
    assert!(active.is_empty(), "no lease of a cancelled job stays active: {active:#?}");
}
