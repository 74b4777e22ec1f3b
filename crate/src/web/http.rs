//! Protocol v1 over the browser's `fetch`: the browser's [`SchedulerClient`].
//!
//! Every request has a deadline (an `AbortController`): a scheduler that was suspended or a
//! network that silently drops packets must not leave a request hanging forever, since the
//! supervisor sends one request of each kind at a time.
//!
//! `fetch` is called directly (no HTTP wrapper crate), and the generic parts stay thin: a body is
//! serialised and an answer parsed per type, but sending, deadlines and status handling are one
//! non-generic path shared by every request, which keeps the core's wasm small.

use futures::FutureExt;
use tessera_protocol::json::{self, FromJson, ToJson};
use tessera_protocol::{
    ApiError, BundleLimits, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse, RegisterRequest,
    RegisterResponse, ResultsRequest, ResultsResponse,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::supervisor::{SchedulerClient, Task};
use crate::WorkerError;

#[wasm_bindgen]
extern "C" {
    /// The global `fetch`, whether the core runs in a page or in a worker.
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with_request(request: &web_sys::Request) -> js_sys::Promise;
}

/// A scheduler at `base` (its root URL).
#[derive(Clone, Debug)]
pub struct HttpSchedulerClient {
    base: String,
    /// A private pool's worker key, sent with the registration (`tessera serve --worker-key`).
    worker_key: Option<String>,
    contributor: Option<String>,
}

impl HttpSchedulerClient {
    pub fn new(base: &str) -> HttpSchedulerClient {
        HttpSchedulerClient { base: base.trim_end_matches('/').to_string(), worker_key: None, contributor: None }
    }

    /// The same client, registering with a private pool's worker key.
    pub fn with_worker_key(self, key: Option<String>) -> HttpSchedulerClient {
        HttpSchedulerClient { worker_key: key.filter(|key| !key.is_empty()), ..self }
    }

    /// The same client, registering for `contributor` (the id the page keeps for whoever
    /// contributes), so accepted slices are credited to it.
    pub fn with_contributor(self, contributor: Option<String>) -> HttpSchedulerClient {
        HttpSchedulerClient { contributor: contributor.filter(|id| !id.is_empty()), ..self }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base, tessera_protocol::API_PREFIX, path)
    }

    /// `POST`s `body` as JSON and reads the answer as a `T`. Only the (de)serialisation is
    /// generic; the request itself goes through [`post_json`].
    fn post<B: ToJson, T: FromJson + 'static>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
        deadline_ms: u32,
    ) -> Task<Result<T, WorkerError>> {
        let url = self.url(path);
        let authorization = token.map(|token| format!("Bearer {token}"));
        let body = json::write(body);
        async move {
            let text = post_json(&url, authorization.as_deref(), body, deadline_ms).await?;
            json::read::<T>(&text, browser_float)
                .map_err(|error| WorkerError::Unreachable(format!("the scheduler's answer: {error}")))
        }
        .boxed_local()
    }

    /// The URL results go to; a closing page sends its farewell there with `sendBeacon`.
    pub fn results_url(&self) -> String {
        self.url("/results")
    }
}

/// `POST url` with a JSON `body` within `deadline_ms` (the answer's body included); the text of
/// a successful answer.
async fn post_json(
    url: &str,
    authorization: Option<&str>,
    body: String,
    deadline_ms: u32,
) -> Result<String, WorkerError> {
    let headers = js_sys::Object::new();
    if let Some(authorization) = authorization {
        set(&headers, "Authorization", authorization);
    }
    set(&headers, "Content-Type", "application/json");
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_headers(&headers);
    init.set_body(&JsValue::from_str(&body));
    let deadline = Deadline::new(deadline_ms)?;
    let response = send(url, &init, &deadline).await?;
    text(&response).await
}

fn set(target: &js_sys::Object, key: &str, value: &str) {
    let _ = js_sys::Reflect::set(target, &JsValue::from_str(key), &JsValue::from_str(value));
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

    fn explain(&self, error: &JsValue) -> WorkerError {
        if self.controller.signal().aborted() {
            WorkerError::Unreachable(format!("no answer within {} ms", self.ms))
        } else {
            WorkerError::Unreachable(error_text(error))
        }
    }
}

/// What JavaScript says of an error: its `toString()` (`TypeError: Failed to fetch`).
fn error_text(error: &JsValue) -> String {
    match error.dyn_ref::<js_sys::Error>() {
        Some(error) => String::from(error.to_string()),
        None => error.as_string().unwrap_or_else(|| format!("{error:?}")),
    }
}

