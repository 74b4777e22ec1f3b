//! Jobs as the deployer sees them: deploy, cancel, status, results, console, bundles, and a
//! slice's attempt history; plus the state changes that end a job.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tessera_protocol::{
    Attempt, AttemptOutcome, ConsoleLine, JobDescriptor, JobState, JobStatus, JobSummary, RunningSlice, SliceHistory,
    SliceRecord, SliceStatus, Worktime,
};

use super::events::state_changed;
use super::{random_id, to_json, Json, NewJob, Scope, SliceState, Store, Stored};
use crate::error::{Error, Result};

/// Most running slices listed in a job's status.
const MAX_RUNNING_LISTED: i64 = 100;

impl Store {
    /// Stores a job and all its slices as queued; returns the job id.
    pub fn deploy(&mut self, job: NewJob, now: u64) -> Result<String> {
        self.write(|connection, _| {
            let id = random_id("j", 8);
            connection.execute(
                "INSERT INTO jobs (id, name, worktime, program, program_name, arguments, env, packages, bundle,
                                   state, total, created_ms, slice_timeout_ms, no_progress_timeout_ms, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    id,
                    job.name.clone().unwrap_or_else(|| id.clone()),
                    job.worktime.as_str(),
                    job.program,
                    job.program_name,
                    to_json(&job.arguments)?,
                    to_json(&job.env)?,
                    to_json(&job.packages)?,
                    job.bundle,
                    JobState::Running.as_str(),
                    job.slices.len() as i64,
                    now as i64,
                    job.slice_timeout_ms as i64,
                    job.no_progress_timeout_ms.map(|ms| ms as i64),
                    job.owner,
                ],
            )?;
            let mut insert =
                connection.prepare("INSERT INTO slices (job_id, idx, datum, state) VALUES (?1, ?2, ?3, ?4)")?;
            for (index, datum) in job.slices.iter().enumerate() {
                insert.execute(params![id, index as i64, to_json(datum)?, SliceState::Queued.as_str()])?;
            }
            // A stream's first event: the job as deployed.
            state_changed(connection, &id)?;
            Ok(id)
        })
    }

    /// Cancels a running job: nothing more is handed out and its active leases are abandoned.
    pub fn cancel(&mut self, job_id: &str, now: u64) -> Result<JobStatus> {
        self.write(|connection, _| {
            job_total(connection, job_id)?;
            let changed = connection.execute(
                "UPDATE jobs SET state = ?1 WHERE id = ?2 AND state = ?3",
                params![JobState::Cancelled.as_str(), job_id, JobState::Running.as_str()],
            )?;
            if changed > 0 {
                abandon_leases(connection, job_id, now)?;
                state_changed(connection, job_id)?;
            }
            job_status(connection, job_id)
        })
    }

    /// Stores an uploaded bundle under its sha256 (idempotent).
    pub fn put_bundle(&mut self, sha256: &str, bytes: &[u8]) -> Result<()> {
        self.write(|connection, _| {
            connection
                .execute("INSERT OR IGNORE INTO bundles (sha256, bytes) VALUES (?1, ?2)", params![sha256, bytes])?;
            Ok(())
        })
    }

    /// See [`job_status`].
    pub fn job_status(&self, job_id: &str) -> Result<JobStatus> {
        job_status(&self.connection, job_id)
    }

    /// See [`slice_history`].
    pub fn slice_history(&self, job_id: &str, slice: u64) -> Result<SliceHistory> {
        slice_history(&self.connection, job_id, slice)
    }

    /// See [`results`].
    pub fn results(&self, job_id: &str, from: u64, limit: u64) -> Result<(Vec<SliceRecord>, u64)> {
        results(&self.connection, job_id, from, limit)
    }

    /// See [`console`].
    pub fn console(&self, job_id: &str, after: u64, limit: u64) -> Result<Vec<ConsoleLine>> {
        console(&self.connection, job_id, after, limit)
    }

    /// See [`list_jobs`].
    pub fn list_jobs(&self, scope: &Scope) -> Result<Vec<JobSummary>> {
        list_jobs(&self.connection, scope)
    }

    /// See [`bundle`].
    pub fn bundle(&self, sha256: &str) -> Result<Vec<u8>> {
        bundle(&self.connection, sha256)
    }
}

