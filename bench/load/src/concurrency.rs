//! Scenario 2: thousands of workers long-poll at once; a deploy must wake each of them with a lease.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::client::{self, Worker};
use crate::scheduler::Scheduler;
use crate::stats::{ms, Latency};
use crate::BoxError;

/// How a concurrency round is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Workers long-polling at once; the job has as many slices.
    pub workers: usize,
    /// `wait_ms` of each long-poll (the scheduler caps it at 20 s).
    pub wait_ms: u64,
    /// The whole round gives up after this long.
    pub timeout: Duration,
}

/// What one concurrency round measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Workers long-polling.
    pub workers: usize,
    /// From sending the deploy to each worker holding its lease (parsed answer), milliseconds.
    pub deploy_to_lease: Latency,
    /// Milliseconds the deploy request itself took.
    pub deploy_ms: f64,
    /// Every worker got exactly one lease and the leases cover every slice once.
    pub exactly_one_lease_each: bool,
    /// Workers that ended with no lease (time-out or error).
    pub without_lease: usize,
    /// Long-polls that came back empty before the deploy and were sent again.
    pub repolls: u64,
    /// Seconds from sending the first long-poll to the scheduler holding all of them.
    pub connect_s: f64,
    /// Scheduler RSS (KiB) before the long-polls and with all of them waiting.
    pub rss_before_kb: u64,
    /// Scheduler RSS (KiB) with every long-poll waiting.
    pub rss_waiting_kb: u64,
    /// `(rss_waiting − rss_before) / workers`.
    pub memory_per_idle_connection_kb: f64,
}

/// What one worker's long-poll loop ended with.
struct Polled {
    /// When its answer with leases was parsed.
    leased_at: Option<Instant>,
    slices: Vec<u64>,
    repolls: u64,
}

/// Runs one round against a fresh scheduler started from `tessera` (raise the open-file limit first).
pub async fn run(tessera: &Path, config: &Config) -> Result<Outcome, BoxError> {
    let scheduler = Scheduler::start(tessera)?;
    match tokio::time::timeout(config.timeout, round(&scheduler, config)).await {
        Ok(result) => result.map_err(|error| format!("{error}; {}", scheduler.log_tail()).into()),
        Err(_) => Err(format!("concurrency round did not finish within {:?}", config.timeout).into()),
    }
}

async fn round(scheduler: &Scheduler, config: &Config) -> Result<Outcome, BoxError> {
    let workers = register_all(&scheduler.url, config.workers).await?;
    // The registration connections are closed by now: measure the idle baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds_before = scheduler.open_fds()?;
    let rss_before_kb = scheduler.rss_kb()?;

    let http = client::http_client(config.workers)?;
    let polls_sent = Instant::now();
    let give_up = polls_sent + config.timeout;
    // Taken just before the deploy goes out; a poll that answers before it is a re-poll.
    let (deploy_sender, deploy_sent) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        let (http, mut deploy_sent, wait_ms) = (http.clone(), deploy_sent.clone(), config.wait_ms);
        tasks.spawn(async move { poll(worker, http, wait_ms, give_up, &mut deploy_sent).await });
    }

    // All waiting: the scheduler holds one more socket per worker and its CPU has gone quiet.
    let connect_s = wait_for_fds(scheduler, fds_before + config.workers, give_up).await?;
    wait_until_idle(scheduler, Duration::from_secs(1), give_up).await?;
    let rss_waiting_kb = scheduler.rss_kb()?;

    let control = client::http_client(4)?;
    let sent = Instant::now();
    let _ = deploy_sender.send(Some(sent));
    let deployed = client::deploy_noop(&control, &scheduler.url, &scheduler.api_key, config.workers as u64).await?;
    let deploy_ms = ms(sent.elapsed());

    let mut latencies = Vec::with_capacity(config.workers);
    let mut slices = Vec::with_capacity(config.workers);
    let (mut without_lease, mut repolls, mut more_than_one) = (0, 0, 0);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(BoxError::from).and_then(|result| result) {
            Ok(polled) => {
                repolls += polled.repolls;
                match polled.leased_at {
                    Some(at) => latencies.push(ms(at.saturating_duration_since(sent))),
                    None => without_lease += 1,
                }
                if polled.slices.len() > 1 {
                    more_than_one += 1;
                }
                slices.extend(polled.slices);
            }
            Err(error) => {
                without_lease += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        eprintln!("tessera-load: concurrency: {without_lease} workers without a lease; first error: {error}");
    }
    let exactly_one = without_lease == 0
        && more_than_one == 0
        && deployed.total == config.workers as u64
        && crate::throughput::each_exactly_once(&slices, config.workers as u64);
    let grown = rss_waiting_kb.saturating_sub(rss_before_kb) as f64;
    Ok(Outcome {
        workers: config.workers,
        deploy_to_lease: Latency::of(&latencies),
        deploy_ms,
        exactly_one_lease_each: exactly_one,
        without_lease,
        repolls,
        connect_s,
        rss_before_kb,
        rss_waiting_kb,
        memory_per_idle_connection_kb: grown / config.workers.max(1) as f64,
    })
}

