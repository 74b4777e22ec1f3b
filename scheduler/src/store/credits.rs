//! Contributors and the credits ledger.
//!
//! A contributor is an anonymous volunteer's stable identity: a random id the browser keeps and
//! names when it registers a worker (or one the scheduler opens for it). Every slice accepted with
//! outcome `ok` writes one ledger row (`credits`) crediting the worker's contributor with the
//! compute time the worker core measured around the sandbox call, and adds it to the
//! contributor's running totals (`contributors`). Both happen inside the operation that accepts
//! the result — the guarded update that makes acceptance exactly-once — so a duplicate, stale,
//! refused or failed result credits nothing, and the ledger never disagrees with the accepted
//! slices. The ledger's keys back this up: one row per lease and one per slice.
//!
//! A worker cannot claim more than the wall time since its lease was granted: the credited time
//! is capped by the lease's age at acceptance ([`credited_ms`]).

use rusqlite::{params, Connection, OptionalExtension};
use tessera_protocol::credits::{MAX_CONTRIBUTOR_ID_CHARS, MIN_CONTRIBUTOR_ID_CHARS};
use tessera_protocol::{is_contributor_id, ContributorTotals};

use super::{random_id, Store};
use crate::error::{Error, Result};

/// Random bytes in a contributor id the scheduler opens (128 bits, hex-encoded after a `c`: 33
/// characters, the shape a browser's own id has).
const NEW_CONTRIBUTOR_BYTES: usize = 16;

/// Refuses a contributor id that does not have the documented shape, naming the field.
pub fn check_contributor(id: &str) -> Result<()> {
    if is_contributor_id(id) {
        return Ok(());
    }
    Err(Error::invalid(
        "contributor",
        format!(
            "a contributor id is {MIN_CONTRIBUTOR_ID_CHARS} to {MAX_CONTRIBUTOR_ID_CHARS} characters of \
             `A-Z a-z 0-9 _ -`"
        ),
    ))
}

/// The contributor a registering worker earns for: `requested` (opened if the scheduler has not
/// seen it yet), or a new one. The caller has checked `requested`'s shape.
pub(super) fn open_contributor(connection: &Connection, requested: Option<&str>, now: u64) -> Result<String> {
    match requested {
        Some(id) => {
            connection
                .prepare_cached("INSERT OR IGNORE INTO contributors (id, created_ms) VALUES (?1, ?2)")?
                .execute(params![id, now as i64])?;
            Ok(id.to_string())
        }
        None => {
            let id = random_id("c", NEW_CONTRIBUTOR_BYTES);
            // A plain INSERT: a (vanishingly unlikely) clash fails instead of merging two people.
            connection
                .prepare_cached("INSERT INTO contributors (id, created_ms) VALUES (?1, ?2)")?
                .execute(params![id, now as i64])?;
            Ok(id)
        }
    }
}

/// The compute time an accepted slice credits: what the worker core measured, at most the
/// lease's age at acceptance (`now - leased_ms`); nothing when the worker did not say.
pub fn credited_ms(reported_ms: Option<u64>, leased_ms: u64, now: u64) -> u64 {
    reported_ms.unwrap_or(0).min(now.saturating_sub(leased_ms))
}

/// A slice just accepted with outcome `ok`, as the ledger records it.
pub(super) struct AcceptedSlice<'a> {
    pub worker_id: &'a str,
    pub lease_id: &'a str,
    pub job_id: &'a str,
    pub slice: i64,
    /// When the lease was granted.
    pub leased_ms: u64,
    /// The worker core's measurement (`ResultItem::compute_ms`).
    pub reported_ms: Option<u64>,
    pub now: u64,
}

/// Writes the ledger row for `accepted` and adds it to its contributor's totals. Called only by
/// the acceptance that changed the slice, inside its operation.
pub(super) fn credit(connection: &Connection, accepted: &AcceptedSlice) -> Result<()> {
    let contributor: Option<String> = connection
        .prepare_cached("SELECT contributor FROM workers WHERE id = ?1")?
        .query_row([accepted.worker_id], |row| row.get(0))
        .optional()?
        .flatten();
    let Some(contributor) = contributor else {
        return Err(Error::Corrupt(format!("worker `{}` has no contributor to credit", accepted.worker_id)));
    };
    let compute_ms = credited_ms(accepted.reported_ms, accepted.leased_ms, accepted.now) as i64;
    connection
        .prepare_cached(
            "INSERT INTO credits (lease_id, contributor, job_id, slice, compute_ms, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            accepted.lease_id,
            contributor,
            accepted.job_id,
            accepted.slice,
            compute_ms,
            accepted.now as i64
        ])?;
    connection
        .prepare_cached("UPDATE contributors SET slices = slices + 1, compute_ms = compute_ms + ?1 WHERE id = ?2")?
        .execute(params![compute_ms, contributor])?;
    Ok(())
}

impl Store {
    /// See [`contributor_totals`].
    pub fn contributor_totals(&self, contributor: &str) -> Result<ContributorTotals> {
        contributor_totals(&self.connection, contributor)
    }
}

/// What the ledger credits `contributor` with, or `NotFound`.
pub fn contributor_totals(connection: &Connection, contributor: &str) -> Result<ContributorTotals> {
    let row: Option<(i64, i64, i64)> = connection
        .prepare_cached("SELECT slices, compute_ms, created_ms FROM contributors WHERE id = ?1")?
        .query_row([contributor], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((slices, compute_ms, since_ms)) = row else {
        return Err(Error::NotFound { what: "contributor", id: contributor.to_string() });
    };
    Ok(ContributorTotals::new(
        contributor.to_string(),
        slices.max(0) as u64,
        compute_ms.max(0) as u64,
        since_ms.max(0) as u64,
    ))
}