/// A job's state, or `NotFound`.
pub(super) fn job_state(connection: &Connection, job_id: &str) -> Result<Option<JobState>> {
    let state: Option<Stored<JobState>> = connection
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    Ok(state.map(|state| state.0))
}

/// Ends every active lease of a job that stopped running (outcome `abandoned`) and puts their
/// slices back as queued without charging the attempt: the job's end was not the slice's fault.
pub(super) fn abandon_leases(connection: &Connection, job_id: &str, now: u64) -> Result<usize> {
    let ended = connection.execute(
        "UPDATE leases SET state = 'ended', outcome = ?1, ended_ms = ?2 WHERE job_id = ?3 AND state = 'active'",
        params![AttemptOutcome::Abandoned.as_str(), now as i64, job_id],
    )?;
    connection.execute(
        "UPDATE slices SET state = 'queued', current_lease = NULL, attempts = MAX(attempts - 1, 0)
         WHERE job_id = ?1 AND state = 'leased'",
        [job_id],
    )?;
    Ok(ended)
}

/// Fails a running job with `error` (nothing more is handed out); returns whether it was running.
/// The caller records the state change (after the console lines of the report that failed it, so
/// the final state stays the last event of the job's log).
pub(super) fn fail_job(connection: &Connection, job_id: &str, error: &str, now: u64) -> Result<bool> {
    let changed = connection.execute(
        "UPDATE jobs SET state = ?1, error = ?2 WHERE id = ?3 AND state = ?4",
        params![JobState::Failed.as_str(), error, job_id, JobState::Running.as_str()],
    )?;
    if changed > 0 {
        abandon_leases(connection, job_id, now)?;
    }
    Ok(changed > 0)
}

