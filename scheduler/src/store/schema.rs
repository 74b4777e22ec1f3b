//! The database layout and its migrations.
//!
//! The schema version lives in `PRAGMA user_version`. A new database is created at version 1
//! ([`SCHEMA`]) and brought forward by the later migrations; an older one runs every migration after
//! its version. Either way all of it happens inside one `BEGIN IMMEDIATE` transaction, so a failed
//! migration leaves the file as it was. Migrations are never edited once released: a change is a
//! new one.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::error::{Error, Result};

/// The schema this code reads and writes.
pub const LATEST_VERSION: i64 = 4;

/// The version-1 layout, which a new database starts from (and [`from_v0`] rebuilds into). States
/// are checked by SQL so no unknown value can be written.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    worktime TEXT NOT NULL CHECK (worktime IN ('map-basic', 'pyodide')),
    program TEXT NOT NULL,
    program_name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    env TEXT NOT NULL,
    packages TEXT NOT NULL,
    bundle TEXT,
    state TEXT NOT NULL CHECK (state IN ('running', 'complete', 'complete_with_errors', 'failed', 'cancelled')),
    error TEXT,
    total INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    last_leased_ms INTEGER NOT NULL DEFAULT 0,
    slice_timeout_ms INTEGER NOT NULL DEFAULT 300000,
    no_progress_timeout_ms INTEGER
);
CREATE TABLE slices (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    datum TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'ok', 'error')),
    attempts INTEGER NOT NULL DEFAULT 0,
    current_lease TEXT,
    result TEXT,
    error TEXT,
    stack TEXT,
    last_fault_worker TEXT,
    retry_after_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE INDEX slices_by_state ON slices(job_id, state, idx);
CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    deadline_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'ended')),
    outcome TEXT NOT NULL CHECK (outcome IN
        ('running', 'ok', 'error', 'job_error', 'worker_fault', 'timed_out', 'released', 'expired', 'abandoned')),
    message TEXT,
    started_ms INTEGER NOT NULL DEFAULT 0,
    ended_ms INTEGER,
    progress REAL
) WITHOUT ROWID;
CREATE INDEX active_leases_by_deadline ON leases(deadline_ms) WHERE state = 'active';
CREATE INDEX leases_by_slice ON leases(job_id, idx);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    user_agent TEXT,
    sandboxes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_by_last_seen ON workers(last_seen_ms);
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
CREATE TABLE setup_errors (
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX setup_errors_by_job ON setup_errors(job_id, message);
"#;

/// One step from version `n` to `n + 1`, at index `n`.
type Migration = fn(&Transaction) -> Result<()>;

/// Every migration, in order.
const MIGRATIONS: [Migration; 4] = [from_v0, from_v1, from_v2, from_v3];

/// Version 0 is the first release's layout (no version set): job state `active`, lease states
/// `active | completed | expired`, no CHECK constraints. Tables whose shape changed are rebuilt
/// (SQLite cannot add a CHECK to an existing table) and their rows copied across.
fn from_v0(transaction: &Transaction) -> Result<()> {
    transaction.execute_batch(
        r#"
        DROP INDEX IF EXISTS slices_by_state;
        DROP INDEX IF EXISTS active_leases_by_deadline;
        ALTER TABLE jobs RENAME TO jobs_v0;
        ALTER TABLE slices RENAME TO slices_v0;
        ALTER TABLE leases RENAME TO leases_v0;
        "#,
    )?;
    transaction.execute_batch(SCHEMA)?;
    transaction.execute_batch(
        r#"
        INSERT INTO jobs (id, name, worktime, program, program_name, arguments, env, packages, bundle, state,
                          error, total, created_ms, last_leased_ms)
        SELECT id, name, worktime, program, program_name, arguments, env, packages, bundle,
               CASE
                 WHEN state = 'active' THEN 'running'
                 WHEN state = 'complete' AND EXISTS
                   (SELECT 1 FROM slices_v0 s WHERE s.job_id = jobs_v0.id AND s.state = 'error')
                   THEN 'complete_with_errors'
                 ELSE state
               END,
               error, total, created_ms, last_leased_ms
        FROM jobs_v0;
        INSERT INTO slices (job_id, idx, datum, state, attempts, current_lease, result, error, stack)
        SELECT job_id, idx, datum, state, attempts, current_lease, result, error, stack FROM slices_v0;
        INSERT INTO leases (id, token, job_id, idx, worker_id, deadline_ms, state, outcome, progress)
        SELECT l.id, l.token, l.job_id, l.idx, l.worker_id, l.deadline_ms,
               CASE l.state WHEN 'active' THEN 'active' ELSE 'ended' END,
               CASE l.state
                 WHEN 'active' THEN 'running'
                 WHEN 'expired' THEN 'expired'
                 WHEN 'completed' THEN
                   CASE (SELECT s.state FROM slices_v0 s WHERE s.job_id = l.job_id AND s.idx = l.idx)
                     WHEN 'error' THEN 'error' ELSE 'ok' END
                 ELSE l.state
               END,
               l.progress
        FROM leases_v0 l;
        DROP TABLE leases_v0;
        DROP TABLE slices_v0;
        DROP TABLE jobs_v0;
        "#,
    )?;
    Ok(())
}

/// Version 2: deployer API keys (only the sha256 of each secret is stored) and each job's owner,
/// the key that deployed it. Jobs from before have no owner: only an admin key sees them.
fn from_v1(transaction: &Transaction) -> Result<()> {
    transaction.execute_batch(
        r#"
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            admin INTEGER NOT NULL CHECK (admin IN (0, 1)),
            created_ms INTEGER NOT NULL,
            revoked_ms INTEGER
        );
        ALTER TABLE jobs ADD COLUMN owner TEXT REFERENCES api_keys(id);
        CREATE INDEX jobs_by_owner ON jobs(owner, created_ms);
        "#,
    )?;
    Ok(())
}

