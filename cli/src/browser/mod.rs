//! `tessera worker`: contributes this machine by running the contribute page in headless Chromium.
//!
//! The worker launches Chromium itself and drives it over the DevTools protocol on a pipe
//! ([`devtools`]): it opens the page, and receives the page's reports — `console.log("[tessera] …")`
//! lines — as `Runtime.consoleAPICalled` events of that page alone, which it prints and watches for
//! the page's exit signal. Chromium's stderr is only kept (a few lines) to explain an early exit.
//!
//! Chromium always runs with its own sandbox (namespaces + seccomp), because the page runs code
//! that anyone who can reach the scheduler deployed. Chromium refuses to sandbox itself as root, so
//! a root worker starts it as `nobody` instead (see [`plan_sandbox`] and docs/SECURITY.md).
//! However the worker stops, the browser's processes end and its profile is removed ([`process`]).

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::signal::unix::{Signal, SignalKind};

use crate::error::{Error, Result};

mod devtools;
mod process;
mod progress;

use devtools::DevTools;
use progress::Progress;

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
    /// `--unsafe-no-browser-sandbox`: run Chromium with `--no-sandbox`, as the current user. The
    /// operator's explicit choice for machines where Chromium's sandbox cannot work.
    pub unsafe_no_sandbox: bool,
}

/// Flags that make Chromium behave headless on a closed network and take DevTools commands on its
/// pipe (see docs/ARCHITECTURE.md). No `--no-sandbox`: that is added only for
/// `--unsafe-no-browser-sandbox`.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    // DevTools on file descriptors 3 and 4 (see `devtools`), never on a port.
    "--remote-debugging-pipe",
];

/// The user (and group) Chromium runs as when the worker is root: `nobody`, uid and gid 65534, the
/// kernel's overflow ids. It owns nothing on the system, so a compromised renderer that also
/// escaped Chromium's sandbox would still hold no privileges; and it is the same number everywhere,
/// so no passwd lookup is needed.
pub const UNPRIVILEGED_ID: u32 = 65534;

/// How Chromium's own sandbox is arranged for this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrowserSandbox {
    /// Not root: Chromium runs as the current user, with its sandbox.
    AsIs,
    /// Root: Chromium runs as this unprivileged user and group, with its sandbox.
    DropTo { uid: u32, gid: u32 },
    /// `--unsafe-no-browser-sandbox`: Chromium runs as the current user with `--no-sandbox`.
    Disabled,
}

/// What to tell an operator whose machine cannot give Chromium its sandbox.
const HOW_TO_SANDBOX: &str =
    "run `tessera worker` as a normal (non-root) user, or enable unprivileged user namespaces \
     (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; on Ubuntu also \
     kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for Chromium); \
     --unsafe-no-browser-sandbox runs Chromium without its sandbox, so guest code that exploits \
     the browser would run unconfined";

/// Whether unprivileged user namespaces are available, from the two sysctls that turn them off:
/// Debian's `kernel.unprivileged_userns_clone` (absent elsewhere) and `user.max_user_namespaces`.
/// `Err` says which one is off. A file that cannot be read is no evidence either way.
pub fn user_namespaces(
    unprivileged_userns_clone: Option<&str>,
    max_user_namespaces: Option<&str>,
) -> Result<(), String> {
    if unprivileged_userns_clone.map(str::trim) == Some("0") {
        return Err("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)".into());
    }
    if max_user_namespaces.map(str::trim) == Some("0") {
        return Err("user namespaces are disabled (user.max_user_namespaces = 0)".into());
    }
    Ok(())
}

/// [`user_namespaces`] on this machine's /proc/sys.
fn user_namespaces_here() -> Result<(), String> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    user_namespaces(
        read("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        read("/proc/sys/user/max_user_namespaces").as_deref(),
    )
}

