//! `tessera-load`: a native load generator for Tessera's scheduler (issue 6's benchmark).
//!
//! Each round starts its own `tessera serve` on a loopback port with a fresh database, drives it
//! over HTTP with the real protocol, and kills it by PID at the end. `throughput` drains one large
//! no-op job with many workers; `concurrency` parks thousands of long-polls and times how fast a
//! deploy wakes each with a lease. `all` runs both and can merge the result into
//! `bench/results.json` under `"load"`.

mod client;
mod concurrency;
mod report;
mod scheduler;
mod stats;
mod throughput;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use report::{cell, CONCURRENCY_KEYS, THROUGHPUT_KEYS};

/// Errors of the load generator: any error, sendable between tasks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "tessera-load", about = "Load generator for Tessera's scheduler")]
struct Cli {
    /// The `tessera` binary to start (`tessera serve`) for each round.
    #[arg(long, global = true, default_value = "target/release/tessera")]
    tessera: PathBuf,
    /// Rounds of each scenario; the JSON holds the median and the range of each measure.
    #[arg(long, global = true, default_value_t = 2)]
    rounds: usize,
    /// Write the JSON result here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Also set the JSON result under `"load"` in this file, keeping its other keys.
    #[arg(long, global = true)]
    merge_into: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Workers drain one large no-op job: slices/s, lease and submit latency, database size.
    Throughput(ThroughputArgs),
    /// Thousands of idle long-polls, then one deploy: time to lease, memory per idle connection.
    Concurrency(ConcurrencyArgs),
    /// Both scenarios with their defaults.
    All,
}

#[derive(Args, Clone)]
struct ThroughputArgs {
    /// Concurrent workers.
    #[arg(long, default_value_t = 50)]
    workers: usize,
    /// Slices in the job.
    #[arg(long, default_value_t = 100_000)]
    slices: u64,
    /// `max_slices` per lease (and results per batch).
    #[arg(long, default_value_t = 20)]
    batch: u32,
    /// `wait_ms` per lease request.
    #[arg(long, default_value_t = 1_000)]
    wait_ms: u64,
    /// A round gives up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

impl Default for ThroughputArgs {
    fn default() -> Self {
        ThroughputArgs { workers: 50, slices: 100_000, batch: 20, wait_ms: 1_000, timeout_s: 600 }
    }
}

#[derive(Args, Clone)]
struct ConcurrencyArgs {
    /// Workers long-polling at once (the job has as many slices).
    #[arg(long, default_value_t = 5_000)]
    workers: usize,
    /// `wait_ms` per long-poll.
    #[arg(long, default_value_t = 20_000)]
    wait_ms: u64,
    /// A round gives up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

impl Default for ConcurrencyArgs {
    fn default() -> Self {
        ConcurrencyArgs { workers: 5_000, wait_ms: 20_000, timeout_s: 300 }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = tokio::select! {
        outcome = run(&cli) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    // Every scheduler was killed when its round's guard dropped, whichever way the round ended.
    if let Err(error) = outcome {
        eprintln!("tessera-load: {error}");
        std::process::exit(1);
    }
}

async fn run(cli: &Cli) -> Result<(), BoxError> {
    if !cli.tessera.exists() {
        return Err(format!("{} not found (cargo build --release -p tessera-cli)", cli.tessera.display()).into());
    }
    let rounds = cli.rounds.max(1);
    let (throughput, concurrency) = match &cli.scenario {
        Scenario::Throughput(args) => (Some(args.clone()), None),
        Scenario::Concurrency(args) => (None, Some(args.clone())),
        Scenario::All => (Some(ThroughputArgs::default()), Some(ConcurrencyArgs::default())),
    };
    let mut result = Map::new();
    result.insert("tool".into(), json!("tessera-load"));
    result.insert("rounds".into(), json!(rounds));
    result.insert("cpus".into(), json!(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)));
    // Other work on the machine competes with both processes for the CPUs: record how busy it was.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    result.insert("loadavg_at_start".into(), json!(loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")));
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs());
    result.insert("unix_time".into(), json!(unix_time.unwrap_or(0)));

    if let Some(args) = throughput {
        let rounds_json = throughput_rounds(&cli.tessera, &args, rounds).await?;
        report::summarize(&rounds_json, &THROUGHPUT_KEYS, "", &mut result);
        result.insert("accepted_exactly_once".into(), json!(report::all_true(&rounds_json, "accepted_exactly_once")));
        result.insert("throughput_workers".into(), json!(args.workers));
        result.insert("throughput_slices".into(), json!(args.slices));
        result.insert("throughput_batch".into(), json!(args.batch));
        result.insert("throughput_rounds".into(), Value::from(rounds_json));
    }
    if let Some(args) = concurrency {
        let limit = scheduler::raise_nofile_limit()?;
        // Each long-poll is a socket here and one in the scheduler (a separate process).
        if (limit as usize) < args.workers + 256 {
            return Err(format!("open-file limit {limit} is too low for {} connections", args.workers).into());
        }
        let rounds_json = concurrency_rounds(&cli.tessera, &args, rounds).await?;
        report::summarize(&rounds_json, &CONCURRENCY_KEYS, "", &mut result);
        result.insert("concurrency_workers".into(), json!(args.workers));
        result.insert("exactly_one_lease_each".into(), json!(report::all_true(&rounds_json, "exactly_one_lease_each")));
        result.insert("concurrency_rounds".into(), Value::from(rounds_json));
    }