/// Version 3: the credits ledger. Each worker earns credits for a contributor (an anonymous
/// volunteer's stable id, kept by the browser); `credits` holds one row per slice accepted with
/// outcome `ok` — written in the transaction that accepts it, so the ledger never disagrees with
/// the accepted slices — and `contributors` its running totals, updated in the same transaction,
/// so reading them costs one row. Workers from before get a contributor of their own each (a new
/// random id of the same shape), so every accepted slice has someone to credit.
fn from_v2(transaction: &Transaction) -> Result<()> {
    transaction.execute_batch(
        r#"
        CREATE TABLE contributors (
            id TEXT PRIMARY KEY,
            created_ms INTEGER NOT NULL,
            slices INTEGER NOT NULL DEFAULT 0 CHECK (slices >= 0),
            compute_ms INTEGER NOT NULL DEFAULT 0 CHECK (compute_ms >= 0)
        ) WITHOUT ROWID;
        ALTER TABLE workers ADD COLUMN contributor TEXT REFERENCES contributors(id);
        CREATE TABLE credits (
            lease_id TEXT PRIMARY KEY,
            contributor TEXT NOT NULL REFERENCES contributors(id),
            job_id TEXT NOT NULL,
            slice INTEGER NOT NULL,
            compute_ms INTEGER NOT NULL CHECK (compute_ms >= 0),
            at_ms INTEGER NOT NULL,
            UNIQUE (job_id, slice)
        ) WITHOUT ROWID;
        CREATE INDEX credits_by_contributor ON credits(contributor, at_ms);
        UPDATE workers SET contributor = 'c' || lower(hex(randomblob(16)));
        INSERT INTO contributors (id, created_ms) SELECT contributor, created_ms FROM workers;
        "#,
    )?;
    Ok(())
}

/// Version 4: each job's event log (`GET /v1/jobs/{id}/events`). A row is a position in its
/// job's log and a reference: a result event names its slice (`ref` = index), a console event its
/// line (`ref` = `console.seq`), a state event holds the job's status then (`data`). Jobs from
/// before get their log rebuilt: their final outcomes in slice order, then their console lines,
/// then — for a job that has ended — one state event whose status is read when it is sent (`data`
/// NULL; an ended job's status no longer changes).
fn from_v3(transaction: &Transaction) -> Result<()> {
    transaction.execute_batch(
        r#"
        CREATE TABLE job_events (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            position INTEGER NOT NULL CHECK (position > 0),
            kind TEXT NOT NULL CHECK (kind IN ('result', 'console', 'state')),
            ref INTEGER,
            data TEXT,
            PRIMARY KEY (job_id, position)
        ) WITHOUT ROWID;
        INSERT INTO job_events (job_id, position, kind, ref)
        SELECT job_id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY part, ref), kind, ref FROM (
            SELECT job_id, 0 AS part, 'result' AS kind, idx AS ref FROM slices WHERE state IN ('ok', 'error')
            UNION ALL
            SELECT job_id, 1, 'console', seq FROM console WHERE job_id IN (SELECT id FROM jobs)
        );
        INSERT INTO job_events (job_id, position, kind)
        SELECT id, COALESCE((SELECT MAX(position) FROM job_events WHERE job_id = jobs.id), 0) + 1, 'state'
        FROM jobs WHERE state != 'running';
        "#,
    )?;
    Ok(())
}