/// Decides how Chromium runs. Chromium will not sandbox itself as root, and an unprivileged
/// Chromium sandboxes itself with user namespaces (Debian ships no setuid `chrome-sandbox`), so:
/// not root → as is; root with user namespaces → as `nobody`; root without them → refused, unless
/// the operator explicitly passed `--unsafe-no-browser-sandbox`, which always wins.
pub fn plan_sandbox(euid: u32, user_namespaces: Result<(), String>, unsafe_no_sandbox: bool) -> Result<BrowserSandbox> {
    if unsafe_no_sandbox {
        return Ok(BrowserSandbox::Disabled);
    }
    if euid != 0 {
        return Ok(BrowserSandbox::AsIs);
    }
    match user_namespaces {
        Ok(()) => Ok(BrowserSandbox::DropTo { uid: UNPRIVILEGED_ID, gid: UNPRIVILEGED_ID }),
        Err(reason) => {
            Err(Error::Browser(format!("cannot give Chromium its sandbox as root: {reason}; {HOW_TO_SANDBOX}")))
        }
    }
}

/// Whether a line Chromium printed says its sandbox could not start (no user namespaces and no
/// setuid helper, or root without `--no-sandbox`).
pub fn is_sandbox_failure(log_line: &str) -> bool {
    log_line.contains("No usable sandbox")
        || log_line.contains("without --no-sandbox is not supported")
        || (log_line.contains("FATAL") && log_line.to_ascii_lowercase().contains("sandbox"))
}

/// The temporary profile: Chromium's `--user-data-dir`, which also holds the `home/` and `tmp/`
/// given to an unprivileged Chromium as HOME, XDG dirs and TMPDIR (root's are not writable to it).
/// Everything Chromium writes stays inside, and the whole folder is removed afterwards.
struct Profile {
    dir: tempfile::TempDir,
}

impl Profile {
    /// Creates the profile, owned by `owner` (uid, gid) when given. Made by us, chowned to it.
    fn create(owner: Option<(u32, u32)>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tessera-worker-")
            .tempdir()
            .map_err(Error::io("creating a browser profile directory"))?;
        let profile = Profile { dir };
        for sub in [profile.home(), profile.tmp()] {
            std::fs::create_dir(&sub).map_err(Error::io(format!("creating {}", sub.display())))?;
        }
        if let Some((uid, gid)) = owner {
            for path in [profile.path().to_path_buf(), profile.home(), profile.tmp()] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(Error::io(format!("giving {} to uid {uid}", path.display())))?;
            }
        }
        Ok(profile)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    fn tmp(&self) -> PathBuf {
        self.path().join("tmp")
    }

    /// Removes the profile once no process names it on its command line any more (Chromium's
    /// helpers, e.g. crashpad handlers that daemonized, outlive the browser by a moment and would
    /// write into a half-removed folder). We made it, so as root we can remove whatever `nobody`
    /// wrote inside.
    async fn remove(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut users = processes_naming(self.path());
        while !users.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            users = processes_naming(self.path());
        }
        if !users.is_empty() {
            eprintln!("tessera worker: browser processes {users:?} still running; removing the profile anyway");
        }
        let path = self.path().to_path_buf();
        let mut outcome = self.dir.close();
        if outcome.is_err() && path.exists() {
            // A helper may have written a file while the folder was being removed: once more.
            tokio::time::sleep(Duration::from_millis(200)).await;
            outcome = std::fs::remove_dir_all(&path);
        }
        if let Err(error) = outcome {
            eprintln!("tessera worker: cannot remove the browser profile {}: {error}", path.display());
        }
    }
}

/// PIDs of the processes whose command line mentions `path` (empty where /proc is unavailable).
fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|window| window == needle))
        })
        .collect()
}

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

/// A signal that asks `tessera worker` to stop: each ends the browser and removes its profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C on the terminal.
    Interrupt,
    /// SIGTERM: `kill`, systemd, a container runtime stopping the worker.
    Terminate,
    /// SIGHUP: the terminal or SSH session went away.
    Hangup,
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Hangup => "SIGHUP",
        })
    }
}

/// The stop signals, watched from the start of `tessera worker`: once registered, none of them
/// kills the process by default any more, so the browser and its profile are always cleaned up.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn watch() -> Result<Self> {
        let watch = |kind: SignalKind, name: &str| {
            tokio::signal::unix::signal(kind).map_err(Error::io(format!("watching {name}")))
        };
        Ok(StopSignals {
            interrupt: watch(SignalKind::interrupt(), "SIGINT")?,
            terminate: watch(SignalKind::terminate(), "SIGTERM")?,
            hangup: watch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next stop signal (cancel safe).
    async fn next(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.interrupt.recv() => StopSignal::Interrupt,
            _ = self.terminate.recv() => StopSignal::Terminate,
            _ = self.hangup.recv() => StopSignal::Hangup,
        }
    }
}

