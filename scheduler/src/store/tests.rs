//! Store unit tests on a real SQLite file, with explicit clocks.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tessera_protocol::{
    AttemptOutcome, JobState, Lease, ResultItem, ResultStatus, SliceOutcome, SliceStatus, Worktime,
};

use super::*;
use tessera_protocol::ResultAck;

const POLICY: LeasePolicy = LeasePolicy { ttl_ms: 1_000, max_attempts: 2, max_result_bytes: 1_000 };

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).unwrap();
    (dir, store)
}

fn job(slices: usize) -> NewJob {
    NewJob {
        name: None,
        worktime: Worktime::MapBasic,
        program: "(x) => x".into(),
        program_name: "main.js".into(),
        arguments: vec![],
        env: BTreeMap::new(),
        packages: vec![],
        bundle: None,
        slices: (0..slices).map(|i| json!(i)).collect(),
        slice_timeout_ms: 60_000,
        no_progress_timeout_ms: None,
        owner: None,
    }
}

fn result(lease: &Lease, outcome: SliceOutcome) -> ResultItem {
    ResultItem {
        lease_id: lease.lease_id.clone(),
        token: lease.token.clone(),
        outcome,
        console: vec![],
        compute_ms: None,
    }
}

fn ok(lease: &Lease, value: Value) -> ResultItem {
    result(lease, SliceOutcome::Ok { value })
}

fn fault(lease: &Lease) -> ResultItem {
    result(lease, SliceOutcome::WorkerFault { message: "sandbox crashed".into() })
}

fn setup_error(lease: &Lease) -> ResultItem {
    result(lease, SliceOutcome::JobError { message: "SyntaxError: bad".into(), stack: Some("line 1".into()) })
}

fn lease(store: &mut Store, worker: &str, max: usize, now: u64) -> Vec<Lease> {
    store.lease(worker, max, &[], &[], now, POLICY).unwrap().leases
}

fn submit(store: &mut Store, worker: &str, items: &[ResultItem], now: u64) -> Vec<ResultAck> {
    store.submit_results(worker, items, now, POLICY).unwrap()
}

fn statuses(acks: &[ResultAck]) -> Vec<ResultStatus> {
    acks.iter().map(|ack| ack.status).collect()
}

fn column(store: &Store, sql: &str, lease_id: &str) -> String {
    store.connection.query_row(sql, [lease_id], |row| row.get(0)).unwrap()
}

#[test]
fn lease_and_accept_completes_the_job() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(3), 0).unwrap();
    let answer = store.lease(&worker, 10, &[], &[], 0, POLICY).unwrap();
    assert_eq!((answer.leases.len(), answer.jobs.len()), (3, 1));
    assert_eq!(answer.jobs[0].slice_timeout_ms, 60_000);
    let results: Vec<_> = answer.leases.iter().map(|l| ok(l, l.datum.clone())).collect();
    assert!(submit(&mut store, &worker, &results, 1).iter().all(|a| a.status == ResultStatus::Accepted));
    assert!(submit(&mut store, &worker, &results, 2).iter().all(|a| a.status == ResultStatus::Duplicate));
    let status = store.job_status(&job_id).unwrap();
    assert_eq!((status.state, status.done), (JobState::Complete, 3));
    let outcome = column(&store, "SELECT outcome FROM leases WHERE id = ?1", &answer.leases[0].lease_id);
    assert_eq!(outcome, "ok");
}

#[test]
fn expired_leases_are_requeued_and_stale_results_refused() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    store.deploy(job(1), 0).unwrap();
    let first = lease(&mut store, &worker, 1, 0);
    assert_eq!(store.reap(5_000, None, POLICY).unwrap(), Reaped { extended: 0, expired: 1 });
    let answer = store.lease(&worker, 1, &[], &[first[0].job_id.clone()], 5_000, POLICY).unwrap();
    assert_eq!(answer.leases[0].slice, first[0].slice, "alone, the faulting worker gets its slice back");
    assert!(answer.jobs.is_empty(), "a known job is not described again");
    let stale = submit(&mut store, &worker, &[ok(&first[0], json!(1))], 5_001);
    assert_eq!(stale[0].status, ResultStatus::Stale);
    let fresh = submit(&mut store, &worker, &[ok(&answer.leases[0], json!(2))], 5_002);
    assert_eq!(fresh[0].status, ResultStatus::Accepted);
    let outcome = column(&store, "SELECT outcome FROM leases WHERE id = ?1", &first[0].lease_id);
    assert_eq!(outcome, "expired");
}

#[test]
fn a_forged_item_is_refused_alone() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let other = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(4), 0).unwrap();
    let mine = lease(&mut store, &worker, 3, 0);
    let theirs = lease(&mut store, &other, 1, 0);
    let mut forged = ok(&mine[1], json!(0));
    forged.token = "forged".into();
    let unknown = ResultItem { lease_id: "lnope".into(), ..ok(&mine[0], json!(0)) };
    let batch = [ok(&mine[0], json!(0)), forged, ok(&mine[2], json!(2)), unknown, ok(&theirs[0], json!(3))];
    let acks = submit(&mut store, &worker, &batch, 1);
    use ResultStatus::*;
    assert_eq!(statuses(&acks), vec![Accepted, Refused, Accepted, Refused, Refused]);
    assert!(acks[1].message.as_deref().unwrap().contains("token"), "{:?}", acks[1]);
    assert!(acks[3].message.as_deref().unwrap().contains("unknown lease"), "{:?}", acks[3]);
    assert!(acks[4].message.as_deref().unwrap().contains("another worker"), "{:?}", acks[4]);
    let status = store.job_status(&job_id).unwrap();
    assert_eq!((status.done, status.leased), (2, 2), "the refused items changed nothing");
}

