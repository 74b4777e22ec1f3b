//! The deployer's HTTP client for protocol v1, used by the CLI commands. Every request carries
//! the deployer's API key (`Authorization: Bearer tsk_…`).

use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_protocol::{
    ApiError, ApiKeyInfo, CreateKeyRequest, CreatedKey, DeployRequest, DeployResponse, JobStatus, ResultsPage,
};

use crate::error::{Error, Result};

/// A scheduler reached over HTTP with one API key.
pub struct Client {
    base: String,
    http: reqwest::Client,
    key: String,
    /// Where the key came from (`--api-key`, `TESSERA_API_KEY`, a file), for a refusal's message.
    key_source: String,
}

impl Client {
    /// `base` is the scheduler's root URL, e.g. `http://127.0.0.1:8080`; `key` the API key and
    /// `key_source` where it was found.
    pub fn new(base: &str, key: &str, key_source: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            key: key.to_string(),
            key_source: key_source.to_string(),
        }
    }

    /// The scheduler's root URL.
    pub fn base(&self) -> &str {
        &self.base
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
        let mut error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| ApiError {
            code: status.as_u16().to_string(),
            field: None,
            message: String::from_utf8_lossy(&bytes).into_owned(),
        });
        if status == reqwest::StatusCode::UNAUTHORIZED {
            error.message.push_str(&format!(" (the key came from {})", self.key_source));
        }
        Err(Error::Api(error))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.answer(self.http.get(self.url(path)).bearer_auth(&self.key).send().await).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.answer(self.http.post(self.url(path)).bearer_auth(&self.key).json(body).send().await).await
    }

    /// Uploads a bundle (tar.gz bytes) and returns its sha256.
    pub async fn upload_bundle(&self, tar_gz: Vec<u8>) -> Result<String> {
        let request = self
            .http
            .put(self.url("/bundles"))
            .bearer_auth(&self.key)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(tar_gz);
        let answer: serde_json::Value = self.answer(request.send().await).await?;
        answer["sha256"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Unreachable("the scheduler did not return the bundle's sha256".into()))
    }

    pub async fn deploy(&self, request: &DeployRequest) -> Result<DeployResponse> {
        self.post("/jobs", request).await
    }

    /// Every job this key may see (its own; every job for an admin key), newest first.
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

    /// Makes an API key (admin keys only).
    pub async fn create_key(&self, name: &str, admin: bool) -> Result<CreatedKey> {
        self.post("/keys", &CreateKeyRequest { name: name.into(), admin }).await
    }

    /// Every API key, without secrets (admin keys only).
    pub async fn keys(&self) -> Result<Vec<ApiKeyInfo>> {
        self.get("/keys").await
    }

    /// Revokes an API key by its id (admin keys only).
    pub async fn revoke_key(&self, id: &str) -> Result<ApiKeyInfo> {
        self.post(&format!("/keys/{id}/revoke"), &serde_json::json!({})).await
    }
}
