//! `tessera worker` keeps Chromium's own sandbox: the real binary, a real `tessera serve` on a
//! loopback port and headless Chromium. As root (CI, `make demo`) the browser must run as `nobody`
//! (uid 65534) without `--no-sandbox`; as a normal user, as that user. Either way every process of
//! the browser is gone, and its profile removed, when the worker exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A child process killed (by its PID) and reaped when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Collects a pipe's lines on a thread.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A field of /proc/PID/status (e.g. `Uid`), or None once the process is gone.
fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| Some(line.strip_prefix(field)?.strip_prefix(':')?.trim().to_string()))
}

/// A process's start time (field 22 of /proc/PID/stat), to tell it from a later one with its PID.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// A process's arguments. Chromium's helpers rewrite their argv into one space-separated string,
/// so this splits on spaces too (good enough to look for flags).
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).split(['\0', ' ']).filter(|arg| !arg.is_empty()).map(str::to_string).collect()
}

/// All descendants of `pid`, through /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else { continue };
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in text.split_whitespace().filter_map(|child| child.parse::<u32>().ok()) {
                if !found.contains(&child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

/// Processes whose command line names `profile` (Chromium's helpers that daemonized, such as
/// crashpad handlers, are no longer the worker's descendants but still name its profile).
fn naming(profile: &Path) -> Vec<u32> {
    let needle = profile.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline(*pid).iter().any(|arg| arg.contains(&needle)))
        .collect()
}

/// What was seen of one browser process while it ran.
#[derive(Debug)]
struct Seen {
    start: u64,
    uid: String,
    cmdline: Vec<String>,
    seccomp: Option<String>,
}

fn effective_uid() -> u32 {
    let uid = status_field(std::process::id(), "Uid").unwrap();
    uid.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Parses `tessera worker: CHROMIUM (pid N, …, profile DIR) on URL` into (N, DIR).
fn launch_line(lines: &[String]) -> Option<(u32, PathBuf)> {
    let line = lines.iter().find(|line| line.starts_with("tessera worker: ") && line.contains("(pid "))?;
    let pid = line.split_once("(pid ")?.1.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let profile = line.split_once(", profile ")?.1.split_once(") on ")?.0;
    Some((pid, PathBuf::from(profile)))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_chromium_sandboxed_as_nobody_when_root() {
    let chromium =
        std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(chromium.is_file(), "no Chromium at {}: run scripts/bootstrap or set CHROMIUM", chromium.display());
    let tessera = env!("CARGO_BIN_EXE_tessera");
    let work = tempfile::tempdir().unwrap();

    let mut serve = Command::new(tessera)
        .args(["serve", "--addr", "127.0.0.1:0", "--lease-ttl-ms", "5000", "--db"])
        .arg(work.path().join("test.db"))
        // The first admin key is saved here, not in the user's own credentials file.
        .env("TESSERA_CONFIG_DIR", work.path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let serve_out = collect(serve.stdout.take().unwrap());
    let serve_err = collect(serve.stderr.take().unwrap());
    let _serve = Reaped(serve);
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = loop {
        let found = serve_out
            .lock()
            .unwrap()
            .iter()
            .find_map(|line| line.split_whitespace().find(|word| word.starts_with("http://")).map(str::to_string));
        if let Some(url) = found {
            break url;
        }
        assert!(Instant::now() < deadline, "tessera serve did not print its address");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Printed on stderr before the address on stdout.
    let key = serve_err
        .lock()
        .unwrap()
        .iter()
        .find_map(|line| line.strip_prefix("TESSERA_API_KEY=").map(str::to_string))
        .expect("tessera serve printed its first admin key");

    let http = reqwest::Client::new();
    let deployed: Value = http
        .post(format!("{url}/v1/jobs"))
        .bearer_auth(&key)
        .json(&json!({"program": "(x) => x * 2", "range": {"start": 0, "end": 5}}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = deployed["job_id"].as_str().unwrap().to_string();

    let mut worker = Command::new(tessera)
        .args(["worker", "--exit-when-idle", "--idle-ms", "2000", "--cores", "1", "--scheduler", &url])
        .arg("--chromium")
        .arg(&chromium)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let worker_pid = worker.id();
    let stdout = collect(worker.stdout.take().unwrap());
    let stderr = collect(worker.stderr.take().unwrap());
    let mut worker = Reaped(worker);
    let output =
        || format!("stdout:\n{}\nstderr:\n{}", stdout.lock().unwrap().join("\n"), stderr.lock().unwrap().join("\n"));

    // Watch the worker's browser while it runs: every process, its uid, command line and seccomp.
    let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
    let mut launched: Option<(u32, PathBuf)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if launched.is_none() {
            launched = launch_line(&stderr.lock().unwrap());
        }
        let mut pids = descendants(worker_pid);
        if let Some((_, profile)) = &launched {
            pids.extend(naming(profile));
        }
        for pid in pids {
            let (Some(start), Some(uid)) = (start_time(pid), status_field(pid, "Uid")) else { continue };
            let args = cmdline(pid);
            if args.is_empty() {
                continue; // a zombie
            }
            let entry =
                seen.entry(pid).or_insert_with(|| Seen { start, uid: uid.clone(), cmdline: vec![], seccomp: None });
            // Between fork and exec the child is still a copy of the (root) worker; what counts is
            // the process it became, so the latest uid and command line are kept.
            if entry.start != start {
                // The PID was reused by a new process of ours: start its record afresh.
                *entry = Seen { start, uid: uid.clone(), cmdline: vec![], seccomp: None };
            }
            entry.uid = uid;
            entry.cmdline = args;
            // Seccomp is applied a moment after the process starts: remember it once seen on.
            if let Some(mode) = status_field(pid, "Seccomp").filter(|mode| mode != "0") {
                entry.seccomp = Some(mode);
            }
        }
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not finish within 2 minutes\n{}", output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "the worker failed: {status}\n{}", output());

    let job_status: Value =
        http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(job_status["state"], "complete", "{job_status}\n{}", output());
    assert_eq!(job_status["done"], 5, "{job_status}");

    let (browser, profile) =
        launched.unwrap_or_else(|| panic!("the worker never said which browser it started\n{}", output()));
    let expected_uid = if effective_uid() == 0 { 65534 } else { effective_uid() };
    let expected = format!("{expected_uid}\t{expected_uid}\t{expected_uid}\t{expected_uid}");
    let chromium_seen = seen.get(&browser).unwrap_or_else(|| panic!("browser pid {browser} never seen\n{seen:#?}"));
    assert_eq!(chromium_seen.uid, expected, "the browser's uids (real, effective, saved, fs)");
    assert!(
        stderr.lock().unwrap().iter().any(|line| line.contains(&format!("(pid {browser}, its own sandbox"))),
        "{}",
        output()
    );
    // `seen` holds the worker's descendants and whatever named its profile: the browser and its helpers.
    assert!(seen.len() > 2, "too few browser processes seen: {seen:#?}");
    for (pid, process) in &seen {
        assert_eq!(process.uid, expected, "process {pid} {:?}", process.cmdline);
        assert!(
            !process.cmdline.iter().any(|arg| arg == "--no-sandbox"),
            "process {pid} runs unsandboxed: {:?}",
            process.cmdline
        );
    }
    // Chromium's sandbox was really on: its renderers ran under a seccomp-BPF filter (mode 2).
    assert!(
        seen.values().any(|process| process.cmdline.iter().any(|arg| arg == "--type=renderer")
            && process.seccomp.as_deref() == Some("2")),
        "no renderer ran under seccomp: {seen:#?}"
    );

    // A zombie has exited and holds nothing; it waits only for its (new) parent to reap it.
    for (pid, process) in &seen {
        let running = start_time(*pid) == Some(process.start)
            && status_field(*pid, "State").is_some_and(|state| !state.starts_with('Z'));
        assert!(!running, "process {pid} {:?} outlived the worker", process.cmdline);
    }
    assert!(!profile.exists(), "the browser profile {} was left behind", profile.display());
}