#[test]
fn an_oversized_result_becomes_its_slices_error() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(2), 0).unwrap();
    let leases = lease(&mut store, &worker, 2, 0);
    let big = json!("x".repeat(2_000));
    let acks = submit(&mut store, &worker, &[ok(&leases[0], big), ok(&leases[1], json!(1))], 1);
    assert_eq!(statuses(&acks), vec![ResultStatus::Accepted, ResultStatus::Accepted]);
    assert!(acks[0].message.as_deref().unwrap().contains("over the scheduler's 1000-byte limit"), "{:?}", acks[0]);
    let (records, _) = store.results(&job_id, 0, 10).unwrap();
    assert_eq!(records[0].status, SliceStatus::Error);
    assert_eq!(records[0].error.as_deref(), Some("result is 2002 bytes, over the scheduler's 1000-byte limit"));
    assert_eq!(records[1].value, Some(json!(1)));
    assert_eq!(store.job_status(&job_id).unwrap().state, JobState::CompleteWithErrors);
}

#[test]
fn console_output_per_item_is_capped() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(1), 0).unwrap();
    let leases = lease(&mut store, &worker, 1, 0);
    let line = |i: usize| tessera_protocol::ConsoleLine {
        slice: Some(0),
        stream: "stdout".into(),
        text: format!("line {i}"),
        seq: None,
    };
    let mut item = ok(&leases[0], json!(0));
    item.console = (0..MAX_CONSOLE_LINES + 5).map(line).collect();
    submit(&mut store, &worker, &[item], 1);
    let lines = store.console(&job_id, 0, 10_000).unwrap();
    assert_eq!(lines.len(), MAX_CONSOLE_LINES + 1);
    assert!(lines.last().unwrap().text.contains("5 more console lines dropped"), "{:?}", lines.last());
}

#[test]
fn worker_faults_retry_then_give_up() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(1), 0).unwrap();
    for attempt in 1..=2 {
        let leases = lease(&mut store, &worker, 1, 0);
        assert_eq!(leases.len(), 1, "attempt {attempt}");
        assert_eq!(submit(&mut store, &worker, &[fault(&leases[0])], 0)[0].status, ResultStatus::Requeued);
    }
    let status = store.job_status(&job_id).unwrap();
    assert_eq!((status.state, status.errors), (JobState::CompleteWithErrors, 1));
    let (records, _) = store.results(&job_id, 0, 1).unwrap();
    assert_eq!(records[0].error.as_deref(), Some("gave up after 2 attempts; last: sandbox crashed"));
}

#[test]
fn time_outs_count_and_say_so_at_the_end() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(1), 0).unwrap();
    for _ in 0..2 {
        let leases = lease(&mut store, &worker, 1, 0);
        let timed_out = result(&leases[0], SliceOutcome::TimedOut { message: "ran past 60s".into() });
        assert_eq!(submit(&mut store, &worker, &[timed_out], 0)[0].status, ResultStatus::Requeued);
        assert_eq!(column(&store, "SELECT outcome FROM leases WHERE id = ?1", &leases[0].lease_id), "timed_out");
    }
    let (records, _) = store.results(&job_id, 0, 1).unwrap();
    assert_eq!(records[0].error.as_deref(), Some("timed out after 2 attempts: ran past 60s"));
}

#[test]
fn a_release_costs_no_attempt() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(1), 0).unwrap();
    for _ in 0..5 {
        let leases = lease(&mut store, &worker, 1, 0);
        assert_eq!(leases.len(), 1, "released slices come straight back");
        let released = result(&leases[0], SliceOutcome::Released { reason: "page closed".into() });
        assert_eq!(submit(&mut store, &worker, &[released], 0)[0].status, ResultStatus::Released);
    }
    let history = store.slice_history(&job_id, 0).unwrap();
    assert_eq!(history.attempts_counted, 0);
    assert_eq!(history.attempts.len(), 5);
    assert!(history.attempts.iter().all(|a| a.outcome == AttemptOutcome::Released));
    assert_eq!(history.attempts[0].message.as_deref(), Some("page closed"));
    let leases = lease(&mut store, &worker, 1, 0);
    assert_eq!(submit(&mut store, &worker, &[ok(&leases[0], json!(7))], 0)[0].status, ResultStatus::Accepted);
    assert_eq!(store.job_status(&job_id).unwrap().state, JobState::Complete);
}

#[test]
fn a_faulted_slice_prefers_another_connected_worker() {
    let (_dir, mut store) = store();
    let first = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    store.deploy(job(1), 0).unwrap();
    let leases = lease(&mut store, &first, 1, 0);
    submit(&mut store, &first, &[fault(&leases[0])], 10);
    // Alone, the faulting worker may take it again at once.
    let again = lease(&mut store, &first, 1, 20);
    assert_eq!(again.len(), 1);
    submit(&mut store, &first, &[fault(&again[0])], 30);
    // (Two faults at max_attempts 2 finish it; use a fresh job with another worker connected.)
    let second = store.register_worker(None, 1, None, 40).unwrap().worker_id;
    let job_id = store.deploy(job(1), 40).unwrap();
    let leases = store.lease(&first, 1, std::slice::from_ref(&job_id), &[], 50, POLICY).unwrap().leases;
    submit(&mut store, &first, &[fault(&leases[0])], 60);
    assert!(lease(&mut store, &first, 1, 70).is_empty(), "passed over while another worker is connected");
    let taken = lease(&mut store, &second, 1, 80);
    assert_eq!((taken.len(), taken[0].job_id.as_str()), (1, job_id.as_str()));
}

#[test]
fn a_faulted_slice_returns_to_its_worker_once_the_others_are_gone() {
    let (_dir, mut store) = store();
    let first = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    store.register_worker(None, 1, None, 0).unwrap();
    store.deploy(job(1), 0).unwrap();
    let leases = lease(&mut store, &first, 1, 0);
    submit(&mut store, &first, &[fault(&leases[0])], 10);
    assert!(lease(&mut store, &first, 1, 20).is_empty());
    // The other worker has not been seen for over a ttl (1 s): the slice comes back.
    assert_eq!(lease(&mut store, &first, 1, 1_500).len(), 1);
}

