//! The durable store: every job, slice, lease and result lives in one SQLite database in WAL mode
//! with `synchronous=FULL`.
//!
//! Each writing method is one unit of work: on its own it is one `BEGIN IMMEDIATE` transaction,
//! committed before it returns; inside the group-commit [`Writer`] it is one SAVEPOINT of a shared
//! transaction, and the writer answers only after that transaction committed. Either way an
//! acknowledged change survives a crash, and a failed operation changes nothing.
//!
//! - [`schema`]: the layout and its migrations (`PRAGMA user_version`).
//! - `workers`, `jobs`, `leasing`, `keys`, `credits`: the operations, grouped by what they change
//!   (`credits`: contributors and the ledger that credits each slice accepted `ok`).
//! - [`events`]: each job's append-only event log, written in the operation that makes the
//!   change it records; `GET /v1/jobs/{id}/events` streams it.
//! - [`read`]: the read-only queries, usable on any connection (the server's read pool).
//!
//! States are Rust enums stored as text; an unknown stored value is an [`Error::Corrupt`], never
//! a silent default.

mod credits;
pub mod events;
mod jobs;
mod keys;
mod leasing;
pub mod schema;
mod workers;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde_json::Value;
use tessera_protocol::Worktime;

use crate::error::{Error, Result};

pub use credits::check_contributor;
pub(crate) use keys::same;
pub use keys::{Deployer, Scope, MAX_KEY_NAME, SECRET_BYTES};
pub use leasing::Reaped;
pub use workers::RegisteredWorker;
pub use writer::{Readers, Writer};

/// The read-only queries, as functions of a connection, so the server can run them on its read
/// pool while the writer works.
pub mod read {
    pub use super::credits::contributor_totals;
    pub use super::events::events;
    pub use super::jobs::{bundle, console, job_status, list_jobs, results, slice_history};
    pub use super::keys::{deployer_by_key, job_access, list_keys};
    pub use super::workers::worker_by_token;
}

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
    /// Longest one slice may run (sent to workers in the job's descriptor).
    pub slice_timeout_ms: u64,
    /// Longest a slice may run without reporting progress, if limited.
    pub no_progress_timeout_ms: Option<u64>,
    /// The id of the API key that deploys it; only that key (and admin keys) may see it.
    pub owner: Option<String>,
}

/// Timing, retry and size rules the store applies.
#[derive(Clone, Copy, Debug)]
pub struct LeasePolicy {
    /// Lifetime of a lease without a heartbeat; also how long a faulting worker is passed over
    /// for the slice it faulted on, and how recently a worker must have been seen to count as
    /// connected.
    pub ttl_ms: u64,
    /// Attempts (leases) a slice gets before worker faults make it an error.
    pub max_attempts: u32,
    /// Largest JSON encoding of one result (or error and stack) that is stored as given.
    pub max_result_bytes: u64,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy { ttl_ms: 30_000, max_attempts: 5, max_result_bytes: 4 * 1024 * 1024 }
    }
}

/// A worker's `last_seen_ms` is written at most this often; in between it is only remembered.
pub const SEEN_WRITE_INTERVAL_MS: u64 = 5_000;

/// Most console lines kept from one result item; the rest are counted in a final marker line.
pub const MAX_CONSOLE_LINES: usize = 1_000;
/// Most console text kept from one result item, in bytes.
pub const MAX_CONSOLE_BYTES: usize = 256 * 1024;

/// Where a slice is: waiting, out on a lease, or finished with a value or an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceState {
    Queued,
    Leased,
    Ok,
    Error,
}

impl SliceState {
    /// Every state.
    pub const ALL: [SliceState; 4] = [SliceState::Queued, SliceState::Leased, SliceState::Ok, SliceState::Error];

    /// The name stored in `slices.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            SliceState::Queued => "queued",
            SliceState::Leased => "leased",
            SliceState::Ok => "ok",
            SliceState::Error => "error",
        }
    }
}

impl FromStr for SliceState {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        SliceState::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| format!("unknown slice state `{text}`"))
    }
}

/// Whether a lease can still deliver its slice's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Active,
    Ended,
}

impl LeaseState {
    /// The name stored in `leases.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Ended => "ended",
        }
    }
}

