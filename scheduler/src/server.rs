//! The HTTP face of the scheduler: protocol v1 under `/v1`, the Pyodide distribution under
//! `/pyodide/`, and the static site (contribute page, worker core) everywhere else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tessera_protocol::{
    bundle, BundleLimits, DeployRequest, DeployResponse, HeartbeatRequest, HeartbeatResponse, JobStatus, LeaseRequest,
    LeaseResponse, RegisterRequest, RegisterResponse, ResultStatus, ResultsPage, ResultsRequest, ResultsResponse,
    SliceHistory, WorkerLimits, Worktime,
};
use tokio::sync::Notify;
use tower_http::cors::CorsLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::error::{Error, Result};
use crate::packages::PackageIndex;
use crate::store::{read, LeasePolicy, Readers, Store, Writer};
use crate::syntax::{check_python, PythonFile};
use crate::validate::{parse_body, validate_deploy, DeployLimits};

/// Everything `tessera serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub database: PathBuf,
    /// The static site: contribute page and the built worker core under `pkg/`.
    pub www: PathBuf,
    /// The vendored Pyodide distribution, served under `/pyodide/`.
    pub pyodide: PathBuf,
    pub lease: LeasePolicy,
    /// Largest request body read (any endpoint); also the workers' `max_request_bytes`.
    pub max_body_bytes: usize,
    pub deploy: DeployLimits,
    pub bundle: BundleLimits,
    /// What workers may ask for in one request, sent to them at registration. Its
    /// `max_request_bytes` and `max_result_bytes` are taken from `max_body_bytes` and `lease`.
    pub worker_limits: WorkerLimits,
}

impl ServerConfig {
    /// The limits as enforced: `worker_limits` with the body and result limits filled in.
    pub fn limits(&self) -> WorkerLimits {
        WorkerLimits {
            max_request_bytes: self.max_body_bytes as u64,
            max_result_bytes: self.lease.max_result_bytes,
            ..self.worker_limits
        }
    }
}

/// Shared by every request handler.
#[derive(Clone)]
struct AppState {
    /// The group-commit writer: every state change goes through it.
    writer: Writer,
    /// Read-only connections for status, results, console and bundle downloads.
    readers: Readers,
    /// Worker tokens already authenticated, so a request costs no database read to authenticate.
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// Woken whenever slices become available (deploy, requeue).
    work_available: Arc<Notify>,
    packages: Arc<PackageIndex>,
    config: Arc<ServerConfig>,
    limits: WorkerLimits,
}

/// Milliseconds since the Unix epoch: the store's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl AppState {
    /// The worker a request's bearer token (or, for `sendBeacon` batches, the body's token) names.
    async fn worker_id(&self, headers: &HeaderMap, body_token: Option<String>) -> Result<String> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_string)
            .or(body_token)
            .ok_or_else(|| Error::WrongToken {
                field: "authorization".into(),
                message: "missing `Authorization: Bearer <worker token>`".into(),
            })?;
        if let Some(id) = self.tokens.lock().ok().and_then(|tokens| tokens.get(&token).cloned()) {
            return Ok(id);
        }
        let key = token.clone();
        let id = self.readers.run(move |connection| read::worker_by_token(connection, &key)).await?;
        self.remember_token(token, id.clone());
        Ok(id)
    }

    /// Caches a worker token, bounded: past [`MAX_CACHED_TOKENS`] the cache starts over and
    /// refills from the database, so anonymous volunteers coming and going cannot grow it forever.
    fn remember_token(&self, token: String, worker_id: String) {
        if let Ok(mut tokens) = self.tokens.lock() {
            if tokens.len() >= MAX_CACHED_TOKENS {
                tokens.clear();
            }
            tokens.insert(token, worker_id);
        }
    }
}

/// Worker tokens kept in memory at most.
const MAX_CACHED_TOKENS: usize = 100_000;

