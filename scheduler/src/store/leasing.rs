//! Leases: handing out slices, heartbeats, judging results, and expiry.
//!
//! A lease is one attempt at one slice, fenced by its token. Every outcome is applied with a
//! guarded update (`... WHERE current_lease = ? AND state = 'leased'`) whose changed-row count is
//! checked, so an outcome can only land on the attempt it belongs to: acceptance is exactly-once
//! however often, late or concurrently a result arrives. The acceptance of an `ok` result also
//! writes its credit (`credits`), in the same operation, so credits are exactly-once too.

use std::collections::{BTreeSet, HashSet};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tessera_protocol::{
    AttemptOutcome, ConsoleLine, HeartbeatItem, HeartbeatResponse, JobState, Lease, LeaseResponse, ResultAck,
    ResultItem, ResultStatus, SliceOutcome,
};

use super::credits::{credit, AcceptedSlice};
use super::events::{console_line, slice_finished, slice_is_final, state_changed};
use super::jobs::{fail_job, finish_if_done, job_descriptor, job_state};
use super::workers::{other_worker_connected, touch, truncate};
use super::{
    random_id, to_json, Json, LeasePolicy, LeaseState, Memory, SliceState, Store, Stored, MAX_CONSOLE_BYTES,
    MAX_CONSOLE_LINES,
};
use crate::error::Result;

/// Longest fault, release or error message kept in a lease's history.
const MAX_MESSAGE_BYTES: usize = 4 * 1024;

/// A gap between reaper ticks longer than this means the process was stopped or suspended.
pub const REAPER_GAP_MS: u64 = 5_000;

/// Reported setup errors with the same message that fail a job however they are spread.
const SETUP_ERRORS_TO_FAIL: i64 = 3;

/// A new lease id: the time, a counter and a random tail, so ids sort by creation (new leases go
/// to the end of the table's B-tree instead of random pages) and never repeat. The token, not
/// the id, is the secret.
fn lease_id(now: u64) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xffff;
    format!("l{now:011x}{count:04x}{}", random_id("", 2))
}

/// What one reaper pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Active leases whose deadlines were pushed back because the reaper itself had been paused.
    pub extended: usize,
    /// Leases that expired (each a fault of its worker).
    pub expired: usize,
}

/// A lease row as a result or heartbeat needs it.
struct LeaseRow {
    token: String,
    worker_id: String,
    job_id: String,
    index: i64,
    state: LeaseState,
    outcome: AttemptOutcome,
    /// When the lease was granted: a result cannot credit more compute than the time since.
    started_ms: u64,
}

fn lease_row(connection: &Connection, lease_id: &str) -> Result<Option<LeaseRow>> {
    Ok(connection
        .prepare_cached("SELECT token, worker_id, job_id, idx, state, outcome, started_ms FROM leases WHERE id = ?1")?
        .query_row([lease_id], |row| {
            Ok(LeaseRow {
                token: row.get(0)?,
                worker_id: row.get(1)?,
                job_id: row.get(2)?,
                index: row.get(3)?,
                state: row.get::<_, Stored<LeaseState>>(4)?.0,
                outcome: row.get::<_, Stored<AttemptOutcome>>(5)?.0,
                started_ms: row.get::<_, i64>(6)?.max(0) as u64,
            })
        })
        .optional()?)
}

/// The attempt a result is about, as the outcome functions need it.
struct Attempt<'a> {
    lease_id: &'a str,
    job_id: &'a str,
    index: i64,
    worker_id: &'a str,
    now: u64,
}

