//! `tessera keys`, and how the deployer commands find their API key.
//!
//! A deployer command takes its key from `--api-key`, else `TESSERA_API_KEY`, else the line the
//! credentials file ([`crate::credentials`]) holds for the scheduler's URL. `tessera keys` talks
//! to the scheduler over HTTP with an admin key (so it works for a remote scheduler too); only
//! `keys create --db FILE` writes the database file directly, to recover when no admin key is at
//! hand.

use std::path::Path;

use tessera_protocol::{ApiKeyInfo, CreatedKey};

use crate::client::Client;
use crate::credentials;
use crate::error::{Error, Result};
use tessera_scheduler::server::now_ms;
use tessera_scheduler::store::Store;

/// The client for a deployer command: the scheduler at `scheduler` with the key found for it.
/// `api_key` is what `--api-key` or `TESSERA_API_KEY` gave, if anything.
pub fn client_for(scheduler: &str, api_key: Option<String>) -> Result<Client> {
    if let Some(key) = api_key.filter(|key| !key.trim().is_empty()) {
        let source =
            if std::env::var("TESSERA_API_KEY").is_ok_and(|env| env == key) { "TESSERA_API_KEY" } else { "--api-key" };
        return Ok(Client::new(scheduler, key.trim(), source));
    }
    let Some(file) = credentials::default_file() else {
        return Err(Error::Usage(format!(
            "no API key for {scheduler}: pass --api-key or set TESSERA_API_KEY (no credentials file either: \
             neither TESSERA_CONFIG_DIR, XDG_CONFIG_HOME nor HOME is set)"
        )));
    };
    match credentials::lookup(&file, scheduler)? {
        Some(key) => Ok(Client::new(scheduler, &key, &file.display().to_string())),
        None => Err(Error::Usage(format!(
            "no API key for {scheduler}: pass --api-key or set TESSERA_API_KEY; {} has no key for {} \
             (`tessera serve` saves its first admin key there when it makes a new database on a loopback address)",
            file.display(),
            credentials::normalize(scheduler)
        ))),
    }
}

/// Prints a new key: the key alone on stdout, what it is on stderr.
fn print_created(created: &CreatedKey, place: &str) {
    println!("{}", created.key);
    eprintln!(
        "created {}key `{}` ({}) on {place}; this is the only time the key is shown",
        if created.info.admin { "admin " } else { "" },
        created.info.id,
        created.info.name
    );
}

/// `tessera keys create NAME [--admin]` over HTTP.
pub async fn create(client: &Client, name: &str, admin: bool) -> Result<()> {
    let created = client.create_key(name, admin).await?;
    print_created(&created, client.base());
    Ok(())
}

/// `tessera keys create NAME [--admin] --db FILE`: straight into the database (it must exist).
pub fn create_in_database(db: &Path, name: &str, admin: bool) -> Result<()> {
    if !db.is_file() {
        return Err(Error::Usage(format!("no database at {}", db.display())));
    }
    let created = Store::open(db)?.create_key(name, admin, now_ms())?;
    print_created(&created, &db.display().to_string());
    Ok(())
}

/// `tessera keys list [--json]`: id, name, admin, created, revoked; never a secret.
pub async fn list(client: &Client, json: bool) -> Result<()> {
    let keys = client.keys().await?;
    if json {
        for key in &keys {
            println!("{}", serde_json::to_string(key).unwrap_or_default());
        }
        return Ok(());
    }
    println!("{:<18} {:<24} {:<5} {:<20} REVOKED", "ID", "NAME", "ADMIN", "CREATED (UTC)");
    for key in &keys {
        println!(
            "{:<18} {:<24} {:<5} {:<20} {}",
            key.id,
            key.name,
            if key.admin { "yes" } else { "no" },
            format_utc(key.created_ms),
            key.revoked_ms.map(format_utc).unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// `tessera keys revoke ID`.
pub async fn revoke(client: &Client, id: &str) -> Result<ApiKeyInfo> {
    let revoked = client.revoke_key(id).await?;
    eprintln!("revoked key `{}` ({}): it is refused from now on", revoked.id, revoked.name);
    Ok(revoked)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_utc(ms: u64) -> String {
    let seconds = ms / 1_000;
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3_600, rest % 3_600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_764_093_600_000), "2025-11-25 18:00:00");
    }
}