/// A JSON body within the size limit, with errors that name the field at fault.
struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(request: Request, state: &S) -> Result<Self> {
        let limit = request.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(request, state).await.map_err(|_| Error::TooLarge { limit })?;
        parse_body(&bytes).map(JsonBody)
    }
}

/// The configured body limit, made visible to extractors so their errors can state it.
#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// Builds the router; separate from `serve` so tests can drive it on their own listener.
///
/// Opening the store extends every active lease to at least now + ttl: work still running in
/// browsers while the scheduler was down is not made stale by the restart.
pub fn router(config: ServerConfig) -> Result<Router> {
    let mut store = Store::open(&config.database)?;
    let active = store.extend_active_leases(now_ms() + config.lease.ttl_ms)?;
    if active > 0 {
        tracing::info!(active, "extended the leases held before the restart by one ttl");
    }
    let limits = config.limits();
    let state = AppState {
        writer: Writer::spawn(store)?,
        readers: Readers::new(&config.database),
        tokens: Arc::new(Mutex::new(HashMap::new())),
        work_available: Arc::new(Notify::new()),
        packages: Arc::new(PackageIndex::load(&config.pyodide)),
        config: Arc::new(config.clone()),
        limits,
    };
    spawn_lease_reaper(state.clone());

    let api = Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"ok": true})) }))
        .route("/workers", post(register))
        .route("/leases", post(lease))
        .route("/leases/heartbeat", post(heartbeat))
        .route("/results", post(submit_results))
        .route("/jobs", post(deploy).get(list_jobs))
        .route("/jobs/{id}", get(job_status))
        .route("/jobs/{id}/results", get(job_results))
        .route("/jobs/{id}/console", get(job_console))
        .route("/jobs/{id}/slices/{slice}", get(slice_history))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/bundles", put(upload_bundle))
        .route("/bundles/{sha256}", get(download_bundle))
        .route("/packages", get(list_packages))
        .layer(axum::Extension(BodyLimit(config.max_body_bytes)))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state);

    let pyodide =
        Router::new().fallback_service(ServeDir::new(&config.pyodide)).layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ));
    // The site is cross-origin isolated (COOP + COEP), so its sandboxes can share an interrupt
    // buffer with Pyodide: a runaway slice is stopped with KeyboardInterrupt, not by killing it.
    let site = Router::new()
        .fallback_service(ServeDir::new(&config.www))
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-embedder-policy"),
            HeaderValue::from_static("require-corp"),
        ));

    Ok(Router::new()
        .nest(tessera_protocol::API_PREFIX, api)
        .nest("/pyodide", pyodide)
        .merge(site)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        ))
        .layer(CorsLayer::permissive())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_request(())
                .on_response(|response: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::debug!(status = response.status().as_u16(), ms = latency.as_millis() as u64, "served");
                }),
        ))
}

/// Binds `addr`, prints the actual address (so port 0 works for tests) and serves until stopped.
pub async fn serve(addr: SocketAddr, config: ServerConfig) -> Result<()> {
    let app = router(config)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(Error::io(format!("binding {addr}")))?;
    let local = listener.local_addr().map_err(Error::io("reading the bound address"))?;
    println!("tessera scheduler listening on http://{local}");
    tracing::info!(%local, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(Error::io("serving"))
}

/// Expires overdue leases once a second, waking lease requests when slices come back. It also
/// notices its own pauses (a stopped or suspended process) and extends active leases by the gap
/// before expiring anything: the workers could not reach a stopped scheduler either.
fn spawn_lease_reaper(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_tick: Option<u64> = None;
        loop {
            tick.tick().await;
            let policy = state.config.lease;
            let now = now_ms();
            match state.writer.run(move |store| store.reap(now, last_tick, policy)).await {
                Ok(reaped) => {
                    if reaped.extended > 0 {
                        tracing::warn!(
                            leases = reaped.extended,
                            gap_ms = now.saturating_sub(last_tick.unwrap_or(now)),
                            "the scheduler was paused; extended active leases by the pause"
                        );
                    }
                    if reaped.expired > 0 {
                        tracing::info!(count = reaped.expired, "leases expired; their slices are queued again");
                        state.work_available.notify_waiters();
                    }
                }
                Err(error) => tracing::error!(%error, "lease reaper failed"),
            }
            last_tick = Some(now);
        }
    });
}