/// How the page run ended when nothing failed.
enum Ending {
    /// The page said it is done (`exit: …`, with `--exit-when-idle`).
    PageExited,
    /// A stop signal arrived.
    Stopped(StopSignal),
}

/// How long Chromium gets to close in order (SIGTERM) before it is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long Chromium's helpers get to follow the browser out before they are killed.
const HELPERS_GRACE: Duration = Duration::from_secs(2);

/// Runs the browser worker until the page says it is done, the browser dies, or SIGINT, SIGTERM or
/// SIGHUP. On every path out the browser's whole process tree is ended and its temporary profile
/// removed; a `kill -9` of the worker still takes the browser down (see [`process`]).
pub async fn run_worker(options: WorkerOptions) -> Result<()> {
    let mut signals = StopSignals::watch()?;
    if let Err(error) = process::adopt_orphans() {
        eprintln!("tessera worker: {error}; a helper Chromium daemonizes may be missed at exit");
    }
    let chromium = find_chromium(options.chromium.clone())?;
    let url = page_url(&options)?;
    let sandbox = plan_sandbox(effective_uid()?, user_namespaces_here(), options.unsafe_no_sandbox)?;
    let owner = match sandbox {
        BrowserSandbox::DropTo { uid, gid } => Some((uid, gid)),
        BrowserSandbox::AsIs | BrowserSandbox::Disabled => None,
    };
    let profile = Profile::create(owner)?;
    let outcome = match Browser::launch(&chromium, &url, sandbox, &profile) {
        Ok(mut browser) => {
            let mut progress = Progress::for_stdout();
            let outcome = follow_page(&options, &url, &mut browser, &mut signals, &mut progress).await;
            browser.close(&mut signals, &progress).await;
            progress.finish();
            outcome
        }
        Err(error) => Err(error),
    };
    let survivors = process::end_descendants(HELPERS_GRACE).await;
    if !survivors.is_empty() {
        eprintln!("tessera worker: browser processes {survivors:?} did not end");
    }
    profile.remove().await;
    match outcome? {
        Ending::PageExited => Ok(()),
        Ending::Stopped(signal) => {
            eprintln!("tessera worker: stopped by {signal}; the browser is closed and its profile removed");
            Ok(())
        }
    }
}

/// This process's effective uid (the second `Uid:` field of /proc/self/status): whether we are
/// root decides how Chromium gets its sandbox.
fn effective_uid() -> Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(Error::io("reading /proc/self/status to learn whether we run as root"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| Error::Browser("/proc/self/status has no effective uid".into()))
}

/// Chromium's last stderr lines and the first that reported a sandbox failure: what explains an
/// early exit (bounded: the browser may log a lot).
#[derive(Default)]
struct StderrTail {
    recent: VecDeque<String>,
    sandbox_failure: Option<String>,
}

impl StderrTail {
    const LINES: usize = 8;

    /// Reads `stderr` to its end into the shared tail.
    async fn collect(stderr: ChildStderr, tail: Arc<Mutex<StderrTail>>) {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(mut tail) = tail.lock() else { return };
            if tail.sandbox_failure.is_none() && is_sandbox_failure(&line) {
                tail.sandbox_failure = Some(line.clone());
            }
            if tail.recent.len() == Self::LINES {
                tail.recent.pop_front();
            }
            tail.recent.push_back(line);
        }
    }
}

/// A running Chromium: its process, its DevTools pipe and what it said on stderr.
struct Browser {
    child: Child,
    devtools: DevTools,
    stderr: Arc<Mutex<StderrTail>>,
    /// The task reading stderr; aborted when the browser is closed.
    stderr_reader: tokio::task::JoinHandle<()>,
}

