//! `tessera deploy`, `status`, `results`: the deployer's side of the CLI.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_protocol::{
    bundle, BundleEntry, DeployRequest, JobState, JobStatus, Range, SliceHistory, SliceRecord, SliceStatus, Worktime,
};

use crate::client::Client;
use crate::error::{Error, Result};

/// Everything `tessera deploy` is told (the command line's options, parsed by clap).
#[derive(Clone, Debug, clap::Args)]
pub struct DeployOptions {
    /// The program: a JavaScript work function (map-basic) or a Python file (pyodide).
    pub program: PathBuf,
    /// `map-basic` or `pyodide` (default: pyodide for a `.py` program, map-basic otherwise).
    #[arg(long)]
    pub worktime: Option<Worktime>,
    /// A static argument (JSON if it parses, text otherwise); repeatable.
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub arguments: Vec<String>,
    /// A file holding a JSON array: one element per slice.
    #[arg(long, conflicts_with = "range")]
    pub slices: Option<PathBuf>,
    /// Integer slices START:END[:STEP], END exclusive.
    #[arg(long)]
    pub range: Option<Range>,
    /// A name for people (default: the job id).
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE for the Python program's os.environ; repeatable.
    #[arg(long)]
    pub env: Vec<String>,
    /// A Pyodide package to load; repeatable (imports are detected too).
    #[arg(long = "package")]
    pub packages: Vec<String>,
    /// A directory or .tar.gz unpacked into the sandbox filesystem (pyodide).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Longest one slice may run, e.g. `500ms`, `30s`, `5m`, `1h` or plain seconds (default 5m).
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    pub slice_timeout: Option<u64>,
    /// Longest a slice may run without reporting progress (same forms; default: no limit).
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    pub no_progress_timeout: Option<u64>,
    /// Follow the job and print its results.
    #[arg(long)]
    pub wait: bool,
    /// Machine-readable output only.
    #[arg(long)]
    pub json: bool,
    /// Do not show the program's console output.
    #[arg(long)]
    pub quiet: bool,
}

/// How results are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// JSON lines only.
    Json,
    /// JSON lines of results plus readable summaries on stderr.
    Human,
}

/// The worktime a program file implies: Python for `.py`, JavaScript otherwise.
pub fn worktime_for(program: &Path) -> Worktime {
    match program.extension().and_then(|extension| extension.to_str()) {
        Some("py") => Worktime::Pyodide,
        _ => Worktime::MapBasic,
    }
}

/// A duration in milliseconds from `500ms`, `30s`, `5m`, `1h` or plain seconds (`90`, `1.5`).
pub fn parse_duration_ms(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "ms" => 1.0,
        "" | "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use ms, s, m or h (e.g. 30s, 5m)")),
    };
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration; use e.g. 500ms, 30s, 5m, 1h or seconds"))?;
    let ms = (value * scale).round();
    if !ms.is_finite() || ms < 1.0 || ms > u64::MAX as f64 {
        return Err(format!("`{text}` is not a usable duration"));
    }
    Ok(ms as u64)
}

/// A `--arg` value: JSON when it parses as JSON, otherwise the text itself.
pub fn parse_argument(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| Error::Usage(format!("cannot read {what} `{}`: {error}", path.display())))
}

