//! `tessera worker`: contributes this machine by running the contribute page in headless Chromium.
//!
//! The page reports through `console.log("[tessera] …")`; Chromium's `--enable-logging=stderr`
//! relays those lines, which this module prints and watches for the page's exit signal.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::error::{Error, Result};

/// How to launch the browser worker.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub scheduler: String,
    /// Sandboxes (Web Workers) to run; none means the page's default (cores − 1, at least 1).
    pub sandboxes: Option<u32>,
    /// Stop once the scheduler has had no work for `idle_ms`.
    pub exit_when_idle: bool,
    pub idle_ms: u64,
    pub chromium: Option<PathBuf>,
    /// How long the page may take to report that it started.
    pub startup_timeout: Duration,
    /// The page to open, relative to the scheduler's root (the contribute page by default; the
    /// benchmark opens `bench/`).
    pub page: String,
    /// Ask the page to log every slice it runs (`logSlices=1`), for debugging.
    pub log_slices: bool,
    /// Extra query parameters for the page (e.g. `pyodideUrl`), URL-encoded when added.
    pub page_params: Vec<(String, String)>,
}

/// Flags that make Chromium behave on a closed network as root (see docs/ARCHITECTURE.md).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--enable-logging=stderr",
    "--v=0",
];

/// The system Chromium: `--chromium`, `$CHROMIUM`, or the first of the usual names on PATH.
pub fn find_chromium(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit.or_else(|| std::env::var_os("CHROMIUM").map(PathBuf::from)) {
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Browser("no Chromium found; install it (scripts/bootstrap) or pass --chromium PATH".into()))
}

/// The message inside a Chromium console log line, if it is one of the page's `[tessera]` lines.
pub fn page_message(log_line: &str) -> Option<&str> {
    if !log_line.contains(":CONSOLE") {
        return None;
    }
    let start = log_line.find("\"[tessera] ")? + 1;
    let end = log_line.rfind("\", source:")?;
    (end > start).then(|| &log_line[start..end])
}

/// The page URL with its query: autostart, idle rules, sandboxes, slice logging and any extra
/// parameters, each URL-encoded.
pub fn page_url(options: &WorkerOptions) -> Result<String> {
    let base = format!("{}/{}", options.scheduler.trim_end_matches('/'), options.page.trim_start_matches('/'));
    let mut url = reqwest::Url::parse(&base)
        .map_err(|error| Error::Usage(format!("--scheduler `{}` is not a usable URL: {error}", options.scheduler)))?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("autostart", "1");
        query.append_pair("exitWhenIdle", if options.exit_when_idle { "1" } else { "0" });
        query.append_pair("idleMs", &options.idle_ms.to_string());
        if let Some(sandboxes) = options.sandboxes {
            query.append_pair("sandboxes", &sandboxes.to_string());
        }
        if options.log_slices {
            query.append_pair("logSlices", "1");
        }
        for (key, value) in &options.page_params {
            query.append_pair(key, value);
        }
    }
    Ok(url.into())
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM.
async fn stop_requested() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the worker cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Runs the browser worker until the page says it is done, the browser dies, Ctrl-C or SIGTERM.
/// The browser is ended and its temporary profile removed on every path out.
pub async fn run_worker(options: WorkerOptions) -> Result<()> {
    let chromium = find_chromium(options.chromium.clone())?;
    let url = page_url(&options)?;
    let profile = tempfile::tempdir().map_err(Error::io("creating a browser profile directory"))?;
    let mut child = Command::new(&chromium)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| Error::Browser(format!("cannot start {}: {error}", chromium.display())))?;
    eprintln!("tessera worker: {} on {url}", chromium.display());
    let stderr = child.stderr.take().ok_or_else(|| Error::Browser("no stderr pipe".into()))?;
    let mut lines = BufReader::new(stderr).lines();
    let mut started = false;
    let startup = tokio::time::sleep(options.startup_timeout);
    tokio::pin!(startup);
    let stop = stop_requested();
    tokio::pin!(stop);

    let outcome = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let Some(message) = page_message(&line) else { continue };
                    println!("{message}");
                    let body = message.trim_start_matches("[tessera] ");
                    if body.starts_with("started") {
                        started = true;
                    } else if body.starts_with("exit") {
                        break Ok(());
                    } else if let Some(reason) = body.strip_prefix("fatal: ") {
                        break Err(Error::Browser(format!("the worker page failed: {reason}")));
                    }
                }
                Ok(None) | Err(_) => {
                    let status = child.wait().await.map_err(Error::io("waiting for the browser"))?;
                    break Err(Error::Browser(format!("Chromium exited unexpectedly ({status})")));
                }
            },
            _ = &mut startup, if !started => {
                break Err(Error::Browser(format!(
                    "the worker page did not start within {:?}; is {} serving the site?",
                    options.startup_timeout, options.scheduler
                )));
            }
            _ = &mut stop => {
                eprintln!("tessera worker: stopping");
                break Ok(());
            }
        }
    };
    // Stop the browser by its own PID (never by name), wait for it, then remove its profile.
    let _ = child.kill().await;
    drop(profile);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_url_encodes_its_parameters() {
        let options = WorkerOptions {
            scheduler: "http://127.0.0.1:8080/".into(),
            sandboxes: Some(2),
            exit_when_idle: true,
            idle_ms: 3_000,
            chromium: None,
            startup_timeout: Duration::from_secs(1),
            page: "".into(),
            log_slices: true,
            page_params: vec![("pyodideUrl".into(), "http://h:1/py dir/?a=b&c".into())],
        };
        assert_eq!(
            page_url(&options).unwrap(),
            "http://127.0.0.1:8080/?autostart=1&exitWhenIdle=1&idleMs=3000&sandboxes=2&logSlices=1\
             &pyodideUrl=http%3A%2F%2Fh%3A1%2Fpy+dir%2F%3Fa%3Db%26c"
        );
    }

    #[test]
    fn extracts_page_messages_from_chromium_logs() {
        let line = r#"[1:1:1125/174559.074933:INFO:CONSOLE:1] "[tessera] started 1 sandbox", source: http://127.0.0.1:8765/ (1)"#;
        assert_eq!(page_message(line), Some("[tessera] started 1 sandbox"));
        assert_eq!(page_message(r#"[1:1:INFO:CONSOLE:1] "other", source: x (1)"#), None);
        assert_eq!(page_message("[1:1:ERROR:gpu] \"[tessera] x\", source: y"), None);
    }
}
