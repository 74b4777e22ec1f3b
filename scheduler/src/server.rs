//! The HTTP face of the scheduler: protocol v1 under `/v1`, the Pyodide distribution under
//! `/pyodide/`, and the static site (contribute page, worker core) everywhere else.

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
    LeaseResponse, RegisterRequest, RegisterResponse, ResultsPage, ResultsRequest, ResultsResponse, Worktime,
};
use tokio::sync::Notify;
use tower_http::cors::CorsLayer;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::error::{Error, Result};
use crate::packages::PackageIndex;
use crate::store::{LeasePolicy, Store};
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
    pub max_body_bytes: usize,
    pub deploy: DeployLimits,
    pub bundle: BundleLimits,
    /// Longest a lease request may wait for work.
    pub max_wait_ms: u64,
}

/// Shared by every request handler.
#[derive(Clone)]
struct AppState {
    store: Arc<Mutex<Store>>,
    /// Woken whenever slices become available (deploy, requeue).
    work_available: Arc<Notify>,
    packages: Arc<PackageIndex>,
    config: Arc<ServerConfig>,
}

/// Milliseconds since the Unix epoch: the store's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl AppState {
    /// Runs a store operation on the blocking pool, so SQLite's fsyncs never stall the reactor.
    async fn with_store<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().map_err(|_| Error::Usage("store lock poisoned".into()))?;
            operation(&mut guard)
        })
        .await
        .map_err(|error| Error::Usage(format!("store task failed: {error}")))?
    }

    async fn worker_id(&self, headers: &HeaderMap) -> Result<String> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_string)
            .ok_or_else(|| Error::WrongToken {
                field: "authorization".into(),
                message: "missing `Authorization: Bearer <worker token>`".into(),
            })?;
        self.with_store(move |store| store.authenticate_worker(&token, now_ms())).await
    }
}

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
pub fn router(config: ServerConfig) -> Result<Router> {
    let store = Store::open(&config.database)?;
    let packages = PackageIndex::load(&config.pyodide);
    let state = AppState {
        store: Arc::new(Mutex::new(store)),
        work_available: Arc::new(Notify::new()),
        packages: Arc::new(packages),
        config: Arc::new(config.clone()),
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
    let site = Router::new()
        .fallback_service(ServeDir::new(&config.www))
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));

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
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_request(())
                .on_response(|response: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(status = response.status().as_u16(), ms = latency.as_millis() as u64, "served");
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

/// Requeues expired leases once a second, waking lease requests when slices come back.
fn spawn_lease_reaper(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let policy = state.config.lease;
            match state.with_store(move |store| store.expire_leases(now_ms(), policy)).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!(count, "requeued slices of expired leases");
                    state.work_available.notify_waiters();
                }
                Err(error) => tracing::error!(%error, "lease reaper failed"),
            }
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
        state.with_store(move |store| store.register_worker(user_agent.as_deref(), sandboxes, now_ms())).await?;
    tracing::info!(worker = %worker_id, sandboxes, "worker registered");
    let ttl = state.config.lease.ttl_ms;
    Ok(Json(RegisterResponse { worker_id, token, lease_ttl_ms: ttl, heartbeat_ms: ttl / 3 }))
}

