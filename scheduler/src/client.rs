//! The deployer's HTTP client for protocol v1, used by the CLI commands.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_protocol::{ApiError, DeployRequest, DeployResponse, JobStatus, ResultsPage};

use crate::error::{Error, Result};

/// A scheduler reached over HTTP.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` is the scheduler's root URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Client {
        Client { base: base.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, tessera_protocol::API_PREFIX, path)
    }

    async fn answer<T: DeserializeOwned>(&self, response: reqwest::Result<reqwest::Response>) -> Result<T> {
        let response = response.map_err(|error| Error::Unreachable(format!("{} ({error})", self.base)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|error| Error::Unreachable(error.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|error| Error::Unreachable(format!("unexpected answer from the scheduler: {error}")));
        }
        Err(Error::Api(serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| ApiError {
            code: status.as_u16().to_string(),
            field: None,
            message: String::from_utf8_lossy(&bytes).into_owned(),
        })))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.answer(self.http.get(self.url(path)).send().await).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.answer(self.http.post(self.url(path)).json(body).send().await).await
    }

    /// Uploads a bundle (tar.gz bytes) and returns its sha256.
    pub async fn upload_bundle(&self, tar_gz: Vec<u8>) -> Result<String> {
        let answer: serde_json::Value =
            self.answer(self.http.put(self.url("/bundles")).body(tar_gz).send().await).await?;
        answer["sha256"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Unreachable("the scheduler did not return the bundle's sha256".into()))
    }

    pub async fn deploy(&self, request: &DeployRequest) -> Result<DeployResponse> {
        self.post("/jobs", request).await
    }

    /// Every job, newest first.
    pub async fn jobs(&self) -> Result<Vec<tessera_protocol::JobSummary>> {
        self.get("/jobs").await
    }

    pub async fn status(&self, job_id: &str) -> Result<JobStatus> {
        self.get(&format!("/jobs/{job_id}")).await
    }

    /// A slice's status and every attempt at it.
    pub async fn slice_history(&self, job_id: &str, slice: u64) -> Result<tessera_protocol::SliceHistory> {
        self.get(&format!("/jobs/{job_id}/slices/{slice}")).await
    }

    pub async fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        self.post(&format!("/jobs/{job_id}/cancel"), &serde_json::json!({})).await
    }

    pub async fn results_page(&self, job_id: &str, from: u64) -> Result<ResultsPage> {
        self.get(&format!("/jobs/{job_id}/results?from={from}&limit=5000")).await
    }

    /// Console lines after sequence number `after`.
    pub async fn console(&self, job_id: &str, after: u64) -> Result<Vec<tessera_protocol::ConsoleLine>> {
        let answer: serde_json::Value = self.get(&format!("/jobs/{job_id}/console?after={after}")).await?;
        serde_json::from_value(answer["lines"].clone()).map_err(|error| Error::Unreachable(error.to_string()))
    }
}
