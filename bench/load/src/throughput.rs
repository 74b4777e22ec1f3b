//! Scenario 1: many workers drain one large no-op job as fast as the scheduler accepts results.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_protocol::{ResultItem, ResultStatus, ResultsRequest, SliceOutcome};
use tokio::sync::watch;

use crate::client::{self, Worker};
use crate::scheduler::Scheduler;
use crate::stats::{ms, steady_rate, Latency};
use crate::BoxError;

/// How a throughput round is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Concurrent workers, each one lease-then-submit loop.
    pub workers: usize,
    /// Slices in the job.
    pub slices: u64,
    /// `max_slices` of each lease, so also the size of each results batch.
    pub batch: u32,
    /// `wait_ms` of each lease request.
    pub wait_ms: u64,
    /// The whole round gives up after this long.
    pub timeout: Duration,
}

/// What one throughput round measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Workers and slices of the round.
    pub workers: usize,
    /// Slices in the job.
    pub slices: u64,
    /// Slices per lease and per results batch.
    pub batch: u32,
    /// Accepted slices per second from sending the deploy to the last accepted result.
    pub slices_per_s: f64,
    /// Accepted slices per second between 10 % and 90 % of the job (no ramp-up, no tail).
    pub steady_slices_per_s: f64,
    /// Seconds from sending the deploy to the last accepted result.
    pub elapsed_s: f64,
    /// Milliseconds the deploy request took.
    pub deploy_ms: f64,
    /// Latency of lease requests that returned slices.
    pub lease: Latency,
    /// Latency of results batches.
    pub submit: Latency,
    /// CPU seconds the scheduler used from the deploy to the end of the round.
    pub scheduler_cpu_s: f64,
    /// CPU seconds this load generator used over the same time.
    pub generator_cpu_s: f64,
    /// Database plus write-ahead log on disk after the run.
    pub db_bytes: u64,
    /// Acks by status.
    pub accepted: u64,
    /// Acks that said `duplicate`.
    pub duplicate: u64,
    /// Acks that said `stale`.
    pub stale: u64,
    /// Acks of any other status (refused, requeued, released).
    pub other: u64,
    /// `done` and `state` of `GET /v1/jobs/{id}` after the run.
    pub job_done: u64,
    /// The job's state after the run.
    pub job_state: String,
    /// Every slice accepted exactly once, counted by the client and confirmed by the job status.
    pub accepted_exactly_once: bool,
}

/// Per-worker tallies, merged after the round.
#[derive(Default)]
struct Tally {
    lease_ms: Vec<f64>,
    submit_ms: Vec<f64>,
    /// (seconds since the deploy was sent, slices accepted by this batch)
    accepted_at: Vec<(f64, u64)>,
    accepted_slices: Vec<u64>,
    statuses: [u64; 4],
}

/// Runs one round against a fresh scheduler started from `tessera`.
pub async fn run(tessera: &Path, config: &Config) -> Result<Outcome, BoxError> {
    let scheduler = Scheduler::start(tessera)?;
    match tokio::time::timeout(config.timeout, round(&scheduler, config)).await {
        Ok(result) => result.map_err(|error| format!("{error}; {}", scheduler.log_tail()).into()),
        Err(_) => Err(format!("throughput round did not finish within {:?}", config.timeout).into()),
    }
}

async fn round(scheduler: &Scheduler, config: &Config) -> Result<Outcome, BoxError> {
    let http = client::http_client(config.workers * 2)?;
    let mut workers = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        workers.push(client::register(&http, &scheduler.url).await?);
    }
    let (ticks_before, own_before) = (scheduler.cpu_ticks()?, crate::scheduler::own_cpu_seconds());
    let deploy_sent = Instant::now();
    let deployed = client::deploy_noop(&http, &scheduler.url, &scheduler.api_key, config.slices).await?;
    let deploy_ms = ms(deploy_sent.elapsed());
    if deployed.total != config.slices {
        return Err(format!("deployed {} slices, asked for {}", deployed.total, config.slices).into());
    }

    let accepted_total = Arc::new(AtomicU64::new(0));
    let (stop_sender, stop) = watch::channel(false);
    let stop_sender = Arc::new(stop_sender);
    let deadline = deploy_sent + config.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        let (http, stop, stop_sender, accepted_total) =
            (http.clone(), stop.clone(), stop_sender.clone(), accepted_total.clone());
        let (batch, wait_ms, total) = (config.batch, config.wait_ms, config.slices);
        tasks.spawn(async move {
            let result = work(worker, http, batch, wait_ms, total, deploy_sent, deadline, stop, &accepted_total).await;
            if result.is_err() {
                // One failed worker ends the round rather than leaving its leases to expire.
                let _ = stop_sender.send(true);
            } else if accepted_total.load(Ordering::SeqCst) >= total {
                let _ = stop_sender.send(true);
            }
            result
        });
    }
    let mut tally = Tally::default();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(BoxError::from).and_then(|result| result) {
            Ok(part) => {
                tally.lease_ms.extend(part.lease_ms);
                tally.submit_ms.extend(part.submit_ms);
                tally.accepted_at.extend(part.accepted_at);
                tally.accepted_slices.extend(part.accepted_slices);
                for (sum, count) in tally.statuses.iter_mut().zip(part.statuses) {
                    *sum += count;
                }
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }

    let scheduler_cpu_s =
        scheduler.cpu_ticks()?.saturating_sub(ticks_before) as f64 * crate::scheduler::seconds_per_tick();
    let generator_cpu_s = crate::scheduler::own_cpu_seconds() - own_before;
    let elapsed_s = tally.accepted_at.iter().map(|(at, _)| *at).fold(0.0, f64::max);
    let [accepted, duplicate, stale, other] = tally.statuses;
    let status = client::job_status(&http, &scheduler.url, &scheduler.api_key, &deployed.job_id).await?;
    let job_done = status.get("done").and_then(Value::as_u64).unwrap_or(0);
    let job_state = status.get("state").and_then(Value::as_str).unwrap_or("?").to_string();
    let once = each_exactly_once(&tally.accepted_slices, config.slices);
    Ok(Outcome {
        workers: config.workers,
        slices: config.slices,
        batch: config.batch,
        slices_per_s: if elapsed_s > 0.0 { accepted as f64 / elapsed_s } else { 0.0 },
        steady_slices_per_s: steady_rate(&tally.accepted_at, config.slices, 0.1, 0.9).unwrap_or(0.0),
        elapsed_s,
        deploy_ms,
        lease: Latency::of(&tally.lease_ms),
        submit: Latency::of(&tally.submit_ms),
        scheduler_cpu_s,
        generator_cpu_s,
        db_bytes: scheduler.db_bytes(),
        accepted,
        duplicate,
        stale,
        other,
        job_done,
        accepted_exactly_once: once
            && accepted == config.slices
            && duplicate + stale + other == 0
            && job_done == config.slices
            && job_state == "complete",
        job_state,
    })
}

