//! Each job's event log, the durable side of `GET /v1/jobs/{id}/events`.
//!
//! Every change a deployer may follow — a slice's final outcome, a console line, a change of the
//! job's state — appends a row to `job_events` in the same operation (so the same transaction)
//! that makes the change. A row's `position` is the job's next integer: a stream resumed from the
//! last position it delivered misses nothing and repeats nothing, across reconnects and restarts.
//! Rows hold references, not copies: a result event names its slice (whose outcome is final and
//! never changes again) and a console event its console line; only a state event keeps the job's
//! status as it was at that moment.

use std::str::FromStr;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tessera_protocol::{ConsoleLine, JobState, JobStatus, SliceRecord};

use super::jobs::{job_state, job_status, slice_status};
use super::{to_json, Json, SliceState, Stored};
use crate::error::{Error, Result};

/// What an event is about; its name on the wire (the SSE `event:` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A slice's final outcome (`ref` = the slice's index).
    Result,
    /// A line of program output (`ref` = the line's `console.seq`).
    Console,
    /// The job's state changed (`data` = its status then).
    State,
}

impl EventKind {
    /// The name stored in `job_events.kind` and sent as the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Result => "result",
            EventKind::Console => "console",
            EventKind::State => "state",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        [EventKind::Result, EventKind::Console, EventKind::State]
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("unknown job event kind `{text}`"))
    }
}

/// One event of a job's log, read back with what it refers to.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    /// The event's place in its job's log: 1, 2, 3, … (the SSE `id:`).
    pub position: u64,
    pub body: EventBody,
}

/// What an event says, in the shapes of the results, console and status endpoints.
#[derive(Clone, Debug, PartialEq)]
pub enum EventBody {
    Result(SliceRecord),
    Console(ConsoleLine),
    State(JobStatus),
}

impl JobEvent {
    /// The event's name on the wire.
    pub fn kind(&self) -> EventKind {
        match self.body {
            EventBody::Result(_) => EventKind::Result,
            EventBody::Console(_) => EventKind::Console,
            EventBody::State(_) => EventKind::State,
        }
    }

    /// Whether this is a `state` event with a final state: the last event of its job.
    pub fn is_final(&self) -> bool {
        matches!(&self.body, EventBody::State(status) if status.state.is_final())
    }
}

