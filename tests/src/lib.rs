//! Harness for end-to-end tests: starts the real `tessera` binary (scheduler, deployer, browser
//! worker) as separate processes, the way a person would, and stops each by its PID.
//!
//! Ground truth comes from two places the CLI cannot paper over: the scheduler's SQLite store
//! (opened read-only, [`Store`]) and the lines each browser worker prints ([`Worker::events`]).
//! Every process a test starts is stopped by a guard's `Drop`, also when the test panics.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub mod webdriver;

/// The `tessera` binary under test: `$TESSERA_BIN`, or the workspace's release build.
pub fn tessera_bin() -> PathBuf {
    let path = std::env::var_os("TESSERA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tessera"));
    assert!(path.is_file(), "{} is missing: run `make build` (make test does) or set TESSERA_BIN", path.display());
    path
}

/// Milliseconds since the Unix epoch (the store's clock: same machine, same clock).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// Polls `check` every 200 ms until it gives a value; panics with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < timeout, "waited {timeout:?} for {}", what());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A scheduler on a loopback port with a temporary database; killed when dropped. It can be
/// killed and started again on the same port and database ([`Scheduler::kill`],
/// [`Scheduler::start_again`]). Its configuration directory (`TESSERA_CONFIG_DIR`, where it saves
/// its first admin key) is its temporary folder, never the user's.
pub struct Scheduler {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    /// The admin key it printed when it made its database (`TESSERA_API_KEY=…` on stderr).
    pub api_key: String,
    /// The SQLite store the scheduler writes.
    pub db: PathBuf,
    options: Vec<String>,
    /// `RUST_LOG` of the scheduler process.
    log_filter: &'static str,
    /// Output of the workers started with [`Scheduler::worker_with`], for failure messages.
    worker_outputs: Mutex<Vec<WorkerOutput>>,
    pub dir: tempfile::TempDir,
}

/// Where a worker's output is collected: its PID, stdout lines and stderr.
type WorkerOutput = (u32, Arc<Mutex<Vec<Line>>>, Arc<Mutex<String>>);

impl Scheduler {
    pub fn start() -> Scheduler {
        Scheduler::start_with(&[])
    }

    /// A scheduler with extra `tessera serve` options (e.g. a short lease lifetime), on a free port.
    pub fn start_with(options: &[&str]) -> Scheduler {
        Scheduler::start_logging(options, "warn")
    }

    /// A scheduler that writes every request it serves (method, path, status) to its log
    /// ([`Scheduler::log`]): the ground truth for tests that must show a request never arrived.
    pub fn start_with_request_log() -> Scheduler {
        Scheduler::start_logging(&[], "warn,tessera_scheduler::server=debug")
    }

