//! The leases this worker holds: queued slices waiting for a sandbox, slices running, and the
//! fencing tokens of everything not yet acknowledged by the scheduler.
//!
//! The token list is shared with a [`Farewell`], so a page that is closing can give every lease
//! back in one synchronous beacon without waiting for the supervisor's loop.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use tessera_protocol::{HeartbeatItem, Lease, ResultItem, ResultsRequest, SliceOutcome};

/// Progress a running slice's program reported: the last value and how many reports so far (a
/// report with no value still proves the program is alive).
#[derive(Default)]
pub struct SliceProgress {
    value: Cell<Option<f64>>,
    reports: Cell<u64>,
    /// Told of each report, so the page can draw a progress bar (the supervisor throttles it).
    observer: RefCell<Option<ProgressObserver>>,
}

/// What is told of each progress report.
type ProgressObserver = Box<dyn Fn(Option<f64>)>;

impl std::fmt::Debug for SliceProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceProgress").field("value", &self.value).field("reports", &self.reports).finish()
    }
}

impl SliceProgress {
    /// Records one `progress()` call from the program.
    pub fn report(&self, value: Option<f64>) {
        if value.is_some() {
            self.value.set(value);
        }
        self.reports.set(self.reports.get() + 1);
        if let Some(observer) = self.observer.borrow().as_ref() {
            observer(value);
        }
    }

    /// Calls `observer` with every later report.
    pub fn observe(&self, observer: impl Fn(Option<f64>) + 'static) {
        self.observer.replace(Some(Box::new(observer)));
    }

    /// The last value reported (0.0..=1.0), if any.
    pub fn value(&self) -> Option<f64> {
        self.value.get()
    }

    /// How many times the program reported.
    pub fn reports(&self) -> u64 {
        self.reports.get()
    }
}

/// A lease this worker holds.
#[derive(Debug)]
struct Held {
    token: String,
    job_id: String,
    progress: Rc<SliceProgress>,
}

/// Worker token and unacknowledged leases, shared with the page's unload handler.
#[derive(Debug, Default)]
struct Unacknowledged {
    worker_token: Option<String>,
    tokens: HashMap<String, String>,
}

/// Queued and running leases, by lease id.
#[derive(Debug, Default)]
pub struct LeaseBook {
    queue: VecDeque<Lease>,
    held: HashMap<String, Held>,
    unacknowledged: Rc<RefCell<Unacknowledged>>,
}

impl LeaseBook {
    /// Records a new lease, queued until a sandbox takes it.
    pub fn add(&mut self, lease: Lease) {
        self.unacknowledged.borrow_mut().tokens.insert(lease.lease_id.clone(), lease.token.clone());
        let held = Held { token: lease.token.clone(), job_id: lease.job_id.clone(), progress: Rc::default() };
        self.held.insert(lease.lease_id.clone(), held);
        self.queue.push_back(lease);
    }

    /// Leases held: queued plus running.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Jobs with at least one held lease, each once.
    pub fn held_jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self.held.values().map(|held| held.job_id.clone()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }

    /// Leases waiting for a sandbox, in lease order.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The job of the `index`-th queued lease.
    pub fn queued_job(&self, index: usize) -> Option<&str> {
        self.queue.get(index).map(|lease| lease.job_id.as_str())
    }

    /// Takes the `index`-th queued lease to run it, with its progress cell.
    pub fn start(&mut self, index: usize) -> Option<(Lease, Rc<SliceProgress>)> {
        let lease = self.queue.remove(index)?;
        let progress = self.held.get(&lease.lease_id).map(|held| held.progress.clone()).unwrap_or_default();
        Some((lease, progress))
    }

    /// The lease is finished (its result goes to the outbox); false when it was no longer held
    /// (lost, or its job ended), in which case the result must be dropped.
    pub fn finish(&mut self, lease_id: &str) -> bool {
        self.held.remove(lease_id).is_some()
    }

    /// The scheduler answered for this lease: nothing more to give back for it.
    pub fn acknowledged(&mut self, lease_id: &str) {
        self.unacknowledged.borrow_mut().tokens.remove(lease_id);
    }

    /// The lease is no longer ours (expired, job ended): forget it entirely.
    pub fn lose(&mut self, lease_id: &str) {
        self.held.remove(lease_id);
        self.queue.retain(|lease| lease.lease_id != lease_id);
        self.acknowledged(lease_id);
    }

    /// Forgets every lease of `job_id` (the job ended); returns how many were dropped.
    pub fn drop_job(&mut self, job_id: &str) -> usize {
        let lost: Vec<String> =
            self.held.iter().filter(|(_, held)| held.job_id == job_id).map(|(id, _)| id.clone()).collect();
        for lease_id in &lost {
            self.lose(lease_id);
        }
        lost.len()
    }

    /// Takes every queued lease of `job_id` out of the queue (they stay held).
    pub fn take_queued_of(&mut self, job_id: &str) -> Vec<Lease> {
        let (taken, kept): (Vec<Lease>, Vec<Lease>) = self.queue.drain(..).partition(|lease| lease.job_id == job_id);
        self.queue = kept.into();
        taken
    }

    /// Takes every queued lease out of the queue (a pausing worker gives them back).
    pub fn take_queued(&mut self) -> Vec<Lease> {
        self.queue.drain(..).collect()
    }