async fn lease(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> Result<Json<LeaseResponse>> {
    let worker_id = state.worker_id(&headers).await?;
    if request.max_slices == 0 || request.max_slices > 1_000 {
        return Err(Error::invalid("max_slices", "ask for 1 to 1000 slices"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.min(state.config.max_wait_ms));
    let request = Arc::new(request);
    loop {
        // Register interest before looking, so a deploy between the look and the wait is not missed.
        let notified = state.work_available.notified();
        let (worker, ask, policy) = (worker_id.clone(), request.clone(), state.config.lease);
        let (leases, jobs) = state
            .with_store(move |store| {
                store.lease(&worker, ask.max_slices as usize, &ask.prefer_jobs, &ask.known_jobs, now_ms(), policy)
            })
            .await?;
        if !leases.is_empty() {
            tracing::info!(worker = %worker_id, count = leases.len(), "leased slices");
            return Ok(Json(LeaseResponse { leases, jobs }));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(LeaseResponse::default()));
        }
    }
}

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>> {
    let worker_id = state.worker_id(&headers).await?;
    let policy = state.config.lease;
    let (extended, lost) =
        state.with_store(move |store| store.heartbeat(&worker_id, &request.leases, now_ms(), policy)).await?;
    Ok(Json(HeartbeatResponse { extended, lost, ttl_ms: policy.ttl_ms }))
}

async fn submit_results(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ResultsRequest>,
) -> Result<Json<ResultsResponse>> {
    let worker_id = state.worker_id(&headers).await?;
    let policy = state.config.lease;
    let worker = worker_id.clone();
    let acks = state.with_store(move |store| store.submit_results(&worker, &request.results, policy)).await?;
    if acks.iter().any(|ack| ack.status == tessera_protocol::ResultStatus::Requeued) {
        state.work_available.notify_waiters();
    }
    tracing::info!(worker = %worker_id, count = acks.len(), "results received");
    Ok(Json(ResultsResponse { acks }))
}

async fn deploy(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DeployRequest>,
) -> Result<Json<DeployResponse>> {
    let mut job = validate_deploy(request, &state.config.deploy)?;
    // Python sources whose imports decide the packages: the program and the bundle's modules.
    let mut sources = job.program.clone();
    if let Some(sha256) = job.bundle.clone() {
        let bytes = state.with_store(move |store| store.bundle(&sha256)).await.map_err(|error| match error {
            Error::NotFound { .. } => {
                Error::invalid("bundle", "no bundle with this sha256 was uploaded (PUT /v1/bundles first)")
            }
            other => other,
        })?;
        let entries = bundle::unpack(&bytes, &state.config.bundle)
            .map_err(|error| Error::invalid("bundle", error.to_string()))?;
        for entry in entries {
            if let tessera_protocol::BundleEntry::File { path, bytes } = entry {
                if path.ends_with(".py") {
                    sources.push('\n');
                    sources.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
    }
    if job.worktime == Worktime::Pyodide {
        job.packages = state.packages.resolve(&job.packages, &sources)?;
    }
    let total = job.slices.len() as u64;
    let packages = job.packages.clone();
    let job_id = state.with_store(move |store| store.deploy(job, now_ms())).await?;
    tracing::info!(job = %job_id, total, "job deployed");
    state.work_available.notify_waiters();
    Ok(Json(DeployResponse { job_id, total, packages }))
}

async fn list_jobs(State(state): State<AppState>) -> Result<impl IntoResponse> {
    Ok(Json(state.with_store(|store| store.list_jobs()).await?))
}

async fn job_status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobStatus>> {
    Ok(Json(state.with_store(move |store| store.job_status(&id)).await?))
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
    let (results, total) = state.with_store(move |store| store.results(&id, from, limit)).await?;
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
    let lines = state.with_store(move |store| store.console(&id, after, limit)).await?;
    Ok(Json(serde_json::json!({ "lines": lines })))
}

async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobStatus>> {
    let status = state.with_store(move |store| store.cancel(&id)).await?;
    tracing::info!(job = %status.job_id, "job cancelled");
    Ok(Json(status))
}

async fn upload_bundle(State(state): State<AppState>, request: Request) -> Result<impl IntoResponse> {
    let limit = state.config.max_body_bytes;
    let bytes = Bytes::from_request(request, &()).await.map_err(|_| Error::TooLarge { limit })?;
    bundle::unpack(&bytes, &state.config.bundle).map_err(|error| Error::invalid("bundle", error.to_string()))?;
    let sha256 = bundle::content_address(&bytes);
    let key = sha256.clone();
    state.with_store(move |store| store.put_bundle(&key, &bytes)).await?;
    tracing::info!(%sha256, "bundle stored");
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "sha256": sha256 }))))
}

async fn download_bundle(State(state): State<AppState>, Path(sha256): Path<String>) -> Result<Response> {
    let bytes = state.with_store(move |store| store.bundle(&sha256)).await?;
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