    print_table(&result);
    let value = Value::Object(result);
    if let Some(path) = &cli.json {
        write_json(path, &value)?;
        println!("\nwrote {}", path.display());
    }
    if let Some(path) = &cli.merge_into {
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(format!("reading {}: {error}", path.display()).into()),
        };
        let merged = report::merge_under_key(existing.as_deref(), "load", value)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        write_json(path, &merged)?;
        println!("merged under \"load\" into {}", path.display());
    }
    Ok(())
}

async fn throughput_rounds(tessera: &Path, args: &ThroughputArgs, rounds: usize) -> Result<Vec<Value>, BoxError> {
    let config = throughput::Config {
        workers: args.workers,
        slices: args.slices,
        batch: args.batch,
        wait_ms: args.wait_ms,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let mut all = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        eprintln!(
            "throughput round {round}/{rounds}: {} workers, {} slices, batches of {}",
            config.workers, config.slices, config.batch
        );
        let outcome = throughput::run(tessera, &config).await?;
        eprintln!(
            "  {:.0} slices/s ({:.0} steady), lease p50/p99 {:.1}/{:.1} ms, submit p50/p99 {:.1}/{:.1} ms, \
             exactly once: {}",
            outcome.slices_per_s,
            outcome.steady_slices_per_s,
            outcome.lease.p50,
            outcome.lease.p99,
            outcome.submit.p50,
            outcome.submit.p99,
            outcome.accepted_exactly_once
        );
        all.push(throughput::to_json(&outcome));
    }
    Ok(all)
}

async fn concurrency_rounds(tessera: &Path, args: &ConcurrencyArgs, rounds: usize) -> Result<Vec<Value>, BoxError> {
    let config = concurrency::Config {
        workers: args.workers,
        wait_ms: args.wait_ms,
        timeout: Duration::from_secs(args.timeout_s),
    };
    let mut all = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        eprintln!("concurrency round {round}/{rounds}: {} long-polls", config.workers);
        let outcome = concurrency::run(tessera, &config).await?;
        eprintln!(
            "  deploy → lease p50/p99/max {:.0}/{:.0}/{:.0} ms, one lease each: {}, {:.1} KiB per idle connection",
            outcome.deploy_to_lease.p50,
            outcome.deploy_to_lease.p99,
            outcome.deploy_to_lease.max,
            outcome.exactly_one_lease_each,
            outcome.memory_per_idle_connection_kb
        );
        all.push(concurrency::to_json(&outcome));
    }
    Ok(all)
}

fn write_json(path: &Path, value: &Value) -> Result<(), BoxError> {
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).map_err(|error| format!("writing {}: {error}", path.display()).into())
}

fn print_table(result: &Map<String, Value>) {
    let rounds = result.get("rounds").and_then(Value::as_u64).unwrap_or(1);
    println!("\ntessera-load: {rounds} round(s) per scenario, median (min–max)\n");
    println!("| measure | result | target |\n|---|---|---|");
    let row = |name: &str, text: String, target: &str| println!("| {name} | {text} | {target} |");
    if result.contains_key("throughput_rounds") {
        let n = |key: &str| result.get(key).and_then(Value::as_u64).unwrap_or(0);
        let head = format!(
            "throughput, {} workers × batches of {}, {} slices",
            n("throughput_workers"),
            n("throughput_batch"),
            report::thousands(n("throughput_slices") as f64, 0)
        );
        row(
            &format!("{head}: deploy → last accept"),
            cell(result, "throughput_slices_per_s", 1.0, 0, " slices/s"),
            "≥ 20,000",
        );
        row(
            "throughput, steady state (10–90 %)",
            cell(result, "throughput_steady_slices_per_s", 1.0, 0, " slices/s"),
            "",
        );
        row("lease latency p50 / p99", pair(result, "lease_p50_ms", "lease_p99_ms"), "");
        row("submit latency p50 / p99", pair(result, "submit_p50_ms", "submit_p99_ms"), "");
        row(
            "CPU: scheduler / load generator, deploy → end",
            format!(
                "{} / {}",
                cell(result, "scheduler_cpu_s", 1.0, 1, " s"),
                cell(result, "generator_cpu_s", 1.0, 1, " s")
            ),
            "",
        );
        row("database on disk (db + wal)", cell(result, "db_bytes", 1.0 / 1_048_576.0, 1, " MiB"), "");
        let once = result.get("accepted_exactly_once").and_then(Value::as_bool) == Some(true);
        row("every slice accepted exactly once", if once { "yes" } else { "NO" }.into(), "yes");
    }
    if result.contains_key("concurrency_rounds") {
        let workers = result.get("concurrency_workers").and_then(Value::as_u64).unwrap_or(0) as f64;
        let head = format!("{} idle long-polls, deploy → lease", report::thousands(workers, 0));
        row(&format!("{head} p50"), cell(result, "deploy_to_lease_p50_ms", 1.0, 0, " ms"), "");
        row(&format!("{head} p99"), cell(result, "deploy_to_lease_p99_ms", 1.0, 0, " ms"), "≤ 1,000 ms");
        row(&format!("{head} max"), cell(result, "deploy_to_lease_max_ms", 1.0, 0, " ms"), "");
        let once = result.get("exactly_one_lease_each").and_then(Value::as_bool) == Some(true);
        row("every long-poll got exactly one lease", if once { "yes" } else { "NO" }.into(), "yes");
        row("scheduler memory per idle connection", cell(result, "memory_per_idle_connection_kb", 1.0, 1, " KiB"), "");
    }
    println!();
}

fn pair(result: &Map<String, Value>, first: &str, second: &str) -> String {
    format!("{} / {}", cell(result, first, 1.0, 1, " ms"), cell(result, second, 1.0, 1, " ms"))
}
