//! The `tessera` command: `serve`, `deploy`, `status`, `results`, `cancel`, `worker`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tessera_protocol::BundleLimits;
use tessera_scheduler::browser::{run_worker, WorkerOptions};
use tessera_scheduler::client::Client;
use tessera_scheduler::deploy::{self, DeployOptions, Output};
use tessera_scheduler::server::{serve, ServerConfig};
use tessera_scheduler::store::LeasePolicy;
use tessera_scheduler::validate::DeployLimits;
use tessera_scheduler::Error;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Browser volunteer computing for Python: scheduler, deployer and worker.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The scheduler to talk to.
#[derive(clap::Args)]
struct SchedulerArg {
    /// Scheduler URL.
    #[arg(long, env = "TESSERA_SCHEDULER", default_value = "http://127.0.0.1:8080")]
    scheduler: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler: API under /v1, the contribute page, the Pyodide distribution.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// SQLite database file (created when missing).
        #[arg(long, default_value = "tessera.db")]
        db: PathBuf,
        /// Static site folder (contribute page; the built worker core lives in its pkg/).
        #[arg(long, env = "TESSERA_WWW", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../www"))]
        www: PathBuf,
        /// Vendored Pyodide distribution (scripts/bootstrap puts it here).
        #[arg(long, env = "TESSERA_PYODIDE")]
        pyodide: Option<PathBuf>,
        /// Lease lifetime without a heartbeat, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        lease_ttl_ms: u64,
        /// Attempts a slice gets before worker faults make it an error.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// Largest request body accepted, in bytes.
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        max_body_bytes: usize,
    },
    /// Deploy a job; with --wait, follow it and print its results as JSON lines.
    Deploy {
        #[command(flatten)]
        scheduler: SchedulerArg,
        #[command(flatten)]
        options: DeployOptions,
    },
    /// Show a job's state and counts.
    Status {
        #[command(flatten)]
        scheduler: SchedulerArg,
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a job's results in slice order (JSON lines).
    Results {
        #[command(flatten)]
        scheduler: SchedulerArg,
        job: String,
        /// JSON lines only, no summary.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    Jobs {
        #[command(flatten)]
        scheduler: SchedulerArg,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        scheduler: SchedulerArg,
        job: String,
    },
    /// Contribute this machine: run the worker page in headless Chromium.
    Worker {
        #[command(flatten)]
        scheduler: SchedulerArg,
        /// Sandboxes to run (default: cores − 1, at least 1).
        #[arg(long)]
        cores: Option<u32>,
        /// Exit once there has been no work for --idle-ms.
        #[arg(long)]
        exit_when_idle: bool,
        #[arg(long, default_value_t = 3_000)]
        idle_ms: u64,
        /// The Chromium binary (default: $CHROMIUM or chromium on PATH).
        #[arg(long)]
        chromium: Option<PathBuf>,
        /// Page to open instead of the contribute page (e.g. `bench/` for `make bench`).
        #[arg(long, default_value = "", hide = true)]
        page: String,
        /// Seconds the page may take to report that it started.
        #[arg(long, default_value_t = 60)]
        startup_timeout: u64,
    },
}

/// Where scripts/bootstrap vendors the Pyodide distribution.
fn default_pyodide_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tessera/pyodide-0.27.7")
}

async fn run(cli: Cli) -> Result<bool, Error> {
    match cli.command {
        Command::Serve { addr, db, www, pyodide, lease_ttl_ms, max_attempts, max_body_bytes } => {
            let config = ServerConfig {
                database: db,
                www,
                pyodide: pyodide.unwrap_or_else(default_pyodide_dir),
                lease: LeasePolicy { ttl_ms: lease_ttl_ms, max_attempts },
                max_body_bytes,
                deploy: DeployLimits::default(),
                bundle: BundleLimits::default(),
                max_wait_ms: 20_000,
            };
            serve(addr, config).await?;
            Ok(true)
        }
        Command::Deploy { scheduler, options } => deploy::deploy(&Client::new(&scheduler.scheduler), options).await,
        Command::Status { scheduler, job, json } => {
            let status = Client::new(&scheduler.scheduler).status(&job).await?;
            if json {
                println!("{}", serde_json::to_string(&status).unwrap_or_default());
            } else {
                deploy::report(&status, Output::Human);
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            }
            Ok(true)
        }
        Command::Results { scheduler, job, json } => {
            let client = Client::new(&scheduler.scheduler);
            let status = client.status(&job).await?;
            deploy::print_results(&client, &job).await?;
            if !json {
                deploy::report(&status, Output::Human);
            }
            Ok(true)
        }
        Command::Jobs { scheduler, json } => {
            for job in Client::new(&scheduler.scheduler).jobs().await? {
                if json {
                    println!("{}", serde_json::to_string(&job).unwrap_or_default());
                } else {
                    println!(
                        "{}  {:<9} {:>7}/{:<7} {:>5} errors  {}",
                        job.job_id,
                        format!("{:?}", job.state).to_lowercase(),
                        job.done,
                        job.total,
                        job.errors,
                        job.name
                    );
                }
            }
            Ok(true)
        }
        Command::Cancel { scheduler, job } => {
            let status = Client::new(&scheduler.scheduler).cancel(&job).await?;
            deploy::report(&status, Output::Human);
            Ok(true)
        }
        Command::Worker { scheduler, cores, exit_when_idle, idle_ms, chromium, page, startup_timeout } => {
            run_worker(WorkerOptions {
                scheduler: scheduler.scheduler,
                sandboxes: cores,
                exit_when_idle,
                idle_ms,
                chromium,
                startup_timeout: Duration::from_secs(startup_timeout),
                page,
            })
            .await?;
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tessera: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("tessera: {error}");
            ExitCode::from(2)
        }
    }
}
