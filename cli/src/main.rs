//! The `tessera` command: `serve`, `deploy`, `status`, `results`, `jobs`, `cancel`, `keys`, `worker`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tessera_cli::browser::{run_worker, WorkerOptions};
use tessera_cli::client::Client;
use tessera_cli::deploy::{self, DeployOptions, Output};
use tessera_cli::Error;
use tessera_cli::{credentials, keys};
use tessera_protocol::{BundleLimits, WorkerLimits};
use tessera_scheduler::server::{serve, FirstAdminKey, ServerConfig};
use tessera_scheduler::store::LeasePolicy;
use tessera_scheduler::validate::DeployLimits;

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

/// The scheduler a deployer command talks to, and its API key.
#[derive(clap::Args)]
struct DeployerArgs {
    #[command(flatten)]
    scheduler: SchedulerArg,
    /// API key (`tsk_…`). Default: TESSERA_API_KEY, else the key saved for this scheduler's URL in
    /// the credentials file (`tessera serve` saves its first admin key there on a loopback address).
    #[arg(long, env = "TESSERA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl DeployerArgs {
    fn client(self) -> Result<Client, Error> {
        keys::client_for(&self.scheduler.scheduler, self.api_key)
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make an API key and print it on stdout (the only time it is shown).
    Create {
        #[command(flatten)]
        deployer: DeployerArgs,
        /// Who or what the key is for.
        name: String,
        /// An admin key: manages keys and sees every job.
        #[arg(long)]
        admin: bool,
        /// Write straight into this database file instead of asking the scheduler: the way back in
        /// when no admin key is at hand (works while the scheduler runs).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// List the keys: id, name, admin, created, revoked (never a secret).
    List {
        #[command(flatten)]
        deployer: DeployerArgs,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id: it is refused from the next request on.
    Revoke {
        #[command(flatten)]
        deployer: DeployerArgs,
        id: String,
    },
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
        /// Serve the static site (contribute page; the worker core in its pkg/) from this folder
        /// instead of the copy built into this binary: for working on the page without rebuilding.
        #[arg(long, env = "TESSERA_WWW")]
        www: Option<PathBuf>,
        /// The Pyodide distribution (default: where scripts/bootstrap puts it,
        /// ~/.cache/tessera/pyodide-0.27.7).
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
        /// Largest result (its JSON, or an error with its stack) stored as given, in bytes; a
        /// larger one becomes that slice's error.
        #[arg(long, default_value_t = WorkerLimits::default().max_result_bytes)]
        max_result_bytes: u64,
        /// Most slices one lease request may ask for.
        #[arg(long, default_value_t = WorkerLimits::default().max_lease_slices)]
        max_lease_slices: u32,
        /// Make the pool private: workers must send this key to register (default: open to all).
        #[arg(long, env = "TESSERA_WORKER_KEY", hide_env_values = true)]
        worker_key: Option<String>,
        /// Do not save the first admin key in the per-user credentials file (it is still printed).
        #[arg(long)]
        no_save_key: bool,
        /// An origin whose pages may call the deployer endpoints from a browser (CORS; a key is
        /// still needed); repeatable, `*` for any. Default: none.
        #[arg(long = "deployer-origin", value_name = "ORIGIN")]
        deployer_origins: Vec<String>,
    },
    /// Deploy a job; with --wait, follow it and print its results as JSON lines.
    Deploy {
        #[command(flatten)]
        deployer: DeployerArgs,
        #[command(flatten)]
        options: DeployOptions,
    },
    /// Show a job's state, counts, limits and running slices; with --slice, one slice's attempts.
    Status {
        #[command(flatten)]
        deployer: DeployerArgs,
        job: String,
        /// Show this slice's history: every attempt, its worker, times and outcome.
        #[arg(long)]
        slice: Option<u64>,
        /// JSON only.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's results in slice order (JSON lines).
    Results {
        #[command(flatten)]
        deployer: DeployerArgs,
        job: String,
        /// JSON lines only, no summary.
        #[arg(long)]
        json: bool,
    },
    /// List your jobs (every job with an admin key), newest first.
    Jobs {
        #[command(flatten)]
        deployer: DeployerArgs,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        deployer: DeployerArgs,
        job: String,
    },
    /// Manage deployer API keys (needs an admin key).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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
        /// Ask the page to log every slice it runs (`logSlices=1`).
        #[arg(long, hide = true)]
        log_slices: bool,
        /// KEY=VALUE added to the page's query string (URL-encoded); repeatable.
        #[arg(long = "page-param", hide = true, value_name = "KEY=VALUE")]
        page_params: Vec<String>,
        /// The private pool's worker key (`tessera serve --worker-key`), sent at registration.
        #[arg(long, env = "TESSERA_WORKER_KEY")]
        worker_key: Option<String>,
        /// Run Chromium with --no-sandbox (as the current user, even root), for machines where its
        /// sandbox cannot work. Unsafe: guest code that exploits the browser runs unconfined.
        #[arg(long)]
        unsafe_no_browser_sandbox: bool,
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
        Command::Serve {
            addr,
            db,
            www,
            pyodide,
            lease_ttl_ms,
            max_attempts,
            max_body_bytes,
            max_result_bytes,
            max_lease_slices,
            worker_key,
            no_save_key,
            deployer_origins,
        } => {
            if max_lease_slices == 0 {
                return Err(Error::Usage("--max-lease-slices must be at least 1".into()));
            }
            let config = ServerConfig {
                database: db,
                www,
                pyodide: pyodide.unwrap_or_else(default_pyodide_dir),
                lease: LeasePolicy { ttl_ms: lease_ttl_ms, max_attempts, max_result_bytes },
                max_body_bytes,
                deploy: DeployLimits::default(),
                bundle: BundleLimits::default(),
                worker_limits: WorkerLimits { max_lease_slices, ..WorkerLimits::default() },
                worker_key: worker_key.filter(|key| !key.is_empty()),
                deployer_origins,
            };
            let credentials = if no_save_key { None } else { credentials::default_file() };
            serve(addr, config, |first| announce_first_key(first, credentials.as_deref())).await?;
            Ok(true)
        }
        Command::Deploy { deployer, options } => deploy::deploy(&deployer.client()?, options).await,
        Command::Status { deployer, job, slice: Some(slice), json } => {
            let history = deployer.client()?.slice_history(&job, slice).await?;
            if json {
                println!("{}", serde_json::to_string(&history).unwrap_or_default());
            } else {
                deploy::print_history(&history);
            }
            Ok(true)
        }
        Command::Status { deployer, job, slice: None, json } => {
            let status = deployer.client()?.status(&job).await?;
            if json {
                println!("{}", serde_json::to_string(&status).unwrap_or_default());
            } else {
                deploy::print_status(&status);
            }
            Ok(true)
        }
        Command::Results { deployer, job, json } => {
            let client = deployer.client()?;
            let status = client.status(&job).await?;
            deploy::print_results(&client, &job).await?;
            if !json {
                deploy::report(&status, Output::Human);
            }
            Ok(true)
        }
        Command::Jobs { deployer, json } => {
            for job in deployer.client()?.jobs().await? {
                if json {
                    println!("{}", serde_json::to_string(&job).unwrap_or_default());
                } else {
                    println!(
                        "{}  {:<20} {:>7}/{:<7} {:>5} errors  {}",
                        job.job_id,
                        job.state.as_str(),
                        job.done,
                        job.total,
                        job.errors,
                        job.name
                    );
                }
            }
            Ok(true)
        }
        Command::Cancel { deployer, job } => {
            let status = deployer.client()?.cancel(&job).await?;
            deploy::report(&status, Output::Human);
            Ok(true)
        }
        Command::Keys { command: KeysCommand::Create { deployer, name, admin, db: Some(db) } } => {
            let _ = deployer;
            keys::create_in_database(&db, &name, admin)?;
            Ok(true)
        }
        Command::Keys { command: KeysCommand::Create { deployer, name, admin, db: None } } => {
            keys::create(&deployer.client()?, &name, admin).await?;
            Ok(true)
        }
        Command::Keys { command: KeysCommand::List { deployer, json } } => {
            keys::list(&deployer.client()?, json).await?;
            Ok(true)
        }
        Command::Keys { command: KeysCommand::Revoke { deployer, id } } => {
            keys::revoke(&deployer.client()?, &id).await?;
            Ok(true)
        }
        Command::Worker {
            scheduler,
            cores,
            exit_when_idle,
            idle_ms,
            chromium,
            page,
            startup_timeout,
            log_slices,
            page_params,
            worker_key,
            unsafe_no_browser_sandbox,
        } => {
            let mut params: Vec<(String, String)> =
                worker_key.into_iter().map(|key| ("workerKey".to_string(), key)).collect();
            for pair in page_params {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| Error::Usage(format!("--page-param `{pair}` is not KEY=VALUE")))?;
                params.push((key.to_string(), value.to_string()));
            }
            run_worker(WorkerOptions {
                scheduler: scheduler.scheduler,
                sandboxes: cores,
                exit_when_idle,
                idle_ms,
                chromium,
                startup_timeout: Duration::from_secs(startup_timeout),
                page,
                log_slices,
                page_params: params,
                unsafe_no_sandbox: unsafe_no_browser_sandbox,
            })
            .await?;
            Ok(true)
        }
    }
}

/// Shows the admin key `serve` made for a new database, once, on stderr as the line
/// `TESSERA_API_KEY=<key>`; on a loopback address also saves it for its URL in `credentials`
/// (the per-user file the CLI reads), when given.
fn announce_first_key(first: &FirstAdminKey, credentials: Option<&std::path::Path>) {
    eprintln!("TESSERA_API_KEY={}", first.key);
    let url = &first.url;
    match credentials.filter(|_| first.loopback) {
        Some(file) => match credentials::save(file, url, &first.key) {
            Ok(()) => eprintln!(
                "tessera: that admin key is shown only now; it is saved for {url} in {} (mode 0600), where \
                 the tessera CLI finds it (--no-save-key turns this off)",
                file.display()
            ),
            Err(error) => eprintln!("tessera: that admin key is shown only now; saving it failed ({error}): keep it"),
        },
        None => {
            eprintln!("tessera: that admin key is shown only now: keep it (`tessera keys create NAME` makes more keys)")
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