/// Builds the deploy request from the command line, reading the files it names.
pub fn build_request(options: &DeployOptions) -> Result<DeployRequest> {
    let program = String::from_utf8(read_file(&options.program, "program file")?)
        .map_err(|_| Error::Usage(format!("program file `{}` is not UTF-8", options.program.display())))?;
    let slices = match &options.slices {
        Some(path) => {
            let value: Value = serde_json::from_slice(&read_file(path, "slices file")?)
                .map_err(|error| Error::Usage(format!("slices file `{}` is not JSON: {error}", path.display())))?;
            match value {
                Value::Array(items) => Some(items),
                _ => return Err(Error::Usage(format!("slices file `{}` must hold a JSON array", path.display()))),
            }
        }
        None => None,
    };
    let mut env = std::collections::BTreeMap::new();
    for pair in &options.env {
        let (key, value) =
            pair.split_once('=').ok_or_else(|| Error::Usage(format!("--env `{pair}` is not KEY=VALUE")))?;
        env.insert(key.to_string(), value.to_string());
    }
    let program_name = options.program.file_name().map(|name| name.to_string_lossy().into_owned());
    Ok(DeployRequest {
        name: options.name.clone(),
        worktime: Some(options.worktime.unwrap_or_else(|| worktime_for(&options.program))),
        program,
        program_name,
        arguments: options.arguments.iter().map(|a| parse_argument(a)).collect(),
        slices,
        range: options.range,
        env,
        packages: options.packages.clone(),
        bundle: None,
        slice_timeout_ms: options.slice_timeout,
        no_progress_timeout_ms: options.no_progress_timeout,
    })
}

/// A bundle as tar.gz bytes: a `.tar.gz` file as is, or a directory packed (regular files only).
pub fn bundle_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.is_file() {
        return read_file(path, "bundle");
    }
    if !path.is_dir() {
        return Err(Error::Usage(format!("bundle `{}` is neither a directory nor a tar.gz file", path.display())));
    }
    let mut entries = Vec::new();
    collect_entries(path, path, &mut entries)?;
    bundle::pack(&entries).map_err(|error| Error::Usage(format!("cannot pack bundle: {error}")))
}

fn collect_entries(root: &Path, dir: &Path, entries: &mut Vec<BundleEntry>) -> Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .collect::<std::io::Result<_>>()
        .map_err(Error::io(format!("reading {}", dir.display())))?;
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        let path = child.path();
        let relative = path
            .strip_prefix(root)
            .map_err(|_| Error::Usage(format!("{} is outside the bundle", path.display())))?
            .to_string_lossy()
            .replace('\\', "/");
        let kind = child.file_type().map_err(Error::io(format!("reading {}", path.display())))?;
        if kind.is_dir() {
            if relative == "__pycache__" || relative.ends_with("/__pycache__") {
                continue;
            }
            entries.push(BundleEntry::Directory { path: relative });
            collect_entries(root, &path, entries)?;
        } else if kind.is_file() {
            entries.push(BundleEntry::File { path: relative, bytes: read_file(&path, "bundle file")? });
        } else {
            return Err(Error::Usage(format!(
                "bundle entry `{relative}` is a link or special file; only regular files and directories are allowed"
            )));
        }
    }
    Ok(())
}

/// `tessera deploy`.
pub async fn deploy(client: &Client, options: DeployOptions) -> Result<bool> {
    let mut request = build_request(&options)?;
    if let Some(path) = &options.bundle {
        request.bundle = Some(client.upload_bundle(bundle_bytes(path)?).await?);
    }
    let deployed = client.deploy(&request).await?;
    let output = if options.json { Output::Json } else { Output::Human };
    if !options.wait {
        if options.json {
            println!("{}", serde_json::json!({"job_id": deployed.job_id, "total": deployed.total}));
        } else {
            println!("{}", deployed.job_id);
        }
        return Ok(true);
    }
    if output == Output::Human {
        eprintln!("deployed job {} ({} slices)", deployed.job_id, deployed.total);
    }
    let show_console = output == Output::Human && !options.quiet;
    let status = wait_for(client, &deployed.job_id, output, show_console).await?;
    print_results(client, &deployed.job_id).await?;
    Ok(report(&status, output))
}

