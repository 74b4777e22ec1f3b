//! Protocol v1 over `fetch` (gloo-net): the browser's [`SchedulerClient`].
//!
//! Every request has a deadline (an `AbortController`): a scheduler that was suspended or a
//! network that silently drops packets must not leave a request hanging forever, since the
//! supervisor sends one request of each kind at a time.

use futures::FutureExt;
use gloo_net::http::{Request, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_protocol::{
    ApiError, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse,
    ResultsRequest, ResultsResponse,
};

use crate::supervisor::{SchedulerClient, Task};
use crate::WorkerError;

/// A scheduler at `base` (its root URL).
#[derive(Clone, Debug)]
pub struct HttpSchedulerClient {
    base: String,
    /// A private pool's worker key, sent with the registration (`tessera serve --worker-key`).
    worker_key: Option<String>,
}

impl HttpSchedulerClient {
    pub fn new(base: &str) -> HttpSchedulerClient {
        HttpSchedulerClient { base: base.trim_end_matches('/').to_string(), worker_key: None }
    }

    /// The same client, registering with a private pool's worker key.
    pub fn with_worker_key(self, key: Option<String>) -> HttpSchedulerClient {
        HttpSchedulerClient { worker_key: key.filter(|key| !key.is_empty()), ..self }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, tessera_protocol::API_PREFIX, path)
    }

    fn post<B: Serialize + 'static, T: DeserializeOwned + 'static>(
        &self,
        path: &str,
        token: Option<&str>,
        body: B,
        deadline_ms: u32,
    ) -> Task<Result<T, WorkerError>> {
        let mut builder: RequestBuilder = Request::post(&self.url(path));
        if let Some(token) = token {
            builder = builder.header("Authorization", &format!("Bearer {token}"));
        }
        async move {
            let deadline = Deadline::new(deadline_ms)?;
            let request = builder
                .abort_signal(Some(&deadline.signal()))
                .json(&body)
                .map_err(|error| WorkerError::Unreachable(error.to_string()))?;
            let response = request.send().await.map_err(|error| deadline.explain(error))?;
            decode(response).await
        }
        .boxed_local()
    }

    /// The URL results go to; a closing page sends its farewell there with `sendBeacon`.
    pub fn results_url(&self) -> String {
        self.url("/results")
    }
}

/// Aborts a request that has not answered within its time.
struct Deadline {
    controller: web_sys::AbortController,
    _timer: gloo_timers::callback::Timeout,
    ms: u32,
}

impl Deadline {
    fn new(ms: u32) -> Result<Deadline, WorkerError> {
        let controller = web_sys::AbortController::new()
            .map_err(|_| WorkerError::Unreachable("this browser cannot abort requests".into()))?;
        let aborter = controller.clone();
        let timer = gloo_timers::callback::Timeout::new(ms, move || aborter.abort());
        Ok(Deadline { controller, _timer: timer, ms })
    }

    fn signal(&self) -> web_sys::AbortSignal {
        self.controller.signal()
    }

    fn explain(&self, error: gloo_net::Error) -> WorkerError {
        if self.controller.signal().aborted() {
            WorkerError::Unreachable(format!("no answer within {} ms", self.ms))
        } else {
            WorkerError::Unreachable(error.to_string())
        }
    }
}

/// Time allowed for a request that should answer at once.
const REQUEST_DEADLINE_MS: u32 = 30_000;

/// Time allowed for a download (a bundle, a Pyodide file: the runtime's wasm is ~10 MB).
pub const DOWNLOAD_DEADLINE_MS: u32 = 120_000;

/// `GET url` within `deadline_ms`; a 4xx is [`WorkerError::Rejected`], anything else that is not
/// a success is [`WorkerError::Unreachable`].
pub async fn get(url: &str, deadline_ms: u32) -> Result<Response, WorkerError> {
    let deadline = Deadline::new(deadline_ms)?;
    let response = Request::get(url)
        .abort_signal(Some(&deadline.signal()))
        .send()
        .await
        .map_err(|error| deadline.explain(error))?;
    check(response).await
}

async fn check(response: Response) -> Result<Response, WorkerError> {
    if response.ok() {
        return Ok(response);
    }
    let status = response.status();
    if (400..500).contains(&status) {
        let error = response.json::<ApiError>().await.unwrap_or_else(|_| ApiError {
            code: status.to_string(),
            field: None,
            message: format!("HTTP {status}"),
        });
        return Err(WorkerError::Rejected(error));
    }
    Err(WorkerError::Unreachable(format!("HTTP {status} from the scheduler")))
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, WorkerError> {
    check(response).await?.json::<T>().await.map_err(|error| WorkerError::Unreachable(error.to_string()))
}

impl SchedulerClient for HttpSchedulerClient {
    fn register(&self, request: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>> {
        let request = RegisterRequest { worker_key: request.worker_key.or_else(|| self.worker_key.clone()), ..request };
        self.post("/workers", None, request, REQUEST_DEADLINE_MS)
    }

    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        // A long poll answers within its wait; allow that plus the usual time.
        let deadline = REQUEST_DEADLINE_MS.saturating_add(request.wait_ms.min(u32::MAX as u64) as u32);
        self.post("/leases", Some(token), request, deadline)
    }

    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        self.post("/leases/heartbeat", Some(token), request, REQUEST_DEADLINE_MS)
    }

    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        self.post("/results", Some(token), request, REQUEST_DEADLINE_MS)
    }

    fn bundle(&self, sha256: &str) -> Task<Result<Vec<u8>, WorkerError>> {
        let url = self.url(&format!("/bundles/{sha256}"));
        async move {
            get(&url, DOWNLOAD_DEADLINE_MS)
                .await?
                .binary()
                .await
                .map_err(|error| WorkerError::Unreachable(error.to_string()))
        }
        .boxed_local()
    }
}
