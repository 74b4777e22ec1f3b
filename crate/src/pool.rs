//! Dispatch policy: which sandbox runs a slice.
//!
//! Plain bookkeeping, no web APIs: the supervisor asks [`Pool::place`] and carries out the answer.
//! A sandbox serves one job for its whole life; warm sandboxes (already set up for the slice's
//! job) win, then unbound ones, then new ones while under capacity; an idle sandbox of another job
//! is replaced only when nothing else is possible.

use tessera_protocol::Worktime;

/// One sandbox as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub worktime: Worktime,
    /// The job this sandbox is bound to, once it ran a slice.
    pub job: Option<String>,
    /// Slices sent to it and not finished yet (more than one when pipelined).
    pub running: u32,
    /// Slices run so far.
    pub served: u32,
    /// When it last finished a slice (or was created), in ms.
    pub idle_since_ms: u64,
    /// Heap size it reported after its last slice, if it reports one.
    pub heap_bytes: Option<u64>,
    /// Resting until this time (ms) to honour the worker's CPU share; 0 when not resting.
    pub rest_until_ms: u64,
    /// Being topped up to the pipeline depth. A sandbox that reached it takes more only once
    /// half of it is done, so slices go to it in batches (one message each) rather than one
    /// message per finished slice.
    pub filling: bool,
}

impl Slot {
    /// Idle and not resting: free to take a slice.
    fn free(&self) -> bool {
        self.running == 0 && self.rest_until_ms == 0
    }
}

/// Where a slice should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// An idle sandbox already set up for this job.
    Warm(usize),
    /// An idle sandbox with no job yet (e.g. the pre-warmed spare).
    Claim(usize),
    /// Create a new sandbox in this slot index.
    Create(usize),
    /// Terminate the idle sandbox at this index (another job, or worn out) and create a new one there.
    Replace(usize),
    /// Every sandbox is busy: wait.
    Busy,
}

/// Limits the pool works within.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Slices running at once.
    pub capacity: usize,
    /// Recycle a sandbox after this many slices…
    pub max_slices_per_sandbox: u32,
    /// …or once its heap has grown past this many bytes (leaks grow with work, not slice count).
    pub max_heap_bytes: u64,
    /// Recycle a bound sandbox idle for this long.
    pub max_idle_ms: u64,
    /// Slices a warm sandbox may hold at once (1 = no pipelining); refilled once half are done.
    pub pipeline_depth: u32,
}

/// The sandboxes and what each is doing. Slot indexes are stable; `None` is an empty slot.
#[derive(Clone, Debug)]
pub struct Pool {
    slots: Vec<Option<Slot>>,
    limits: PoolLimits,
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Pool {
        Pool { slots: Vec::new(), limits }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Runs `capacity` slices at once from now on; sandboxes beyond it end once idle (`to_recycle`).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.limits.capacity = capacity.max(1);
    }

    /// Lets a warm sandbox hold up to `depth` slices (1 while a CPU share makes sandboxes rest
    /// between slices: a slice queued behind another would skip the rest).
    pub fn set_pipeline_depth(&mut self, depth: u32) {
        self.limits.pipeline_depth = depth.max(1);
    }

    pub fn slot(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    /// Sandboxes currently running at least one slice.
    pub fn busy(&self) -> usize {
        self.slots.iter().flatten().filter(|slot| slot.running > 0).count()
    }

    /// Slices sent to sandboxes and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().flatten().map(|slot| slot.running as usize).sum()
    }

    /// Jobs with at least one sandbox set up for them (sent to the scheduler as preferences).
    pub fn warm_jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self.slots.iter().flatten().filter_map(|slot| slot.job.clone()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    }

    fn usable(&self, slot: &Slot) -> bool {
        // Slices queued behind a running one count: a sandbox never takes more than its limit.
        slot.served + slot.running < self.limits.max_slices_per_sandbox
            && slot.heap_bytes.is_none_or(|bytes| bytes <= self.limits.max_heap_bytes)
    }

