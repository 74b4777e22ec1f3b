//! The jobs this worker knows: descriptors, validated bundles, and jobs that cannot run here.
//!
//! Bounded: a job is forgotten when the scheduler says it ended, and the least recently used
//! jobs with nothing held are dropped once more than [`JobCache::capacity`] are known, so a page
//! left open for days does not keep every bundle it ever saw.

use std::rc::Rc;

use tessera_protocol::{BundleEntry, JobDescriptor};

use crate::small_map::SmallMap;

/// A job ready to set up in a sandbox: its descriptor and its validated bundle.
#[derive(Debug)]
pub struct PreparedJob {
    pub descriptor: JobDescriptor,
    pub bundle: Vec<BundleEntry>,
}

/// A job's state on this worker.
#[derive(Debug)]
pub enum JobEntry {
    /// Descriptor known; its bundle is being fetched.
    Preparing(JobDescriptor),
    Ready(Rc<PreparedJob>),
    /// The job cannot run here: its slices report this error (a bad bundle, or a program that
    /// failed to set up in two fresh sandboxes).
    Broken {
        message: String,
        stack: Option<String>,
    },
}

/// Set-up failures of one job's program on this worker, for the second opinion.
#[derive(Debug, Default)]
struct SetupFailures {
    count: u32,
}

/// Known jobs with their last use, bounded.
#[derive(Debug)]
pub struct JobCache {
    entries: SmallMap<String, (JobEntry, u64)>,
    failures: SmallMap<String, SetupFailures>,
    capacity: usize,
}

/// Fresh sandboxes a program must fail to set up in before this worker stops trying it.
pub const SETUP_FAILURES_BEFORE_BROKEN: u32 = 2;

impl JobCache {
    /// A cache that keeps about `capacity` jobs.
    pub fn new(capacity: usize) -> JobCache {
        JobCache { entries: SmallMap::new(), failures: SmallMap::new(), capacity: capacity.max(1) }
    }

    pub fn contains(&self, job_id: &str) -> bool {
        self.entries.contains_key(job_id)
    }

    pub fn get(&self, job_id: &str) -> Option<&JobEntry> {
        self.entries.get(job_id).map(|(entry, _)| entry)
    }

    /// Stores or replaces a job's entry.
    pub fn insert(&mut self, job_id: String, entry: JobEntry, now: u64) {
        self.entries.insert(job_id, (entry, now));
    }

    /// Takes a job's entry out (to replace it).
    pub fn take(&mut self, job_id: &str) -> Option<JobEntry> {
        self.entries.remove(job_id).map(|(entry, _)| entry)
    }

    /// Marks a job as used now.
    pub fn touch(&mut self, job_id: &str, now: u64) {
        if let Some((_, used)) = self.entries.get_mut(job_id) {
            *used = now;
        }
    }

    /// Forgets a job (it ended).
    pub fn forget(&mut self, job_id: &str) {
        self.entries.remove(job_id);
        self.failures.remove(job_id);
    }

    /// Known job ids, sorted (sent as `known_jobs` so descriptors are not sent again).
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.entries.keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Records that the program failed to set up in a fresh sandbox; returns true once it has
    /// failed in [`SETUP_FAILURES_BEFORE_BROKEN`] of them, when the job is marked broken here.
    pub fn setup_failed(&mut self, job_id: &str, message: &str, stack: Option<&str>, now: u64) -> bool {
        let failures = self.failures.get_or_insert_with(job_id.to_string(), SetupFailures::default);
        failures.count += 1;
        let broken = failures.count >= SETUP_FAILURES_BEFORE_BROKEN;
        if broken {
            let entry = JobEntry::Broken { message: message.to_string(), stack: stack.map(str::to_string) };
            self.insert(job_id.to_string(), entry, now);
        }
        broken
    }

    /// Drops the least recently used jobs beyond capacity, sparing those `in_use` says are held
    /// or warm; returns the dropped ids.
    pub fn evict(&mut self, in_use: impl Fn(&str) -> bool) -> Vec<String> {
        if self.entries.len() <= self.capacity {
            return Vec::new();
        }
        // The least recently used first, ties by id; usually one goes, so no sort is needed.
        let mut idle: Vec<(u64, &String)> =
            self.entries.iter().filter(|(id, _)| !in_use(id)).map(|(id, (_, used))| (*used, id)).collect();
        let mut dropped = Vec::new();
        for _ in self.capacity..self.entries.len() {
            let Some(oldest) = (0..idle.len()).min_by_key(|&index| idle[index]) else { break };
            dropped.push(idle.swap_remove(oldest).1.clone());
        }
        for id in &dropped {
            self.forget(id);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use tessera_protocol::Worktime;

    fn descriptor(id: &str) -> JobDescriptor {
        JobDescriptor {
            job_id: id.into(),
            name: id.into(),
            worktime: Worktime::MapBasic,
            program: "(x) => x".into(),
            program_name: "work.js".into(),
            arguments: vec![],
            env: BTreeMap::new(),
            packages: vec![],
            bundle: None,
            slice_timeout_ms: 1_000,
            no_progress_timeout_ms: None,
        }
    }

    fn ready(id: &str) -> JobEntry {
        JobEntry::Ready(Rc::new(PreparedJob { descriptor: descriptor(id), bundle: vec![] }))
    }

    #[test]
    fn least_recently_used_idle_jobs_are_evicted() {
        let mut cache = JobCache::new(2);
        for (n, id) in ["a", "b", "c", "d"].iter().enumerate() {
            cache.insert(id.to_string(), ready(id), n as u64);
        }
        cache.touch("a", 10);
        let dropped = cache.evict(|id| id == "b");
        assert_eq!(dropped, ["c", "d"], "b is in use, a was used last");
        assert_eq!(cache.ids(), ["a", "b"]);
    }

    #[test]
    fn a_program_is_broken_here_after_failing_in_two_fresh_sandboxes() {
        let mut cache = JobCache::new(4);
        cache.insert("j".into(), ready("j"), 0);
        assert!(!cache.setup_failed("j", "SyntaxError", None, 1));
        assert!(matches!(cache.get("j"), Some(JobEntry::Ready(_))));
        assert!(cache.setup_failed("j", "SyntaxError", Some("line 1"), 2));
        assert!(matches!(cache.get("j"), Some(JobEntry::Broken { message, .. }) if message == "SyntaxError"));
        cache.forget("j");
        assert!(cache.ids().is_empty());
    }
}
