//! The per-user credentials file: API keys by scheduler URL, so the CLI finds the key of a local
//! scheduler without a flag.
//!
//! `tessera serve` writes the admin key it makes for a new database here when it listens on a
//! loopback address (not with `--no-save-key`); the deployer commands read it when neither
//! `--api-key` nor `TESSERA_API_KEY` gives a key. The file is `credentials` in
//! `$TESSERA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/tessera`, else `~/.config/tessera`: one
//! `URL KEY` per line, mode 0600 in a 0700 directory. It is rewritten whole (a temporary file
//! renamed over it), a scheduler URL has at most one line (the newest), and only the newest
//! [`MAX_ENTRIES`] lines are kept, so schedulers started on many ports cannot grow it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Lines kept, newest last.
pub const MAX_ENTRIES: usize = 16;
/// The file's name in the configuration directory.
pub const FILE_NAME: &str = "credentials";

/// Where the file lives for this user, when the environment says (a `HOME` at least).
pub fn default_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("TESSERA_CONFIG_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?
            .join("tessera"),
    };
    Some(dir.join(FILE_NAME))
}

/// A scheduler URL as the file keys it: no trailing slash, scheme and host in lower case,
/// `localhost` spelled `127.0.0.1`.
pub fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(host, path)| (host, path));
    let mut host = host.to_ascii_lowercase();
    if host == "localhost" || host.starts_with("localhost:") {
        host = host.replacen("localhost", "127.0.0.1", 1);
    }
    let path = if path.is_empty() { String::new() } else { format!("/{path}") };
    format!("{}://{host}{path}", scheme.to_ascii_lowercase())
}

/// The `(url, key)` lines of the file; none when it does not exist.
fn entries(file: &Path) -> Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::Io { context: format!("reading {}", file.display()), source: error }),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((normalize(words.next()?), words.next()?.to_string()))
        })
        .collect())
}

/// The key saved for the scheduler at `url`, if any.
pub fn lookup(file: &Path, url: &str) -> Result<Option<String>> {
    let url = normalize(url);
    Ok(entries(file)?.into_iter().rev().find(|(saved, _)| *saved == url).map(|(_, key)| key))
}

/// Saves `key` for the scheduler at `url`, replacing its earlier line and keeping the newest
/// [`MAX_ENTRIES`]; the file is replaced whole, never half-written.
pub fn save(file: &Path, url: &str, key: &str) -> Result<()> {
    let url = normalize(url);
    let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let mut kept: Vec<(String, String)> = entries(file)?.into_iter().filter(|(saved, _)| *saved != url).collect();
    kept.push((url, key.to_string()));
    let skip = kept.len().saturating_sub(MAX_ENTRIES);
    let mut text =
        String::from("# Tessera API keys by scheduler URL, written by `tessera serve`; read by the tessera CLI.\n");
    for (url, key) in &kept[skip..] {
        text.push_str(&format!("{url} {key}\n"));
    }
    // A temporary file is created 0600; renamed over the old file, a reader sees one or the other.
    let mut temporary =
        tempfile::NamedTempFile::new_in(dir).map_err(Error::io(format!("writing a file in {}", dir.display())))?;
    std::io::Write::write_all(&mut temporary, text.as_bytes())
        .and_then(|()| temporary.as_file().sync_all())
        .map_err(Error::io(format!("writing {}", file.display())))?;
    temporary.persist(file).map_err(|error| Error::io(format!("replacing {}", file.display()))(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_keyed_in_one_spelling() {
        assert_eq!(normalize("http://LOCALHOST:8080/"), "http://127.0.0.1:8080");
        assert_eq!(normalize("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(normalize("https://Sched.Example/tessera/"), "https://sched.example/tessera");
    }

    #[test]
    fn one_line_per_scheduler_newest_kept_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conf/credentials");
        assert_eq!(lookup(&file, "http://127.0.0.1:1").unwrap(), None);
        save(&file, "http://127.0.0.1:1", "tsk_a_1").unwrap();
        save(&file, "http://localhost:1/", "tsk_a_2").unwrap();
        assert_eq!(lookup(&file, "http://127.0.0.1:1").unwrap().as_deref(), Some("tsk_a_2"));
        for port in 2..40 {
            save(&file, &format!("http://127.0.0.1:{port}"), &format!("tsk_b_{port}")).unwrap();
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().filter(|line| !line.starts_with('#')).count(), MAX_ENTRIES);
        assert_eq!(lookup(&file, "http://127.0.0.1:1").unwrap(), None, "the oldest entries are dropped");
        assert_eq!(lookup(&file, "http://127.0.0.1:39").unwrap().as_deref(), Some("tsk_b_39"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(file.parent().unwrap()), 0o700);
        }
    }
}