async fn register(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>> {
    let user_agent = request.user_agent.clone();
    let sandboxes = request.sandboxes;
    let (worker_id, token) =
        state.writer.run(move |store| store.register_worker(user_agent.as_deref(), sandboxes, now_ms())).await?;
    state.remember_token(token.clone(), worker_id.clone());
    tracing::info!(worker = %worker_id, sandboxes, "worker registered");
    let ttl = state.config.lease.ttl_ms;
    Ok(Json(RegisterResponse { worker_id, token, lease_ttl_ms: ttl, heartbeat_ms: ttl / 3, limits: state.limits }))
}

async fn lease(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> Result<Json<LeaseResponse>> {
    let worker_id = state.worker_id(&headers, None).await?;
    let most = state.limits.max_lease_slices;
    if request.max_slices == 0 || request.max_slices > most {
        return Err(Error::invalid("max_slices", format!("ask for 1 to {most} slices (this scheduler's limit)")));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.min(state.limits.max_wait_ms));
    let request = Arc::new(request);
    loop {
        // Register interest before looking, so a deploy between the look and the wait is not missed.
        let notified = state.work_available.notified();
        let (worker, ask, policy) = (worker_id.clone(), request.clone(), state.config.lease);
        let answer = state
            .writer
            .run(move |store| {
                store.lease(&worker, ask.max_slices as usize, &ask.prefer_jobs, &ask.known_jobs, now_ms(), policy)
            })
            .await?;
        if !answer.leases.is_empty() || !answer.ended_jobs.is_empty() {
            tracing::debug!(worker = %worker_id, count = answer.leases.len(), "leased slices");
            return Ok(Json(answer));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(answer));
        }
    }
}

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>> {
    let worker_id = state.worker_id(&headers, None).await?;
    let most = state.limits.max_heartbeat_leases as usize;
    if request.leases.len() > most {
        return Err(Error::invalid(
            "leases",
            format!("{} leases is over this scheduler's limit of {most}", request.leases.len()),
        ));
    }
    let policy = state.config.lease;
    let answer = state.writer.run(move |store| store.heartbeat(&worker_id, &request.leases, now_ms(), policy)).await?;
    Ok(Json(answer))
}

async fn submit_results(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ResultsRequest>,
) -> Result<Json<ResultsResponse>> {
    let worker_id = state.worker_id(&headers, request.worker_token.clone()).await?;
    let most = state.limits.max_results_per_batch as usize;
    if request.results.len() > most {
        return Err(Error::invalid(
            "results",
            format!("{} results is over this scheduler's limit of {most} per batch", request.results.len()),
        ));
    }
    let policy = state.config.lease;
    let worker = worker_id.clone();
    let acks = state.writer.run(move |store| store.submit_results(&worker, &request.results, now_ms(), policy)).await?;
    if acks.iter().any(|ack| matches!(ack.status, ResultStatus::Requeued | ResultStatus::Released)) {
        state.work_available.notify_waiters();
    }
    tracing::debug!(worker = %worker_id, count = acks.len(), "results received");
    Ok(Json(ResultsResponse { acks }))
}

async fn deploy(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DeployRequest>,
) -> Result<Json<DeployResponse>> {
    let mut job = validate_deploy(request, &state.config.deploy)?;
    // Python sources: the program and the bundle's modules (their imports decide the packages).
    let mut python = vec![PythonFile { name: job.program_name.clone(), source: job.program.clone(), is_program: true }];
    if let Some(sha256) = job.bundle.clone() {
        let bytes =
            state.readers.run(move |connection| read::bundle(connection, &sha256)).await.map_err(
                |error| match error {
                    Error::NotFound { .. } => {
                        Error::invalid("bundle", "no bundle with this sha256 was uploaded (PUT /v1/bundles first)")
                    }
                    other => other,
                },
            )?;
        let entries = bundle::unpack(&bytes, &state.config.bundle)
            .map_err(|error| Error::invalid("bundle", error.to_string()))?;
        for entry in entries {
            if let tessera_protocol::BundleEntry::File { path, bytes } = entry {
                if path.ends_with(".py") {
                    python.push(PythonFile {
                        name: path,
                        source: String::from_utf8_lossy(&bytes).into_owned(),
                        is_program: false,
                    });
                }
            }
        }
    }
    if job.worktime == Worktime::Pyodide {
        let sources: Vec<&str> = python.iter().map(|file| file.source.as_str()).collect();
        job.packages = state.packages.resolve(&job.packages, &sources.join("\n"))?;
        let problem = tokio::task::spawn_blocking(move || check_python(&python))
            .await
            .map_err(|error| Error::Store(format!("syntax check task failed: {error}")))?;
        if let Some(problem) = problem {
            return Err(Error::invalid(problem.field, problem.message));
        }
    }
    let total = job.slices.len() as u64;
    let packages = job.packages.clone();
    let job_id = state.writer.run(move |store| store.deploy(job, now_ms())).await?;
    tracing::info!(job = %job_id, total, "job deployed");
    state.work_available.notify_waiters();
    Ok(Json(DeployResponse { job_id, total, packages }))
}

async fn list_jobs(State(state): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(state.readers.run(read::list_jobs).await?))
}

