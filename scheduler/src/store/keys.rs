//! Deployer API keys: made, verified, listed and revoked; and who may see which job.
//!
//! A key reads `tsk_<id>_<secret>`: `<id>` names the row (and a job's owner), `<secret>` is
//! [`SECRET_BYTES`] random bytes, hex-encoded. Only the sha256 of the secret is stored, so the
//! database file does not give the keys away; a key is shown once, when it is made.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use tessera_protocol::{ApiKeyInfo, CreatedKey, KEY_PREFIX};

use super::{random_id, Store};
use crate::error::{Error, Result};

/// Random bytes in a key's secret (192 bits).
pub const SECRET_BYTES: usize = 24;
/// Longest key name.
pub const MAX_KEY_NAME: usize = 64;

/// The caller of a deployer request, as its verified key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployer {
    /// The key's id: the owner recorded on the jobs it deploys.
    pub key_id: String,
    pub name: String,
    pub admin: bool,
}

impl Deployer {
    /// Which jobs this caller may see and cancel.
    pub fn scope(&self) -> Scope {
        if self.admin {
            Scope::All
        } else {
            Scope::OwnedBy(self.key_id.clone())
        }
    }
}

/// Whose jobs a request may see: every job (an admin key) or only those one key deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    OwnedBy(String),
}

/// sha256 of a key's secret, hex-encoded: what the store keeps.
fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equality that takes the same time wherever the first difference is (secrets are compared so).
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key's `(id, secret)`, if it has the shape of one.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn check_name(name: &str) -> Result<()> {
    let length = name.chars().count();
    if length == 0 || length > MAX_KEY_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            format!("a key name is 1 to {MAX_KEY_NAME} characters without control characters"),
        ));
    }
    Ok(())
}

fn key_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        admin: row.get::<_, i64>(2)? == 1,
        created_ms: row.get::<_, i64>(3)? as u64,
        revoked_ms: row.get::<_, Option<i64>>(4)?.map(|ms| ms as u64),
    })
}

fn insert_key(connection: &Connection, name: &str, admin: bool, now: u64) -> Result<CreatedKey> {
    check_name(name)?;
    let id = random_id("k", 8);
    let secret = random_id("", SECRET_BYTES);
    connection.execute(
        "INSERT INTO api_keys (id, name, hash, admin, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, name, hash_secret(&secret), admin as i64, now as i64],
    )?;
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    Ok(CreatedKey { info: ApiKeyInfo { id, name: name.into(), admin, created_ms: now, revoked_ms: None }, key })
}

impl Store {
    /// Makes a key; the answer holds the whole key, which is not stored and never shown again.
    pub fn create_key(&mut self, name: &str, admin: bool, now: u64) -> Result<CreatedKey> {
        self.write(|connection, _| insert_key(connection, name, admin, now))
    }

    /// On a database that has no key at all (a new one), makes the admin key `admin`; otherwise
    /// nothing. Checked and made in one transaction, so two schedulers starting on the same new
    /// file make one key between them.
    pub fn create_first_admin_key(&mut self, now: u64) -> Result<Option<CreatedKey>> {
        self.write(|connection, _| {
            let any: Option<i64> =
                connection.query_row("SELECT 1 FROM api_keys LIMIT 1", [], |row| row.get(0)).optional()?;
            match any {
                Some(_) => Ok(None),
                None => insert_key(connection, "admin", true, now).map(Some),
            }
        })
    }

    /// Revokes a key (again is a no-op). The last admin key that is not revoked cannot be: that
    /// would leave no one able to manage keys.
    pub fn revoke_key(&mut self, id: &str, now: u64) -> Result<ApiKeyInfo> {
        self.write(|connection, _| {
            let key = key_by_id(connection, id)?;
            if key.revoked_ms.is_some() {
                return Ok(key);
            }
            if key.admin {
                let others: i64 = connection.query_row(
                    "SELECT COUNT(*) FROM api_keys WHERE admin = 1 AND revoked_ms IS NULL AND id != ?1",
                    [id],
                    |row| row.get(0),
                )?;
                if others == 0 {
                    return Err(Error::invalid(
                        "id",
                        format!(
                            "`{id}` is the last admin key that is not revoked; make another first \
                             (tessera keys create NAME --admin)"
                        ),
                    ));
                }
            }
            connection.execute("UPDATE api_keys SET revoked_ms = ?1 WHERE id = ?2", params![now as i64, id])?;
            key_by_id(connection, id)
        })
    }

    /// See [`job_access`].
    pub fn job_access(&self, job_id: &str, scope: &Scope) -> Result<()> {
        job_access(&self.connection, job_id, scope)
    }
}

fn key_by_id(connection: &Connection, id: &str) -> Result<ApiKeyInfo> {
    connection
        .prepare_cached("SELECT id, name, admin, created_ms, revoked_ms FROM api_keys WHERE id = ?1")?
        .query_row([id], key_info)
        .optional()?
        .ok_or_else(|| Error::NotFound { what: "API key", id: id.into() })
}

/// The deployer a key belongs to, or `Unauthorized` when it is malformed, unknown or revoked.
pub fn deployer_by_key(connection: &Connection, key: &str) -> Result<Deployer> {
    let unknown = || Error::Unauthorized("unknown API key".into());
    let (id, secret) = split_key(key).ok_or_else(unknown)?;
    let row: Option<(String, String, i64, Option<i64>)> = connection
        .prepare_cached("SELECT name, hash, admin, revoked_ms FROM api_keys WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .optional()?;
    let Some((name, hash, admin, revoked_ms)) = row else { return Err(unknown()) };
    if !same(&hash_secret(secret), &hash) {
        return Err(unknown());
    }
    if revoked_ms.is_some() {
        return Err(Error::Unauthorized(format!("API key `{id}` ({name}) was revoked")));
    }
    Ok(Deployer { key_id: id.into(), name, admin: admin == 1 })
}

/// Every key, oldest first, without secrets.
pub fn list_keys(connection: &Connection) -> Result<Vec<ApiKeyInfo>> {
    let mut query = connection
        .prepare_cached("SELECT id, name, admin, created_ms, revoked_ms FROM api_keys ORDER BY created_ms, rowid")?;
    let rows = query.query_map([], key_info)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `Ok` when the job exists and `scope` may see it. Another deployer's job is `NotFound`, exactly
/// like a job that does not exist, so a key cannot learn which job ids are in use.
pub fn job_access(connection: &Connection, job_id: &str, scope: &Scope) -> Result<()> {
    let owner: Option<Option<String>> = connection
        .prepare_cached("SELECT owner FROM jobs WHERE id = ?1")?
        .query_row([job_id], |row| row.get(0))
        .optional()?;
    match (owner, scope) {
        (Some(_), Scope::All) => Ok(()),
        (Some(Some(owner)), Scope::OwnedBy(key)) if owner == *key => Ok(()),
        _ => Err(Error::NotFound { what: "job", id: job_id.into() }),
    }
}