#[test]
fn one_setup_error_does_not_fail_the_job_a_second_worker_does() {
    let (_dir, mut store) = store();
    let first = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let second = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(3), 0).unwrap();
    let leases = lease(&mut store, &first, 1, 0);
    let ack = &submit(&mut store, &first, &[setup_error(&leases[0])], 1)[0];
    assert_eq!(ack.status, ResultStatus::Requeued);
    let status = store.job_status(&job_id).unwrap();
    assert_eq!((status.state, status.queued), (JobState::Running, 3));
    assert_eq!(store.slice_history(&job_id, 0).unwrap().attempts_counted, 0, "a set-up error costs no attempt");
    assert_eq!(column(&store, "SELECT outcome FROM leases WHERE id = ?1", &leases[0].lease_id), "job_error");
    let leases = lease(&mut store, &second, 1, 2);
    assert_eq!(leases[0].slice, 0, "the second opinion comes from the other worker");
    let ack = &submit(&mut store, &second, &[setup_error(&leases[0])], 3)[0];
    assert_eq!(ack.status, ResultStatus::Accepted);
    let status = store.job_status(&job_id).unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.error.as_deref(), Some("SyntaxError: bad\nline 1"));
    assert!(lease(&mut store, &first, 5, 4).is_empty(), "a failed job hands nothing out");
}

#[test]
fn the_same_worker_twice_fails_the_job_when_alone() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(3), 0).unwrap();
    for (round, expected) in [(0, ResultStatus::Requeued), (1, ResultStatus::Accepted)] {
        let leases = lease(&mut store, &worker, 1, round);
        assert_eq!(submit(&mut store, &worker, &[setup_error(&leases[0])], round)[0].status, expected);
    }
    assert_eq!(store.job_status(&job_id).unwrap().state, JobState::Failed);
}

#[test]
fn three_reports_fail_the_job_even_with_others_connected() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    store.register_worker(None, 1, None, 0).unwrap();
    let job_id = store.deploy(job(3), 0).unwrap();
    // The other worker stays connected but never takes the slices: the same worker reports
    // three times (it takes other slices, passing over the one it reported on).
    let leases = lease(&mut store, &worker, 3, 0);
    let acks = submit(&mut store, &worker, &[setup_error(&leases[0]), setup_error(&leases[1])], 1);
    assert_eq!(statuses(&acks), vec![ResultStatus::Requeued, ResultStatus::Requeued]);
    assert_eq!(store.job_status(&job_id).unwrap().state, JobState::Running);
    let acks = submit(&mut store, &worker, &[setup_error(&leases[2])], 2);
    assert_eq!(acks[0].status, ResultStatus::Accepted);
    assert_eq!(store.job_status(&job_id).unwrap().state, JobState::Failed);
}

#[test]
fn cancel_abandons_leases_and_reports_ended_jobs() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(3), 0).unwrap();
    let leases = lease(&mut store, &worker, 2, 0);
    let status = store.cancel(&job_id, 1).unwrap();
    assert_eq!((status.state, status.leased), (JobState::Cancelled, 0));
    assert_eq!(column(&store, "SELECT outcome FROM leases WHERE id = ?1", &leases[0].lease_id), "abandoned");
    let beat: Vec<_> = leases
        .iter()
        .map(|l| tessera_protocol::HeartbeatItem {
            lease_id: l.lease_id.clone(),
            token: l.token.clone(),
            progress: None,
        })
        .collect();
    let answer = store.heartbeat(&worker, &beat, 2, POLICY).unwrap();
    assert_eq!((answer.extended.len(), answer.lost.len()), (0, 2));
    assert_eq!(answer.ended_jobs, vec![job_id.clone()]);
    let answer = store.lease(&worker, 5, &[], &[job_id.clone(), "jgone".into()], 3, POLICY).unwrap();
    assert!(answer.leases.is_empty());
    assert_eq!(answer.ended_jobs, vec![job_id.clone(), "jgone".to_string()]);
    let acks = submit(&mut store, &worker, &[ok(&leases[0], json!(0))], 4);
    assert_eq!(acks[0].status, ResultStatus::Stale);
    assert_eq!(store.slice_history(&job_id, 0).unwrap().attempts_counted, 0, "abandoning costs no attempt");
}

#[test]
fn restart_extends_active_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let (worker, leases) = {
        let mut store = Store::open(&path).unwrap();
        let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
        store.deploy(job(2), 0).unwrap();
        let leases = lease(&mut store, &worker, 2, 0);
        (worker, leases)
    };
    // Reopened long after the leases' deadlines (1 s): the server extends them first.
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.extend_active_leases(60_000 + POLICY.ttl_ms).unwrap(), 2);
    assert_eq!(store.reap(60_000, None, POLICY).unwrap().expired, 0);
    let acks = submit(&mut store, &worker, &[ok(&leases[0], json!(0)), ok(&leases[1], json!(1))], 60_100);
    assert_eq!(statuses(&acks), vec![ResultStatus::Accepted, ResultStatus::Accepted]);
}

#[test]
fn a_paused_reaper_extends_leases_by_the_gap() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    store.deploy(job(1), 0).unwrap();
    let leases = lease(&mut store, &worker, 1, 0);
    assert_eq!(store.reap(500, None, POLICY).unwrap(), Reaped::default());
    // Ticked at 500, next at 60 500: a 60 s pause. Deadline 1 000 + 60 000 is still ahead.
    assert_eq!(store.reap(60_500, Some(500), POLICY).unwrap(), Reaped { extended: 1, expired: 0 });
    assert_eq!(submit(&mut store, &worker, &[ok(&leases[0], json!(0))], 60_600)[0].status, ResultStatus::Accepted);
    // Without a gap, an overdue lease expires.
    store.deploy(job(1), 70_000).unwrap();
    lease(&mut store, &worker, 1, 70_000);
    assert_eq!(store.reap(72_000, Some(71_000), POLICY).unwrap(), Reaped { extended: 0, expired: 1 });
}

