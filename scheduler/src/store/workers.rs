//! Workers: registration (and the contributor each earns for), authentication, and who is
//! connected.
//!
//! `last_seen_ms` decides whether a worker counts as connected (seen within one lease ttl). It is
//! written at most once per [`SEEN_WRITE_INTERVAL_MS`] per worker — every lease, heartbeat and
//! results request touches it, and a write per request would cost more than the work itself.

use rusqlite::{params, Connection, OptionalExtension};

use super::credits::{check_contributor, open_contributor};
use super::{random_id, Memory, Seen, Store, SEEN_WRITE_INTERVAL_MS};
use crate::error::{Error, Result};

/// Longest user agent kept.
const MAX_USER_AGENT: usize = 512;

/// A registered worker: who it is, the token it authenticates with, and whom it earns for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredWorker {
    pub worker_id: String,
    /// Sent as `Authorization: Bearer <token>` on every worker request.
    pub token: String,
    /// The contributor its accepted slices credit.
    pub contributor: String,
}

impl Store {
    /// Records a new worker earning for `contributor` (opened if new; a new one when `None`). A
    /// contributor id of the wrong shape is refused (`invalid_field`, field `contributor`) and
    /// nothing is stored.
    pub fn register_worker(
        &mut self,
        user_agent: Option<&str>,
        sandboxes: u32,
        contributor: Option<&str>,
        now: u64,
    ) -> Result<RegisteredWorker> {
        if let Some(contributor) = contributor {
            check_contributor(contributor)?;
        }
        let user_agent = user_agent.map(|agent| truncate(agent, MAX_USER_AGENT).to_string());
        self.write(|connection, memory| {
            let contributor = open_contributor(connection, contributor, now)?;
            let worker_id = random_id("w", 8);
            let token = random_id("", 24);
            connection.execute(
                "INSERT INTO workers (id, token, user_agent, sandboxes, created_ms, last_seen_ms, contributor)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                params![worker_id, token, user_agent, sandboxes, now as i64, contributor],
            )?;
            memory.seen.insert(worker_id.clone(), Seen { seen_ms: now, written_ms: now });
            Ok(RegisteredWorker { worker_id, token, contributor })
        })
    }

    /// The worker a bearer token belongs to, or `WrongToken`.
    pub fn worker_by_token(&self, token: &str) -> Result<String> {
        worker_by_token(&self.connection, token)
    }
}

/// The worker a bearer token belongs to, or `WrongToken` naming the `authorization` field.
pub fn worker_by_token(connection: &Connection, token: &str) -> Result<String> {
    connection
        .prepare_cached("SELECT id FROM workers WHERE token = ?1")?
        .query_row([token], |row| row.get(0))
        .optional()?
        .ok_or_else(|| Error::WrongToken {
            field: "authorization".into(),
            message: "unknown worker token; register with POST /v1/workers".into(),
        })
}

/// Notes that `worker` was seen at `now`, writing it only when the last write is old enough.
pub(super) fn touch(connection: &Connection, memory: &mut Memory, worker: &str, now: u64) -> Result<()> {
    let entry = memory.seen.entry(worker.to_string()).or_insert(Seen { seen_ms: now, written_ms: 0 });
    entry.seen_ms = entry.seen_ms.max(now);
    if now >= entry.written_ms + SEEN_WRITE_INTERVAL_MS {
        connection
            .prepare_cached("UPDATE workers SET last_seen_ms = MAX(last_seen_ms, ?1) WHERE id = ?2")?
            .execute(params![now as i64, worker])?;
        entry.written_ms = now;
    }
    Ok(())
}

/// Whether a worker other than `worker` was seen within `ttl_ms` of `now` (in memory, or in the
/// database for workers seen before a restart).
pub(super) fn other_worker_connected(
    connection: &Connection,
    memory: &Memory,
    worker: &str,
    now: u64,
    ttl_ms: u64,
) -> Result<bool> {
    let since = now.saturating_sub(ttl_ms);
    if memory.seen.iter().any(|(id, seen)| id != worker && seen.seen_ms >= since) {
        return Ok(true);
    }
    let found: Option<i64> = connection
        .prepare_cached("SELECT 1 FROM workers WHERE last_seen_ms >= ?1 AND id != ?2 LIMIT 1")?
        .query_row(params![since as i64, worker], |row| row.get(0))
        .optional()?;
    Ok(found.is_some())
}

/// `text` cut to at most `max` bytes on a character boundary.
pub(super) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