    fn start_logging(options: &[&str], log_filter: &'static str) -> Scheduler {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("e2e.db");
        let options: Vec<String> = options.iter().map(|option| option.to_string()).collect();
        let (child, url) = spawn_scheduler(dir.path(), &db, "127.0.0.1:0", &options, log_filter)
            .unwrap_or_else(|log| panic!("tessera serve did not start:\n{log}"));
        let port = url.rsplit(':').next().and_then(|port| port.trim_end_matches('/').parse().ok()).expect("port");
        // Printed on stderr before the listening line, so it is in the log by now.
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        let api_key = api_keys_printed(&log)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("tessera serve printed no TESSERA_API_KEY line:\n{log}"));
        Scheduler {
            child: Some(child),
            url,
            port,
            api_key,
            db,
            options,
            log_filter,
            worker_outputs: Mutex::new(Vec::new()),
            dir,
        }
    }

    /// `TESSERA_CONFIG_DIR` of this scheduler and of the commands run against it.
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tessera` with this scheduler's URL, configuration directory and quiet logs, but no API
    /// key: for tests of how the CLI finds one.
    pub fn command(&self) -> Command {
        let mut command = Command::new(tessera_bin());
        command
            .env("TESSERA_SCHEDULER", &self.url)
            .env("TESSERA_CONFIG_DIR", self.config_dir())
            .env_remove("TESSERA_API_KEY")
            .env("RUST_LOG", "warn");
        command
    }

    /// The scheduler's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` of the scheduler (by its PID): no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the scheduler again on the same port and database, with the same options.
    pub fn start_again(&mut self) {
        self.kill();
        let address = format!("127.0.0.1:{}", self.port);
        let started = Instant::now();
        let child = loop {
            match spawn_scheduler(self.dir.path(), &self.db, &address, &self.options, self.log_filter) {
                Ok((child, url)) => {
                    assert_eq!(url, self.url, "the restarted scheduler listens on the same address");
                    break child;
                }
                // The port may linger for a moment after a kill.
                Err(log) if started.elapsed() < Duration::from_secs(10) => {
                    let _ = log;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(log) => panic!("tessera serve did not start again on {address}:\n{log}"),
            }
        };
        self.child = Some(child);
    }

    /// The scheduler's log (stderr and any stdout after the first line) and the last lines of
    /// every worker started with [`Scheduler::worker_with`], for assertion messages.
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
        if text.len() > 8_000 {
            let mut cut = text.len() - 8_000;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text = format!("…{}", &text[cut..]);
        }
        for (pid, lines, stderr) in self.worker_outputs.lock().expect("workers").iter() {
            let lines = lines.lock().expect("lines");
            let tail: Vec<&str> = lines[lines.len().saturating_sub(40)..].iter().map(|l| l.text.as_str()).collect();
            text.push_str(&format!(
                "\n--- worker {pid}: last {} of {} lines\n{}\n--- its stderr:\n{}",
                tail.len(),
                lines.len(),
                tail.join("\n"),
                stderr.lock().expect("stderr")
            ));
        }
        text
    }

    /// Runs `tessera ARGS` against this scheduler with its admin key.
    pub fn tessera(&self, args: &[&str]) -> Output {
        self.command().args(args).env("TESSERA_API_KEY", &self.api_key).output().expect("run tessera")
    }

    /// Writes `text` to a file in the scheduler's temp dir and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write file");
        path.to_string_lossy().into_owned()
    }

    /// `tessera deploy ARGS` without waiting; returns the job id.
    pub fn deploy(&self, args: &[&str]) -> String {
        let mut all = vec!["deploy"];
        all.extend_from_slice(args);
        let output = self.tessera(&all);
        assert!(output.status.success(), "deploy failed: {}", text(&output));
        let job_id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(
            !job_id.is_empty() && !job_id.contains(char::is_whitespace),
            "deploy printed no job id: {}",
            text(&output)
        );
        job_id
    }

    /// Starts `tessera worker --exit-when-idle` with `cores` sandboxes.
    pub fn worker(&self, cores: u32) -> Child {
        Command::new(tessera_bin())
            .args(["worker", "--exit-when-idle", "--idle-ms", "4000", "--cores", &cores.to_string()])
            .env("TESSERA_SCHEDULER", &self.url)
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera worker")
    }

    /// Starts `tessera worker --scheduler URL --cores N EXTRA…` whose output is collected on
    /// threads; stopped (with its browser) when dropped.
    pub fn worker_with(&self, cores: u32, extra: &[&str]) -> Worker {
        let mut child = Command::new(tessera_bin())
            .args(["worker", "--scheduler", &self.url, "--cores", &cores.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera worker");
        let pid = child.id();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines").push(Line { at: Instant::now(), text: line });
            }
        });
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let mut text = sink.lock().expect("stderr");
                if text.len() < 64 * 1024 {
                    text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        self.worker_outputs.lock().expect("workers").push((pid, lines.clone(), stderr.clone()));
        Worker { child: Some(child), pid, lines, stderr, seen: BTreeMap::new() }
    }

    /// The JSON status of a job.
    pub fn status(&self, job_id: &str) -> Value {
        let output = self.tessera(&["status", "--json", job_id]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("status: {}", text(&output)))
    }

    /// `tessera status JOB --slice N --json`: the slice's attempt history.
    pub fn slice_history(&self, job_id: &str, slice: u64) -> Value {
        let output = self.tessera(&["status", job_id, "--slice", &slice.to_string(), "--json"]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("slice history: {}", text(&output)))
    }

    /// `tessera results JOB --json`.
    pub fn results(&self, job_id: &str) -> Vec<Value> {
        let output = self.tessera(&["results", "--json", job_id]);
        assert!(output.status.success(), "results: {}", text(&output));
        json_lines(&output.stdout)
    }

    /// Waits until the job's state is `state`; panics with the last status and the scheduler log.
    pub fn wait_for_state(&self, job_id: &str, state: &str, timeout: Duration) -> Value {
        let last = Mutex::new(Value::Null);
        wait_until(
            timeout,
            || {
                format!(
                    "job {job_id} to be {state}; last status {}\nscheduler log:\n{}",
                    last.lock().unwrap(),
                    self.log()
                )
            },
            || {
                let status = self.status(job_id);
                let reached = status["state"] == state;
                *last.lock().unwrap() = status.clone();
                reached.then_some(status)
            },
        )
    }

    /// Waits until at least `done` slices of the job have a result.
    pub fn wait_for_done(&self, job_id: &str, done: u64, timeout: Duration) -> Value {
        let last = Mutex::new(Value::Null);
        wait_until(
            timeout,
            || format!("{done} slices of {job_id} done; last status {}\n{}", last.lock().unwrap(), self.log()),
            || {
                let status = self.status(job_id);
                let reached = status["done"].as_u64().unwrap_or(0) >= done;
                *last.lock().unwrap() = status.clone();
                reached.then_some(status)
            },
        )
    }

    /// A read-only view of the scheduler's store (a fresh connection: a snapshot as of now).
    pub fn store(&self) -> Store {
        Store::open(&self.db)
    }

    /// Deploys with `--wait --json` while a browser worker runs; returns results and the worker's output.
    pub fn run_job(&self, cores: u32, deploy_args: &[&str]) -> (Vec<Value>, Output, Output) {
        let worker = self.worker(cores);
        let mut args = vec!["deploy", "--wait", "--json"];
        args.extend_from_slice(deploy_args);
        let deployed = self.tessera(&args);
        let worker = worker.wait_with_output().expect("worker output");
        let results = json_lines(&deployed.stdout);
        (results, deployed, worker)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `tessera serve` and reads its listening line; `Err` carries its log when it did not start.
fn spawn_scheduler(
    dir: &Path,
    db: &Path,
    address: &str,
    options: &[String],
    log_filter: &str,
) -> Result<(Child, String), String> {
    let log_path = dir.join("serve.log");
    let log = OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
    let mut child = Command::new(tessera_bin())
        .args(["serve", "--addr", address, "--db"])
        .arg(db)
        .args(options)
        .env("RUST_LOG", log_filter)
        .env("TESSERA_CONFIG_DIR", dir)
        // Its own folder, which holds nothing of the source tree: the binary carries its site.
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start tessera serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = stdout.read_line(&mut line);
    let url = line.split_whitespace().last().unwrap_or_default().to_string();
    if !line.starts_with("tessera scheduler listening on ") || !url.starts_with("http://127.0.0.1:") {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!("first line {line:?}\n{log}"));
    }
    // Keep draining stdout so a later line never meets a closed pipe.
    let mut sink = OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut stdout, &mut sink);
    });
    Ok((child, url))
}