#[test]
fn slice_history_lists_attempts_oldest_first() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(1), 0).unwrap();
    let first = lease(&mut store, &worker, 1, 10);
    submit(&mut store, &worker, &[fault(&first[0])], 20);
    let second = lease(&mut store, &worker, 1, 30);
    let running = store.slice_history(&job_id, 0).unwrap();
    assert_eq!(running.attempts[1].outcome, AttemptOutcome::Running);
    assert_eq!(running.attempts[1].ended_ms, None);
    submit(&mut store, &worker, &[ok(&second[0], json!(1))], 40);
    let history = store.slice_history(&job_id, 0).unwrap();
    assert_eq!((history.status, history.attempts_counted), (SliceStatus::Ok, 2));
    let summary: Vec<_> =
        history.attempts.iter().map(|a| (a.outcome, a.started_ms, a.ended_ms, a.worker_id == worker)).collect();
    assert_eq!(
        summary,
        vec![(AttemptOutcome::WorkerFault, 10, Some(20), true), (AttemptOutcome::Ok, 30, Some(40), true)]
    );
    assert!(matches!(store.slice_history(&job_id, 9), Err(Error::NotFound { .. })));
}

#[test]
fn status_lists_running_slices_with_progress() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let job_id = store.deploy(job(3), 0).unwrap();
    let leases = lease(&mut store, &worker, 2, 0);
    let beat = [tessera_protocol::HeartbeatItem {
        lease_id: leases[1].lease_id.clone(),
        token: leases[1].token.clone(),
        progress: Some(0.25),
    }];
    assert_eq!(store.heartbeat(&worker, &beat, 1, POLICY).unwrap().extended.len(), 1);
    let running = store.job_status(&job_id).unwrap().running;
    let seen: Vec<_> = running.iter().map(|r| (r.slice, r.progress)).collect();
    assert_eq!(seen, vec![(0, None), (1, Some(0.25))]);
}

#[test]
fn leasing_round_robins_and_prefers_warm_jobs() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let first = store.deploy(job(10), 0).unwrap();
    let second = store.deploy(job(10), 1).unwrap();
    let leases = lease(&mut store, &worker, 4, 2);
    assert_eq!(leases.iter().filter(|l| l.job_id == first).count(), 2, "four slices split across two jobs");
    let leases = store.lease(&worker, 4, std::slice::from_ref(&second), &[], 3, POLICY).unwrap().leases;
    assert!(leases.iter().all(|l| l.job_id == second));
}

#[test]
fn last_seen_is_written_at_most_every_five_seconds() {
    let (_dir, mut store) = store();
    let worker = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let last_seen = |store: &Store| -> i64 {
        store.connection.query_row("SELECT last_seen_ms FROM workers WHERE id = ?1", [&worker], |r| r.get(0)).unwrap()
    };
    lease(&mut store, &worker, 1, 4_000);
    assert_eq!(last_seen(&store), 0);
    lease(&mut store, &worker, 1, 5_000);
    assert_eq!(last_seen(&store), 5_000);
    lease(&mut store, &worker, 1, 9_999);
    assert_eq!(last_seen(&store), 5_000);
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let job_id = {
        let mut store = Store::open(&path).unwrap();
        store.deploy(job(2), 0).unwrap()
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.job_status(&job_id).unwrap().queued, 2);
}

#[test]
fn an_old_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(schema::SCHEMA_V0).unwrap();
        old.execute_batch(
            r#"
            INSERT INTO jobs VALUES ('j1', 'old', 'map-basic', '(x) => x', 'work.js', '[]', '{}', '[]', NULL,
                                     'active', NULL, 3, 5, 0);
            INSERT INTO jobs VALUES ('j2', 'done', 'map-basic', '(x) => x', 'work.js', '[]', '{}', '[]', NULL,
                                     'complete', NULL, 1, 6, 0);
            INSERT INTO slices VALUES ('j1', 0, '10', 'ok', 1, NULL, '11', NULL, NULL);
            INSERT INTO slices VALUES ('j1', 1, '20', 'leased', 1, 'l2', NULL, NULL, NULL);
            INSERT INTO slices VALUES ('j1', 2, '30', 'queued', 0, NULL, NULL, NULL, NULL);
            INSERT INTO slices VALUES ('j2', 0, '1', 'error', 1, NULL, NULL, 'boom', NULL);
            INSERT INTO leases VALUES ('l1', 't1', 'j1', 0, 'w1', 100, 'completed', NULL);
            INSERT INTO leases VALUES ('l2', 't2', 'j1', 1, 'w1', 100, 'active', 0.5);
            INSERT INTO workers VALUES ('w1', 'tw', NULL, 1, 0, 0);
            "#,
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let version: i64 = store.connection.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, schema::LATEST_VERSION);
    let status = store.job_status("j1").unwrap();
    assert_eq!((status.state, status.done, status.leased, status.queued), (JobState::Running, 1, 1, 1));
    assert_eq!(status.slice_timeout_ms, tessera_protocol::DEFAULT_SLICE_TIMEOUT_MS);
    assert_eq!(status.running[0].progress, Some(0.5));
    assert_eq!(store.job_status("j2").unwrap().state, JobState::CompleteWithErrors);
    assert_eq!(column(&store, "SELECT outcome FROM leases WHERE id = ?1", "l1"), "ok");
    assert_eq!(column(&store, "SELECT state FROM leases WHERE id = ?1", "l1"), "ended");
    // The migrated lease still works.
    let (worker, lease) = (
        "w1",
        Lease { lease_id: "l2".into(), token: "t2".into(), job_id: "j1".into(), slice: 1, datum: json!(20), ttl_ms: 1 },
    );
    assert_eq!(submit(&mut store, worker, &[ok(&lease, json!(21))], 200)[0].status, ResultStatus::Accepted);
    drop(store);
    // Opening again is a no-op.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.job_status("j1").unwrap().done, 2);
}

