//! Housekeeping: deleting finished jobs, by the deployer (`DELETE /v1/jobs/{id}`) or once they
//! are older than the retention period (`tessera serve --retention`).
//!
//! Deleting a job removes everything stored for it — its slices (data and results), leases
//! (attempt history), console lines, set-up error reports and the job row — in one unit of work,
//! so a job is either all there or all gone. Its bundle goes too when no remaining job names it
//! and it was not uploaded within [`BUNDLE_GRACE_MS`] (a deploy naming it may be on its way).
//!
//! The credits ledger is **not** touched: contributors keep their totals, and each ledger row
//! keeps the id of the job it was earned on (a dangling id once the job is gone; job ids are 64
//! random bits, never reused in practice). Nothing else is touched either: workers, keys,
//! contributors and other jobs' rows stay as they are.

use rusqlite::{params, Connection, OptionalExtension};
use tessera_protocol::{JobDeleted, JobState};

use super::{Store, Stored};
use crate::error::{Error, Result};

/// A bundle uploaded this recently is kept even when no job names it: its deployer may be about
/// to deploy a job that does (upload, then deploy, is how the CLI sends one).
pub const BUNDLE_GRACE_MS: u64 = 60 * 60 * 1_000;

/// Tables holding a job's rows, keyed by `job_id`, in the order they are emptied (the job row
/// itself goes last: `slices` references it). A table added for jobs later belongs here too.
const JOB_TABLES: [&str; 5] = ["job_events", "leases", "console", "setup_errors", "slices"];

impl Store {
    /// Deletes a job the deployer no longer wants, with everything stored for it. A running job
    /// is refused ([`Error::Conflict`]): it must be cancelled first, so no worker's accepted
    /// work disappears under it without the deployer having said so.
    pub fn delete_job(&mut self, job_id: &str, now: u64) -> Result<JobDeleted> {
        self.write(|connection, _| {
            let state: Option<Stored<JobState>> = connection
                .prepare_cached("SELECT state FROM jobs WHERE id = ?1")?
                .query_row([job_id], |row| row.get(0))
                .optional()?;
            match state.map(|state| state.0) {
                None => Err(Error::NotFound { what: "job", id: job_id.into() }),
                Some(JobState::Running) => Err(Error::Conflict(format!(
                    "job `{job_id}` is still running: cancel it first (`tessera cancel {job_id}`, or \
                     `tessera delete --force {job_id}` to cancel and delete)"
                ))),
                Some(_) => remove_job(connection, job_id, now),
            }
        })
    }

    /// Deletes job `job_id` if it still ended at or before `cutoff` (checked inside the same unit
    /// of work, so a job cannot change between the look and the delete); `None` when it did not
    /// or is gone already. The retention sweep's step: one job per unit of work, so the writer
    /// is never held for more than one job.
    pub fn delete_expired_job(&mut self, job_id: &str, cutoff: u64, now: u64) -> Result<Option<JobDeleted>> {
        self.write(|connection, _| {
            let expired: Option<i64> = connection
                .prepare_cached(
                    "SELECT 1 FROM jobs WHERE id = ?1 AND state <> 'running' AND ended_ms IS NOT NULL
                     AND ended_ms <= ?2",
                )?
                .query_row(params![job_id, cutoff as i64], |row| row.get(0))
                .optional()?;
            match expired {
                Some(_) => remove_job(connection, job_id, now).map(Some),
                None => Ok(None),
            }
        })
    }

    /// One whole retention pass on this store: deletes every job that ended at or before
    /// `now - retention_ms`, each in its own unit of work, and returns what was deleted. The
    /// server runs the same steps through its writer ([`expired_jobs`] and
    /// [`Store::delete_expired_job`]); this form takes `now` so tests need not wait.
    pub fn sweep_expired(&mut self, now: u64, retention_ms: u64) -> Result<Vec<JobDeleted>> {
        let cutoff = now.saturating_sub(retention_ms);
        let mut deleted = Vec::new();
        loop {
            let batch = expired_jobs(&self.connection, cutoff, SWEEP_BATCH)?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            for job_id in batch {
                deleted.extend(self.delete_expired_job(&job_id, cutoff, now)?);
            }
        }
    }
}

/// Jobs looked up per query of a retention pass.
pub const SWEEP_BATCH: usize = 16;

/// Up to `limit` jobs that reached a final state at or before `cutoff`, longest ended first.
pub fn expired_jobs(connection: &Connection, cutoff: u64, limit: usize) -> Result<Vec<String>> {
    let mut query = connection.prepare_cached(
        "SELECT id FROM jobs INDEXED BY jobs_by_ended
         WHERE ended_ms IS NOT NULL AND ended_ms <= ?1 AND state <> 'running' ORDER BY ended_ms LIMIT ?2",
    )?;
    let ids = query.query_map(params![cutoff as i64, limit as i64], |row| row.get(0))?;
    Ok(ids.collect::<rusqlite::Result<_>>()?)
}

/// Removes a finished job and its rows (see the module comment); the caller checked it may.
fn remove_job(connection: &Connection, job_id: &str, now: u64) -> Result<JobDeleted> {
    let bundle: Option<String> =
        connection.prepare_cached("SELECT bundle FROM jobs WHERE id = ?1")?.query_row([job_id], |row| row.get(0))?;
    let slices = connection
        .prepare_cached("SELECT COUNT(*) FROM slices WHERE job_id = ?1")?
        .query_row([job_id], |row| row.get::<_, i64>(0))?;
    for table in JOB_TABLES {
        connection.prepare_cached(&format!("DELETE FROM {table} WHERE job_id = ?1"))?.execute([job_id])?;
    }
    connection.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute([job_id])?;
    let bundle_deleted = match &bundle {
        Some(sha256) => {
            connection
                .prepare_cached(
                    "DELETE FROM bundles WHERE sha256 = ?1 AND uploaded_ms <= ?2
                     AND NOT EXISTS (SELECT 1 FROM jobs WHERE bundle = ?1)",
                )?
                .execute(params![sha256, now.saturating_sub(BUNDLE_GRACE_MS) as i64])?
                > 0
        }
        None => false,
    };
    Ok(JobDeleted { job_id: job_id.into(), slices: slices.max(0) as u64, bundle_deleted })
}
