//! Protocol v1 over `fetch` (gloo-net): the browser's [`SchedulerClient`].

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
}

impl HttpSchedulerClient {
    pub fn new(base: &str) -> HttpSchedulerClient {
        HttpSchedulerClient { base: base.trim_end_matches('/').to_string() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, tessera_protocol::API_PREFIX, path)
    }

    fn post<B: Serialize + 'static, T: DeserializeOwned + 'static>(
        &self,
        path: &str,
        token: Option<&str>,
        body: B,
    ) -> Task<Result<T, WorkerError>> {
        let mut builder: RequestBuilder = Request::post(&self.url(path));
        if let Some(token) = token {
            builder = builder.header("Authorization", &format!("Bearer {token}"));
        }
        async move {
            let request = builder.json(&body).map_err(|error| WorkerError::Unreachable(error.to_string()))?;
            let response = request.send().await.map_err(|error| WorkerError::Unreachable(error.to_string()))?;
            decode(response).await
        }
        .boxed_local()
    }
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
        self.post("/workers", None, request)
    }

    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        self.post("/leases", Some(token), request)
    }

    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        self.post("/leases/heartbeat", Some(token), request)
    }

    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        self.post("/results", Some(token), request)
    }

    fn bundle(&self, sha256: &str) -> Task<Result<Vec<u8>, WorkerError>> {
        let url = self.url(&format!("/bundles/{sha256}"));
        async move {
            let response =
                Request::get(&url).send().await.map_err(|error| WorkerError::Unreachable(error.to_string()))?;
            check(response).await?.binary().await.map_err(|error| WorkerError::Unreachable(error.to_string()))
        }
        .boxed_local()
    }
}
