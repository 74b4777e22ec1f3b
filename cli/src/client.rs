//! The deployer's HTTP client for protocol v1, used by the CLI commands. Every request carries
//! the deployer's API key (`Authorization: Bearer tsk_…`).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_protocol::{
    AddSlicesResponse, ApiError, ApiKeyInfo, CreateKeyRequest, CreatedKey, DeployRequest, DeployResponse, JobDeleted,
    JobStatus, ResultsPage,
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

    /// Adds a page of slices to an open job; answers the first index added and the new total.
    pub async fn add_slices(&self, job_id: &str, slices: &[serde_json::Value]) -> Result<AddSlicesResponse> {
        self.post(&format!("/jobs/{job_id}/slices"), &serde_json::json!({ "slices": slices })).await
    }

    /// Closes an open job: it completes once its slices are done.
    pub async fn close(&self, job_id: &str) -> Result<JobStatus> {
        self.post(&format!("/jobs/{job_id}/close"), &serde_json::json!({})).await
    }

    pub async fn cancel(&self, job_id: &str) -> Result<JobStatus> {
        self.post(&format!("/jobs/{job_id}/cancel"), &serde_json::json!({})).await
    }

    /// Deletes a finished job and everything stored for it (a running one is refused: cancel first).
    pub async fn delete(&self, job_id: &str) -> Result<JobDeleted> {
        self.answer(self.http.delete(self.url(&format!("/jobs/{job_id}"))).bearer_auth(&self.key).send().await).await
    }

    pub async fn results_page(&self, job_id: &str, from: u64) -> Result<ResultsPage> {
        self.get(&format!("/jobs/{job_id}/results?from={from}&limit=5000")).await
    }

    /// Console lines after sequence number `after`.
    pub async fn console(&self, job_id: &str, after: u64) -> Result<Vec<tessera_protocol::ConsoleLine>> {
        let answer: serde_json::Value = self.get(&format!("/jobs/{job_id}/console?after={after}")).await?;
        serde_json::from_value(answer["lines"].clone()).map_err(|error| Error::Unreachable(error.to_string()))
    }

    /// Opens a job's event stream (`GET /v1/jobs/{id}/events`) after position `after`.
    pub async fn events(&self, job_id: &str, after: u64) -> Result<Events> {
        let response = self
            .http
            .get(self.url(&format!("/jobs/{job_id}/events?after={after}")))
            .bearer_auth(&self.key)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|error| Error::Unreachable(format!("{} ({error})", self.base)))?;
        if !response.status().is_success() {
            // The error body, read as any other answer's (this never succeeds: the status says so).
            return self.answer::<serde_json::Value>(Ok(response)).await.and_then(|body| {
                Err(Error::Unreachable(format!("unexpected answer to an event stream request: {body}")))
            });
        }
        Ok(Events { response, buffer: Vec::new() })
    }

    /// Follows a job's events until its final state, reconnecting from the last position
    /// received when the connection drops (so nothing is missed or seen twice), and hands each
    /// event to `on_event`; returns the final status. `on_reconnect` hears of each reconnection.
    /// Refusals (unknown job, bad key) are returned at once; the scheduler being unreachable is
    /// retried, giving up after [`MAX_RECONNECTS`] attempts in a row without an event.
    pub async fn follow(
        &self,
        job_id: &str,
        mut on_event: impl FnMut(&JobEvent) -> Result<()>,
        mut on_reconnect: impl FnMut(u64, &Error),
    ) -> Result<JobStatus> {
        let mut after = 0;
        let mut failures = 0u32;
        loop {
            let outcome = match self.events(job_id, after).await {
                Ok(mut events) => loop {
                    match events.next().await {
                        Ok(Some(event)) => {
                            failures = 0;
                            if let Some(id) = event.id {
                                after = id;
                            }
                            on_event(&event)?;
                            if event.name == "state" {
                                let status: JobStatus =
                                    serde_json::from_value(event.data.clone()).map_err(|error| {
                                        Error::Unreachable(format!(
                                            "unexpected state event from the scheduler: {error}"
                                        ))
                                    })?;
                                if status.state.is_final() {
                                    return Ok(status);
                                }
                            }
                        }
                        Ok(None) => {
                            break Error::Unreachable("the event stream ended before the job's final state".into())
                        }
                        Err(error) => break error,
                    }
                },
                Err(error @ Error::Unreachable(_)) => error,
                Err(error) => return Err(error),
            };
            failures += 1;
            if failures > MAX_RECONNECTS {
                return Err(outcome);
            }
            on_reconnect(after, &outcome);
            let backoff = Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)).min(5_000));
            tokio::time::sleep(backoff).await;
        }
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

/// Reconnections in a row without receiving an event before `follow` gives up.
pub const MAX_RECONNECTS: u32 = 20;

/// Largest event accepted from a stream (a result is at most the scheduler's result limit, a few MiB).
const MAX_EVENT_BYTES: usize = 256 * 1024 * 1024;

/// One server-sent event of a job's stream: its position (none for `progress`), name and data.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    pub id: Option<u64>,
    pub name: String,
    pub data: serde_json::Value,
}

/// An open event stream, read one event at a time.
pub struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    /// The next event, skipping keep-alive comments; `None` when the scheduler ended the stream.
    pub async fn next(&mut self) -> Result<Option<JobEvent>> {
        loop {
            if let Some(end) = find_event_end(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end).collect();
                if let Some(event) = parse_event(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            if self.buffer.len() > MAX_EVENT_BYTES {
                return Err(Error::Unreachable(format!("an event from the scheduler is over {MAX_EVENT_BYTES} bytes")));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(error) => return Err(Error::Unreachable(format!("the event stream broke: {error}"))),
            }
        }
    }
}

/// Where the first complete event of `buffer` ends (after its blank line), if one is complete.
fn find_event_end(buffer: &[u8]) -> Option<usize> {
    let normalized = buffer.windows(2).position(|pair| pair == b"\n\n").map(|at| at + 2);
    let crlf = buffer.windows(4).position(|quad| quad == b"\r\n\r\n").map(|at| at + 4);
    match (normalized, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One event block (`id:`, `event:`, `data:` lines); `None` for a comment-only block.
fn parse_event(block: &[u8]) -> Result<Option<JobEvent>> {
    let text = std::str::from_utf8(block).map_err(|_| Error::Unreachable("an event is not UTF-8".into()))?;
    let (mut id, mut name, mut data) = (None, None, Vec::new());
    for line in text.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => name = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    let Some(name) = name else { return Ok(None) };
    let data = serde_json::from_str(&data.join("\n"))
        .map_err(|error| Error::Unreachable(format!("unreadable `{name}` event from the scheduler: {error}")))?;
    Ok(Some(JobEvent { id, name, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_and_comments_skipped() {
        assert_eq!(parse_event(b":\n\n").unwrap(), None);
        let event = parse_event(b"id: 3\nevent: result\ndata: {\"slice\":0}\n\n").unwrap().unwrap();
        assert_eq!(event, JobEvent { id: Some(3), name: "result".into(), data: serde_json::json!({"slice": 0}) });
        let progress = parse_event(b"event:progress\ndata:{\"done\":1}\n\n").unwrap().unwrap();
        assert_eq!((progress.id, progress.name.as_str()), (None, "progress"));
        assert_eq!(find_event_end(b"id: 1\ndata: {}\n\nid: 2"), Some(16));
        assert_eq!(find_event_end(b"id: 1\ndata: {}\n"), None);
    }
}