#[test]
fn unknown_stored_states_are_errors_not_defaults() {
    let (_dir, mut store) = store();
    let job_id = store.deploy(job(1), 0).unwrap();
    let refused = store.connection.execute("UPDATE jobs SET state = 'active' WHERE id = ?1", [&job_id]);
    assert!(refused.is_err(), "the CHECK constraint refuses unknown states");
    store.connection.pragma_update(None, "ignore_check_constraints", "ON").unwrap();
    store.connection.execute("UPDATE jobs SET state = 'active' WHERE id = ?1", [&job_id]).unwrap();
    let error = store.job_status(&job_id).unwrap_err();
    assert!(matches!(&error, Error::Corrupt(message) if message.contains("unknown job state `active`")), "{error:?}");
    store.connection.execute("UPDATE jobs SET state = 'running' WHERE id = ?1", [&job_id]).unwrap();
    store.connection.execute("UPDATE slices SET state = 'lost' WHERE job_id = ?1", [&job_id]).unwrap();
    let error = store.job_status(&job_id).unwrap_err();
    assert!(matches!(&error, Error::Corrupt(message) if message.contains("unknown slice state `lost`")), "{error:?}");
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(Store::open(&path).unwrap());
    Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    assert!(matches!(Store::open(&path), Err(Error::Corrupt(message)) if message.contains("version 99")));
}

#[test]
fn a_failing_operation_in_a_group_rolls_back_alone() {
    let (_dir, mut store) = store();
    store.begin_group().unwrap();
    let kept = store.deploy(job(1), 0).unwrap();
    let failed = store.write(|connection, _| {
        connection.execute("UPDATE jobs SET total = 99", [])?;
        Err::<(), _>(Error::Store("refused".into()))
    });
    assert!(failed.is_err());
    store.commit_group().unwrap();
    assert_eq!(store.job_status(&kept).unwrap().total, 1, "the failed operation's change was rolled back");
}

#[test]
fn the_first_admin_key_is_made_once_and_keys_verify_until_revoked() {
    let (_dir, mut store) = store();
    let first = store.create_first_admin_key(5).unwrap().expect("a new database gets an admin key");
    assert_eq!((first.info.name.as_str(), first.info.admin), ("admin", true));
    assert!(store.create_first_admin_key(6).unwrap().is_none(), "only on a database without keys");
    let admin = keys::deployer_by_key(&store.connection, &first.key).unwrap();
    assert_eq!((admin.key_id.as_str(), admin.admin, admin.scope()), (first.info.id.as_str(), true, Scope::All));
    let bob = store.create_key("bob", false, 7).unwrap();
    let deployer = keys::deployer_by_key(&store.connection, &bob.key).unwrap();
    assert_eq!(deployer.scope(), Scope::OwnedBy(bob.info.id.clone()));
    let stored: String = store
        .connection
        .query_row("SELECT hash FROM api_keys WHERE id = ?1", [&bob.info.id], |row| row.get(0))
        .unwrap();
    assert!(!bob.key.contains(&stored) && !stored.contains(bob.key.rsplit('_').next().unwrap()));
    let wrong = format!("{}0", bob.key);
    assert!(
        matches!(keys::deployer_by_key(&store.connection, &wrong), Err(Error::Unauthorized(m)) if m == "unknown API key")
    );
    store.revoke_key(&bob.info.id, 8).unwrap();
    let refused = keys::deployer_by_key(&store.connection, &bob.key).unwrap_err();
    assert!(matches!(&refused, Error::Unauthorized(m) if m.contains("revoked")), "{refused:?}");
    assert!(store.revoke_key(&first.info.id, 9).is_err(), "the last admin key stays");
    let listed = keys::list_keys(&store.connection).unwrap();
    assert_eq!(listed.iter().map(|k| k.revoked_ms).collect::<Vec<_>>(), vec![None, Some(8)]);
}

#[test]
fn jobs_are_visible_to_their_owner_and_admins() {
    let (_dir, mut store) = store();
    let alice = store.create_key("alice", false, 0).unwrap().info.id;
    let bob = store.create_key("bob", false, 0).unwrap().info.id;
    let job_id = store.deploy(NewJob { owner: Some(alice.clone()), ..job(1) }, 1).unwrap();
    assert!(store.job_access(&job_id, &Scope::OwnedBy(alice.clone())).is_ok());
    assert!(store.job_access(&job_id, &Scope::All).is_ok());
    assert!(matches!(store.job_access(&job_id, &Scope::OwnedBy(bob.clone())), Err(Error::NotFound { .. })));
    assert!(matches!(store.job_access("jnope", &Scope::All), Err(Error::NotFound { .. })));
    assert_eq!(store.list_jobs(&Scope::OwnedBy(bob)).unwrap().len(), 0);
    assert_eq!(store.list_jobs(&Scope::OwnedBy(alice)).unwrap().len(), 1);
    assert_eq!(store.list_jobs(&Scope::All).unwrap().len(), 1);
}

#[test]
fn a_version_1_database_gains_keys_and_its_jobs_belong_to_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(schema::SCHEMA).unwrap();
        old.execute_batch(
            "INSERT INTO jobs (id, name, worktime, program, program_name, arguments, env, packages, state, total,
                               created_ms)
             VALUES ('j1', 'old', 'map-basic', '(x) => x', 'work.js', '[]', '{}', '[]', 'running', 1, 5);
             INSERT INTO slices (job_id, idx, datum, state) VALUES ('j1', 0, '1', 'queued');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let version: i64 = store.connection.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, schema::LATEST_VERSION);
    let owner: Option<String> =
        store.connection.query_row("SELECT owner FROM jobs WHERE id = 'j1'", [], |row| row.get(0)).unwrap();
    assert_eq!(owner, None, "a job from before keys belongs to no one");
    let first = store.create_first_admin_key(10).unwrap().expect("the migrated database has no key yet");
    let deployer = store.create_key("someone", false, 10).unwrap().info.id;
    assert!(store.job_access("j1", &Scope::All).is_ok(), "admins see it");
    assert!(store.job_access("j1", &Scope::OwnedBy(deployer.clone())).is_err(), "no deployer does");
    assert!(store.job_access("j1", &Scope::OwnedBy(first.info.id)).is_err(), "not even the admin's own scope");
    assert_eq!(store.list_jobs(&Scope::OwnedBy(deployer)).unwrap().len(), 0);
    assert_eq!(store.job_status("j1").unwrap().queued, 1);
}