    /// Every held lease as a result item with `outcome` (for giving them back), emptying the book.
    pub fn release_all(&mut self, outcome: &SliceOutcome) -> Vec<ResultItem> {
        self.queue.clear();
        let ids = self.lease_ids();
        let mut held = std::mem::take(&mut self.held);
        ids.into_iter()
            .filter_map(|lease_id| {
                let held = held.remove(&lease_id)?;
                Some(ResultItem {
                    lease_id,
                    token: held.token,
                    outcome: outcome.clone(),
                    console: vec![],
                    compute_ms: None,
                })
            })
            .collect()
    }

    /// Heartbeat items for every held lease, in chunks of at most `max` leases.
    pub fn heartbeat_chunks(&self, max: usize) -> Vec<Vec<HeartbeatItem>> {
        let items: Vec<HeartbeatItem> = self
            .lease_ids()
            .into_iter()
            .filter_map(|lease_id| {
                let held = self.held.get(&lease_id)?;
                Some(HeartbeatItem { token: held.token.clone(), progress: held.progress.value(), lease_id })
            })
            .collect();
        items.chunks(max.max(1)).map(<[HeartbeatItem]>::to_vec).collect()
    }

    /// Ids of the held leases, sorted (requests name leases in a stable order).
    fn lease_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.held.keys().cloned().collect();
        // Only `String`s are sorted in the core: one sort routine in the wasm, not one per type.
        ids.sort_unstable();
        ids
    }

    /// Forgets everything (the scheduler no longer knows this worker).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.held.clear();
        self.unacknowledged.borrow_mut().tokens.clear();
    }

    /// Records the worker token the farewell needs.
    pub fn set_worker_token(&mut self, token: Option<String>) {
        self.unacknowledged.borrow_mut().worker_token = token;
    }

    /// A handle that can give every unacknowledged lease back synchronously.
    pub fn farewell(&self) -> Farewell {
        Farewell(self.unacknowledged.clone())
    }
}

/// Gives back, in one request, every lease the scheduler has not acknowledged yet — for a page
/// that is closing (`pagehide` + `navigator.sendBeacon`) and cannot wait for the loop.
#[derive(Clone, Debug)]
pub struct Farewell(Rc<RefCell<Unacknowledged>>);

impl Farewell {
    /// A results batch releasing every unacknowledged lease (at most `max_items`), carrying the
    /// worker token in the body; none when there is nothing to give back.
    pub fn batch(&self, reason: &str, max_items: usize) -> Option<ResultsRequest> {
        let state = self.0.borrow();
        let token = state.worker_token.clone()?;
        if state.tokens.is_empty() {
            return None;
        }
        let outcome = SliceOutcome::Released { reason: reason.to_string() };
        // The lowest lease ids first, as a sorted list would give them.
        let mut lease_ids: Vec<String> = state.tokens.keys().cloned().collect();
        lease_ids.sort_unstable();
        lease_ids.truncate(max_items);
        let results = lease_ids
            .into_iter()
            .filter_map(|lease_id| {
                let token = state.tokens.get(&lease_id)?.clone();
                Some(ResultItem { lease_id, token, outcome: outcome.clone(), console: vec![], compute_ms: None })
            })
            .collect();
        Some(ResultsRequest { results, worker_token: Some(token) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(n: u64, job: &str) -> Lease {
        Lease {
            lease_id: format!("l{n}"),
            token: format!("t{n}"),
            job_id: job.into(),
            slice: n,
            datum: json!(n),
            ttl_ms: 30_000,
        }
    }

    #[test]
    fn a_lease_is_held_from_lease_to_finish_and_unacknowledged_until_answered() {
        let mut book = LeaseBook::default();
        book.set_worker_token(Some("w".into()));
        book.add(lease(1, "a"));
        book.add(lease(2, "b"));
        let (started, progress) = book.start(0).unwrap();
        assert_eq!(started.lease_id, "l1");
        progress.report(Some(0.5));
        assert_eq!(book.heartbeat_chunks(10)[0][0].progress, Some(0.5));
        assert!(book.finish("l1"));
        assert!(!book.finish("l1"), "finished once");
        let farewell = book.farewell().batch("page closed", 100).unwrap();
        assert_eq!(farewell.results.len(), 2, "l1's result is not acknowledged yet");
        book.acknowledged("l1");
        let farewell = book.farewell().batch("page closed", 100).unwrap();
        assert_eq!(farewell.results[0].lease_id, "l2");
        assert_eq!(farewell.worker_token.as_deref(), Some("w"));
        assert_eq!(farewell.results[0].outcome, SliceOutcome::Released { reason: "page closed".into() });
    }

    #[test]
    fn an_ended_job_is_forgotten() {
        let mut book = LeaseBook::default();
        for n in 0..4 {
            book.add(lease(n, if n % 2 == 0 { "a" } else { "b" }));
        }
        book.start(0);
        assert_eq!(book.drop_job("a"), 2, "queued and running leases of the job");
        assert_eq!((book.held(), book.queued()), (2, 2));
        assert!(!book.finish("l0"), "the running slice's result will be dropped");
        assert!(book.farewell().batch("x", 10).is_none(), "no worker token yet");
    }

    #[test]
    fn heartbeats_come_in_chunks_and_release_empties_the_book() {
        let mut book = LeaseBook::default();
        for n in 0..5 {
            book.add(lease(n, "a"));
        }
        let chunks = book.heartbeat_chunks(2);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let released = book.release_all(&SliceOutcome::Released { reason: "stopping".into() });
        assert_eq!(released.len(), 5);
        assert_eq!((book.held(), book.queued()), (0, 0));
    }
}
