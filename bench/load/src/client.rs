//! The few protocol calls the load generator makes, typed with `tessera-protocol`.

use std::time::Duration;

use serde_json::{json, Value};
use tessera_protocol::{
    ApiError, DeployResponse, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse, ResultsRequest,
    ResultsResponse,
};

use crate::BoxError;

/// A reqwest client for `connections` concurrent requests to one host: every idle connection kept,
/// Nagle off, and a per-request time-out above the longest long-poll.
pub fn http_client(connections: usize) -> Result<reqwest::Client, BoxError> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// One registered worker: its token and the scheduler's base URL.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Base URL of the scheduler.
    pub url: String,
    /// The worker's bearer token.
    pub token: String,
}

async fn answer<T: serde::de::DeserializeOwned>(what: &str, response: reqwest::Response) -> Result<T, BoxError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json::<T>().await?);
    }
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<ApiError>(&text).map(|error| error.to_string()).unwrap_or(text);
    Err(format!("{what}: HTTP {status}: {detail}").into())
}

/// `POST /v1/workers`.
pub async fn register(client: &reqwest::Client, url: &str) -> Result<Worker, BoxError> {
    let request =
        RegisterRequest { user_agent: Some("tessera-load".into()), sandboxes: 1, worker_key: None, contributor: None };
    let response = client.post(format!("{url}/v1/workers")).json(&request).send().await?;
    let registered: RegisterResponse = answer("register", response).await?;
    Ok(Worker { url: url.to_string(), token: registered.token })
}

impl Worker {
    /// `POST /v1/leases` for up to `max_slices`, waiting up to `wait_ms` for work.
    pub async fn lease(
        &self,
        client: &reqwest::Client,
        max_slices: u32,
        wait_ms: u64,
        known_jobs: &[String],
    ) -> Result<LeaseResponse, BoxError> {
        let request = LeaseRequest { max_slices, wait_ms, known_jobs: known_jobs.to_vec(), prefer_jobs: Vec::new() };
        let response =
            client.post(format!("{}/v1/leases", self.url)).bearer_auth(&self.token).json(&request).send().await?;
        answer("lease", response).await
    }

    /// `POST /v1/results`.
    pub async fn submit(
        &self,
        client: &reqwest::Client,
        request: &ResultsRequest,
    ) -> Result<ResultsResponse, BoxError> {
        let response =
            client.post(format!("{}/v1/results", self.url)).bearer_auth(&self.token).json(request).send().await?;
        answer("results", response).await
    }
}

/// `POST /v1/jobs` with the API key `key`: a map-basic no-op job over `0..slices`.
pub async fn deploy_noop(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    slices: u64,
) -> Result<DeployResponse, BoxError> {
    let body = json!({"name": "tessera-load", "worktime": "map-basic", "program": "(x) => x",
                      "range": {"start": 0, "end": slices}});
    let response = client.post(format!("{url}/v1/jobs")).bearer_auth(key).json(&body).send().await?;
    answer("deploy", response).await
}

/// `GET /v1/jobs/{id}` with the API key `key`, kept as JSON so a status field the scheduler adds
/// or renames is reported, not fatal.
pub async fn job_status(client: &reqwest::Client, url: &str, key: &str, job_id: &str) -> Result<Value, BoxError> {
    let response = client.get(format!("{url}/v1/jobs/{job_id}")).bearer_auth(key).send().await?;
    answer("job status", response).await
}