/// Brings the database to [`LATEST_VERSION`], or refuses one made by a newer scheduler.
pub fn migrate(connection: &mut Connection) -> Result<()> {
    // Tables are renamed and rebuilt: foreign keys are checked once at the end instead.
    connection.pragma_update(None, "foreign_keys", "OFF")?;
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > LATEST_VERSION {
        return Err(Error::Corrupt(format!(
            "the database is at schema version {version}, newer than this scheduler's {LATEST_VERSION}"
        )));
    }
    if version < LATEST_VERSION {
        let has_jobs: Option<String> = transaction
            .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'jobs'", [], |row| row.get(0))
            .optional()?;
        let from = if has_jobs.is_none() {
            transaction.execute_batch(SCHEMA)?;
            1
        } else {
            version as usize
        };
        for (step, migration) in MIGRATIONS.iter().enumerate().skip(from) {
            migration(&transaction)?;
            if has_jobs.is_some() {
                tracing::info!(from = step, to = step + 1, "migrated the database schema");
            }
        }
        let broken: Option<String> =
            transaction.query_row("PRAGMA foreign_key_check", [], |row| row.get(0)).optional()?;
        if let Some(table) = broken {
            return Err(Error::Corrupt(format!("table `{table}` has rows whose job does not exist")));
        }
        transaction.pragma_update(None, "user_version", LATEST_VERSION)?;
    }
    transaction.commit()?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Creates a database at schema `version` (1 ..= [`LATEST_VERSION`]) the way that release made
/// it, for migration tests.
#[cfg(test)]
pub fn create_at_version(connection: &mut Connection, version: usize) -> Result<()> {
    let transaction = connection.transaction()?;
    transaction.execute_batch(SCHEMA)?;
    for migration in MIGRATIONS.iter().take(version).skip(1) {
        migration(&transaction)?;
    }
    transaction.pragma_update(None, "user_version", version as i64)?;
    transaction.commit()?;
    Ok(())
}

/// The first release's schema, for migration tests.
#[cfg(test)]
pub const SCHEMA_V0: &str = r#"
CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, worktime TEXT NOT NULL, program TEXT NOT NULL,
    program_name TEXT NOT NULL, arguments TEXT NOT NULL, env TEXT NOT NULL, packages TEXT NOT NULL, bundle TEXT,
    state TEXT NOT NULL, error TEXT, total INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    last_leased_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE slices (job_id TEXT NOT NULL REFERENCES jobs(id), idx INTEGER NOT NULL, datum TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, current_lease TEXT, result TEXT, error TEXT,
    stack TEXT, PRIMARY KEY (job_id, idx)) WITHOUT ROWID;
CREATE INDEX slices_by_state ON slices(job_id, state, idx);
CREATE TABLE leases (id TEXT PRIMARY KEY, token TEXT NOT NULL, job_id TEXT NOT NULL, idx INTEGER NOT NULL,
    worker_id TEXT NOT NULL, deadline_ms INTEGER NOT NULL, state TEXT NOT NULL, progress REAL);
CREATE INDEX active_leases_by_deadline ON leases(state, deadline_ms);
CREATE TABLE workers (id TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, user_agent TEXT,
    sandboxes INTEGER NOT NULL, created_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL);
CREATE TABLE console (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, slice INTEGER,
    stream TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX console_by_job ON console(job_id, seq);
CREATE TABLE bundles (sha256 TEXT PRIMARY KEY, bytes BLOB NOT NULL);
"#;