impl Browser {
    /// Starts Chromium with `profile` (on about:blank: the page is opened over DevTools), in a
    /// process group of its own and with a death signal (see [`process`]), its DevTools pipe on
    /// file descriptors 3 and 4, and says on stderr what it started (tests read that line).
    fn launch(chromium: &Path, url: &str, sandbox: BrowserSandbox, profile: &Profile) -> Result<Browser> {
        let mut command = Command::new(chromium);
        command.args(CHROMIUM_FLAGS);
        match sandbox {
            BrowserSandbox::AsIs => {}
            BrowserSandbox::Disabled => {
                eprintln!(
                    "tessera worker: WARNING: --unsafe-no-browser-sandbox: Chromium runs without its sandbox; guest \
                     code that exploits the browser runs with this user's privileges"
                );
                command.arg("--no-sandbox");
            }
            BrowserSandbox::DropTo { uid, gid } => {
                // Set directly on the spawned process (no sudo/su in between), so the PID we hold
                // is Chromium's (/usr/bin/chromium execs it) and killing it ends the browser. std
                // drops root's supplementary groups when it changes the uid. Root's HOME, runtime
                // dir and session bus are unusable to `nobody`: everything points into the profile.
                let home = profile.home();
                command
                    .uid(uid)
                    .gid(gid)
                    .current_dir(profile.path())
                    .env("HOME", &home)
                    .env("XDG_CONFIG_HOME", home.join(".config"))
                    .env("XDG_CACHE_HOME", home.join(".cache"))
                    .env("XDG_DATA_HOME", home.join(".local/share"))
                    .env("TMPDIR", profile.tmp())
                    .env_remove("XDG_RUNTIME_DIR")
                    .env_remove("DBUS_SESSION_BUS_ADDRESS");
            }
        }
        let (devtools, ends) = DevTools::pipes()?;
        let fds =
            [(ends.commands.as_raw_fd(), devtools::COMMANDS_FD), (ends.messages.as_raw_fd(), devtools::MESSAGES_FD)];
        let parent = std::process::id();
        // SAFETY: the closure makes only async-signal-safe calls (prctl, getppid, fcntl, dup2) and
        // uses only the copied fd numbers, which stay open until `ends` is dropped after spawn.
        unsafe {
            command.pre_exec(move || {
                process::die_with_parent(parent)?;
                process::install_fds(&fds)
            });
        }
        let mut child = command
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| Error::Browser(format!("cannot start {}: {error}", chromium.display())))?;
        // Only the browser may hold its ends: closed here, a browser that exits closes the pipe.
        drop(ends);
        let how = match sandbox {
            BrowserSandbox::AsIs => "its own sandbox".to_string(),
            BrowserSandbox::DropTo { uid, .. } => format!("its own sandbox as uid {uid}"),
            BrowserSandbox::Disabled => "NO sandbox".to_string(),
        };
        eprintln!(
            "tessera worker: {} (pid {}, {how}, profile {}) on {url}",
            chromium.display(),
            child.id().unwrap_or_default(),
            profile.path().display()
        );
        let stderr = Arc::new(Mutex::new(StderrTail::default()));
        let pipe = child.stderr.take().ok_or_else(|| Error::Browser("no stderr pipe".into()))?;
        let stderr_reader = tokio::spawn(StderrTail::collect(pipe, stderr.clone()));
        Ok(Browser { child, devtools, stderr, stderr_reader })
    }

    /// Opens `url` in a page of its own, attached over DevTools with the console reported
    /// (`Runtime.enable` before the page loads, so no line is missed).
    async fn open_page(&mut self, url: &str) -> Result<AttachedPage> {
        let devtools = &mut self.devtools;
        let created = devtools.call("Target.createTarget", json!({"url": "about:blank"}), None).await?;
        let target_id = created["targetId"]
            .as_str()
            .ok_or_else(|| Error::Browser(format!("Target.createTarget gave no target: {created}")))?;
        let attached =
            devtools.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}), None).await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| Error::Browser(format!("Target.attachToTarget gave no session: {attached}")))?
            .to_string();
        devtools.call("Runtime.enable", json!({}), Some(&session)).await?;
        devtools.call("Inspector.enable", json!({}), Some(&session)).await?;
        let navigated = devtools.call("Page.navigate", json!({"url": url}), Some(&session)).await?;
        if let Some(error) = navigated.get("errorText").and_then(Value::as_str) {
            return Err(Error::Browser(format!("cannot open {url}: {error}")));
        }
        Ok(AttachedPage { session, main_frame: target_id.to_string(), contexts: BTreeSet::new() })
    }

    /// Why the browser went away: its exit status, with its sandbox failure or last stderr lines.
    /// `fallback` is returned when the browser is still running a moment later.
    async fn explain_exit(&mut self, fallback: Error) -> Error {
        let status = match tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) | Err(_) => return fallback,
        };
        // Let stderr's last lines arrive.
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut self.stderr_reader).await;
        let Ok(tail) = self.stderr.lock() else { return fallback };
        if let Some(line) = &tail.sandbox_failure {
            return Error::Browser(format!(
                "Chromium could not start its sandbox ({status}): {line}\n{HOW_TO_SANDBOX}"
            ));
        }
        let recent: Vec<&str> = tail.recent.iter().map(String::as_str).collect();
        Error::Browser(format!("Chromium exited unexpectedly ({status}); its last lines:\n{}", recent.join("\n")))
    }

    /// Closes the browser: `Browser.close` over DevTools (Chromium's own orderly shutdown), then
    /// SIGKILL after [`CLOSE_GRACE`] or at a second stop signal; reaped before this returns.
    async fn close(mut self, signals: &mut StopSignals, progress: &Progress) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            if self.devtools.send("Browser.close", json!({}), None).await.is_err() {
                if let Some(pid) = self.child.id() {
                    process::send_signal(pid, libc::SIGTERM);
                }
            }
            tokio::select! {
                _ = self.child.wait() => {}
                _ = tokio::time::sleep(CLOSE_GRACE) => {
                    progress.note(&format!("the browser did not close within {CLOSE_GRACE:?}; killing it"));
                }
                signal = signals.next() => {
                    progress.note(&format!("{signal} again; killing the browser"));
                }
            }
            let _ = self.child.kill().await;
        }
        self.stderr_reader.abort();
    }
}