/// The keys of every `TESSERA_API_KEY=<key>` line in a scheduler's log, in order.
pub fn api_keys_printed(log: &str) -> Vec<String> {
    log.lines().filter_map(|line| line.strip_prefix("TESSERA_API_KEY=")).map(str::to_string).collect()
}

/// One line a browser worker printed, with when the harness read it.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// A page line `[tessera] KIND key=value …` parsed (`reason=` takes the rest of the line).
#[derive(Clone, Debug)]
pub struct PageEvent {
    pub at: Instant,
    /// Position among the worker's lines.
    pub index: usize,
    pub kind: String,
    pub fields: BTreeMap<String, String>,
    pub text: String,
}

impl PageEvent {
    /// A field's value, or "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }

    /// A numeric field.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|value| value.parse().ok())
    }
}

/// Parses a worker line into a page event, if it is one.
pub fn page_event(index: usize, line: &Line) -> Option<PageEvent> {
    let body = line.text.trim().strip_prefix("[tessera] ")?;
    let (kind, mut rest) = body.split_once(' ').unwrap_or((body, ""));
    let mut fields = BTreeMap::new();
    while !rest.is_empty() {
        rest = rest.trim_start();
        if let Some(reason) = rest.strip_prefix("reason=") {
            fields.insert("reason".to_string(), reason.to_string());
            break;
        }
        let (token, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some((key, value)) = token.split_once('=') {
            fields.insert(key.to_string(), value.to_string());
        }
        rest = tail;
    }
    Some(PageEvent {
        at: line.at,
        index,
        kind: kind.trim_end_matches(':').to_string(),
        fields,
        text: line.text.clone(),
    })
}

/// A `tessera worker` (launcher + headless Chromium). Dropping it sends SIGINT, then SIGKILLs
/// whatever of its process tree is left, by PID, and removes a browser profile left behind.
pub struct Worker {
    child: Option<Child>,
    pid: u32,
    lines: Arc<Mutex<Vec<Line>>>,
    stderr: Arc<Mutex<String>>,
    /// Every process of this worker's tree seen so far: pid → start time (guards against PID reuse).
    seen: BTreeMap<u32, u64>,
}

impl Worker {
    /// The launcher's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().expect("lines").clone()
    }

    /// Every `[tessera] …` line printed so far, parsed.
    pub fn events(&self) -> Vec<PageEvent> {
        self.lines().iter().enumerate().filter_map(|(index, line)| page_event(index, line)).collect()
    }

    /// Everything the worker printed, for assertion messages (the last 300 lines of stdout and its stderr).
    pub fn output(&self) -> String {
        let lines = self.lines();
        let skip = lines.len().saturating_sub(300);
        let stdout: Vec<&str> = lines[skip..].iter().map(|line| line.text.as_str()).collect();
        format!(
            "worker {} stdout ({} lines, last {}):\n{}\nstderr:\n{}",
            self.pid,
            lines.len(),
            stdout.len(),
            stdout.join("\n"),
            self.stderr.lock().expect("stderr")
        )
    }

    /// Waits for a page event matching `matches`; panics with the worker's output after `timeout`.
    pub fn wait_for_event(&self, what: &str, timeout: Duration, matches: impl Fn(&PageEvent) -> bool) -> PageEvent {
        wait_until(
            timeout,
            || format!("worker {}: {what}\n{}", self.pid, self.output()),
            || self.events().into_iter().find(|event| matches(event)),
        )
    }

    /// The worker's processes now: the launcher and all its descendants (Chromium and its helpers).
    pub fn process_tree(&mut self) -> Vec<u32> {
        let mut tree = vec![self.pid];
        tree.extend(descendants(self.pid));
        tree.retain(|pid| start_time(*pid).is_some());
        for pid in &tree {
            if let Some(start) = start_time(*pid) {
                self.seen.entry(*pid).or_insert(start);
            }
        }
        tree
    }

    /// Whether the launcher is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// `kill -9` of the launcher and its whole browser: the worker vanishes without a word.
    pub fn kill_hard(&mut self) {
        self.process_tree();
        let profiles = self.profiles();
        self.kill_seen(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        remove_dirs(&profiles);
    }

    /// Sends `signal` to the launcher only (e.g. SIGTERM, SIGINT).
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid, signal);
    }

    /// Waits for the launcher to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid;
        let child = self.child.as_mut().expect("the worker was already reaped");
        let status = wait_until(timeout, || format!("worker {pid} to exit"), || child.try_wait().ok().flatten());
        self.child = None;
        status
    }

    /// Browser profile directories (`--user-data-dir`) named on the command lines of the worker's
    /// processes seen so far that still run: call [`Worker::process_tree`] first.
    pub fn profiles(&self) -> Vec<PathBuf> {
        let mut dirs = BTreeSet::new();
        for pid in self.seen.keys() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            for arg in cmdline.split(|byte| *byte == 0) {
                if let Some(dir) = String::from_utf8_lossy(arg).strip_prefix("--user-data-dir=") {
                    dirs.insert(PathBuf::from(dir));
                }
            }
        }
        dirs.into_iter().collect()
    }

    /// The processes of the worker's tree seen so far (see [`Worker::process_tree`]) that still
    /// run: the same process (start time) and not a zombie waiting to be reaped.
    pub fn still_running(&self) -> Vec<u32> {
        self.seen
            .iter()
            .filter(|(pid, start)| start_time(**pid) == Some(**start) && !is_zombie(**pid))
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Signals every process of the tree seen so far that still is the process that was seen.
    fn kill_seen(&self, signal: i32) {
        for (pid, start) in &self.seen {
            if start_time(*pid) == Some(*start) {
                send_signal(*pid, signal);
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.process_tree();
        let profiles = self.profiles();
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                send_signal(self.pid, libc::SIGINT);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_seen(libc::SIGKILL);
        remove_dirs(&profiles);
    }
}

/// Removes browser profile directories a killed worker left behind (only ones in the temp dir).
pub fn remove_profiles(dirs: &[PathBuf]) {
    remove_dirs(dirs);
}

fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        // Only browser profiles in the temp dir, never anything else named on a command line.
        if dir.starts_with(std::env::temp_dir()) && dir.is_dir() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Running processes (zombies excluded) whose command line names `path`, e.g. a browser profile:
/// Chromium helpers that left a worker's process tree still name it.
pub fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !is_zombie(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|window| window == needle))
        })
        .collect()
}

