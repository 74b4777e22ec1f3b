//! The durable store: every job, slice, lease and result lives in one SQLite database in WAL mode.
//!
//! Each public method is one transaction, committed (with `synchronous=FULL`) before it returns,
//! so an acknowledged state change survives a crash. Callers validate input first; the store
//! still refuses anything that would break its invariants (wrong token, unknown lease) and then
//! rolls back, so a refused batch changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;
use tessera_protocol::{
    ConsoleLine, HeartbeatItem, JobDescriptor, JobState, JobStatus, JobSummary, Lease, ResultAck, ResultItem,
    ResultStatus, SliceOutcome, SliceRecord, SliceStatus, Worktime,
};

use crate::error::{Error, Result};

/// A deploy that passed validation, ready to store.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub name: Option<String>,
    pub worktime: Worktime,
    pub program: String,
    pub program_name: String,
    pub arguments: Vec<Value>,
    pub env: BTreeMap<String, String>,
    pub packages: Vec<String>,
    pub bundle: Option<String>,
    pub slices: Vec<Value>,
}

/// Timing and retry rules the store applies.
#[derive(Clone, Copy, Debug)]
pub struct LeasePolicy {
    /// Lifetime of a lease without a heartbeat.
    pub ttl_ms: u64,
    /// Attempts (leases) a slice gets before worker faults make it an error.
    pub max_attempts: u32,
}

/// The SQLite connection and the operations on it.
pub struct Store {
    connection: Connection,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    worktime TEXT NOT NULL,
    program TEXT NOT NULL,
    program_name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    env TEXT NOT NULL,
    packages TEXT NOT NULL,
    bundle TEXT,
    state TEXT NOT NULL,
    error TEXT,
    total INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    last_leased_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS slices (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    datum TEXT NOT NULL,
    state TEXT NOT NULL,            -- queued | leased | ok | error
    attempts INTEGER NOT NULL DEFAULT 0,
    current_lease TEXT,
    result TEXT,
    error TEXT,
    stack TEXT,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS slices_by_state ON slices(job_id, state, idx);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL,            -- active | completed | expired
    progress REAL
);
CREATE INDEX IF NOT EXISTS active_leases_by_deadline ON leases(state, deadline_ms);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    user_agent TEXT,
    sandboxes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS console (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    slice INTEGER,
    stream TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_by_job ON console(job_id, seq);
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY,
    bytes BLOB NOT NULL
);
"#;

/// Random identifiers and tokens, hex-encoded.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), buffer.as_mut_slice());
    format!("{prefix}{}", hex::encode(buffer))
}

fn parse_state(text: &str) -> JobState {
    match text {
        "complete" => JobState::Complete,
        "failed" => JobState::Failed,
        "cancelled" => JobState::Cancelled,
        _ => JobState::Active,
    }
}

fn parse_worktime(text: &str) -> Worktime {
    text.parse().unwrap_or(Worktime::MapBasic)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_default()
}

