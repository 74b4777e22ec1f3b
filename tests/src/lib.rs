//! Harness for end-to-end tests: starts the real `tessera` binary (scheduler, deployer, browser
//! worker) as separate processes, the way a person would, and stops each by its PID.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// The `tessera` binary under test: `$TESSERA_BIN`, or the workspace's release build.
pub fn tessera_bin() -> PathBuf {
    let path = std::env::var_os("TESSERA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tessera"));
    assert!(path.is_file(), "{} is missing: run `make build` (make test does) or set TESSERA_BIN", path.display());
    path
}

/// A scheduler on a free loopback port with a temporary database; killed when dropped.
pub struct Scheduler {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Scheduler {
    pub fn start() -> Scheduler {
        Scheduler::start_with(&[])
    }

    /// A scheduler with extra `tessera serve` options (e.g. a short lease lifetime).
    pub fn start_with(options: &[&str]) -> Scheduler {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(tessera_bin())
            .args(["serve", "--addr", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("e2e.db"))
            .args(options)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).expect("log file"))
            .spawn()
            .expect("start tessera serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let url = line.split_whitespace().last().expect("listening url").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "unexpected first line: {line}");
        Scheduler { child, url, dir }
    }

    /// Runs `tessera ARGS` against this scheduler.
    pub fn tessera(&self, args: &[&str]) -> Output {
        Command::new(tessera_bin())
            .args(args)
            .env("TESSERA_SCHEDULER", &self.url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tessera")
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

    /// Starts `tessera worker --exit-when-idle` with `cores` sandboxes.
    pub fn worker(&self, cores: u32) -> Child {
        Command::new(tessera_bin())
            .args(["worker", "--exit-when-idle", "--idle-ms", "4000", "--cores", &cores.to_string()])
            .env("TESSERA_SCHEDULER", &self.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera worker")
    }

    /// The JSON status of a job.
    pub fn status(&self, job_id: &str) -> Value {
        let output = self.tessera(&["status", "--json", job_id]);
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("status: {}", text(&output)))
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