/// A contributor id of the documented shape.
fn contributor(name: &str) -> String {
    format!("{name:_<16}")
}

fn ok_measured(lease: &Lease, value: Value, compute_ms: Option<u64>) -> ResultItem {
    ResultItem { compute_ms, ..ok(lease, value) }
}

/// The ledger's invariants: each contributor's totals are the sum of its ledger rows, and the
/// ledger holds exactly the attempts accepted `ok` (one row each), with the time slice history
/// shows for them.
fn assert_ledger_matches_accepted_slices(store: &Store) {
    let mismatched: i64 = store
        .connection
        .query_row(
            "SELECT COUNT(*) FROM contributors c WHERE c.slices != (SELECT COUNT(*) FROM credits WHERE contributor = c.id)
             OR c.compute_ms != (SELECT COALESCE(SUM(compute_ms), 0) FROM credits WHERE contributor = c.id)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(mismatched, 0, "every contributor's totals are its ledger's sum");
    let credited: Vec<String> = store
        .connection
        .prepare("SELECT lease_id FROM credits ORDER BY lease_id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let accepted_ok: Vec<String> = store
        .connection
        .prepare("SELECT id FROM leases WHERE outcome = 'ok' ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(credited, accepted_ok, "one ledger row per attempt accepted ok, and no other");
}

/// The compute time slice history shows for every attempt of `job_id`'s `slices` slices.
fn credited_in_history(store: &Store, job_id: &str, slices: u64) -> u64 {
    (0..slices)
        .flat_map(|slice| store.slice_history(job_id, slice).unwrap().attempts)
        .filter_map(|attempt| attempt.compute_ms)
        .sum()
}

#[test]
fn an_accepted_ok_result_credits_exactly_its_measured_compute_time() {
    let (_dir, mut store) = store();
    let alice = contributor("alice");
    let registered = store.register_worker(None, 1, Some(&alice), 5).unwrap();
    assert_eq!(registered.contributor, alice);
    let job_id = store.deploy(job(3), 0).unwrap();
    let leases = lease(&mut store, &registered.worker_id, 3, 1_000);
    let batch = [
        ok_measured(&leases[0], json!(0), Some(100)),
        ok_measured(&leases[1], json!(1), Some(250)),
        ok_measured(&leases[2], json!(2), None),
    ];
    let acks = submit(&mut store, &registered.worker_id, &batch, 2_000);
    assert!(acks.iter().all(|ack| ack.status == ResultStatus::Accepted), "{acks:?}");
    let totals = store.contributor_totals(&alice).unwrap();
    assert_eq!(
        totals,
        tessera_protocol::ContributorTotals::new(alice.clone(), 3, 350, 5),
        "a missing measurement counts the slice and credits 0 ms"
    );
    assert_eq!(totals.credits, 0.35);
    let history = store.slice_history(&job_id, 1).unwrap();
    assert_eq!(history.attempts[0].compute_ms, Some(250));
    assert_eq!(credited_in_history(&store, &job_id, 3), 350);
    let at: i64 = store
        .connection
        .query_row("SELECT at_ms FROM credits WHERE lease_id = ?1", [&leases[0].lease_id], |row| row.get(0))
        .unwrap();
    assert_eq!(at, 2_000);
    assert_ledger_matches_accepted_slices(&store);
}

#[test]
fn duplicate_stale_refused_and_failed_results_credit_nothing() {
    let (_dir, mut store) = store();
    let bob = contributor("bob");
    let worker = store.register_worker(None, 1, Some(&bob), 0).unwrap().worker_id;
    let job_id = store.deploy(job(8), 0).unwrap();
    let leases = lease(&mut store, &worker, 8, 0);
    let measured = |item: ResultItem| ResultItem { compute_ms: Some(400), ..item };
    // Accepted ok once: credited once, whatever the resend claims.
    assert_eq!(
        submit(&mut store, &worker, &[measured(ok(&leases[0], json!(0)))], 500)[0].status,
        ResultStatus::Accepted
    );
    let resent = ResultItem { compute_ms: Some(450), ..ok(&leases[0], json!(0)) };
    assert_eq!(submit(&mut store, &worker, &[resent], 600)[0].status, ResultStatus::Duplicate);
    // Refused (a wrong token), then every outcome other than ok, then a value over the size limit.
    let mut forged = measured(ok(&leases[1], json!(1)));
    forged.token = "forged".into();
    let error = result(&leases[2], SliceOutcome::Error { message: "boom".into(), stack: None });
    let timed_out = result(&leases[4], SliceOutcome::TimedOut { message: "too slow".into() });
    let released = result(&leases[5], SliceOutcome::Released { reason: "page closed".into() });
    let batch = [
        forged,
        measured(error),
        measured(fault(&leases[3])),
        measured(timed_out),
        measured(released),
        measured(setup_error(&leases[6])),
        measured(ok(&leases[7], json!("x".repeat(2_000)))),
    ];
    use ResultStatus::*;
    let acks = submit(&mut store, &worker, &batch, 700);
    assert_eq!(statuses(&acks), vec![Refused, Accepted, Requeued, Requeued, Released, Requeued, Accepted]);
    assert_eq!(store.results(&job_id, 7, 1).unwrap().0[0].status, SliceStatus::Error, "stored as an error");
    // Stale: the refused slice's lease expires, then its result arrives.
    store.reap(5_000, None, POLICY).unwrap();
    let late = measured(ok(&leases[1], json!(1)));
    assert_eq!(submit(&mut store, &worker, &[late], 5_001)[0].status, Stale);
    let totals = store.contributor_totals(&bob).unwrap();
    assert_eq!((totals.slices, totals.compute_ms), (1, 400));
    assert_eq!(credited_in_history(&store, &job_id, 8), 400);
    assert_ledger_matches_accepted_slices(&store);
}

#[test]
fn credited_compute_is_capped_at_the_leases_age() {
    assert_eq!(credits::credited_ms(Some(700), 1_000, 1_500), 500);
    assert_eq!(credits::credited_ms(Some(200), 1_000, 1_500), 200);
    assert_eq!(credits::credited_ms(None, 1_000, 1_500), 0);
    assert_eq!(credits::credited_ms(Some(200), 1_000, 900), 0, "a clock that went back credits nothing");
    let (_dir, mut store) = store();
    let registered = store.register_worker(None, 1, None, 0).unwrap();
    let job_id = store.deploy(job(2), 0).unwrap();
    let leases = lease(&mut store, &registered.worker_id, 2, 1_000);
    let batch = [ok_measured(&leases[0], json!(0), Some(u64::MAX)), ok_measured(&leases[1], json!(1), Some(200))];
    submit(&mut store, &registered.worker_id, &batch, 1_500);
    let history = store.slice_history(&job_id, 0).unwrap();
    assert_eq!(history.attempts[0].compute_ms, Some(500), "no more than the 500 ms since the lease was granted");
    assert_eq!(store.contributor_totals(&registered.contributor).unwrap().compute_ms, 700);
    assert_ledger_matches_accepted_slices(&store);
}

#[test]
fn a_contributor_accumulates_across_registrations() {
    let (_dir, mut store) = store();
    let carol = contributor("carol");
    let mut credited = 0;
    for (round, compute_ms) in [(1u64, 30u64), (2, 70)] {
        let now = round * 10_000;
        let registered = store.register_worker(None, 1, Some(&carol), now).unwrap();
        assert_eq!(registered.contributor, carol);
        store.deploy(job(1), now).unwrap();
        let leases = lease(&mut store, &registered.worker_id, 1, now);
        submit(&mut store, &registered.worker_id, &[ok_measured(&leases[0], json!(0), Some(compute_ms))], now + 100);
        credited += compute_ms;
    }
    let totals = store.contributor_totals(&carol).unwrap();
    assert_eq!((totals.slices, totals.compute_ms, totals.since_ms), (2, credited, 10_000), "since the first time");
    // Without an id, each registration opens a contributor of its own, of the same shape.
    let first = store.register_worker(None, 1, None, 0).unwrap().contributor;
    let second = store.register_worker(None, 1, None, 0).unwrap().contributor;
    assert!(tessera_protocol::is_contributor_id(&first), "{first}");
    assert_ne!(first, second);
    assert_eq!(store.contributor_totals(&first).unwrap().slices, 0);
    assert!(matches!(store.contributor_totals(&contributor("nobody")), Err(Error::NotFound { .. })));
    assert_ledger_matches_accepted_slices(&store);
}

#[test]
fn a_contributor_id_of_the_wrong_shape_is_refused_and_stores_nothing() {
    let (_dir, mut store) = store();
    for bad in ["short", "has spaces in it, sixteen+", "../../../../etc/passwd", &"x".repeat(65)] {
        let error = store.register_worker(None, 1, Some(bad), 0).unwrap_err();
        assert!(matches!(&error, Error::InvalidField { field, .. } if field == "contributor"), "{error:?}");
    }
    let stored: (i64, i64) = store
        .connection
        .query_row("SELECT (SELECT COUNT(*) FROM workers), (SELECT COUNT(*) FROM contributors)", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!(stored, (0, 0));
}

#[test]
fn a_version_2_database_gains_the_ledger_and_its_workers_a_contributor_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let mut old = Connection::open(&path).unwrap();
        schema::create_at_version(&mut old, 2).unwrap();
        old.execute_batch(
            "INSERT INTO jobs (id, name, worktime, program, program_name, arguments, env, packages, state, total,
                               created_ms)
             VALUES ('j1', 'old', 'map-basic', '(x) => x', 'work.js', '[]', '{}', '[]', 'running', 2, 5);
             INSERT INTO slices (job_id, idx, datum, state, attempts) VALUES ('j1', 0, '1', 'ok', 1);
             INSERT INTO slices (job_id, idx, datum, state, attempts, current_lease) VALUES ('j1', 1, '2', 'leased', 1, 'l2');
             INSERT INTO leases (id, token, job_id, idx, worker_id, deadline_ms, state, outcome, started_ms, ended_ms)
             VALUES ('l1', 't1', 'j1', 0, 'w1', 100, 'ended', 'ok', 10, 20),
                    ('l2', 't2', 'j1', 1, 'w1', 100000, 'active', 'running', 30, NULL);
             INSERT INTO workers (id, token, sandboxes, created_ms, last_seen_ms) VALUES ('w1', 'tw1', 1, 7, 7),
                                                                                       ('w2', 'tw2', 1, 8, 8);",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let version: i64 = store.connection.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, schema::LATEST_VERSION);
    let contributors: Vec<(String, i64)> = store
        .connection
        .prepare("SELECT w.contributor, c.created_ms FROM workers w JOIN contributors c ON c.id = w.contributor ORDER BY w.id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(contributors.len(), 2, "each old worker has a contributor");
    assert!(contributors.iter().all(|(id, _)| tessera_protocol::is_contributor_id(id)), "{contributors:?}");
    assert_ne!(contributors[0].0, contributors[1].0);
    assert_eq!((contributors[0].1, contributors[1].1), (7, 8));
    assert_eq!(store.job_status("j1").unwrap().done, 1, "the jobs are as they were");
    // The old worker's lease still works, and now credits its contributor; the slice accepted
    // before the upgrade has no measured time and is not in the ledger.
    let lease =
        Lease { lease_id: "l2".into(), token: "t2".into(), job_id: "j1".into(), slice: 1, datum: json!(2), ttl_ms: 1 };
    let acks = submit(&mut store, "w1", &[ok_measured(&lease, json!(2), Some(40))], 200);
    assert_eq!(acks[0].status, ResultStatus::Accepted);
    let totals = store.contributor_totals(&contributors[0].0).unwrap();
    assert_eq!((totals.slices, totals.compute_ms), (1, 40));
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.contributor_totals(&contributors[0].0).unwrap().compute_ms, 40, "opening again changes nothing");
}

/// The kind and position of every event of a job, and the slices of its result events.
fn event_log(store: &Store, job_id: &str) -> Vec<(u64, &'static str, Option<u64>)> {
    let (events, _) = events::events(&store.connection, job_id, 0, 10_000, usize::MAX).unwrap();
    events
        .iter()
        .map(|event| {
            let slice = match &event.body {
                events::EventBody::Result(record) => Some(record.slice),
                events::EventBody::Console(line) => line.slice,
                events::EventBody::State(_) => None,
            };
            (event.position, event.kind().as_str(), slice)
        })
        .collect()
}

#[test]
fn the_event_log_records_outcomes_console_and_state_in_order() {
    let (_dir, mut store) = store();
    let job_id = store.deploy(job(3), 0).unwrap();
    let w1 = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let leases = lease(&mut store, &w1, 3, 1);
    let mut first = ok(&leases[0], json!("a"));
    first.console =
        vec![tessera_protocol::ConsoleLine { slice: Some(0), stream: "stdout".into(), text: "hi".into(), seq: None }];
    let error = result(&leases[1], SliceOutcome::Error { message: "boom".into(), stack: Some("trace".into()) });
    submit(&mut store, &w1, &[first, error], 2);
    // A fault is not a final outcome: no event.
    submit(&mut store, &w1, &[fault(&leases[2])], 3);
    assert_eq!(
        event_log(&store, &job_id),
        vec![(1, "state", None), (2, "console", Some(0)), (3, "result", Some(0)), (4, "result", Some(1))]
    );
    let retry = lease(&mut store, &w1, 1, 4);
    submit(&mut store, &w1, &[ok(&retry[0], json!("c"))], 5);
    let log = event_log(&store, &job_id);
    assert_eq!(&log[4..], &[(5, "result", Some(2)), (6, "state", None)]);
    let (events, state) = events::events(&store.connection, &job_id, 4, 10, usize::MAX).unwrap();
    assert_eq!(state, JobState::CompleteWithErrors);
    assert!(events[1].is_final(), "{events:?}");
    match &events[0].body {
        events::EventBody::Result(record) => assert_eq!(record.value, Some(json!("c"))),
        other => panic!("{other:?}"),
    }
    match &events::events(&store.connection, &job_id, 3, 1, usize::MAX).unwrap().0[0].body {
        events::EventBody::Result(record) => {
            assert_eq!((record.error.as_deref(), record.stack.as_deref()), (Some("boom"), Some("trace")))
        }
        other => panic!("{other:?}"),
    }
    // A page stops at its byte budget, but always holds one event.
    assert_eq!(events::events(&store.connection, &job_id, 0, 10, 1).unwrap().0.len(), 1);
}

#[test]
fn a_failed_or_cancelled_job_ends_its_log_with_its_state() {
    let (_dir, mut store) = store();
    let failed = store.deploy(job(2), 0).unwrap();
    let w1 = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let w2 = store.register_worker(None, 1, None, 0).unwrap().worker_id;
    let first = lease(&mut store, &w1, 1, 1);
    let mut report = setup_error(&first[0]);
    report.console = vec![tessera_protocol::ConsoleLine {
        slice: None,
        stream: "stderr".into(),
        text: "Traceback".into(),
        seq: None,
    }];
    submit(&mut store, &w1, &[report.clone()], 2);
    let second = lease(&mut store, &w2, 1, 3);
    report.lease_id = second[0].lease_id.clone();
    report.token = second[0].token.clone();
    submit(&mut store, &w2, &[report], 4);
    assert_eq!(store.job_status(&failed).unwrap().state, JobState::Failed);
    let log = event_log(&store, &failed);
    assert_eq!(
        log,
        vec![(1, "state", None), (2, "console", None), (3, "console", None), (4, "state", None)],
        "the failure comes after the console lines of the report that confirmed it"
    );
    assert!(events::events(&store.connection, &failed, 3, 1, usize::MAX).unwrap().0[0].is_final());

    let cancelled = store.deploy(job(1), 10).unwrap();
    store.cancel(&cancelled, 11).unwrap();
    store.cancel(&cancelled, 12).unwrap();
    assert_eq!(event_log(&store, &cancelled), vec![(1, "state", None), (2, "state", None)], "cancelled once");
}

#[test]
fn a_version_3_database_gains_event_logs_for_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let mut old = Connection::open(&path).unwrap();
        schema::create_at_version(&mut old, 3).unwrap();
        old.execute_batch(
            "INSERT INTO jobs (id, name, worktime, program, program_name, arguments, env, packages, state, total,
                               created_ms)
             VALUES ('j1', 'done', 'map-basic', '(x) => x', 'work.js', '[]', '{}', '[]', 'complete', 2, 5),
                    ('j2', 'going', 'map-basic', '(x) => x', 'work.js', '[]', '{}', '[]', 'running', 2, 6);
             INSERT INTO slices (job_id, idx, datum, state, result) VALUES ('j1', 0, '1', 'ok', '10'),
                                                                         ('j1', 1, '2', 'ok', '20'),
                                                                         ('j2', 0, '1', 'queued', NULL),
                                                                         ('j2', 1, '2', 'ok', '40');
             INSERT INTO console (job_id, slice, stream, text) VALUES ('j1', 1, 'stdout', 'one'),
                                                                      ('j2', 1, 'stdout', 'two'),
                                                                      ('gone', 0, 'stdout', 'orphan');",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(
        event_log(&store, "j1"),
        vec![(1, "result", Some(0)), (2, "result", Some(1)), (3, "console", Some(1)), (4, "state", None)]
    );
    match &events::events(&store.connection, "j1", 3, 1, usize::MAX).unwrap().0[0].body {
        events::EventBody::State(status) => assert_eq!((status.state, status.done), (JobState::Complete, 2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(event_log(&store, "j2"), vec![(1, "result", Some(1)), (2, "console", Some(1))]);
    // New events go on from where the rebuilt log ends.
    store.cancel("j2", 7).unwrap();
    assert_eq!(event_log(&store, "j2").last(), Some(&(3, "state", None)));
}