impl Store {
    /// Opens (creating if needed) the database at `path` in WAL mode with full syncs.
    pub fn open(path: &Path) -> Result<Store> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(Store { connection })
    }

    /// Records a new worker and returns `(worker_id, token)`.
    pub fn register_worker(&mut self, user_agent: Option<&str>, sandboxes: u32, now: u64) -> Result<(String, String)> {
        let id = random_id("w", 8);
        let token = random_id("", 24);
        self.connection.execute(
            "INSERT INTO workers (id, token, user_agent, sandboxes, created_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![id, token, user_agent, sandboxes, now as i64],
        )?;
        Ok((id, token))
    }

    /// The worker a bearer token belongs to; marks it seen.
    pub fn authenticate_worker(&mut self, token: &str, now: u64) -> Result<String> {
        let id: Option<String> = self
            .connection
            .query_row("SELECT id FROM workers WHERE token = ?1", [token], |row| row.get(0))
            .optional()?;
        let id = id.ok_or_else(|| Error::WrongToken {
            field: "authorization".into(),
            message: "unknown worker token; register with POST /v1/workers".into(),
        })?;
        self.connection.execute("UPDATE workers SET last_seen_ms = ?1 WHERE id = ?2", params![now as i64, id])?;
        Ok(id)
    }

    /// Stores an uploaded bundle under its sha256 (idempotent).
    pub fn put_bundle(&mut self, sha256: &str, bytes: &[u8]) -> Result<()> {
        self.connection
            .execute("INSERT OR IGNORE INTO bundles (sha256, bytes) VALUES (?1, ?2)", params![sha256, bytes])?;
        Ok(())
    }

    /// A stored bundle's bytes.
    pub fn bundle(&self, sha256: &str) -> Result<Vec<u8>> {
        self.connection
            .query_row("SELECT bytes FROM bundles WHERE sha256 = ?1", [sha256], |row| row.get(0))
            .optional()?
            .ok_or_else(|| Error::NotFound { what: "bundle", id: sha256.into() })
    }

    /// Stores a job and all its slices as queued; returns the job id.
    pub fn deploy(&mut self, job: NewJob, now: u64) -> Result<String> {
        let id = random_id("j", 8);
        let transaction = self.connection.transaction()?;
        transaction.execute(
            "INSERT INTO jobs (id, name, worktime, program, program_name, arguments, env, packages, bundle, state, total, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'active', ?10, ?11)",
            params![
                id,
                job.name.clone().unwrap_or_else(|| id.clone()),
                job.worktime.as_str(),
                job.program,
                job.program_name,
                to_json(&job.arguments),
                to_json(&job.env),
                to_json(&job.packages),
                job.bundle,
                job.slices.len() as i64,
                now as i64,
            ],
        )?;
        {
            let mut insert =
                transaction.prepare("INSERT INTO slices (job_id, idx, datum, state) VALUES (?1, ?2, ?3, 'queued')")?;
            for (index, datum) in job.slices.iter().enumerate() {
                insert.execute(params![id, index as i64, to_json(datum)])?;
            }
        }
        transaction.commit()?;
        Ok(id)
    }

    /// Queues again the slices of leases whose deadline passed; returns how many were requeued.
    pub fn expire_leases(&mut self, now: u64, policy: LeasePolicy) -> Result<usize> {
        let transaction = self.connection.transaction()?;
        let expired: Vec<(String, String, i64)> = {
            let mut query = transaction
                .prepare("SELECT id, job_id, idx FROM leases WHERE state = 'active' AND deadline_ms < ?1")?;
            let rows = query.query_map([now as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (lease_id, job_id, index) in &expired {
            release_slice(&transaction, lease_id, job_id, *index, "lease expired without a result", policy)?;
        }
        transaction.commit()?;
        Ok(expired.len())
    }

    /// Leases up to `max` queued slices to `worker_id`: preferred jobs first, then round-robin
    /// across the other active jobs (least recently leased first).
    pub fn lease(
        &mut self,
        worker_id: &str,
        max: usize,
        prefer_jobs: &[String],
        known_jobs: &[String],
        now: u64,
        policy: LeasePolicy,
    ) -> Result<(Vec<Lease>, Vec<JobDescriptor>)> {
        let transaction = self.connection.transaction()?;
        let mut jobs: Vec<String> = {
            let mut query = transaction.prepare(
                "SELECT id FROM jobs WHERE state = 'active'
                 AND EXISTS (SELECT 1 FROM slices WHERE job_id = jobs.id AND state = 'queued')
                 ORDER BY last_leased_ms, created_ms",
            )?;
            let rows = query.query_map([], |row| row.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // Preferred (warm) jobs move to the front, keeping their relative order.
        jobs.sort_by_key(|job| !prefer_jobs.contains(job));

        let mut leases = Vec::new();
        let mut remaining = max;
        let mut jobs_left = jobs.len();
        for job_id in &jobs {
            if remaining == 0 {
                break;
            }
            let share = if prefer_jobs.contains(job_id) { remaining } else { remaining.div_ceil(jobs_left) };
            jobs_left -= 1;
            let picked: Vec<(i64, String)> = {
                let mut query = transaction.prepare(
                    "SELECT idx, datum FROM slices WHERE job_id = ?1 AND state = 'queued' ORDER BY idx LIMIT ?2",
                )?;
                let rows = query.query_map(params![job_id, share as i64], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (index, datum) in picked {
                let lease_id = random_id("l", 8);
                let token = random_id("", 12);
                transaction.execute(
                    "INSERT INTO leases (id, token, job_id, idx, worker_id, deadline_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active')",
                    params![lease_id, token, job_id, index, worker_id, (now + policy.ttl_ms) as i64],
                )?;
                transaction.execute(
                    "UPDATE slices SET state = 'leased', attempts = attempts + 1, current_lease = ?1 WHERE job_id = ?2 AND idx = ?3",
                    params![lease_id, job_id, index],
                )?;
                leases.push(Lease {
                    lease_id,
                    token,
                    job_id: job_id.clone(),
                    slice: index as u64,
                    datum: serde_json::from_str(&datum).unwrap_or(Value::Null),
                    ttl_ms: policy.ttl_ms,
                });
                remaining -= 1;
            }
            transaction.execute("UPDATE jobs SET last_leased_ms = ?1 WHERE id = ?2", params![now as i64, job_id])?;
        }

        let mut descriptors = Vec::new();
        let mut described = HashSet::new();
        for lease in &leases {
            if !known_jobs.contains(&lease.job_id) && described.insert(lease.job_id.clone()) {
                descriptors.push(job_descriptor(&transaction, &lease.job_id)?);
            }
        }
        transaction.commit()?;
        Ok((leases, descriptors))
    }

    /// Extends the worker's active leases; returns `(extended, lost)` lease ids.
    pub fn heartbeat(
        &mut self,
        worker_id: &str,
        items: &[HeartbeatItem],
        now: u64,
        policy: LeasePolicy,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let transaction = self.connection.transaction()?;
        let mut extended = Vec::new();
        let mut lost = Vec::new();
        for item in items {
            let changed = transaction.execute(
                "UPDATE leases SET deadline_ms = ?1, progress = COALESCE(?2, progress)
                 WHERE id = ?3 AND token = ?4 AND worker_id = ?5 AND state = 'active'
                 AND (SELECT state FROM jobs WHERE id = leases.job_id) = 'active'",
                params![(now + policy.ttl_ms) as i64, item.progress, item.lease_id, item.token, worker_id],
            )?;
            if changed == 1 {
                extended.push(item.lease_id.clone());
            } else {
                lost.push(item.lease_id.clone());
            }
        }
        transaction.commit()?;
        Ok((extended, lost))
    }

    /// Applies a batch of results atomically: an unknown lease or a wrong token refuses the whole
    /// batch; otherwise every item gets an ack (accepted, duplicate, stale or requeued).
    pub fn submit_results(
        &mut self,
        worker_id: &str,
        items: &[ResultItem],
        policy: LeasePolicy,
    ) -> Result<Vec<ResultAck>> {
        let transaction = self.connection.transaction()?;
        let mut acks = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let lease: Option<(String, String, String, i64, String)> = transaction
                .query_row(
                    "SELECT token, worker_id, job_id, idx, state FROM leases WHERE id = ?1",
                    [&item.lease_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
                )
                .optional()?;
            let Some((token, owner, job_id, index, lease_state)) = lease else {
                return Err(Error::NotFound { what: "lease", id: item.lease_id.clone() });
            };
            if token != item.token || owner != worker_id {
                return Err(Error::WrongToken {
                    field: format!("results[{position}].token"),
                    message: format!("the token does not match lease `{}`", item.lease_id),
                });
            }
            let job_state: String =
                transaction.query_row("SELECT state FROM jobs WHERE id = ?1", [&job_id], |row| row.get(0))?;
            let status = match lease_state.as_str() {
                "completed" => ResultStatus::Duplicate,
                "active" if job_state == "active" => {
                    apply_outcome(&transaction, &item.lease_id, &job_id, index, &item.outcome, policy)?
                }
                _ => ResultStatus::Stale,
            };
            if matches!(status, ResultStatus::Accepted | ResultStatus::Requeued) {
                let mut insert = transaction
                    .prepare_cached("INSERT INTO console (job_id, slice, stream, text) VALUES (?1, ?2, ?3, ?4)")?;
                for line in &item.console {
                    insert.execute(params![job_id, line.slice.map(|s| s as i64), line.stream, line.text])?;
                }
            }
            acks.push(ResultAck { lease_id: item.lease_id.clone(), status });
        }
        transaction.commit()?;
        Ok(acks)
    }

    /// A job's slice count, or `NotFound`: a cheap existence check for paged reads (no counting).
    fn job_total(&self, job_id: &str) -> Result<u64> {
        let total: Option<i64> =
            self.connection.query_row("SELECT total FROM jobs WHERE id = ?1", [job_id], |row| row.get(0)).optional()?;
        total.map(|total| total as u64).ok_or_else(|| Error::NotFound { what: "job", id: job_id.into() })
    }

    /// A job's counts and state.
    pub fn job_status(&self, job_id: &str) -> Result<JobStatus> {
        let row = self
            .connection
            .query_row(
                "SELECT name, worktime, state, total, error, created_ms FROM jobs WHERE id = ?1",
                [job_id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((name, worktime, state, total, error, created_ms)) = row else {
            return Err(Error::NotFound { what: "job", id: job_id.into() });
        };
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut query =
            self.connection.prepare_cached("SELECT state, COUNT(*) FROM slices WHERE job_id = ?1 GROUP BY state")?;
        for row in query.query_map([job_id], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))? {
            let (state, count) = row?;
            counts.insert(state, count as u64);
        }
        let count = |state: &str| counts.get(state).copied().unwrap_or(0);
        Ok(JobStatus {
            job_id: job_id.into(),
            name,
            worktime: parse_worktime(&worktime),
            state: parse_state(&state),
            total: total as u64,
            done: count("ok"),
            errors: count("error"),
            queued: count("queued"),
            leased: count("leased"),
            error,
            created_ms: created_ms as u64,
        })
    }

    /// Every job, newest first.
    pub fn list_jobs(&self) -> Result<Vec<JobSummary>> {
        let mut query = self.connection.prepare(
            "SELECT id, name, state, total,
                (SELECT COUNT(*) FROM slices WHERE job_id = jobs.id AND state = 'ok'),
                (SELECT COUNT(*) FROM slices WHERE job_id = jobs.id AND state = 'error')
             FROM jobs ORDER BY created_ms DESC",
        )?;
        let rows = query.query_map([], |row| {
            Ok(JobSummary {
                job_id: row.get(0)?,
                name: row.get(1)?,
                state: parse_state(&row.get::<_, String>(2)?),
                total: row.get::<_, i64>(3)? as u64,
                done: row.get::<_, i64>(4)? as u64,
                errors: row.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Slices `from..from+limit` in order, with their outcome so far.
    pub fn results(&self, job_id: &str, from: u64, limit: u64) -> Result<(Vec<SliceRecord>, u64)> {
        let total = self.job_total(job_id)?;
        let mut query = self.connection.prepare_cached(
            "SELECT idx, state, result, error, stack FROM slices WHERE job_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
        )?;
        let rows = query.query_map(params![job_id, from as i64, limit as i64], |row| {
            let state: String = row.get(1)?;
            let result: Option<String> = row.get(2)?;
            Ok(SliceRecord {
                slice: row.get::<_, i64>(0)? as u64,
                status: match state.as_str() {
                    "ok" => SliceStatus::Ok,
                    "error" => SliceStatus::Error,
                    _ => SliceStatus::Pending,
                },
                value: result.map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)),
                error: row.get(3)?,
                stack: row.get(4)?,
            })
        })?;
        Ok((rows.collect::<rusqlite::Result<_>>()?, total))
    }

    /// Console lines of a job after sequence number `after`.
    pub fn console(&self, job_id: &str, after: u64, limit: u64) -> Result<Vec<ConsoleLine>> {
        self.job_total(job_id)?;
        let mut query = self.connection.prepare_cached(
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

    /// Cancels an active job: nothing more is handed out and held leases are lost.
    pub fn cancel(&mut self, job_id: &str) -> Result<JobStatus> {
        self.job_status(job_id)?;
        self.connection.execute("UPDATE jobs SET state = 'cancelled' WHERE id = ?1 AND state = 'active'", [job_id])?;
        self.job_status(job_id)
    }
}

fn job_descriptor(transaction: &Transaction, job_id: &str) -> Result<JobDescriptor> {
    Ok(transaction.query_row(
        "SELECT name, worktime, program, program_name, arguments, env, packages, bundle FROM jobs WHERE id = ?1",
        [job_id],
        |row| {
            Ok(JobDescriptor {
                job_id: job_id.into(),
                name: row.get(0)?,
                worktime: parse_worktime(&row.get::<_, String>(1)?),
                program: row.get(2)?,
                program_name: row.get(3)?,
                arguments: from_json(&row.get::<_, String>(4)?),
                env: from_json(&row.get::<_, String>(5)?),
                packages: from_json(&row.get::<_, String>(6)?),
                bundle: row.get(7)?,
            })
        },
    )?)
}

/// Records one outcome for the slice behind an active lease.
fn apply_outcome(
    transaction: &Transaction,
    lease_id: &str,
    job_id: &str,
    index: i64,
    outcome: &SliceOutcome,
    policy: LeasePolicy,
) -> Result<ResultStatus> {
    match outcome {
        SliceOutcome::Ok { value } => {
            transaction.execute(
                "UPDATE slices SET state = 'ok', result = ?1, current_lease = NULL WHERE job_id = ?2 AND idx = ?3",
                params![to_json(value), job_id, index],
            )?;
        }
        SliceOutcome::Error { message, stack } => {
            transaction.execute(
                "UPDATE slices SET state = 'error', error = ?1, stack = ?2, current_lease = NULL WHERE job_id = ?3 AND idx = ?4",
                params![message, stack, job_id, index],
            )?;
        }
        SliceOutcome::JobError { message, stack } => {
            let error = match stack {
                Some(stack) if !stack.is_empty() => format!("{message}\n{stack}"),
                _ => message.clone(),
            };
            transaction.execute(
                "UPDATE jobs SET state = 'failed', error = ?1 WHERE id = ?2 AND state = 'active'",
                params![error, job_id],
            )?;
            transaction.execute(
                "UPDATE slices SET state = 'queued', current_lease = NULL WHERE job_id = ?1 AND idx = ?2",
                params![job_id, index],
            )?;
            transaction.execute("UPDATE leases SET state = 'completed' WHERE id = ?1", [lease_id])?;
            tracing::warn!(job = job_id, error = %message, "job failed");
            return Ok(ResultStatus::Accepted);
        }
        SliceOutcome::WorkerFault { message } => {
            release_slice(transaction, lease_id, job_id, index, message, policy)?;
            return Ok(ResultStatus::Requeued);
        }
    }
    transaction.execute("UPDATE leases SET state = 'completed' WHERE id = ?1", [lease_id])?;
    complete_if_done(transaction, job_id)?;
    Ok(ResultStatus::Accepted)
}

/// Ends a lease without an outcome: its slice is queued again, or becomes an error after too many attempts.
fn release_slice(
    transaction: &Transaction,
    lease_id: &str,
    job_id: &str,
    index: i64,
    reason: &str,
    policy: LeasePolicy,
) -> Result<()> {
    transaction.execute("UPDATE leases SET state = 'expired' WHERE id = ?1", [lease_id])?;
    let attempts: i64 = transaction.query_row(
        "SELECT attempts FROM slices WHERE job_id = ?1 AND idx = ?2",
        params![job_id, index],
        |row| row.get(0),
    )?;
    if attempts >= policy.max_attempts as i64 {
        transaction.execute(
            "UPDATE slices SET state = 'error', error = ?1, current_lease = NULL WHERE job_id = ?2 AND idx = ?3 AND current_lease = ?4",
            params![format!("gave up after {attempts} attempts; last: {reason}"), job_id, index, lease_id],
        )?;
        complete_if_done(transaction, job_id)?;
    } else {
        transaction.execute(
            "UPDATE slices SET state = 'queued', current_lease = NULL WHERE job_id = ?1 AND idx = ?2 AND current_lease = ?3",
            params![job_id, index, lease_id],
        )?;
    }
    Ok(())
}

fn complete_if_done(transaction: &Transaction, job_id: &str) -> Result<()> {
    transaction.execute(
        "UPDATE jobs SET state = 'complete' WHERE id = ?1 AND state = 'active'
         AND NOT EXISTS (SELECT 1 FROM slices WHERE job_id = ?1 AND state IN ('queued', 'leased'))",
        [job_id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: LeasePolicy = LeasePolicy { ttl_ms: 1_000, max_attempts: 2 };

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
        }
    }

    fn result(lease: &Lease, outcome: SliceOutcome) -> ResultItem {
        ResultItem { lease_id: lease.lease_id.clone(), token: lease.token.clone(), outcome, console: vec![] }
    }

    fn ok(lease: &Lease, value: Value) -> ResultItem {
        result(lease, SliceOutcome::Ok { value })
    }

    #[test]
    fn lease_and_accept_completes_the_job() {
        let (_dir, mut store) = store();
        let (worker, _) = store.register_worker(None, 1, 0).unwrap();
        let job_id = store.deploy(job(3), 0).unwrap();
        let (leases, jobs) = store.lease(&worker, 10, &[], &[], 0, POLICY).unwrap();
        assert_eq!(leases.len(), 3);
        assert_eq!(jobs.len(), 1);
        let results: Vec<_> = leases.iter().map(|l| ok(l, l.datum.clone())).collect();
        let acks = store.submit_results(&worker, &results, POLICY).unwrap();
        assert!(acks.iter().all(|a| a.status == ResultStatus::Accepted));
        let again = store.submit_results(&worker, &results, POLICY).unwrap();
        assert!(again.iter().all(|a| a.status == ResultStatus::Duplicate));
        let status = store.job_status(&job_id).unwrap();
        assert_eq!((status.state, status.done), (JobState::Complete, 3));
    }

    #[test]
    fn expired_leases_are_requeued_and_stale_results_refused() {
        let (_dir, mut store) = store();
        let (worker, _) = store.register_worker(None, 1, 0).unwrap();
        store.deploy(job(1), 0).unwrap();
        let (first, _) = store.lease(&worker, 1, &[], &[], 0, POLICY).unwrap();
        assert_eq!(store.expire_leases(5_000, POLICY).unwrap(), 1);
        let (second, jobs) = store.lease(&worker, 1, &[], &[first[0].job_id.clone()], 5_000, POLICY).unwrap();
        assert_eq!(second[0].slice, first[0].slice);
        assert!(jobs.is_empty(), "a known job is not described again");
        let stale = store.submit_results(&worker, &[ok(&first[0], json!(1))], POLICY).unwrap();
        assert_eq!(stale[0].status, ResultStatus::Stale);
        let fresh = store.submit_results(&worker, &[ok(&second[0], json!(2))], POLICY).unwrap();
        assert_eq!(fresh[0].status, ResultStatus::Accepted);
    }

    #[test]
    fn wrong_token_refuses_the_whole_batch() {
        let (_dir, mut store) = store();
        let (worker, _) = store.register_worker(None, 1, 0).unwrap();
        let job_id = store.deploy(job(2), 0).unwrap();
        let (leases, _) = store.lease(&worker, 2, &[], &[], 0, POLICY).unwrap();
        let mut forged = ok(&leases[1], json!(0));
        forged.token = "forged".into();
        let err = store.submit_results(&worker, &[ok(&leases[0], json!(0)), forged], POLICY).unwrap_err();
        assert!(matches!(err, Error::WrongToken { ref field, .. } if field == "results[1].token"));
        assert_eq!(store.job_status(&job_id).unwrap().done, 0, "nothing stored half-way");
    }

    #[test]
    fn worker_faults_retry_then_give_up() {
        let (_dir, mut store) = store();
        let (worker, _) = store.register_worker(None, 1, 0).unwrap();
        let job_id = store.deploy(job(1), 0).unwrap();
        for attempt in 1..=2 {
            let (leases, _) = store.lease(&worker, 1, &[], &[], 0, POLICY).unwrap();
            assert_eq!(leases.len(), 1, "attempt {attempt}");
            let fault = result(&leases[0], SliceOutcome::WorkerFault { message: "sandbox crashed".into() });
            assert_eq!(store.submit_results(&worker, &[fault], POLICY).unwrap()[0].status, ResultStatus::Requeued);
        }
        let status = store.job_status(&job_id).unwrap();
        assert_eq!((status.state, status.errors), (JobState::Complete, 1));
    }

    #[test]
    fn job_error_fails_the_job_and_stops_leasing() {
        let (_dir, mut store) = store();
        let (worker, _) = store.register_worker(None, 1, 0).unwrap();
        let job_id = store.deploy(job(5), 0).unwrap();
        let (leases, _) = store.lease(&worker, 1, &[], &[], 0, POLICY).unwrap();
        let failure =
            result(&leases[0], SliceOutcome::JobError { message: "SyntaxError".into(), stack: Some("line 1".into()) });
        store.submit_results(&worker, &[failure], POLICY).unwrap();
        let status = store.job_status(&job_id).unwrap();
        assert_eq!(status.state, JobState::Failed);
        assert!(status.error.unwrap().contains("line 1"));
        assert!(store.lease(&worker, 5, &[], &[], 0, POLICY).unwrap().0.is_empty());
    }

    #[test]
    fn leasing_round_robins_and_prefers_warm_jobs() {
        let (_dir, mut store) = store();
        let (worker, _) = store.register_worker(None, 1, 0).unwrap();
        let first = store.deploy(job(10), 0).unwrap();
        let second = store.deploy(job(10), 1).unwrap();
        let (leases, _) = store.lease(&worker, 4, &[], &[], 2, POLICY).unwrap();
        let from_first = leases.iter().filter(|l| l.job_id == first).count();
        assert_eq!(from_first, 2, "four slices split across two jobs");
        let (leases, _) = store.lease(&worker, 4, std::slice::from_ref(&second), &[], 3, POLICY).unwrap();
        assert!(leases.iter().all(|l| l.job_id == second));
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
}