/// Registers `count` workers, at most 64 at a time, on a client that is dropped afterwards.
async fn register_all(url: &str, count: usize) -> Result<Vec<Worker>, BoxError> {
    let http = client::http_client(64)?;
    let permits = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let (http, permits, url) = (http.clone(), permits.clone(), url.to_string());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            client::register(&http, &url).await.map(|worker| (index, worker))
        });
    }
    let mut workers: Vec<Option<Worker>> = vec![None; count];
    while let Some(joined) = tasks.join_next().await {
        let (index, worker) = joined??;
        workers[index] = Some(worker);
    }
    Ok(workers.into_iter().flatten().collect())
}

/// Long-polls until a lease arrives, re-polling an empty answer (at most 10 polls, until `give_up`).
async fn poll(
    worker: Worker,
    http: reqwest::Client,
    wait_ms: u64,
    give_up: Instant,
    deploy_sent: &mut tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<Polled, BoxError> {
    let mut repolls = 0;
    for _ in 0..10 {
        if Instant::now() >= give_up {
            break;
        }
        let answer = worker.lease(&http, 1, wait_ms, &[]).await?;
        if !answer.leases.is_empty() {
            let leased_at = Instant::now();
            let slices = answer.leases.iter().map(|lease| lease.slice).collect();
            return Ok(Polled { leased_at: Some(leased_at), slices, repolls });
        }
        if deploy_sent.borrow_and_update().is_none() {
            repolls += 1;
        }
    }
    Ok(Polled { leased_at: None, slices: Vec::new(), repolls })
}

/// Waits until the scheduler holds at least `target` file descriptors; returns the seconds it took.
async fn wait_for_fds(scheduler: &Scheduler, target: usize, give_up: Instant) -> Result<f64, BoxError> {
    let started = Instant::now();
    loop {
        let open = scheduler.open_fds()?;
        if open >= target {
            return Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() >= give_up {
            return Err(format!("the scheduler holds {open} descriptors, expected {target}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the scheduler has used almost no CPU (at most 20 ms, two clock ticks, which leaves
/// room for its once-a-second lease reaper) over the last `quiet`: every request has been read and
/// parked.
async fn wait_until_idle(scheduler: &Scheduler, quiet: Duration, give_up: Instant) -> Result<(), BoxError> {
    let step = Duration::from_millis(250);
    let window = (quiet.as_millis() / step.as_millis()).max(1) as usize;
    let mut samples = vec![scheduler.cpu_ticks()?];
    while Instant::now() < give_up {
        tokio::time::sleep(step).await;
        samples.push(scheduler.cpu_ticks()?);
        if samples.len() > window && samples[samples.len() - 1] - samples[samples.len() - 1 - window] <= 2 {
            return Ok(());
        }
    }
    Err("the scheduler never went idle with the long-polls waiting".into())
}

/// The JSON of one round (for `each_round`).
pub fn to_json(outcome: &Outcome) -> Value {
    json!({
        "concurrency_workers": outcome.workers,
        "deploy_to_lease_p50_ms": outcome.deploy_to_lease.p50,
        "deploy_to_lease_p99_ms": outcome.deploy_to_lease.p99,
        "deploy_to_lease_max_ms": outcome.deploy_to_lease.max,
        "deploy_ms": outcome.deploy_ms,
        "exactly_one_lease_each": outcome.exactly_one_lease_each,
        "without_lease": outcome.without_lease,
        "repolls": outcome.repolls,
        "connect_s": outcome.connect_s,
        "rss_before_kb": outcome.rss_before_kb,
        "rss_waiting_kb": outcome.rss_waiting_kb,
        "memory_per_idle_connection_kb": outcome.memory_per_idle_connection_kb,
    })
}