/// Sends `signal` to one process by its PID; false when there is no such process.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) with a positive PID signals exactly that process; no memory is shared.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// The direct children of a process (all its threads' children).
pub fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return found };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(text.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()));
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// All descendants of a process, found through /proc/PID/task/*/children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut stack = children(pid);
    while let Some(next) = stack.pop() {
        if !found.contains(&next) {
            found.push(next);
            stack.extend(children(next));
        }
    }
    found
}

/// Fields of /proc/PID/stat after the command name (field 3, the state, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether a process has exited and waits to be reaped (state `Z`).
pub fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state == "Z"))
}

/// When a process started (clock ticks after boot), or none when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// User + system CPU time of one process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// CPU seconds a process and all its descendants used over `period`, as a fraction of one core.
/// A process that appears during the period counts with all its time; one that ends is not counted.
pub fn tree_cpu_share(pid: u32, period: Duration) -> (f64, String) {
    let snapshot = || -> BTreeMap<u32, (u64, u64)> {
        std::iter::once(pid)
            .chain(descendants(pid))
            .filter_map(|pid| Some((pid, (start_time(pid)?, cpu_ticks(pid)?))))
            .collect()
    };
    let before = snapshot();
    let started = Instant::now();
    std::thread::sleep(period);
    let after = snapshot();
    let elapsed = started.elapsed().as_secs_f64();
    let mut ticks = 0;
    let mut detail = Vec::new();
    for (pid, (start, now)) in &after {
        let earlier = before.get(pid).filter(|(then_start, _)| then_start == start).map_or(0, |(_, then)| *then);
        let used = now.saturating_sub(earlier);
        ticks += used;
        if used > 0 {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            detail.push(format!("{pid} {}: {used} ticks", name.trim()));
        }
    }
    let share = ticks as f64 / ticks_per_second() as f64 / elapsed;
    (share, format!("{} processes, {ticks} ticks in {elapsed:.1} s: {}", after.len(), detail.join(", ")))
}