/// Polls a job until it is final, showing progress (a bar on a terminal, lines otherwise) and console output.
pub async fn wait_for(client: &Client, job_id: &str, output: Output, show_console: bool) -> Result<JobStatus> {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal() && output == Output::Human;
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} slices {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut console_after = 0;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let status = client.status(job_id).await?;
        if show_console {
            for line in client.console(job_id, console_after).await? {
                console_after = line.seq.unwrap_or(console_after);
                let text = match line.slice {
                    Some(slice) => format!("[slice {slice} {}] {}", line.stream, line.text.trim_end()),
                    None => format!("[{}] {}", line.stream, line.text.trim_end()),
                };
                match &bar {
                    Some(bar) => bar.println(text),
                    None => eprintln!("{text}"),
                }
            }
        }
        let finished = status.done + status.errors;
        match &bar {
            Some(bar) => {
                bar.set_length(status.total);
                bar.set_position(finished);
                bar.set_message(format!("({} errors)", status.errors));
            }
            None if output == Output::Human && last_line.elapsed() >= Duration::from_secs(2) => {
                eprintln!(
                    "progress: {finished}/{} slices ({} errors) after {:.1}s",
                    status.total,
                    status.errors,
                    started.elapsed().as_secs_f64()
                );
                last_line = Instant::now();
            }
            None => {}
        }
        if status.state.is_final() {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One result as a JSON line.
pub fn result_line(record: &SliceRecord) -> String {
    let mut line = serde_json::json!({ "slice": record.slice, "status": record.status });
    match record.status {
        SliceStatus::Ok => line["value"] = record.value.clone().unwrap_or(Value::Null),
        SliceStatus::Error => {
            line["error"] = Value::from(record.error.clone().unwrap_or_default());
            if let Some(stack) = &record.stack {
                line["stack"] = Value::from(stack.clone());
            }
        }
        SliceStatus::Pending => {}
    }
    line.to_string()
}

/// Prints every slice's result in slice order, as JSON lines on stdout.
pub async fn print_results(client: &Client, job_id: &str) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut from = 0;
    loop {
        let page = client.results_page(job_id, from).await?;
        for record in &page.results {
            writeln!(out, "{}", result_line(record)).map_err(Error::io("writing results"))?;
        }
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    out.flush().map_err(Error::io("writing results"))
}

/// How a job's state reads in summaries.
pub fn state_word(state: JobState) -> &'static str {
    match state {
        JobState::Running => "running",
        JobState::Complete => "complete",
        JobState::CompleteWithErrors => "complete with errors",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "cancelled",
    }
}

/// The one-line summary on stderr (with the job's error when it failed); returns whether the job
/// did not end badly: false for failed and cancelled jobs.
pub fn report(status: &JobStatus, output: Output) -> bool {
    if output == Output::Human {
        let mut line = format!(
            "job {} {}: {} ok, {} errors of {} slices",
            status.job_id,
            state_word(status.state),
            status.done,
            status.errors,
            status.total
        );
        if status.state == JobState::Running {
            line.push_str(&format!(" ({} queued, {} running)", status.queued, status.leased));
        }
        if status.state == JobState::CompleteWithErrors {
            line.push_str(&format!(
                "; {} slice{} ended in an error (see `tessera results {}`)",
                status.errors,
                if status.errors == 1 { "" } else { "s" },
                status.job_id
            ));
        }
        eprintln!("{line}");
        if let Some(error) = &status.error {
            eprintln!("{error}");
        }
    }
    !matches!(status.state, JobState::Failed | JobState::Cancelled)
}

/// `tessera status JOB` for people: counts, state, limits, and the progress of running slices.
pub fn print_status(status: &JobStatus) {
    println!("job {} ({}, {})", status.job_id, status.name, status.worktime.as_str());
    println!("state: {}", state_word(status.state));
    println!(
        "slices: {} total, {} ok, {} errors, {} queued, {} running",
        status.total, status.done, status.errors, status.queued, status.leased
    );
    let mut limits = format!("slice timeout {}", format_ms(status.slice_timeout_ms));
    if let Some(ms) = status.no_progress_timeout_ms {
        limits.push_str(&format!(", no-progress timeout {}", format_ms(ms)));
    }
    println!("limits: {limits}");
    if let Some(error) = &status.error {
        println!("error: {error}");
    }
    if !status.running.is_empty() {
        println!("running slices (lowest {}):", status.running.len());
        for slice in &status.running {
            let progress = match slice.progress {
                Some(progress) => format!("{:>5.1}%", progress * 100.0),
                None => "    -".into(),
            };
            println!("  slice {:>8}  {progress}  worker {}", slice.slice, slice.worker_id);
        }
    }
}

/// `tessera status JOB --slice N` for people: every attempt, oldest first.
pub fn print_history(history: &SliceHistory) {
    println!(
        "job {} slice {}: {} ({} attempt{} counted)",
        history.job_id,
        history.slice,
        match history.status {
            SliceStatus::Ok => "ok",
            SliceStatus::Error => "error",
            SliceStatus::Pending => "pending",
        },
        history.attempts_counted,
        if history.attempts_counted == 1 { "" } else { "s" }
    );
    for (number, attempt) in history.attempts.iter().enumerate() {
        let took = attempt
            .ended_ms
            .map(|ended| format!("after {}", format_ms(ended.saturating_sub(attempt.started_ms))))
            .unwrap_or_else(|| "still running".into());
        let mut line = format!(
            "  #{} {} on worker {} (lease {}), {took}",
            number + 1,
            attempt.outcome.as_str(),
            attempt.worker_id,
            attempt.lease_id
        );
        if let Some(compute_ms) = attempt.compute_ms {
            line.push_str(&format!(", {} of sandbox compute credited", format_ms(compute_ms)));
        }
        if let Some(message) = &attempt.message {
            line.push_str(&format!(": {}", message.lines().next().unwrap_or_default()));
        }
        println!("{line}");
    }
}

/// A duration for people: `250ms`, `30s`, `5m`, `1h 30m`.
pub fn format_ms(ms: u64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}s", (ms as f64 / 1_000.0 * 10.0).round() / 10.0),
        ms if ms < 3_600_000 && ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms < 3_600_000 => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1_000),
        ms => format!("{}h {}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_json_when_they_parse() {
        assert_eq!(parse_argument("3"), Value::from(3));
        assert_eq!(parse_argument("[1,2]"), serde_json::json!([1, 2]));
        assert_eq!(parse_argument("hello"), Value::from("hello"));
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("90"), Ok(90_000));
        assert_eq!(parse_duration_ms("1.5"), Ok(1_500));
        assert!(parse_duration_ms("5 minutes").unwrap_err().contains("unknown unit"));
        assert!(parse_duration_ms("fast").is_err());
        assert!(parse_duration_ms("0s").is_err());
        assert_eq!(format_ms(300_000), "5m");
    }

    #[test]
    fn python_files_imply_the_pyodide_worktime() {
        assert_eq!(worktime_for(Path::new("jobs/main.py")), Worktime::Pyodide);
        assert_eq!(worktime_for(Path::new("work.js")), Worktime::MapBasic);
    }

    #[test]
    fn packs_a_bundle_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("pkg/mod.py"), "X = 1\n").unwrap();
        let bytes = bundle_bytes(dir.path()).unwrap();
        let entries = bundle::unpack(&bytes, &Default::default()).unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path().to_string()).collect();
        assert_eq!(paths, vec!["pkg", "pkg/mod.py"]);
    }

    #[test]
    fn slices_file_must_be_an_array() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.js"), "(x) => x").unwrap();
        std::fs::write(dir.path().join("s.json"), "{\"a\": 1}").unwrap();
        let options = DeployOptions {
            worktime: None,
            program: dir.path().join("p.js"),
            arguments: vec![],
            slices: Some(dir.path().join("s.json")),
            range: None,
            name: None,
            env: vec![],
            packages: vec![],
            bundle: None,
            slice_timeout: None,
            no_progress_timeout: None,
            wait: false,
            json: false,
            quiet: false,
        };
        let err = build_request(&options).unwrap_err().to_string();
        assert!(err.contains("JSON array"), "{err}");
    }
}