/// Sends a request with `init` (and `deadline`'s abort signal) and checks its status.
async fn send(url: &str, init: &web_sys::RequestInit, deadline: &Deadline) -> Result<web_sys::Response, WorkerError> {
    init.set_signal(Some(&deadline.controller.signal()));
    let request = web_sys::Request::new_with_str_and_init(url, init).map_err(|error| deadline.explain(&error))?;
    let answer = JsFuture::from(fetch_with_request(&request)).await.map_err(|error| deadline.explain(&error))?;
    let response = answer
        .dyn_into::<web_sys::Response>()
        .map_err(|_| WorkerError::Unreachable("fetch did not answer with a response".into()))?;
    check(response).await
}

/// The browser's own `parseFloat`, for [`json::read`]: the same nearest `f64` as Rust's parser,
/// without compiling Rust's into the core.
pub fn browser_float(text: &str) -> Option<f64> {
    Some(js_sys::parse_float(text)).filter(|number| number.is_finite())
}

/// Time allowed for a request that should answer at once.
const REQUEST_DEADLINE_MS: u32 = 30_000;

/// Time allowed for a download (a bundle, a Pyodide file: the runtime's wasm is ~10 MB).
pub const DOWNLOAD_DEADLINE_MS: u32 = 120_000;

/// `GET url` within `deadline_ms` (reading the body is not part of it); a 4xx is
/// [`WorkerError::Rejected`], anything else that is not a success is [`WorkerError::Unreachable`].
pub async fn get(url: &str, deadline_ms: u32) -> Result<web_sys::Response, WorkerError> {
    let init = web_sys::RequestInit::new();
    init.set_method("GET");
    let deadline = Deadline::new(deadline_ms)?;
    send(url, &init, &deadline).await
}

async fn check(response: web_sys::Response) -> Result<web_sys::Response, WorkerError> {
    if response.ok() {
        return Ok(response);
    }
    let status = response.status();
    if (400..500).contains(&status) {
        let error = match text(&response).await {
            Ok(body) => json::read::<ApiError>(&body, browser_float).ok(),
            Err(_) => None,
        };
        let error = error.unwrap_or_else(|| ApiError {
            code: status.to_string(),
            field: None,
            message: format!("HTTP {status}"),
        });
        return Err(WorkerError::Rejected(error));
    }
    Err(WorkerError::Unreachable(format!("HTTP {status} from the scheduler")))
}

/// The body of `response` as text.
async fn text(response: &web_sys::Response) -> Result<String, WorkerError> {
    let reading = response.text().map_err(|error| WorkerError::Unreachable(error_text(&error)))?;
    let body = JsFuture::from(reading).await.map_err(|error| WorkerError::Unreachable(error_text(&error)))?;
    Ok(body.as_string().unwrap_or_default())
}

/// The body of `response` as bytes.
async fn bytes(response: &web_sys::Response) -> Result<Vec<u8>, WorkerError> {
    let reading = response.array_buffer().map_err(|error| WorkerError::Unreachable(error_text(&error)))?;
    let buffer = JsFuture::from(reading).await.map_err(|error| WorkerError::Unreachable(error_text(&error)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

impl SchedulerClient for HttpSchedulerClient {
    fn register(&self, request: RegisterRequest) -> Task<Result<RegisterResponse, WorkerError>> {
        let request = RegisterRequest {
            worker_key: request.worker_key.or_else(|| self.worker_key.clone()),
            contributor: request.contributor.or_else(|| self.contributor.clone()),
            ..request
        };
        self.post("/workers", None, &request, REQUEST_DEADLINE_MS)
    }

    fn lease(&self, token: &str, request: LeaseRequest) -> Task<Result<LeaseResponse, WorkerError>> {
        // A long poll answers within its wait; allow that plus the usual time.
        let deadline = REQUEST_DEADLINE_MS.saturating_add(request.wait_ms.min(u32::MAX as u64) as u32);
        self.post("/leases", Some(token), &request, deadline)
    }

    fn heartbeat(&self, token: &str, request: HeartbeatRequest) -> Task<Result<HeartbeatResponse, WorkerError>> {
        self.post("/leases/heartbeat", Some(token), &request, REQUEST_DEADLINE_MS)
    }

    fn submit(&self, token: &str, request: ResultsRequest) -> Task<Result<ResultsResponse, WorkerError>> {
        self.post("/results", Some(token), &request, REQUEST_DEADLINE_MS)
    }

    fn bundle(&self, sha256: &str, limits: &BundleLimits) -> Task<Result<Vec<u8>, WorkerError>> {
        let (url, limits) = (self.url(&format!("/bundles/{sha256}")), *limits);
        async move {
            let tar_gz = bytes(&get(&url, DOWNLOAD_DEADLINE_MS).await?).await?;
            crate::web::gzip::inflate(&tar_gz, &limits).await.map_err(WorkerError::Bundle)
        }
        .boxed_local()
    }
}