/// One lease (attempt) as stored.
#[derive(Clone, Debug)]
pub struct LeaseRow {
    pub id: String,
    pub slice: u64,
    pub worker_id: String,
    pub state: String,
    pub outcome: String,
    pub message: Option<String>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
}

/// One slice as stored.
#[derive(Clone, Debug)]
pub struct SliceRow {
    pub slice: u64,
    pub state: String,
    pub attempts: i64,
    pub result: Option<String>,
    pub error: Option<String>,
}

/// The scheduler's SQLite store, opened read-only (WAL lets it be read while the scheduler runs).
pub struct Store {
    connection: rusqlite::Connection,
}

impl Store {
    pub fn open(path: &Path) -> Store {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = rusqlite::Connection::open_with_flags(path, flags)
            .unwrap_or_else(|error| panic!("open {} read-only: {error}", path.display()));
        connection.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        Store { connection }
    }

    /// Every lease of a job, oldest first.
    pub fn leases(&self, job_id: &str) -> Vec<LeaseRow> {
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, idx, worker_id, state, outcome, message, started_ms, ended_ms
                 FROM leases WHERE job_id = ?1 ORDER BY started_ms, id",
            )
            .unwrap_or_else(|error| panic!("the store has no leases table of the expected shape: {error}"));
        let rows = statement
            .query_map([job_id], |row| {
                Ok(LeaseRow {
                    id: row.get(0)?,
                    slice: row.get::<_, i64>(1)? as u64,
                    worker_id: row.get(2)?,
                    state: row.get(3)?,
                    outcome: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    message: row.get(5)?,
                    started_ms: row.get(6)?,
                    ended_ms: row.get(7)?,
                })
            })
            .expect("query leases");
        rows.collect::<Result<_, _>>().expect("read leases")
    }

    /// Every slice of a job, in order.
    pub fn slices(&self, job_id: &str) -> Vec<SliceRow> {
        let mut statement = self
            .connection
            .prepare("SELECT idx, state, attempts, result, error FROM slices WHERE job_id = ?1 ORDER BY idx")
            .unwrap_or_else(|error| panic!("the store has no slices table of the expected shape: {error}"));
        let rows = statement
            .query_map([job_id], |row| {
                Ok(SliceRow {
                    slice: row.get::<_, i64>(0)? as u64,
                    state: row.get(1)?,
                    attempts: row.get(2)?,
                    result: row.get(3)?,
                    error: row.get(4)?,
                })
            })
            .expect("query slices");
        rows.collect::<Result<_, _>>().expect("read slices")
    }

    /// Ids of the job's leases still active (held by a worker) right now.
    pub fn active_lease_ids(&self, job_id: &str) -> BTreeSet<String> {
        self.leases(job_id).into_iter().filter(|lease| lease.state == "active").map(|lease| lease.id).collect()
    }

    /// Leases of a job grouped by slice.
    pub fn leases_by_slice(&self, job_id: &str) -> BTreeMap<u64, Vec<LeaseRow>> {
        let mut by_slice: BTreeMap<u64, Vec<LeaseRow>> = BTreeMap::new();
        for lease in self.leases(job_id) {
            by_slice.entry(lease.slice).or_default().push(lease);
        }
        by_slice
    }

    /// Asserts that each of the job's `total` slices has a final state (ok/error) and exactly one
    /// accepted lease (outcome ok or error, no longer active): no loss, no duplicate.
    pub fn assert_accepted_exactly_once(&self, job_id: &str, total: u64) {
        let slices = self.slices(job_id);
        assert_eq!(slices.len() as u64, total, "the store holds every slice of {job_id}");
        let leases = self.leases_by_slice(job_id);
        for slice in &slices {
            assert!(
                slice.state == "ok" || slice.state == "error",
                "slice {} of {job_id} has no final state: {slice:?}",
                slice.slice
            );
            let empty = Vec::new();
            let history = leases.get(&slice.slice).unwrap_or(&empty);
            let accepted: Vec<&LeaseRow> =
                history.iter().filter(|lease| lease.outcome == "ok" || lease.outcome == "error").collect();
            assert_eq!(accepted.len(), 1, "slice {} accepted exactly once; its leases: {history:#?}", slice.slice);
            assert_ne!(accepted[0].state, "active", "the accepted lease has ended: {:?}", accepted[0]);
            assert_eq!(accepted[0].outcome, slice.state, "the accepted lease's outcome is the slice's: {slice:?}");
        }
    }
}

/// Parses JSON lines (the CLI's machine-readable output).
pub fn json_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
        .collect()
}

/// Text of a process's output, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