/// Whether every slice in `0..total` appears exactly once in `slices`.
pub fn each_exactly_once(slices: &[u64], total: u64) -> bool {
    let mut seen = vec![0u8; total as usize];
    for &slice in slices {
        match seen.get_mut(slice as usize) {
            Some(count) => *count = count.saturating_add(1),
            None => return false,
        }
    }
    seen.iter().all(|&count| count == 1)
}

#[allow(clippy::too_many_arguments)]
async fn work(
    worker: Worker,
    http: reqwest::Client,
    batch: u32,
    wait_ms: u64,
    total: u64,
    deploy_sent: Instant,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
    accepted_total: &AtomicU64,
) -> Result<Tally, BoxError> {
    let mut tally = Tally::default();
    let mut known_jobs: Vec<String> = Vec::new();
    while Instant::now() < deadline && accepted_total.load(Ordering::SeqCst) < total {
        let sent = Instant::now();
        let leased = tokio::select! {
            leased = worker.lease(&http, batch, wait_ms, &known_jobs) => leased?,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        if leased.leases.is_empty() {
            continue;
        }
        tally.lease_ms.push(ms(sent.elapsed()));
        for job in leased.jobs {
            if !known_jobs.contains(&job.job_id) {
                known_jobs.push(job.job_id);
            }
        }
        let slices: Vec<u64> = leased.leases.iter().map(|lease| lease.slice).collect();
        let request = ResultsRequest {
            results: leased
                .leases
                .into_iter()
                .map(|lease| ResultItem {
                    lease_id: lease.lease_id,
                    token: lease.token,
                    outcome: SliceOutcome::Ok { value: lease.datum },
                    console: Vec::new(),
                    compute_ms: None,
                })
                .collect(),
            worker_token: None,
        };
        let sent = Instant::now();
        let answer = worker.submit(&http, &request).await?;
        tally.submit_ms.push(ms(sent.elapsed()));
        if answer.acks.len() != slices.len() {
            return Err(format!("{} acks for {} results", answer.acks.len(), slices.len()).into());
        }
        let mut accepted = 0;
        for (ack, slice) in answer.acks.iter().zip(slices) {
            let index = match ack.status {
                ResultStatus::Accepted => 0,
                ResultStatus::Duplicate => 1,
                ResultStatus::Stale => 2,
                _ => 3,
            };
            tally.statuses[index] += 1;
            if index == 0 {
                accepted += 1;
                tally.accepted_slices.push(slice);
            }
        }
        tally.accepted_at.push((deploy_sent.elapsed().as_secs_f64(), accepted));
        accepted_total.fetch_add(accepted, Ordering::SeqCst);
    }
    Ok(tally)
}

/// The JSON of one round (for `each_round`).
pub fn to_json(outcome: &Outcome) -> Value {
    json!({
        "workers": outcome.workers,
        "slices": outcome.slices,
        "batch": outcome.batch,
        "throughput_slices_per_s": outcome.slices_per_s,
        "throughput_steady_slices_per_s": outcome.steady_slices_per_s,
        "elapsed_s": outcome.elapsed_s,
        "deploy_ms": outcome.deploy_ms,
        "lease_p50_ms": outcome.lease.p50,
        "lease_p99_ms": outcome.lease.p99,
        "lease_max_ms": outcome.lease.max,
        "leases": outcome.lease.count,
        "submit_p50_ms": outcome.submit.p50,
        "submit_p99_ms": outcome.submit.p99,
        "submit_max_ms": outcome.submit.max,
        "scheduler_cpu_s": outcome.scheduler_cpu_s,
        "generator_cpu_s": outcome.generator_cpu_s,
        "scheduler_cpu_ms_per_slice": outcome.scheduler_cpu_s * 1_000.0 / outcome.slices.max(1) as f64,
        "db_bytes": outcome.db_bytes,
        "acks": {"accepted": outcome.accepted, "duplicate": outcome.duplicate, "stale": outcome.stale,
                 "other": outcome.other},
        "job_done": outcome.job_done,
        "job_state": outcome.job_state,
        "accepted_exactly_once": outcome.accepted_exactly_once,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once_check() {
        assert!(each_exactly_once(&[2, 0, 1], 3));
        assert!(!each_exactly_once(&[0, 1, 1], 3));
        assert!(!each_exactly_once(&[0, 1], 3));
        assert!(!each_exactly_once(&[0, 1, 2, 3], 3));
        assert!(each_exactly_once(&[], 0));
    }
}