/// Appends an event to a job's log at the job's next position; returns the position.
fn append(
    connection: &Connection,
    job_id: &str,
    kind: EventKind,
    reference: Option<i64>,
    data: Option<&str>,
) -> Result<u64> {
    let position: i64 = connection
        .prepare_cached("SELECT COALESCE(MAX(position), 0) + 1 FROM job_events WHERE job_id = ?1")?
        .query_row([job_id], |row| row.get(0))?;
    connection
        .prepare_cached("INSERT INTO job_events (job_id, position, kind, ref, data) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![job_id, position, kind.as_str(), reference, data])?;
    Ok(position as u64)
}

/// Records that slice `index` reached its final outcome (already stored in `slices`).
pub(super) fn slice_finished(connection: &Connection, job_id: &str, index: i64) -> Result<()> {
    append(connection, job_id, EventKind::Result, Some(index), None).map(|_| ())
}

/// Records a console line just inserted with sequence number `seq`.
pub(super) fn console_line(connection: &Connection, job_id: &str, seq: i64) -> Result<()> {
    append(connection, job_id, EventKind::Console, Some(seq), None).map(|_| ())
}

/// Records the job's state as it is now, with its status (counts, error) at this moment.
pub(super) fn state_changed(connection: &Connection, job_id: &str) -> Result<()> {
    let status = job_status(connection, job_id)?;
    append(connection, job_id, EventKind::State, None, Some(&to_json(&status)?)).map(|_| ())
}

/// Whether slice `index` has its final outcome (`ok` or `error`).
pub(super) fn slice_is_final(connection: &Connection, job_id: &str, index: i64) -> Result<bool> {
    let state: Option<Stored<SliceState>> = connection
        .prepare_cached("SELECT state FROM slices WHERE job_id = ?1 AND idx = ?2")?
        .query_row(params![job_id, index], |row| row.get(0))
        .optional()?;
    Ok(matches!(state, Some(Stored(SliceState::Ok | SliceState::Error))))
}

/// A page of a job's events after position `after`, oldest first: at most `limit` events, and no
/// more once their results and text pass `max_bytes` (at least one event is returned when there is
/// one), so a page's memory is bounded whatever the results' sizes. Also the job's state, read
/// before the events: when it is final and the page is empty, the job's log is complete.
pub fn events(
    connection: &Connection,
    job_id: &str,
    after: u64,
    limit: u64,
    max_bytes: usize,
) -> Result<(Vec<JobEvent>, JobState)> {
    // The state first: a final state read here is followed by its state event in the log.
    let state = job_state(connection, job_id)?.ok_or_else(|| Error::NotFound { what: "job", id: job_id.into() })?;
    let mut query = connection.prepare_cached(
        "SELECT e.position, e.kind, e.ref, e.data, s.state, s.result, s.error, s.stack, c.slice, c.stream, c.text
         FROM job_events e
         LEFT JOIN slices s ON e.kind = 'result' AND s.job_id = e.job_id AND s.idx = e.ref
         LEFT JOIN console c ON e.kind = 'console' AND c.seq = e.ref
         WHERE e.job_id = ?1 AND e.position > ?2 ORDER BY e.position LIMIT ?3",
    )?;
    let mut rows = query.query(params![job_id, after as i64, limit as i64])?;
    let mut page = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        if bytes >= max_bytes {
            break;
        }
        let position = row.get::<_, i64>(0)? as u64;
        let kind = row.get::<_, Stored<EventKind>>(1)?.0;
        let reference: Option<i64> = row.get(2)?;
        let missing = |what: &str| Error::Corrupt(format!("job `{job_id}` event {position} names a missing {what}"));
        let body = match kind {
            EventKind::Result => {
                let index = reference.ok_or_else(|| missing("slice"))?;
                let state = row.get::<_, Option<Stored<SliceState>>>(4)?.ok_or_else(|| missing("slice"))?.0;
                let record = SliceRecord {
                    slice: index as u64,
                    status: slice_status(state),
                    value: row.get::<_, Option<Json<Value>>>(5)?.map(|json| json.0),
                    error: row.get(6)?,
                    stack: row.get(7)?,
                };
                bytes += record.value.as_ref().map_or(0, |value| value.to_string().len())
                    + record.error.as_ref().map_or(0, String::len)
                    + record.stack.as_ref().map_or(0, String::len);
                EventBody::Result(record)
            }
            EventKind::Console => {
                let text: String = row.get::<_, Option<String>>(10)?.ok_or_else(|| missing("console line"))?;
                bytes += text.len();
                EventBody::Console(ConsoleLine {
                    seq: reference.map(|seq| seq as u64),
                    slice: row.get::<_, Option<i64>>(8)?.map(|slice| slice as u64),
                    stream: row.get::<_, Option<String>>(9)?.unwrap_or_default(),
                    text,
                })
            }
            EventKind::State => {
                let data: Option<String> = row.get(3)?;
                let status = match data {
                    Some(data) => serde_json::from_str(&data).map_err(|error| {
                        Error::Corrupt(format!("job `{job_id}` event {position}: unreadable status: {error}"))
                    })?,
                    // Recorded by the migration for jobs that had ended: their status is final.
                    None => job_status(connection, job_id)?,
                };
                bytes += data_len(&status);
                EventBody::State(status)
            }
        };
        page.push(JobEvent { position, body });
    }
    Ok((page, state))
}

/// A status's rough size, for the page's byte budget.
fn data_len(status: &JobStatus) -> usize {
    256 + status.error.as_ref().map_or(0, String::len) + 64 * status.running.len()
}