async fn job_status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobStatus>> {
    Ok(Json(state.readers.run(move |connection| read::job_status(connection, &id)).await?))
}

async fn slice_history(
    State(state): State<AppState>,
    Path((id, slice)): Path<(String, String)>,
) -> Result<Json<SliceHistory>> {
    let slice: u64 = slice.parse().map_err(|_| Error::invalid("slice", format!("`{slice}` is not a slice number")))?;
    Ok(Json(state.readers.run(move |connection| read::slice_history(connection, &id, slice)).await?))
}

#[derive(Deserialize)]
struct PageQuery {
    from: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
}

async fn job_results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<ResultsPage>> {
    let from = page.from.unwrap_or(0);
    let limit = page.limit.unwrap_or(1_000).clamp(1, 10_000);
    let (results, total) = state.readers.run(move |connection| read::results(connection, &id, from, limit)).await?;
    let next = results.last().map(|last| last.slice + 1).filter(|next| *next < total);
    Ok(Json(ResultsPage { results, next }))
}

async fn job_console(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<impl IntoResponse> {
    let after = page.after.unwrap_or(0);
    let limit = page.limit.unwrap_or(1_000).clamp(1, 10_000);
    let lines = state.readers.run(move |connection| read::console(connection, &id, after, limit)).await?;
    Ok(Json(serde_json::json!({ "lines": lines })))
}

async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobStatus>> {
    let status = state.writer.run(move |store| store.cancel(&id, now_ms())).await?;
    tracing::info!(job = %status.job_id, "job cancelled");
    Ok(Json(status))
}

async fn upload_bundle(State(state): State<AppState>, request: Request) -> Result<impl IntoResponse> {
    let limit = state.config.max_body_bytes;
    let bytes = Bytes::from_request(request, &()).await.map_err(|_| Error::TooLarge { limit })?;
    bundle::unpack(&bytes, &state.config.bundle).map_err(|error| Error::invalid("bundle", error.to_string()))?;
    let sha256 = bundle::content_address(&bytes);
    let key = sha256.clone();
    state.writer.run(move |store| store.put_bundle(&key, &bytes)).await?;
    tracing::info!(%sha256, "bundle stored");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "sha256": sha256 }))))
}

async fn download_bundle(State(state): State<AppState>, Path(sha256): Path<String>) -> Result<Response> {
    let bytes = state.readers.run(move |connection| read::bundle(connection, &sha256)).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/gzip")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        ],
        bytes,
    )
        .into_response())
}

async fn list_packages(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(state.packages.available())
}