    /// Decides where a slice of `job` (worktime `worktime`) runs. Idle sandboxes and new ones
    /// come first (parallelism); then a warm sandbox that already proved itself may take a slice
    /// queued behind the one it runs (`pipeline_depth`), hiding the message round trip.
    pub fn place(&self, job: &str, worktime: Worktime) -> Placement {
        let slots = || self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s)));
        let idle = || slots().filter(|(_, s)| s.free());
        let room = self.busy() < self.limits.capacity;
        if room {
            if let Some((index, _)) = idle().find(|(_, s)| s.job.as_deref() == Some(job) && self.usable(s)) {
                return Placement::Warm(index);
            }
            if let Some((index, _)) = idle().find(|(_, s)| s.job.is_none() && s.worktime == worktime) {
                return Placement::Claim(index);
            }
            if slots().count() < self.limits.capacity {
                return Placement::Create(self.free_index());
            }
        }
        let pipelined = slots()
            .filter(|(_, s)| s.job.as_deref() == Some(job) && self.usable(s) && s.served > 0)
            .filter(|(_, s)| s.running > 0 && s.running < self.limits.pipeline_depth)
            .filter(|(_, s)| s.filling || s.running <= self.limits.pipeline_depth / 2)
            .min_by_key(|(_, s)| s.running);
        if let Some((index, _)) = pipelined {
            return Placement::Warm(index);
        }
        if room {
            // Replace the idle sandbox that is least useful: worn out first, then the longest idle.
            if let Some((index, _)) = idle().min_by_key(|(_, s)| (self.usable(s), s.idle_since_ms)) {
                return Placement::Replace(index);
            }
        }
        Placement::Busy
    }

    fn free_index(&self) -> usize {
        self.slots.iter().position(Option::is_none).unwrap_or(self.slots.len())
    }

    /// Records a new sandbox in `index`.
    pub fn created(&mut self, index: usize, worktime: Worktime, now_ms: u64) {
        if index >= self.slots.len() {
            self.slots.resize(index + 1, None);
        }
        self.slots[index] = Some(Slot {
            worktime,
            job: None,
            running: 0,
            served: 0,
            idle_since_ms: now_ms,
            heap_bytes: None,
            rest_until_ms: 0,
            filling: true,
        });
    }

    /// Marks `index` as running a slice of `job` (binding it to the job for good).
    pub fn started(&mut self, index: usize, job: &str) {
        if let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) {
            slot.running += 1;
            slot.filling = slot.running < self.limits.pipeline_depth;
            slot.job = Some(job.to_string());
        }
    }

    /// Marks `index` idle after a slice, with the heap size the sandbox reported.
    pub fn finished(&mut self, index: usize, now_ms: u64, heap_bytes: Option<u64>) {
        if let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) {
            slot.running = slot.running.saturating_sub(1);
            slot.served += 1;
            slot.idle_since_ms = now_ms;
            slot.heap_bytes = heap_bytes.or(slot.heap_bytes);
        }
    }

    /// Keeps `index` from taking a slice until `until_ms` (the CPU share's pause after a slice).
    pub fn rest(&mut self, index: usize, until_ms: u64) {
        if let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) {
            slot.rest_until_ms = until_ms;
        }
    }

    /// Ends the rests that are over by `now_ms`; returns those sandboxes, now free.
    pub fn wake_rested(&mut self, now_ms: u64) -> Vec<usize> {
        let mut woken = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = slot.as_mut().filter(|s| s.rest_until_ms != 0 && s.rest_until_ms <= now_ms) {
                slot.rest_until_ms = 0;
                woken.push(index);
            }
        }
        woken
    }

    /// When the next rest ends, if any sandbox rests.
    pub fn next_rest_end(&self) -> Option<u64> {
        self.slots.iter().flatten().filter(|s| s.rest_until_ms != 0).map(|s| s.rest_until_ms).min()
    }

    /// Forgets the sandbox in `index` (terminated, crashed or recycled).
    pub fn removed(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = None;
        }
    }

    /// Idle sandboxes to recycle now: worn out, bound and idle for too long, or beyond a
    /// capacity that was lowered. The pool may always hold one sandbox beyond its capacity (the
    /// spare, or a claimed spare while the others are idle), so only what is beyond that goes,
    /// the longest idle of those bound to a job first.
    pub fn to_recycle(&self, now_ms: u64) -> Vec<usize> {
        let slots = || self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (i, s)));
        let mut recycle: Vec<usize> = slots()
            .filter(|(_, s)| s.running == 0)
            .filter(|(_, s)| {
                !self.usable(s) || (s.job.is_some() && now_ms.saturating_sub(s.idle_since_ms) > self.limits.max_idle_ms)
            })
            .map(|(i, _)| i)
            .collect();
        let allowed = self.limits.capacity + 1;
        let mut surplus = (slots().count() - recycle.len()).saturating_sub(allowed);
        let mut idle_bound: Vec<(u64, usize)> = slots()
            .filter(|(i, s)| s.running == 0 && s.job.is_some() && !recycle.contains(i))
            .map(|(i, s)| (s.idle_since_ms, i))
            .collect();
        // The longest idle first, ties by index. A few dozen slots at most and usually one goes,
        // so they are picked one by one rather than sorted (only `String`s are sorted in the core:
        // one sort routine in its wasm, not one per type).
        while surplus > 0 {
            let Some(oldest) = (0..idle_bound.len()).min_by_key(|&at| idle_bound[at]) else { break };
            recycle.push(idle_bound.swap_remove(oldest).1);
            surplus -= 1;
        }
        (0..self.slots.len()).filter(|index| recycle.contains(index)).collect()
    }

    /// Whether any sandbox has finished a slice (so the pool is past its cold start).
    pub fn any_warm(&self) -> bool {
        self.slots.iter().flatten().any(|slot| slot.served > 0)
    }

    /// Whether a spare (unbound, idle) sandbox of `worktime` exists.
    pub fn has_spare(&self, worktime: Worktime) -> bool {
        self.slots.iter().flatten().any(|s| s.job.is_none() && s.running == 0 && s.worktime == worktime)
    }

    /// Index for a new spare sandbox, if the pool may hold one more (capacity + 1 sandboxes at most).
    pub fn spare_index(&self) -> Option<usize> {
        (self.slots.iter().flatten().count() <= self.limits.capacity).then(|| self.free_index())
    }

    /// Indexes of every live sandbox.
    pub fn live(&self) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, s)| s.is_some()).map(|(i, _)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: Worktime = Worktime::MapBasic;

    fn pool(capacity: usize) -> Pool {
        Pool::new(PoolLimits {
            capacity,
            max_slices_per_sandbox: 3,
            max_heap_bytes: 1_000,
            max_idle_ms: 1_000,
            pipeline_depth: 1,
        })
    }

    /// One sandbox that may hold `depth` slices and is not worn out by the test's slices.
    fn pipelined_pool(depth: u32) -> Pool {
        Pool::new(PoolLimits { capacity: 1, max_slices_per_sandbox: 1_000, pipeline_depth: depth, ..pool(1).limits })
    }

    #[test]
    fn creates_up_to_capacity_then_waits() {
        let mut pool = pool(2);
        assert_eq!(pool.place("a", MB), Placement::Create(0));
        pool.created(0, MB, 0);
        pool.started(0, "a");
        assert_eq!(pool.place("a", MB), Placement::Create(1));
        pool.created(1, MB, 0);
        pool.started(1, "b");
        assert_eq!(pool.place("a", MB), Placement::Busy);
    }

    #[test]
    fn prefers_a_warm_sandbox_then_a_spare() {
        let mut pool = pool(2);
        pool.created(0, MB, 0);
        pool.created(1, MB, 0);
        pool.started(0, "a");
        pool.finished(0, 5, None);
        assert_eq!(pool.place("a", MB), Placement::Warm(0));
        assert_eq!(pool.place("b", MB), Placement::Claim(1));
        assert_eq!(pool.place("b", Worktime::Pyodide), Placement::Replace(1), "the unbound one goes first");
    }

    #[test]
    fn a_sandbox_never_serves_two_jobs() {
        let mut pool = pool(1);
        pool.created(0, MB, 0);
        pool.started(0, "a");
        pool.finished(0, 1, None);
        assert_eq!(pool.place("b", MB), Placement::Replace(0));
    }

    #[test]
    fn recycles_worn_out_and_long_idle_sandboxes() {
        let mut pool = pool(2);
        pool.created(0, MB, 0);
        for _ in 0..3 {
            pool.started(0, "a");
            pool.finished(0, 10, None);
        }
        assert_eq!(pool.to_recycle(20), vec![0]);
        assert_eq!(pool.place("a", MB), Placement::Create(1), "a worn-out sandbox is not warm");
        pool.created(1, MB, 0);
        pool.started(1, "b");
        pool.finished(1, 100, None);
        assert_eq!(pool.to_recycle(2_000), vec![0, 1]);
        pool.removed(0);
        assert_eq!(pool.live(), vec![1]);
    }

    #[test]
    fn pipelines_only_into_proven_warm_sandboxes() {
        let mut pool = pipelined_pool(2);
        pool.created(0, MB, 0);
        pool.started(0, "a");
        assert_eq!(pool.place("a", MB), Placement::Busy, "not before its set-up finished once");
        pool.finished(0, 1, None);
        pool.started(0, "a");
        assert_eq!(pool.place("a", MB), Placement::Warm(0));
        pool.started(0, "a");
        assert_eq!(pool.in_flight(), 2);
        assert_eq!(pool.place("a", MB), Placement::Busy, "depth reached");
        assert_eq!(pool.place("b", MB), Placement::Busy, "never another job's sandbox");
    }

    #[test]
    fn a_full_pipeline_is_refilled_in_one_go_once_half_is_done() {
        let mut pool = pipelined_pool(8);
        pool.created(0, MB, 0);
        pool.started(0, "a");
        pool.finished(0, 1, None);
        for _ in 0..8 {
            assert_eq!(pool.place("a", MB), Placement::Warm(0), "filled up to the depth");
            pool.started(0, "a");
        }
        assert_eq!(pool.place("a", MB), Placement::Busy, "full");
        for finished in 1..=4 {
            pool.finished(0, 2, None);
            let expected = if finished < 4 { Placement::Busy } else { Placement::Warm(0) };
            assert_eq!(pool.place("a", MB), expected, "not refilled before half is done ({finished} done)");
        }
        for _ in 0..4 {
            assert_eq!(pool.place("a", MB), Placement::Warm(0), "refilled to the depth in one go");
            pool.started(0, "a");
        }
        assert_eq!(pool.place("a", MB), Placement::Busy);
    }

    #[test]
    fn recycles_a_sandbox_whose_heap_grew_too_much() {
        let mut pool = pool(1);
        pool.created(0, MB, 0);
        pool.started(0, "a");
        pool.finished(0, 1, Some(900));
        assert_eq!(pool.place("a", MB), Placement::Warm(0));
        pool.started(0, "a");
        pool.finished(0, 2, Some(2_000));
        assert_eq!(pool.to_recycle(3), vec![0]);
        assert_eq!(pool.place("a", MB), Placement::Replace(0));
    }

    #[test]
    fn a_lowered_capacity_ends_idle_sandboxes_and_busy_ones_once_they_finish() {
        let mut pool = pool(3);
        for (index, idle_since) in [(0, 30), (1, 10), (2, 20)] {
            pool.created(index, MB, 0);
            pool.started(index, "a");
            pool.finished(index, idle_since, None);
        }
        pool.started(1, "a");
        pool.set_capacity(2);
        assert!(pool.to_recycle(40).is_empty(), "one beyond capacity may stay");
        pool.set_capacity(1);
        assert_eq!(pool.to_recycle(40), vec![2], "the longest idle goes first");
        pool.removed(2);
        pool.created(2, MB, 40);
        pool.started(2, "a");
        pool.set_capacity(0);
        assert_eq!(pool.limits().capacity, 1, "capacity is at least one");
        assert_eq!(pool.to_recycle(40), vec![0], "an idle one goes; busy ones stay until their slice ends");
        pool.removed(0);
        pool.finished(2, 50, None);
        assert!(pool.to_recycle(60).is_empty(), "capacity plus one may stay");
    }

    #[test]
    fn a_resting_sandbox_takes_no_slice_until_its_rest_ends() {
        let mut pool = pool(1);
        pool.created(0, MB, 0);
        pool.started(0, "a");
        pool.finished(0, 10, None);
        pool.rest(0, 50);
        assert_eq!(pool.place("a", MB), Placement::Busy);
        assert_eq!(pool.place("b", MB), Placement::Busy, "a resting sandbox is not replaced either");
        assert_eq!(pool.next_rest_end(), Some(50));
        assert!(pool.wake_rested(49).is_empty());
        assert_eq!(pool.wake_rested(50), vec![0]);
        assert_eq!(pool.next_rest_end(), None);
        assert_eq!(pool.place("a", MB), Placement::Warm(0));
    }

    #[test]
    fn keeps_at_most_one_spare_beyond_capacity() {
        let mut pool = pool(1);
        assert_eq!(pool.spare_index(), Some(0));
        pool.created(0, Worktime::Pyodide, 0);
        assert!(pool.has_spare(Worktime::Pyodide));
        assert!(!pool.any_warm());
        assert_eq!(pool.spare_index(), Some(1));
        pool.created(1, Worktime::Pyodide, 0);
        assert_eq!(pool.spare_index(), None);
    }
}