/// What one event of the page means for the run.
enum PageTurn {
    Continue,
    Started,
    Ended(Result<Ending>),
}

/// The contribute page as attached over DevTools: its session, its main frame (a page target's id
/// is its main frame's id) and the JavaScript contexts of that frame's documents. Only console
/// calls made in those contexts count as the page's reports: another frame or a worker of the same
/// renderer — where guest code runs — cannot speak for the page.
struct AttachedPage {
    session: String,
    main_frame: String,
    contexts: BTreeSet<i64>,
}

impl AttachedPage {
    /// Reads one DevTools event: prints the page's `[tessera]` lines and tells whether the page
    /// started, exited, failed or went away.
    fn turn(&mut self, event: &devtools::Event, progress: &mut Progress) -> PageTurn {
        if event.method == "Target.detachedFromTarget" {
            if event.params.get("sessionId").and_then(Value::as_str) == Some(self.session.as_str()) {
                return PageTurn::Ended(Err(Error::Browser("the worker page was closed".into())));
            }
            return PageTurn::Continue;
        }
        if event.session_id.as_deref() != Some(self.session.as_str()) {
            return PageTurn::Continue;
        }
        match event.method.as_str() {
            "Inspector.targetCrashed" => {
                return PageTurn::Ended(Err(Error::Browser("the worker page crashed (out of memory?)".into())));
            }
            "Runtime.executionContextCreated" => {
                let context = &event.params["context"];
                let main_world = context.pointer("/auxData/isDefault") == Some(&Value::Bool(true))
                    && context.pointer("/auxData/frameId").and_then(Value::as_str) == Some(self.main_frame.as_str());
                if let (true, Some(id)) = (main_world, context["id"].as_i64()) {
                    self.contexts.insert(id);
                }
                return PageTurn::Continue;
            }
            "Runtime.executionContextDestroyed" => {
                if let Some(id) = event.params["executionContextId"].as_i64() {
                    self.contexts.remove(&id);
                }
                return PageTurn::Continue;
            }
            "Runtime.executionContextsCleared" => {
                self.contexts.clear();
                return PageTurn::Continue;
            }
            _ => {}
        }
        // A console call names its context at the top, an uncaught exception in its details.
        let context = event.params["executionContextId"]
            .as_i64()
            .or_else(|| event.params.pointer("/exceptionDetails/executionContextId").and_then(Value::as_i64));
        let in_page = context.is_some_and(|id| self.contexts.contains(&id));
        if !in_page {
            return PageTurn::Continue;
        }
        if let Some(error) = devtools::exception_text(event) {
            progress.note(&format!("uncaught error in the page: {error}"));
            return PageTurn::Continue;
        }
        let Some(message) = devtools::console_text(event) else { return PageTurn::Continue };
        let Some(body) = message.strip_prefix("[tessera] ") else { return PageTurn::Continue };
        progress.page_line(&message);
        if body.starts_with("started") {
            PageTurn::Started
        } else if body.starts_with("exit") {
            PageTurn::Ended(Ok(Ending::PageExited))
        } else if let Some(reason) = body.strip_prefix("fatal: ") {
            PageTurn::Ended(Err(Error::Browser(format!("the worker page failed: {reason}"))))
        } else {
            PageTurn::Continue
        }
    }
}