impl Store {
    /// Leases up to `max` queued slices to `worker_id`: preferred (warm) jobs first, then
    /// round-robin across the other running jobs, least recently leased first. A slice that last
    /// faulted on this worker is passed over for one lease ttl while another worker is connected.
    pub fn lease(
        &mut self,
        worker_id: &str,
        max: usize,
        prefer_jobs: &[String],
        known_jobs: &[String],
        now: u64,
        policy: LeasePolicy,
    ) -> Result<LeaseResponse> {
        self.write(|connection, memory| {
            touch(connection, memory, worker_id, now)?;
            let mut ended_jobs = Vec::new();
            for job_id in known_jobs {
                if !matches!(job_state(connection, job_id)?, Some(JobState::Running)) && !ended_jobs.contains(job_id) {
                    ended_jobs.push(job_id.clone());
                }
            }
            let mut jobs: Vec<String> = connection
                .prepare_cached(
                    "SELECT id FROM jobs WHERE state = 'running'
                     AND EXISTS (SELECT 1 FROM slices WHERE job_id = jobs.id AND state = 'queued')
                     ORDER BY last_leased_ms, created_ms",
                )?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            jobs.sort_by_key(|job| !prefer_jobs.contains(job));
            let others = if jobs.is_empty() {
                false
            } else {
                other_worker_connected(connection, memory, worker_id, now, policy.ttl_ms)?
            };

            let mut leases = Vec::new();
            let mut remaining = max;
            let mut jobs_left = jobs.len();
            for job_id in &jobs {
                if remaining == 0 {
                    break;
                }
                let share = if prefer_jobs.contains(job_id) { remaining } else { remaining.div_ceil(jobs_left) };
                jobs_left -= 1;
                // The state index finds queued slices directly; the planner would otherwise walk the
                // primary key from slice 0 past every finished slice.
                let picked: Vec<(i64, Json<Value>)> = connection
                    .prepare_cached(
                        "SELECT idx, datum FROM slices INDEXED BY slices_by_state WHERE job_id = ?1 AND state = 'queued'
                         AND NOT (?2 AND last_fault_worker IS ?3 AND retry_after_ms > ?4)
                         ORDER BY idx LIMIT ?5",
                    )?
                    .query_map(params![job_id, others, worker_id, now as i64, share as i64], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                if picked.is_empty() {
                    continue;
                }
                let mut insert = connection.prepare_cached(
                    "INSERT INTO leases (id, token, job_id, idx, worker_id, deadline_ms, state, outcome, started_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', 'running', ?7)",
                )?;
                let mut take = connection.prepare_cached(
                    "UPDATE slices SET state = 'leased', attempts = attempts + 1, current_lease = ?1
                     WHERE job_id = ?2 AND idx = ?3 AND state = 'queued'",
                )?;
                for (index, datum) in picked {
                    let lease_id = lease_id(now);
                    let token = random_id("", 12);
                    insert.execute(params![
                        lease_id,
                        token,
                        job_id,
                        index,
                        worker_id,
                        (now + policy.ttl_ms) as i64,
                        now as i64
                    ])?;
                    take.execute(params![lease_id, job_id, index])?;
                    leases.push(Lease {
                        lease_id,
                        token,
                        job_id: job_id.clone(),
                        slice: index as u64,
                        datum: datum.0,
                        ttl_ms: policy.ttl_ms,
                    });
                    remaining -= 1;
                }
                connection
                    .prepare_cached("UPDATE jobs SET last_leased_ms = ?1 WHERE id = ?2")?
                    .execute(params![now as i64, job_id])?;
            }

            let mut jobs = Vec::new();
            let mut described = HashSet::new();
            for lease in &leases {
                if !known_jobs.contains(&lease.job_id) && described.insert(lease.job_id.clone()) {
                    jobs.push(job_descriptor(connection, &lease.job_id)?);
                }
            }
            Ok(LeaseResponse { leases, jobs, ended_jobs })
        })
    }

    /// Extends the worker's active leases of running jobs. The others are `lost`; those whose job
    /// ended are also named in `ended_jobs`.
    pub fn heartbeat(
        &mut self,
        worker_id: &str,
        items: &[HeartbeatItem],
        now: u64,
        policy: LeasePolicy,
    ) -> Result<HeartbeatResponse> {
        self.write(|connection, memory| {
            touch(connection, memory, worker_id, now)?;
            let mut answer = HeartbeatResponse { ttl_ms: policy.ttl_ms, ..Default::default() };
            let mut ended = BTreeSet::new();
            for item in items {
                let lease = lease_row(connection, &item.lease_id)?;
                let Some(lease) = lease.filter(|l| l.token == item.token && l.worker_id == worker_id) else {
                    answer.lost.push(item.lease_id.clone());
                    continue;
                };
                if !matches!(job_state(connection, &lease.job_id)?, Some(JobState::Running)) {
                    ended.insert(lease.job_id);
                    answer.lost.push(item.lease_id.clone());
                    continue;
                }
                if lease.state != LeaseState::Active {
                    answer.lost.push(item.lease_id.clone());
                    continue;
                }
                let progress = item.progress.filter(|p| p.is_finite()).map(|p| p.clamp(0.0, 1.0));
                connection
                    .prepare_cached(
                        "UPDATE leases SET deadline_ms = MAX(deadline_ms, ?1), progress = COALESCE(?2, progress)
                         WHERE id = ?3 AND state = 'active'",
                    )?
                    .execute(params![(now + policy.ttl_ms) as i64, progress, item.lease_id])?;
                answer.extended.push(item.lease_id.clone());
            }
            answer.ended_jobs = ended.into_iter().collect();
            Ok(answer)
        })
    }

    /// Judges a batch of results item by item: one ack per item, in order. An item the worker
    /// may not submit (unknown lease, wrong token, another worker's lease) is `refused` and
    /// changes nothing; the rest of the batch is processed.
    pub fn submit_results(
        &mut self,
        worker_id: &str,
        items: &[ResultItem],
        now: u64,
        policy: LeasePolicy,
    ) -> Result<Vec<ResultAck>> {
        self.write(|connection, memory| {
            touch(connection, memory, worker_id, now)?;
            let mut acks = Vec::with_capacity(items.len());
            let mut touched_jobs = BTreeSet::new();
            for item in items {
                let (status, message) = judge(connection, memory, worker_id, item, now, policy, &mut touched_jobs)?;
                acks.push(ResultAck { lease_id: item.lease_id.clone(), status, message });
            }
            for job_id in &touched_jobs {
                finish_if_done(connection, job_id)?;
            }
            Ok(acks)
        })
    }

    /// One reaper pass. When `last_tick_ms` is more than [`REAPER_GAP_MS`] ago the process was
    /// stopped or suspended: active leases are first extended by the gap, since their workers
    /// could not have reached us either. Then every lease past its deadline expires, counting as
    /// a fault of its worker.
    pub fn reap(&mut self, now: u64, last_tick_ms: Option<u64>, policy: LeasePolicy) -> Result<Reaped> {
        self.write(|connection, memory| {
            memory.forget_unseen(now.saturating_sub(2 * policy.ttl_ms));
            let mut reaped = Reaped::default();
            if let Some(last) = last_tick_ms.filter(|last| now > last + REAPER_GAP_MS) {
                reaped.extended = connection.execute(
                    "UPDATE leases SET deadline_ms = deadline_ms + ?1 WHERE state = 'active'",
                    [(now - last) as i64],
                )?;
            }
            let expired: Vec<(String, String, i64, String)> = connection
                .prepare_cached(
                    "SELECT id, job_id, idx, worker_id FROM leases INDEXED BY active_leases_by_deadline
                     WHERE state = 'active' AND deadline_ms < ?1",
                )?
                .query_map([now as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut touched_jobs = BTreeSet::new();
            for (lease_id, job_id, index, worker_id) in &expired {
                let attempt = Attempt { lease_id, job_id, index: *index, worker_id, now };
                let message = "the lease expired without a result or heartbeat";
                let faulted = fault(connection, &attempt, AttemptOutcome::Expired, message, policy)?;
                if let Some(state) = faulted {
                    reaped.expired += 1;
                    if state == SliceState::Error {
                        slice_finished(connection, job_id, *index)?;
                    }
                } else {
                    // The slice no longer points at this lease: end the lease alone.
                    end_lease(connection, lease_id, AttemptOutcome::Expired, Some(message), now)?;
                }
                touched_jobs.insert(job_id.clone());
            }
            for job_id in &touched_jobs {
                finish_if_done(connection, job_id)?;
            }
            Ok(reaped)
        })
    }

    /// Pushes every active lease's deadline to at least `deadline_ms`; returns how many leases are
    /// active. Used when the server starts, so work still running in browsers while the
    /// scheduler was down is not made stale by the restart.
    pub fn extend_active_leases(&mut self, deadline_ms: u64) -> Result<usize> {
        self.write(|connection, _| {
            Ok(connection.execute(
                "UPDATE leases SET deadline_ms = MAX(deadline_ms, ?1) WHERE state = 'active'",
                [deadline_ms as i64],
            )?)
        })
    }
}

/// Decides and applies one result item.
fn judge(
    connection: &Connection,
    memory: &Memory,
    worker_id: &str,
    item: &ResultItem,
    now: u64,
    policy: LeasePolicy,
    touched_jobs: &mut BTreeSet<String>,
) -> Result<(ResultStatus, Option<String>)> {
    let refused = |message: String| Ok((ResultStatus::Refused, Some(message)));
    let Some(lease) = lease_row(connection, &item.lease_id)? else {
        return refused(format!("unknown lease `{}`", item.lease_id));
    };
    if lease.token != item.token {
        return refused(format!("the token does not match lease `{}`", item.lease_id));
    }
    if lease.worker_id != worker_id {
        return refused(format!("lease `{}` belongs to another worker", item.lease_id));
    }
    if lease.state == LeaseState::Ended {
        return Ok(match lease.outcome {
            AttemptOutcome::Expired => {
                (ResultStatus::Stale, Some("the lease expired; its slice went to another attempt".into()))
            }
            AttemptOutcome::Abandoned => (ResultStatus::Stale, Some("the job ended while the lease was held".into())),
            _ => (ResultStatus::Duplicate, None),
        });
    }
    if !touched_jobs.contains(&lease.job_id)
        && !matches!(job_state(connection, &lease.job_id)?, Some(JobState::Running))
    {
        return Ok((ResultStatus::Stale, Some("the job is no longer running".into())));
    }
    let attempt = Attempt { lease_id: &item.lease_id, job_id: &lease.job_id, index: lease.index, worker_id, now };
    let applied = match &item.outcome {
        SliceOutcome::Ok { value } => {
            let measured = Measured { reported_ms: item.compute_ms, leased_ms: lease.started_ms };
            accept_value(connection, &attempt, value, measured, policy)?
        }
        SliceOutcome::Error { message, stack } => {
            accept_error(connection, &attempt, message, stack.as_deref(), policy)?
        }
        SliceOutcome::WorkerFault { message } => {
            fault(connection, &attempt, AttemptOutcome::WorkerFault, message, policy)?
                .map(|_| (ResultStatus::Requeued, None))
        }
        SliceOutcome::TimedOut { message } => fault(connection, &attempt, AttemptOutcome::TimedOut, message, policy)?
            .map(|_| (ResultStatus::Requeued, None)),
        SliceOutcome::Released { reason } => {
            requeue_free(connection, &attempt, AttemptOutcome::Released, reason, false, policy)?
                .then_some((ResultStatus::Released, None))
        }
        SliceOutcome::JobError { message, stack } => {
            setup_error(connection, memory, &attempt, message, stack.as_deref(), policy)?
        }
    };
    let Some((status, message)) = applied else {
        return Ok((ResultStatus::Stale, Some("the slice is no longer held by this lease".into())));
    };
    store_console(connection, &lease.job_id, &item.console)?;
    // The job's event log, after the item's console lines: the slice's final outcome, or the
    // job's failure (its last event).
    let job_failed = matches!(item.outcome, SliceOutcome::JobError { .. }) && status == ResultStatus::Accepted;
    if job_failed {
        state_changed(connection, &lease.job_id)?;
    } else if slice_is_final(connection, &lease.job_id, lease.index)? {
        slice_finished(connection, &lease.job_id, lease.index)?;
    }
    // Jobs in `touched_jobs` are known to be running for the rest of the batch, unless this item
    // just ended it (a confirmed set-up error).
    if job_failed {
        touched_jobs.remove(&lease.job_id);
    } else {
        touched_jobs.insert(lease.job_id);
    }
    Ok((status, message))
}

/// Ends a lease with its outcome.
fn end_lease(
    connection: &Connection,
    lease_id: &str,
    outcome: AttemptOutcome,
    message: Option<&str>,
    now: u64,
) -> Result<()> {
    connection
        .prepare_cached("UPDATE leases SET state = 'ended', outcome = ?1, message = ?2, ended_ms = ?3 WHERE id = ?4")?
        .execute(params![outcome.as_str(), message.map(|m| truncate(m, MAX_MESSAGE_BYTES)), now as i64, lease_id])?;
    Ok(())
}

/// Stores the final outcome of a slice if `attempt` still holds it; `false` when it does not.
fn finish_slice(
    connection: &Connection,
    attempt: &Attempt,
    state: SliceState,
    result: Option<&str>,
    error: Option<&str>,
    stack: Option<&str>,
) -> Result<bool> {
    let changed = connection
        .prepare_cached(
            "UPDATE slices SET state = ?1, result = ?2, error = ?3, stack = ?4, current_lease = NULL
             WHERE job_id = ?5 AND idx = ?6 AND current_lease = ?7 AND state = 'leased'",
        )?
        .execute(params![state.as_str(), result, error, stack, attempt.job_id, attempt.index, attempt.lease_id])?;
    Ok(changed == 1)
}

/// The error stored in place of a result over the size limit.
fn oversized(bytes: usize, policy: LeasePolicy) -> String {
    format!("result is {bytes} bytes, over the scheduler's {}-byte limit", policy.max_result_bytes)
}

/// The compute time a result reports, and when its lease was granted (the cap on it).
struct Measured {
    reported_ms: Option<u64>,
    leased_ms: u64,
}

/// Accepts a returned value as the slice's outcome, crediting the worker's contributor with the
/// measured compute time in the same operation. A value over the size limit becomes the slice's
/// error instead, and credits nothing: only slices accepted `ok` earn credits.
fn accept_value(
    connection: &Connection,
    attempt: &Attempt,
    value: &Value,
    measured: Measured,
    policy: LeasePolicy,
) -> Result<Option<(ResultStatus, Option<String>)>> {
    let json = to_json(value)?;
    if json.len() as u64 > policy.max_result_bytes {
        let error = oversized(json.len(), policy);
        if !finish_slice(connection, attempt, SliceState::Error, None, Some(&error), None)? {
            return Ok(None);
        }
        end_lease(connection, attempt.lease_id, AttemptOutcome::Error, Some(&error), attempt.now)?;
        return Ok(Some((ResultStatus::Accepted, Some(format!("stored as the slice's error: {error}")))));
    }
    if !finish_slice(connection, attempt, SliceState::Ok, Some(&json), None, None)? {
        return Ok(None);
    }
    end_lease(connection, attempt.lease_id, AttemptOutcome::Ok, None, attempt.now)?;
    credit(
        connection,
        &AcceptedSlice {
            worker_id: attempt.worker_id,
            lease_id: attempt.lease_id,
            job_id: attempt.job_id,
            slice: attempt.index,
            leased_ms: measured.leased_ms,
            reported_ms: measured.reported_ms,
            now: attempt.now,
        },
    )?;
    Ok(Some((ResultStatus::Accepted, None)))
}

fn accept_error(
    connection: &Connection,
    attempt: &Attempt,
    message: &str,
    stack: Option<&str>,
    policy: LeasePolicy,
) -> Result<Option<(ResultStatus, Option<String>)>> {
    let bytes = message.len() + stack.map_or(0, str::len);
    let (error, stack, note) = if bytes as u64 > policy.max_result_bytes {
        let error = oversized(bytes, policy);
        let note = format!("stored as the slice's error: {error}");
        (error, None, Some(note))
    } else {
        (message.to_string(), stack, None)
    };
    if !finish_slice(connection, attempt, SliceState::Error, None, Some(&error), stack)? {
        return Ok(None);
    }
    end_lease(connection, attempt.lease_id, AttemptOutcome::Error, Some(&error), attempt.now)?;
    Ok(Some((ResultStatus::Accepted, note)))
}

/// A fault of the attempt's worker (crash, time-out, expiry): the attempt counts. The slice is
/// queued again with this worker remembered, so another connected worker gets it first, or
/// becomes an error once its attempts are used up. `None` when the attempt no longer holds it.
fn fault(
    connection: &Connection,
    attempt: &Attempt,
    outcome: AttemptOutcome,
    message: &str,
    policy: LeasePolicy,
) -> Result<Option<SliceState>> {
    let attempts: Option<i64> = connection
        .prepare_cached(
            "SELECT attempts FROM slices WHERE job_id = ?1 AND idx = ?2 AND current_lease = ?3 AND state = 'leased'",
        )?
        .query_row(params![attempt.job_id, attempt.index, attempt.lease_id], |row| row.get(0))
        .optional()?;
    let Some(attempts) = attempts else {
        return Ok(None);
    };
    let message = truncate(message, MAX_MESSAGE_BYTES);
    let state = if attempts >= policy.max_attempts as i64 {
        let error = match outcome {
            AttemptOutcome::TimedOut => format!("timed out after {attempts} attempts: {message}"),
            _ => format!("gave up after {attempts} attempts; last: {message}"),
        };
        finish_slice(connection, attempt, SliceState::Error, None, Some(&error), None)?;
        SliceState::Error
    } else {
        connection
            .prepare_cached(
                "UPDATE slices SET state = 'queued', current_lease = NULL, last_fault_worker = ?1, retry_after_ms = ?2
                 WHERE job_id = ?3 AND idx = ?4 AND current_lease = ?5 AND state = 'leased'",
            )?
            .execute(params![
                attempt.worker_id,
                (attempt.now + policy.ttl_ms) as i64,
                attempt.job_id,
                attempt.index,
                attempt.lease_id
            ])?;
        SliceState::Queued
    };
    end_lease(connection, attempt.lease_id, outcome, Some(message), attempt.now)?;
    Ok(Some(state))
}

/// Queues the slice again without charging the attempt (a release, a set-up error). With
/// `avoid_worker`, this worker is passed over for one ttl while another is connected.
fn requeue_free(
    connection: &Connection,
    attempt: &Attempt,
    outcome: AttemptOutcome,
    message: &str,
    avoid_worker: bool,
    policy: LeasePolicy,
) -> Result<bool> {
    let changed = connection
        .prepare_cached(
            "UPDATE slices SET state = 'queued', current_lease = NULL, attempts = MAX(attempts - 1, 0),
                last_fault_worker = CASE WHEN ?1 THEN ?2 ELSE last_fault_worker END,
                retry_after_ms = CASE WHEN ?1 THEN ?3 ELSE retry_after_ms END
             WHERE job_id = ?4 AND idx = ?5 AND current_lease = ?6 AND state = 'leased'",
        )?
        .execute(params![
            avoid_worker,
            attempt.worker_id,
            (attempt.now + policy.ttl_ms) as i64,
            attempt.job_id,
            attempt.index,
            attempt.lease_id
        ])?;
    if changed == 0 {
        return Ok(false);
    }
    end_lease(connection, attempt.lease_id, outcome, Some(message), attempt.now)?;
    Ok(true)
}

/// The program failed to set up. The slice goes back unharmed (preferring another worker) and
/// the report is recorded; the job fails once the error is confirmed: by a second worker, by the
/// same worker twice when no other is connected, or by three reports in all (a job never waits
/// forever for a second opinion).
fn setup_error(
    connection: &Connection,
    memory: &Memory,
    attempt: &Attempt,
    message: &str,
    stack: Option<&str>,
    policy: LeasePolicy,
) -> Result<Option<(ResultStatus, Option<String>)>> {
    let limit = policy.max_result_bytes as usize;
    let message = truncate(message, limit.min(64 * 1024));
    if !requeue_free(connection, attempt, AttemptOutcome::JobError, message, true, policy)? {
        return Ok(None);
    }
    connection
        .prepare_cached("INSERT INTO setup_errors (job_id, worker_id, message, at_ms) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![attempt.job_id, attempt.worker_id, message, attempt.now as i64])?;
    let (workers, total, mine): (i64, i64, i64) = connection
        .prepare_cached(
            "SELECT COUNT(DISTINCT worker_id), COUNT(*), SUM(worker_id = ?3)
             FROM setup_errors WHERE job_id = ?1 AND message = ?2",
        )?
        .query_row(params![attempt.job_id, message, attempt.worker_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    let confirmed = workers >= 2
        || total >= SETUP_ERRORS_TO_FAIL
        || (mine >= 2 && !other_worker_connected(connection, memory, attempt.worker_id, attempt.now, policy.ttl_ms)?);
    if !confirmed {
        return Ok(Some((
            ResultStatus::Requeued,
            Some("set-up error recorded; the job fails if another sandbox confirms it".into()),
        )));
    }
    let error = match stack {
        Some(stack) if !stack.is_empty() => format!("{message}\n{}", truncate(stack, limit)),
        _ => message.to_string(),
    };
    fail_job(connection, attempt.job_id, &error, attempt.now)?;
    tracing::warn!(job = attempt.job_id, error = %message, "job failed: its program cannot set up");
    Ok(Some((ResultStatus::Accepted, Some("the job failed with this set-up error".into()))))
}

/// Stores an item's console lines, at most [`MAX_CONSOLE_LINES`] lines and [`MAX_CONSOLE_BYTES`]
/// bytes, with a final line saying how many were dropped.
fn store_console(connection: &Connection, job_id: &str, lines: &[ConsoleLine]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut insert =
        connection.prepare_cached("INSERT INTO console (job_id, slice, stream, text) VALUES (?1, ?2, ?3, ?4)")?;
    let mut bytes = 0;
    let mut kept = 0;
    for line in lines {
        let size = line.text.len() + line.stream.len();
        if kept >= MAX_CONSOLE_LINES || bytes + size > MAX_CONSOLE_BYTES {
            break;
        }
        insert.execute(params![job_id, line.slice.map(|s| s as i64), truncate(&line.stream, 16), line.text])?;
        console_line(connection, job_id, connection.last_insert_rowid())?;
        bytes += size;
        kept += 1;
    }
    let dropped = lines.len() - kept;
    if dropped > 0 {
        let slice = lines.first().and_then(|line| line.slice).map(|s| s as i64);
        let text = format!(
            "[tessera] {dropped} more console lines dropped (a result keeps at most {MAX_CONSOLE_LINES} lines and {} KiB)",
            MAX_CONSOLE_BYTES / 1024
        );
        insert.execute(params![job_id, slice, "stderr", text])?;
        console_line(connection, job_id, connection.last_insert_rowid())?;
    }
    Ok(())
}