impl FromStr for LeaseState {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "active" => Ok(LeaseState::Active),
            "ended" => Ok(LeaseState::Ended),
            other => Err(format!("unknown lease state `{other}`")),
        }
    }
}

/// Why a stored value could not be read; turned into [`Error::Corrupt`].
#[derive(Debug)]
pub struct CorruptValue(pub String);

impl std::fmt::Display for CorruptValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CorruptValue {}

/// A column parsed with `FromStr` (states, worktimes): an unknown value is corrupt, not a default.
pub(crate) struct Stored<T>(pub T);

impl<T: FromStr<Err = String>> FromSql for Stored<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        text.parse().map(Stored).map_err(|message| FromSqlError::Other(Box::new(CorruptValue(message))))
    }
}

/// A column holding JSON.
pub(crate) struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        serde_json::from_str(text)
            .map(Json)
            .map_err(|error| FromSqlError::Other(Box::new(CorruptValue(format!("stored JSON is unreadable: {error}")))))
    }
}

/// Random identifiers and tokens, hex-encoded.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), buffer.as_mut_slice());
    format!("{prefix}{}", hex::encode(buffer))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::Store(format!("cannot encode JSON: {error}")))
}

/// What the store remembers between operations without writing it.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// Per worker: when it was last seen, and when `last_seen_ms` was last written.
    seen: HashMap<String, Seen>,
}

impl Memory {
    /// Forgets workers not seen since `before` (the database keeps their `last_seen_ms`), so the
    /// map holds connected workers only.
    pub(crate) fn forget_unseen(&mut self, before: u64) {
        self.seen.retain(|_, seen| seen.seen_ms >= before);
    }
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    seen_ms: u64,
    written_ms: u64,
}

/// The write connection and the operations on it.
pub struct Store {
    connection: Connection,
    memory: Memory,
    /// Inside a group commit: operations run in SAVEPOINTs of the writer's transaction.
    grouped: bool,
}

impl Store {
    /// Opens (creating and migrating if needed) the database at `path` in WAL mode with full syncs.
    pub fn open(path: &Path) -> Result<Store> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        // 64 MiB of page cache: the working set of a busy scheduler, kept off the read syscalls.
        connection.pragma_update(None, "cache_size", -65_536)?;
        // Savepoints (one per grouped operation) journal the pages they change; keep that in memory.
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut connection)?;
        connection.set_prepared_statement_cache_capacity(64);
        Ok(Store { connection, memory: Memory::default(), grouped: false })
    }

    /// A read-only connection to the same database, for queries that must not wait for writes.
    pub fn open_reader(path: &Path) -> Result<Connection> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.pragma_update(None, "cache_size", -16_384)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(connection)
    }

    /// Runs one unit of work: its own IMMEDIATE transaction, or a SAVEPOINT inside a group.
    fn write<T>(&mut self, operation: impl FnOnce(&Connection, &mut Memory) -> Result<T>) -> Result<T> {
        if self.grouped {
            self.connection.execute_batch("SAVEPOINT operation")?;
            match operation(&self.connection, &mut self.memory) {
                Ok(value) => {
                    self.connection.execute_batch("RELEASE operation")?;
                    Ok(value)
                }
                Err(error) => {
                    self.connection.execute_batch("ROLLBACK TO operation; RELEASE operation")?;
                    Err(error)
                }
            }
        } else {
            let transaction = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = operation(&transaction, &mut self.memory)?;
            transaction.commit()?;
            Ok(value)
        }
    }

    /// Starts a group: following operations share one IMMEDIATE transaction.
    fn begin_group(&mut self) -> Result<()> {
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        self.grouped = true;
        Ok(())
    }

    /// Commits the group (one fsync for all its operations); rolls it back if the commit fails.
    fn commit_group(&mut self) -> Result<()> {
        self.grouped = false;
        if let Err(error) = self.connection.execute_batch("COMMIT") {
            let _ = self.connection.execute_batch("ROLLBACK");
            return Err(error.into());
        }
        Ok(())
    }

    /// The connection, for the read queries in [`read`].
    pub fn connection(&self) -> &Connection {
        &self.connection
    }
}

#[cfg(test)]
mod tests;