/// Opens the page and follows its reports until it exits or fails, the browser dies, or a stop
/// signal arrives.
async fn follow_page(
    options: &WorkerOptions,
    url: &str,
    browser: &mut Browser,
    signals: &mut StopSignals,
    progress: &mut Progress,
) -> Result<Ending> {
    let startup = tokio::time::sleep(options.startup_timeout);
    tokio::pin!(startup);
    let not_started = || {
        Error::Browser(format!(
            "the worker page did not start within {:?}; is {} serving the site?",
            options.startup_timeout, options.scheduler
        ))
    };
    let mut page = tokio::select! {
        opened = browser.open_page(url) => match opened {
            Ok(page) => page,
            Err(error) => return Err(browser.explain_exit(error).await),
        },
        _ = &mut startup => return Err(not_started()),
        signal = signals.next() => return Ok(Ending::Stopped(signal)),
    };
    let mut started = false;
    loop {
        tokio::select! {
            event = browser.devtools.next_event() => match event {
                Ok(Some(event)) => match page.turn(&event, progress) {
                    PageTurn::Continue => {}
                    PageTurn::Started => started = true,
                    PageTurn::Ended(outcome) => return outcome,
                },
                Ok(None) => {
                    let closed = Error::Browser("the browser closed its DevTools pipe".into());
                    return Err(browser.explain_exit(closed).await);
                }
                Err(error) => return Err(browser.explain_exit(error).await),
            },
            _ = &mut startup, if !started => return Err(not_started()),
            signal = signals.next() => {
                progress.note(&format!("{signal}: stopping"));
                return Ok(Ending::Stopped(signal));
            }
        }
    }
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
            unsafe_no_sandbox: false,
        };
        assert_eq!(
            page_url(&options).unwrap(),
            "http://127.0.0.1:8080/?autostart=1&exitWhenIdle=1&idleMs=3000&sandboxes=2&logSlices=1\
             &pyodideUrl=http%3A%2F%2Fh%3A1%2Fpy+dir%2F%3Fa%3Db%26c"
        );
    }

    #[test]
    fn only_the_attached_pages_main_frame_reports_count() {
        let event = |session: Option<&str>, method: &str, params: Value| devtools::Event {
            method: method.into(),
            params,
            session_id: session.map(str::to_string),
        };
        let console = |session: &str, context: i64, text: &str| {
            event(
                Some(session),
                "Runtime.consoleAPICalled",
                json!({"type": "log", "executionContextId": context, "args": [{"type": "string", "value": text}]}),
            )
        };
        let context = |id: i64, frame: &str, default: bool| {
            event(
                Some("S"),
                "Runtime.executionContextCreated",
                json!({"context": {"id": id, "auxData": {"isDefault": default, "frameId": frame}}}),
            )
        };
        let mut progress = Progress::plain();
        let mut page = AttachedPage { session: "S".into(), main_frame: "F".into(), contexts: BTreeSet::new() };
        let mut turn = |event: devtools::Event| page.turn(&event, &mut progress);
        // Before its context is known, not even the page's own line counts.
        assert!(matches!(turn(console("S", 1, "[tessera] started with 1 sandbox(es)")), PageTurn::Continue));
        assert!(matches!(turn(context(1, "F", true)), PageTurn::Continue));
        assert!(matches!(turn(context(2, "IFRAME", true)), PageTurn::Continue));
        assert!(matches!(turn(context(3, "F", false)), PageTurn::Continue));
        assert!(matches!(turn(console("S", 1, "[tessera] started with 1 sandbox(es)")), PageTurn::Started));
        assert!(matches!(turn(console("S", 1, "[tessera] fatal: boom")), PageTurn::Ended(Err(_))));
        // Another frame, an isolated world, another target: none can end the run.
        assert!(matches!(turn(console("S", 2, "[tessera] exit: idle")), PageTurn::Continue));
        assert!(matches!(turn(console("S", 3, "[tessera] exit: idle")), PageTurn::Continue));
        assert!(matches!(turn(console("other", 1, "[tessera] exit: idle")), PageTurn::Continue));
        assert!(matches!(turn(console("S", 1, "exit")), PageTurn::Continue));
        assert!(matches!(turn(console("S", 1, "[tessera] exit: idle; 3 done, 0 errors")), PageTurn::Ended(Ok(_))));
        assert!(matches!(turn(event(None, "Runtime.executionContextsCleared", json!({}))), PageTurn::Continue));
        let cleared = event(Some("S"), "Runtime.executionContextsCleared", json!({}));
        assert!(matches!(turn(cleared), PageTurn::Continue));
        assert!(matches!(turn(console("S", 1, "[tessera] exit: idle")), PageTurn::Continue));
        let detached = event(None, "Target.detachedFromTarget", json!({"sessionId": "S"}));
        assert!(matches!(turn(detached), PageTurn::Ended(Err(_))));
    }

    #[test]
    fn root_with_user_namespaces_drops_to_nobody() {
        assert_eq!(
            plan_sandbox(0, Ok(()), false).unwrap(),
            BrowserSandbox::DropTo { uid: UNPRIVILEGED_ID, gid: UNPRIVILEGED_ID }
        );
        assert_eq!(UNPRIVILEGED_ID, 65534);
    }

    #[test]
    fn root_without_user_namespaces_is_refused_unless_the_operator_opts_out() {
        let off = user_namespaces(Some("0\n"), Some("63000\n"));
        let Err(Error::Browser(message)) = plan_sandbox(0, off.clone(), false) else {
            panic!("root without user namespaces must be refused");
        };
        assert!(message.contains("kernel.unprivileged_userns_clone = 0"), "{message}");
        assert!(message.contains("as a normal (non-root) user"), "{message}");
        assert!(message.contains("--unsafe-no-browser-sandbox"), "{message}");
        assert_eq!(plan_sandbox(0, off, true).unwrap(), BrowserSandbox::Disabled);
        let none = user_namespaces(None, Some("0"));
        assert!(none.as_ref().is_err_and(|reason| reason.contains("user.max_user_namespaces = 0")));
        assert!(plan_sandbox(0, none, false).is_err());
    }

    #[test]
    fn not_root_runs_chromium_plainly_with_its_sandbox() {
        assert_eq!(plan_sandbox(1000, Ok(()), false).unwrap(), BrowserSandbox::AsIs);
        // User namespaces matter only for dropping root; a normal user just runs Chromium.
        assert_eq!(plan_sandbox(1000, Err("off".into()), false).unwrap(), BrowserSandbox::AsIs);
        assert_eq!(plan_sandbox(1000, Ok(()), true).unwrap(), BrowserSandbox::Disabled);
    }

    #[test]
    fn user_namespaces_are_available_unless_a_sysctl_turns_them_off() {
        assert_eq!(user_namespaces(Some("1\n"), Some("96364\n")), Ok(()));
        assert_eq!(user_namespaces(None, None), Ok(()));
        assert!(user_namespaces(Some("1"), Some("0\n")).is_err());
    }

    #[test]
    fn recognises_chromium_sandbox_failures() {
        assert!(is_sandbox_failure(
            "[1:1:1127/1.2:FATAL:zygote_host_impl_linux.cc(128)] No usable sandbox! If you are running on Ubuntu"
        ));
        assert!(is_sandbox_failure(
            "[1:1:FATAL:zygote_host_impl_linux.cc(90)] Running as root without --no-sandbox is not supported."
        ));
        assert!(!is_sandbox_failure("[1:1:ERROR:dbus/bus.cc:405] Failed to connect to the bus"));
        assert!(!CHROMIUM_FLAGS.contains(&"--no-sandbox"));
    }

    #[test]
    fn effective_uid_matches_the_owner_of_what_we_create() {
        use std::os::unix::fs::MetadataExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(effective_uid().unwrap(), file.path().metadata().unwrap().uid());
    }
}