/// Marks a running job `complete` or `complete_with_errors` once no slice is queued or leased.
pub(super) fn finish_if_done(connection: &Connection, job_id: &str) -> Result<()> {
    let unfinished: Option<i64> = connection
        .prepare_cached("SELECT 1 FROM slices WHERE job_id = ?1 AND state IN ('queued', 'leased') LIMIT 1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    if unfinished.is_some() {
        return Ok(());
    }
    let errors: Option<i64> = connection
        .prepare_cached("SELECT 1 FROM slices WHERE job_id = ?1 AND state = 'error' LIMIT 1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    let state = if errors.is_some() { JobState::CompleteWithErrors } else { JobState::Complete };
    let changed = connection
        .prepare_cached("UPDATE jobs SET state = ?1 WHERE id = ?2 AND state = ?3")?
        .execute(params![state.as_str(), job_id, JobState::Running.as_str()])?;
    if changed > 0 {
        state_changed(connection, job_id)?;
    }
    Ok(())
}

/// What a sandbox needs to set up a job.
pub(super) fn job_descriptor(connection: &Connection, job_id: &str) -> Result<JobDescriptor> {
    Ok(connection
        .prepare_cached(
            "SELECT name, worktime, program, program_name, arguments, env, packages, bundle, slice_timeout_ms,
                no_progress_timeout_ms
         FROM jobs WHERE id = ?1",
        )?
        .query_row([job_id], |row| {
            Ok(JobDescriptor {
                job_id: job_id.into(),
                name: row.get(0)?,
                worktime: row.get::<_, Stored<Worktime>>(1)?.0,
                program: row.get(2)?,
                program_name: row.get(3)?,
                arguments: row.get::<_, Json<Vec<Value>>>(4)?.0,
                env: row.get::<_, Json<BTreeMap<String, String>>>(5)?.0,
                packages: row.get::<_, Json<Vec<String>>>(6)?.0,
                bundle: row.get(7)?,
                slice_timeout_ms: row.get::<_, i64>(8)? as u64,
                no_progress_timeout_ms: row.get::<_, Option<i64>>(9)?.map(|ms| ms as u64),
            })
        })?)
}

/// A job's slice count, or `NotFound`: a cheap existence check for paged reads (no counting).
fn job_total(connection: &Connection, job_id: &str) -> Result<u64> {
    let total: Option<i64> = connection
        .prepare_cached("SELECT total FROM jobs WHERE id = ?1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    total.map(|total| total as u64).ok_or_else(|| Error::NotFound { what: "job", id: job_id.into() })
}

/// A job's counts, state, limits and the progress of its running slices.
pub fn job_status(connection: &Connection, job_id: &str) -> Result<JobStatus> {
    let row = connection
        .prepare_cached(
            "SELECT name, worktime, state, total, error, created_ms, slice_timeout_ms, no_progress_timeout_ms
             FROM jobs WHERE id = ?1",
        )?
        .query_row([job_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Stored<Worktime>>(1)?.0,
                row.get::<_, Stored<JobState>>(2)?.0,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, Option<i64>>(7)?,
            ))
        })
        .optional()?;
    let Some((name, worktime, state, total, error, created_ms, slice_timeout_ms, no_progress_timeout_ms)) = row else {
        return Err(Error::NotFound { what: "job", id: job_id.into() });
    };
    let mut counts = [0u64; 4];
    let mut query = connection.prepare_cached("SELECT state, COUNT(*) FROM slices WHERE job_id = ?1 GROUP BY state")?;
    for row in query.query_map([job_id], |row| Ok((row.get::<_, Stored<SliceState>>(0)?.0, row.get::<_, i64>(1)?)))? {
        let (state, count) = row?;
        counts[state as usize] = count as u64;
    }
    let mut query = connection.prepare_cached(
        "SELECT s.idx, l.worker_id, l.progress FROM slices s INDEXED BY slices_by_state
         JOIN leases l ON l.id = s.current_lease
         WHERE s.job_id = ?1 AND s.state = 'leased' ORDER BY s.idx LIMIT ?2",
    )?;
    let running = query
        .query_map(params![job_id, MAX_RUNNING_LISTED], |row| {
            Ok(RunningSlice { slice: row.get::<_, i64>(0)? as u64, worker_id: row.get(1)?, progress: row.get(2)? })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(JobStatus {
        job_id: job_id.into(),
        name,
        worktime,
        state,
        total: total as u64,
        done: counts[SliceState::Ok as usize],
        errors: counts[SliceState::Error as usize],
        queued: counts[SliceState::Queued as usize],
        leased: counts[SliceState::Leased as usize],
        error,
        created_ms: created_ms as u64,
        slice_timeout_ms: slice_timeout_ms as u64,
        no_progress_timeout_ms: no_progress_timeout_ms.map(|ms| ms as u64),
        running,
    })
}

/// The jobs `scope` may see, newest first.
pub fn list_jobs(connection: &Connection, scope: &Scope) -> Result<Vec<JobSummary>> {
    const COLUMNS: &str = "SELECT id, name, state, total,
            (SELECT COUNT(*) FROM slices WHERE job_id = jobs.id AND state = 'ok'),
            (SELECT COUNT(*) FROM slices WHERE job_id = jobs.id AND state = 'error')
         FROM jobs";
    let (mut query, owner) = match scope {
        Scope::All => (
            connection.prepare_cached(&format!("{COLUMNS} WHERE ?1 IS NULL ORDER BY created_ms DESC, rowid DESC"))?,
            None,
        ),
        Scope::OwnedBy(key) => (
            connection.prepare_cached(&format!("{COLUMNS} WHERE owner = ?1 ORDER BY created_ms DESC, rowid DESC"))?,
            Some(key.as_str()),
        ),
    };
    let rows = query.query_map([owner], |row| {
        Ok(JobSummary {
            job_id: row.get(0)?,
            name: row.get(1)?,
            state: row.get::<_, Stored<JobState>>(2)?.0,
            total: row.get::<_, i64>(3)? as u64,
            done: row.get::<_, i64>(4)? as u64,
            errors: row.get::<_, i64>(5)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Slices `from..from+limit` in order, with their outcome so far, and the job's slice count.
pub fn results(connection: &Connection, job_id: &str, from: u64, limit: u64) -> Result<(Vec<SliceRecord>, u64)> {
    let total = job_total(connection, job_id)?;
    let mut query = connection.prepare_cached(
        "SELECT idx, state, result, error, stack FROM slices WHERE job_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
    )?;
    let rows = query.query_map(params![job_id, from as i64, limit as i64], |row| {
        Ok(SliceRecord {
            slice: row.get::<_, i64>(0)? as u64,
            status: slice_status(row.get::<_, Stored<SliceState>>(1)?.0),
            value: row.get::<_, Option<Json<Value>>>(2)?.map(|json| json.0),
            error: row.get(3)?,
            stack: row.get(4)?,
        })
    })?;
    Ok((rows.collect::<rusqlite::Result<_>>()?, total))
}

pub(super) fn slice_status(state: SliceState) -> SliceStatus {
    match state {
        SliceState::Ok => SliceStatus::Ok,
        SliceState::Error => SliceStatus::Error,
        SliceState::Queued | SliceState::Leased => SliceStatus::Pending,
    }
}

/// Console lines of a job after sequence number `after`.
pub fn console(connection: &Connection, job_id: &str, after: u64, limit: u64) -> Result<Vec<ConsoleLine>> {
    job_total(connection, job_id)?;
    let mut query = connection.prepare_cached(
        "SELECT seq, slice, stream, text FROM console WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = query.query_map(params![job_id, after as i64, limit as i64], |row| {
        Ok(ConsoleLine {
            seq: Some(row.get::<_, i64>(0)? as u64),
            slice: row.get::<_, Option<i64>>(1)?.map(|s| s as u64),
            stream: row.get(2)?,
            text: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A stored bundle's bytes.
pub fn bundle(connection: &Connection, sha256: &str) -> Result<Vec<u8>> {
    connection
        .prepare_cached("SELECT bytes FROM bundles WHERE sha256 = ?1")?
        .query_row([sha256], |row| row.get(0))
        .optional()?
        .ok_or_else(|| Error::NotFound { what: "bundle", id: sha256.into() })
}

/// A slice's status and every attempt at it, oldest first.
pub fn slice_history(connection: &Connection, job_id: &str, slice: u64) -> Result<SliceHistory> {
    job_total(connection, job_id)?;
    let row: Option<(Stored<SliceState>, i64)> = connection
        .prepare_cached("SELECT state, attempts FROM slices WHERE job_id = ?1 AND idx = ?2")?
        .query_row(params![job_id, slice as i64], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((state, attempts_counted)) = row else {
        return Err(Error::NotFound { what: "slice", id: format!("{job_id}/{slice}") });
    };
    let mut query = connection.prepare_cached(
        "SELECT l.id, l.worker_id, l.started_ms, l.ended_ms, l.outcome, l.message, c.compute_ms
         FROM leases l LEFT JOIN credits c ON c.lease_id = l.id
         WHERE l.job_id = ?1 AND l.idx = ?2 ORDER BY l.started_ms, l.id",
    )?;
    let attempts = query
        .query_map(params![job_id, slice as i64], |row| {
            Ok(Attempt {
                lease_id: row.get(0)?,
                worker_id: row.get(1)?,
                started_ms: row.get::<_, i64>(2)? as u64,
                ended_ms: row.get::<_, Option<i64>>(3)?.map(|ms| ms as u64),
                outcome: row.get::<_, Stored<AttemptOutcome>>(4)?.0,
                message: row.get(5)?,
                compute_ms: row.get::<_, Option<i64>>(6)?.map(|ms| ms.max(0) as u64),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(SliceHistory {
        job_id: job_id.into(),
        slice,
        status: slice_status(state.0),
        attempts_counted: attempts_counted.max(0) as u32,
        attempts,
    })
}
