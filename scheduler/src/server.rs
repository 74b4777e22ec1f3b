//! The HTTP face of the scheduler: protocol v1 under `/v1`, the Pyodide distribution under
//! `/pyodide/`, and the static site (contribute page, worker core) everywhere else.
//!
//! Two kinds of caller, two sets of rules (docs/SECURITY.md, "Deployer ↔ scheduler"):
//! - **workers** (anonymous volunteers' pages on any origin): the worker endpoints, the static
//!   site, `/pyodide/` and `/sandbox.html` are cross-origin (permissive CORS); registration is open
//!   unless `--worker-key` makes the pool private. A contributor's credits
//!   (`GET /v1/workers/{contributor}`) are open too: the random id is the handle.
//! - **deployers**: every job endpoint, bundle uploads and `/v1/keys` need an API key
//!   (`Authorization: Bearer tsk_…`); a job is visible only to the key that deployed it and to
//!   admin keys. These endpoints send no CORS headers (unless `--deployer-origin` lists origins)
//!   and refuse a body that is not `application/json` (`application/gzip` for a bundle), so no
//!   cross-origin form or plain-text POST reaches them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tessera_protocol::{
    bundle, AddSlicesRequest, AddSlicesResponse, ApiError, ApiKeyInfo, BundleLimits, ConsoleLine, ContributorTotals,
    CreateKeyRequest, CreatedKey, DeployRequest, DeployResponse, HeartbeatRequest, HeartbeatResponse, JobDeleted,
    JobStatus, JobSummary, LeaseRequest, LeaseResponse, RegisterRequest, RegisterResponse, ResultStatus, ResultsPage,
    ResultsRequest, ResultsResponse, SliceHistory, WorkerLimits, Worktime,
};
use tokio::sync::{watch, Notify, Semaphore};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::error::{Error, Result};
use crate::packages::PackageIndex;
use crate::sandbox_host::SandboxHostPage;
use crate::site::EmbeddedSite;
use crate::store::events::{EventBody, JobEvent};
use crate::store::{
    check_contributor, read, same, Deployer, LeasePolicy, Readers, RegisteredWorker, Store, Writer, SWEEP_BATCH,
};
use crate::syntax::{check_python, PythonFile};
use crate::validate::{parse_body, parse_deploy, validate_deploy, DeployLimits};

/// Everything `tessera serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub database: PathBuf,
    /// A folder to serve the static site from instead of the copy embedded in the binary
    /// (contribute page, worker core under `pkg/`): for working on the page without rebuilding.
    pub www: Option<PathBuf>,
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
    /// A private pool's shared secret: registration needs it (`worker_key` in the body). `None`
    /// leaves registration open, for anonymous volunteers.
    pub worker_key: Option<String>,
    /// Origins whose pages may call the deployer endpoints (CORS, with the key still required);
    /// `*` is any origin. Empty: deployer endpoints send no CORS headers at all.
    pub deployer_origins: Vec<String>,
    /// How long a finished job (complete, complete with errors, failed, cancelled) is kept
    /// before the retention sweep deletes it and everything stored for it. `None` keeps jobs
    /// forever: deleting deployers' results cannot be undone, so the operator opts in.
    pub retention: Option<Duration>,
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
    /// API keys already verified; a revocation empties it of that key before it answers.
    keys: Arc<Mutex<KeyCache>>,
    /// Woken whenever slices become available (deploy, requeue).
    work_available: Arc<Notify>,
    /// Bumped after every committed change that may have added job events or moved progress
    /// (results, heartbeats, cancels, expiries): event streams that caught up wait on it.
    job_events: Arc<watch::Sender<u64>>,
    /// Event streams open at once, at most [`MAX_EVENT_STREAMS`].
    event_streams: Arc<Semaphore>,
    packages: Arc<PackageIndex>,
    config: Arc<ServerConfig>,
    limits: WorkerLimits,
}

/// Milliseconds since the Unix epoch: the store's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The credential of `Authorization: Bearer <credential>`, if the request has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim()).filter(|credential| !credential.is_empty())
}

/// Verified API keys by key. `generation` counts revocations: a key read from the database before
/// a revocation is not cached after it, so a revoked key cannot come back through a slow read.
#[derive(Default)]
struct KeyCache {
    deployers: HashMap<String, Deployer>,
    generation: u64,
}

/// API keys kept in memory at most; past it the cache starts over.
const MAX_CACHED_KEYS: usize = 1_000;

/// What a deployer request without a key is told.
const MISSING_KEY: &str = "missing `Authorization: Bearer <API key>`: deployer endpoints need an API key \
     (`tessera serve` printed the first one as TESSERA_API_KEY=… when it made the database; \
     `tessera keys create` makes more)";

impl AppState {
    /// Runs `query` on a reader connection for job `id`, once `caller` may see it (its owner or
    /// an admin; anyone else gets the same `not_found` as for a job that does not exist).
    async fn read_own_job<T: Send + 'static>(
        &self,
        caller: &Deployer,
        id: String,
        query: impl FnOnce(&rusqlite::Connection, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let scope = caller.scope();
        self.readers
            .run(move |connection| {
                read::job_access(connection, &id, &scope)?;
                query(connection, &id)
            })
            .await
    }

    /// The deployer a request's API key belongs to, or `Unauthorized`.
    async fn deployer(&self, headers: &HeaderMap) -> Result<Deployer> {
        let key = bearer(headers).ok_or_else(|| Error::Unauthorized(MISSING_KEY.into()))?.to_string();
        let generation = match self.keys.lock() {
            Ok(cache) => match cache.deployers.get(&key) {
                Some(deployer) => return Ok(deployer.clone()),
                None => cache.generation,
            },
            Err(_) => u64::MAX,
        };
        let lookup = key.clone();
        let deployer = self.readers.run(move |connection| read::deployer_by_key(connection, &lookup)).await?;
        if let Ok(mut cache) = self.keys.lock() {
            if cache.generation == generation {
                if cache.deployers.len() >= MAX_CACHED_KEYS {
                    cache.deployers.clear();
                }
                cache.deployers.insert(key, deployer.clone());
            }
        }
        Ok(deployer)
    }

    /// Wakes the event streams waiting for news: called once a change is committed.
    fn job_events_changed(&self) {
        self.job_events.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Drops a revoked key from the cache (called once the revocation is committed).
    fn forget_key(&self, key_id: &str) {
        if let Ok(mut cache) = self.keys.lock() {
            cache.generation += 1;
            cache.deployers.retain(|_, deployer| deployer.key_id != key_id);
        }
    }

    /// The worker a request's bearer token (or, for `sendBeacon` batches, the body's token) names.
    async fn worker_id(&self, headers: &HeaderMap, body_token: Option<String>) -> Result<String> {
        let token = bearer(headers).map(str::to_string).or(body_token).ok_or_else(|| Error::WrongToken {
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

/// The verified caller of a deployer endpoint: any valid API key.
struct Caller(Deployer);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        state.deployer(&parts.headers).await.map(Caller)
    }
}

/// The verified caller of an admin endpoint (`/v1/keys`): an admin key.
struct Admin(Deployer);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let deployer = state.deployer(&parts.headers).await?;
        if !deployer.admin {
            return Err(Error::Forbidden(format!(
                "managing keys needs an admin key; `{}` ({}) is not one",
                deployer.key_id, deployer.name
            )));
        }
        Ok(Admin(deployer))
    }
}

/// Refuses a request whose `Content-Type` is not `expected` (parameters such as `charset` aside).
fn require_content_type(headers: &HeaderMap, expected: &'static str) -> Result<()> {
    let got = headers.get(header::CONTENT_TYPE).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let essence = got.as_deref().and_then(|value| value.split(';').next()).map(str::trim);
    match essence {
        Some(essence) if essence.eq_ignore_ascii_case(expected) => Ok(()),
        _ => Err(Error::UnsupportedMediaType { expected, got }),
    }
}

/// Deployer POSTs take JSON only: a cross-origin form or `text/plain` POST, which a browser
/// sends without asking first, is refused before anything else is looked at.
async fn json_only(request: Request, next: Next) -> Response {
    match require_content_type(request.headers(), "application/json") {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// A bundle upload is `application/gzip`, which no cross-origin form can send either.
async fn gzip_only(request: Request, next: Next) -> Response {
    match require_content_type(request.headers(), "application/gzip") {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// CORS for what every origin may use (the worker API, the site, the sandbox host): any origin
/// and method, answered with `*`, and the two headers a worker sends, named (`*` in
/// `Access-Control-Allow-Headers` never covers `Authorization`, by the Fetch standard). No `Vary`
/// (the answer is the same for every request) and no exposed headers (no page reads them): they
/// would add ≈ 110 bytes to every answer a volunteer's worker gets.
fn open_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(tower_http::cors::Any)
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .vary(Vec::<header::HeaderName>::new())
}

/// CORS for the deployer endpoints: none unless the operator listed origins.
fn deployer_cors(origins: &[String]) -> Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let parsed = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin.trim_end_matches('/'))
                    .map_err(|_| Error::Config(format!("--deployer-origin `{origin}` is not a usable origin")))
            })
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(parsed)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    ))
}

/// A JSON body within the size limit, with errors that name the field at fault.
struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(request: Request, _state: &S) -> Result<Self> {
        let bytes = read_body(request).await?;
        parse_body(&bytes).map(JsonBody)
    }
}

/// The route's body limit, made visible to extractors so their errors can state it.
#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// Reads a request body within its route's [`BodyLimit`]. A `Content-Length` over the limit is
/// refused before a byte of the body is read, so a body claiming a gigabyte costs nothing; a body
/// without one is cut off as soon as it passes the limit.
async fn read_body(request: Request) -> Result<Bytes> {
    let limit = request.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(usize::MAX);
    let claimed = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if claimed.is_some_and(|claimed| claimed > limit as u64) {
        return Err(Error::TooLarge { limit });
    }
    Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::TooLarge { limit }
        } else {
            Error::invalid("body", rejection.body_text())
        }
    })
}

/// Largest `POST /v1/workers` body: a registration is a few fields.
pub const REGISTER_BODY_BYTES: usize = 64 * 1024;
/// Largest `POST /v1/leases` body (its job lists are short).
pub const LEASE_BODY_BYTES: usize = 1024 * 1024;
/// Room per lease in a heartbeat body (id, token, progress and JSON punctuation, generously).
const HEARTBEAT_BYTES_PER_LEASE: usize = 256;
/// Largest body of the routes that take none (GETs, cancel).
const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Requests served at once, outside long-polls and uploads; more wait up to [`QUEUE_WAIT`].
pub const MAX_CONCURRENT_REQUESTS: usize = 256;
/// Deploys and bundle uploads served at once: each may hold a body of `--max-body-bytes` and its
/// parsed form, so this bounds their memory.
pub const MAX_CONCURRENT_UPLOADS: usize = 4;
/// Lease long-polls waiting at once: they are many and cheap (a task and a wake-up), so they
/// have their own, larger pool and cannot starve the other routes.
pub const MAX_LONG_POLLS: usize = 20_000;
/// Longest a request waits for a slot in its pool before it is answered 503 `busy`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Longest any request except uploads and long-polls may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a deploy, bundle upload or result batch may take, body included (large bodies on slow links).
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// A long-poll may take its capped wait plus this.
pub const LONG_POLL_GRACE: Duration = Duration::from_secs(30);

/// A pool of request slots with a time limit: the global concurrency limit and request timeout
/// of the routes it guards. Separate pools keep long-polls from exhausting the others.
#[derive(Clone)]
struct Gate {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl Gate {
    fn new(slots: usize, timeout: Duration) -> Self {
        Gate { slots: Arc::new(Semaphore::new(slots)), timeout }
    }

    /// `route` behind this gate, reading bodies of at most `body_limit` bytes.
    fn guard(&self, route: MethodRouter<AppState>, body_limit: usize) -> MethodRouter<AppState> {
        route
            .layer::<_, Infallible>(axum::middleware::from_fn_with_state(self.clone(), pass_gate))
            .layer::<_, Infallible>(DefaultBodyLimit::max(body_limit))
            .layer(axum::Extension(BodyLimit(body_limit)))
    }
}

/// Takes a slot (or answers 503 after [`QUEUE_WAIT`]) and runs the request within the gate's
/// time limit (or answers 408); the slot is freed when the response head is ready.
async fn pass_gate(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let slot = match tokio::time::timeout(QUEUE_WAIT, gate.slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(_)) | Err(_) => return Error::Busy.into_response(),
    };
    let response = match tokio::time::timeout(gate.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::Timeout { ms: gate.timeout.as_millis() as u64 }.into_response(),
    };
    drop(slot);
    response
}

/// Runs CPU-heavy work (body parsing, bundle unpacking) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|error| Error::Task(error.to_string()))?
}

/// Builds the router; separate from `serve` so tests can drive it on their own listener.
///
/// Opening the store extends every active lease to at least now + ttl: work still running in
/// browsers while the scheduler was down is not made stale by the restart.
pub fn router(config: ServerConfig) -> Result<Router> {
    app(config).map(|(router, _)| router)
}

/// The router and a handle on its housekeeping, so a test can run a retention pass at a time of
/// its choosing instead of waiting for the periodic one.
pub fn app(config: ServerConfig) -> Result<(Router, Housekeeping)> {
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
        keys: Arc::new(Mutex::new(KeyCache::default())),
        work_available: Arc::new(Notify::new()),
        job_events: Arc::new(watch::channel(0).0),
        event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        packages: Arc::new(PackageIndex::load(&config.pyodide)),
        config: Arc::new(config.clone()),
        limits,
    };
    spawn_lease_reaper(state.clone());
    let housekeeping = Housekeeping { writer: state.writer.clone(), readers: state.readers.clone() };
    if let Some(retention) = config.retention {
        spawn_retention_sweep(housekeeping.clone(), retention);
    }

    // Hostile input costs little: every route has its own body limit, time limit and pool of
    // slots (docs/SECURITY.md, "Hostile input").
    let general = Gate::new(MAX_CONCURRENT_REQUESTS, REQUEST_TIMEOUT);
    let uploads = Gate::new(MAX_CONCURRENT_UPLOADS, UPLOAD_TIMEOUT);
    let results = Gate::new(MAX_CONCURRENT_REQUESTS, UPLOAD_TIMEOUT);
    let polls = Gate::new(MAX_LONG_POLLS, Duration::from_millis(limits.max_wait_ms) + LONG_POLL_GRACE);
    let max_body = config.max_body_bytes;
    let heartbeat_body = (limits.max_heartbeat_leases as usize)
        .saturating_mul(HEARTBEAT_BYTES_PER_LEASE)
        .max(LEASE_BODY_BYTES)
        .min(max_body);
    // Workers are anonymous pages on any origin: open, cross-origin. A bundle is fetched by its
    // sha256 (which a job descriptor names), so downloading one needs no key either.
    let worker_api = Router::new()
        .route("/health", general.guard(get(health), SMALL_BODY_BYTES))
        .route("/workers", general.guard(post(register), REGISTER_BODY_BYTES.min(max_body)))
        .route("/workers/{contributor}", general.guard(get(contributor_totals), SMALL_BODY_BYTES))
        .route("/leases", polls.guard(post(lease), LEASE_BODY_BYTES.min(max_body)))
        .route("/leases/heartbeat", general.guard(post(heartbeat), heartbeat_body))
        .route("/results", results.guard(post(submit_results), max_body))
        .route("/bundles/{sha256}", general.guard(get(download_bundle), SMALL_BODY_BYTES))
        .route("/packages", general.guard(get(list_packages), SMALL_BODY_BYTES))
        .route("/openapi.json", general.guard(get(openapi_json), SMALL_BODY_BYTES))
        .layer(open_cors());
    // Deployers: an API key on every request, JSON bodies only, same-origin.
    let json = || axum::middleware::from_fn(json_only);
    let deployer_api = Router::new()
        .route(
            "/jobs",
            uploads
                .guard(post(deploy).route_layer(json()), max_body)
                .merge(general.guard(get(list_jobs), SMALL_BODY_BYTES)),
        )
        .route("/jobs/{id}", general.guard(get(job_status).delete(delete_job), SMALL_BODY_BYTES))
        .route("/jobs/{id}/results", general.guard(get(job_results), SMALL_BODY_BYTES))
        .route("/jobs/{id}/console", general.guard(get(job_console), SMALL_BODY_BYTES))
        .route("/jobs/{id}/events", general.guard(get(job_events), SMALL_BODY_BYTES))
        .route(
            "/jobs/{id}/slices",
            uploads.guard(post(add_slices).route_layer(json()), max_body.min(MAX_SLICES_PAGE_BYTES)),
        )
        .route("/jobs/{id}/close", general.guard(post(close_job).route_layer(json()), SMALL_BODY_BYTES))
        .route("/jobs/{id}/slices/{slice}", general.guard(get(slice_history), SMALL_BODY_BYTES))
        .route("/jobs/{id}/cancel", general.guard(post(cancel_job).route_layer(json()), SMALL_BODY_BYTES))
        .route(
            "/bundles",
            uploads.guard(put(upload_bundle).route_layer(axum::middleware::from_fn(gzip_only)), max_body),
        )
        .route(
            "/keys",
            general
                .guard(post(create_key).route_layer(json()), SMALL_BODY_BYTES)
                .merge(general.guard(get(list_keys), SMALL_BODY_BYTES)),
        )
        .route("/keys/{id}/revoke", general.guard(post(revoke_key).route_layer(json()), SMALL_BODY_BYTES))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ));
    let deployer_api = match deployer_cors(&config.deployer_origins)? {
        Some(cors) => deployer_api.layer(cors),
        None => deployer_api,
    };
    let api = worker_api.merge(deployer_api).with_state(state);

    let pyodide =
        Router::new().fallback_service(ServeDir::new(&config.pyodide)).layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ));
    // The site is cross-origin isolated (COOP + COEP), so its sandboxes can share an interrupt
    // buffer with Pyodide: a runaway slice is stopped with KeyboardInterrupt, not by killing it.
    // Compressed when the browser accepts it (brotli or gzip): the page and the worker core are
    // what a JavaScript job's volunteer downloads. The Pyodide files are not: megabytes compressed
    // again on every first visit would cost the scheduler more than they save on a fast link.
    let site = match &config.www {
        Some(folder) => Router::new().fallback_service(ServeDir::new(folder)),
        None => {
            let embedded = Arc::new(EmbeddedSite::new());
            Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| async move {
                embedded.response(&method, uri.path(), &headers)
            })
        }
    };
    let site = site
        .layer(CompressionLayer::new())
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-embedder-policy"),
            HeaderValue::from_static("require-corp"),
        ));

    // The sandbox host: its own policy, embeddable from any origin (docs/SECURITY.md).
    let sandbox_host = SandboxHostPage::new()?;
    let static_files = Router::new()
        // Brotli'd at build time; the layer gzips the page for a browser that takes no `br`.
        .route(
            "/sandbox.html",
            get(move |headers: HeaderMap| async move { sandbox_host.response(&headers) })
                .layer(CompressionLayer::new()),
        )
        .nest("/pyodide", pyodide)
        .merge(site)
        .layer(axum::middleware::from_fn_with_state(general, pass_gate))
        .layer(open_cors());
    let router = Router::new()
        .nest(tessera_protocol::API_PREFIX, api)
        .merge(static_files)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_request(())
                .on_response(|response: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::debug!(status = response.status().as_u16(), ms = latency.as_millis() as u64, "served");
                }),
        );
    Ok((router, housekeeping))
}

/// The admin key `serve` made for a new database: shown once, by its caller.
#[derive(Clone, Debug)]
pub struct FirstAdminKey {
    /// The whole key (`tsk_…`); the database keeps only a hash of its secret.
    pub key: String,
    /// The URL the scheduler listens on.
    pub url: String,
    /// Whether it listens on a loopback address (only then may the key be saved for the CLI).
    pub loopback: bool,
}

/// Binds `addr`, prints the actual address (so port 0 works for tests) and serves until stopped.
///
/// On a database without any key (a new one) it first makes the admin key `admin` and hands it to
/// `on_first_key` — before the listening line, so whoever waits for that line finds the key
/// already announced.
pub async fn serve(addr: SocketAddr, config: ServerConfig, on_first_key: impl FnOnce(&FirstAdminKey)) -> Result<()> {
    let first_key = Store::open(&config.database)?.create_first_admin_key(now_ms())?;
    let app = router(config)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(Error::io(format!("binding {addr}")))?;
    let local = listener.local_addr().map_err(Error::io("reading the bound address"))?;
    let url = format!("http://{local}");
    if let Some(created) = first_key {
        on_first_key(&FirstAdminKey { key: created.key, url: url.clone(), loopback: local.ip().is_loopback() });
    }
    println!("tessera scheduler listening on {url}");
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
                        state.job_events_changed();
                    }
                }
                Err(error) => tracing::error!(%error, "lease reaper failed"),
            }
            last_tick = Some(now);
        }
    });
}

/// How often the retention sweep looks for expired jobs: a job is deleted at most this long
/// after its retention period ran out.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The scheduler's housekeeping: the retention sweep, run periodically by the server and on
/// demand by tests (with a clock of their choosing).
#[derive(Clone)]
pub struct Housekeeping {
    writer: Writer,
    readers: Readers,
}

impl Housekeeping {
    /// Deletes every job that reached its final state at or before `now - retention`, one job
    /// per unit of work through the group-commit writer: requests queued meanwhile are committed
    /// between two jobs, so a long pass never holds the writer for more than one job. Returns
    /// what was deleted.
    pub async fn sweep(&self, now: u64, retention: Duration) -> Result<Vec<JobDeleted>> {
        let cutoff = now.saturating_sub(retention.as_millis() as u64);
        let mut deleted = Vec::new();
        loop {
            let batch = self.readers.run(move |connection| read::expired_jobs(connection, cutoff, SWEEP_BATCH)).await?;
            if batch.is_empty() {
                return Ok(deleted);
            }
            let mut progressed = false;
            for job_id in batch {
                let gone = self.writer.run(move |store| store.delete_expired_job(&job_id, cutoff, now)).await?;
                if let Some(gone) = gone {
                    tracing::info!(job = %gone.job_id, slices = gone.slices, bundle = gone.bundle_deleted,
                        "retention: deleted a finished job");
                    deleted.push(gone);
                    progressed = true;
                }
            }
            if !progressed {
                // The readers saw jobs the writer no longer finds expired (deleted meanwhile, or a
                // reader behind the writer): the next pass looks again.
                return Ok(deleted);
            }
        }
    }
}

/// Runs the retention sweep every [`SWEEP_INTERVAL`] (the first pass at start-up).
fn spawn_retention_sweep(housekeeping: Housekeeping, retention: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(error) = housekeeping.sweep(now_ms(), retention).await {
                tracing::error!(%error, "retention sweep failed; it runs again in a minute");
            }
        }
    });
}

#[utoipa::path(
    post, path = "/v1/workers", tag = "workers",
    request_body = RegisterRequest,
    responses((status = 200, description = "registered: the worker's id, token, contributor and the limits", body = RegisterResponse),
        (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 403, description = "a private pool's missing or wrong `worker_key`", body = ApiError))
)]
async fn register(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>> {
    if let Some(expected) = &state.config.worker_key {
        let refused = |message: &str| Error::WrongToken { field: "worker_key".into(), message: message.into() };
        match request.worker_key.as_deref() {
            Some(given) if same(given, expected) => {}
            Some(_) => return Err(refused("wrong worker key for this private pool")),
            None => {
                return Err(refused(
                    "this scheduler is a private pool: registering needs its worker key (`worker_key` in the body)",
                ))
            }
        }
    }
    let RegisterRequest { user_agent, sandboxes, contributor, .. } = request;
    let registered = state
        .writer
        .run(move |store| store.register_worker(user_agent.as_deref(), sandboxes, contributor.as_deref(), now_ms()))
        .await?;
    let RegisteredWorker { worker_id, token, contributor } = registered;
    state.remember_token(token.clone(), worker_id.clone());
    tracing::info!(worker = %worker_id, sandboxes, "worker registered");
    let ttl = state.config.lease.ttl_ms;
    Ok(Json(RegisterResponse {
        worker_id,
        contributor,
        token,
        lease_ttl_ms: ttl,
        heartbeat_ms: ttl / 3,
        limits: state.limits,
    }))
}

/// A contributor's credits. Open and cross-origin like the other worker endpoints: the id is the
/// handle (a random id only its browser knows), so a page on any site can show its volunteer's
/// totals. An id of the wrong shape is `invalid_field`; an unknown one `not_found`.
#[utoipa::path(
    get, path = "/v1/workers/{contributor}", tag = "workers",
    params(("contributor" = String, Path, description = "the contributor id (16 to 64 of `A-Z a-z 0-9 _ -`)")),
    responses((status = 200, description = "the contributor's credits", body = ContributorTotals), (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError),
        (status = 404, description = "unknown contributor", body = ApiError))
)]
async fn contributor_totals(
    State(state): State<AppState>,
    Path(contributor): Path<String>,
) -> Result<Json<ContributorTotals>> {
    check_contributor(&contributor)?;
    Ok(Json(state.readers.run(move |connection| read::contributor_totals(connection, &contributor)).await?))
}

#[utoipa::path(
    post, path = "/v1/leases", tag = "workers", security(("worker_token" = [])),
    request_body = LeaseRequest,
    responses((status = 200, description = "leases (possibly none after the wait), new job descriptors and ended jobs", body = LeaseResponse),
        (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 403, description = "missing or unknown worker token", body = ApiError))
)]
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

#[utoipa::path(
    post, path = "/v1/leases/heartbeat", tag = "workers", security(("worker_token" = [])),
    request_body = HeartbeatRequest,
    responses((status = 200, description = "leases extended and lost", body = HeartbeatResponse), (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 403, description = "missing or unknown worker token", body = ApiError))
)]
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
    // Progress may have moved.
    state.job_events_changed();
    Ok(Json(answer))
}

#[utoipa::path(
    post, path = "/v1/results", tag = "workers", security(("worker_token" = [])),
    request_body = ResultsRequest,
    responses((status = 200, description = "one ack per item, in order", body = ResultsResponse), (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 403, description = "missing or unknown worker token", body = ApiError))
)]
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
    state.job_events_changed();
    if acks.iter().any(|ack| matches!(ack.status, ResultStatus::Requeued | ResultStatus::Released)) {
        state.work_available.notify_waiters();
    }
    tracing::debug!(worker = %worker_id, count = acks.len(), "results received");
    Ok(Json(ResultsResponse { acks }))
}

#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    request_body = DeployRequest,
    responses((status = 200, description = "deployed", body = DeployResponse), (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 401, description = "no valid API key", body = ApiError), (status = 413, description = "the body is over `--max-body-bytes`", body = ApiError), (status = 415, description = "the body is not `application/json`", body = ApiError))
)]
async fn deploy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request: Request,
) -> Result<Json<DeployResponse>> {
    let body = read_body(request).await?;
    let limits = state.config.deploy;
    let mut job = blocking(move || {
        let request: DeployRequest = parse_deploy(&body, &limits)?;
        validate_deploy(request, &limits)
    })
    .await?;
    job.owner = Some(caller.key_id.clone());
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
        let limits = state.config.bundle;
        let entries = blocking(move || {
            bundle::unpack(&bytes, &limits).map_err(|error| Error::invalid("bundle", error.to_string()))
        })
        .await?;
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
        let problem = blocking(move || Ok(check_python(&python))).await?;
        if let Some(problem) = problem {
            return Err(Error::invalid(problem.field, problem.message));
        }
    }
    let total = job.slices.len() as u64;
    let packages = job.packages.clone();
    let job_id = state.writer.run(move |store| store.deploy(job, now_ms())).await?;
    tracing::info!(job = %job_id, total, key = %caller.key_id, "job deployed");
    state.work_available.notify_waiters();
    Ok(Json(DeployResponse { job_id, total, packages }))
}

#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", security(("api_key" = [])),
    responses((status = 200, description = "the caller's jobs (every job for an admin key), newest first", body = Vec<JobSummary>), (status = 401, description = "no valid API key", body = ApiError))
)]
async fn list_jobs(State(state): State<AppState>, Caller(caller): Caller) -> Result<Json<Vec<JobSummary>>> {
    let scope = caller.scope();
    Ok(Json(state.readers.run(move |connection| read::list_jobs(connection, &scope)).await?))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])), params(("id" = String, Path, description = "the job id (`j…`)")),
    responses((status = 200, description = "the job's state, counts, limits and running slices", body = JobStatus), (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError))
)]
async fn job_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>> {
    Ok(Json(state.read_own_job(&caller, id, read::job_status).await?))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/slices/{slice}", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "the job id"), ("slice" = u64, Path, description = "the slice number")),
    responses((status = 200, description = "the slice's status and every attempt, oldest first", body = SliceHistory), (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 401, description = "no valid API key", body = ApiError),
        (status = 404, description = "no such job or slice", body = ApiError))
)]
async fn slice_history(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, slice)): Path<(String, String)>,
) -> Result<Json<SliceHistory>> {
    let slice: u64 = slice.parse().map_err(|_| Error::invalid("slice", format!("`{slice}` is not a slice number")))?;
    Ok(Json(state.read_own_job(&caller, id, move |connection, id| read::slice_history(connection, id, slice)).await?))
}

#[derive(Deserialize)]
struct PageQuery {
    from: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/results", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "the job id"),
        ("from" = Option<u64>, Query, description = "first slice of the page (default 0)"),
        ("limit" = Option<u64>, Query, description = "slices in the page, 1 to 10,000 (default 1,000)")),
    responses((status = 200, description = "results in slice order; `next` starts the following page", body = ResultsPage), (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError))
)]
async fn job_results(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<ResultsPage>> {
    let from = page.from.unwrap_or(0);
    let limit = page.limit.unwrap_or(1_000).clamp(1, 10_000);
    let (results, total) =
        state.read_own_job(&caller, id, move |connection, id| read::results(connection, id, from, limit)).await?;
    let next = results.last().map(|last| last.slice + 1).filter(|next| *next < total);
    Ok(Json(ResultsPage { results, next }))
}

#[utoipa::path(
    get, path = "/v1/jobs/{id}/console", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "the job id"),
        ("after" = Option<u64>, Query, description = "the last `seq` already read (default 0)"),
        ("limit" = Option<u64>, Query, description = "lines, 1 to 10,000 (default 1,000)")),
    responses((status = 200, description = "the program's output lines after `after`", body = ConsoleLines), (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError))
)]
async fn job_console(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<ConsoleLines>> {
    let after = page.after.unwrap_or(0);
    let limit = page.limit.unwrap_or(1_000).clamp(1, 10_000);
    let lines =
        state.read_own_job(&caller, id, move |connection, id| read::console(connection, id, after, limit)).await?;
    Ok(Json(ConsoleLines { lines }))
}

#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("api_key" = [])), params(("id" = String, Path, description = "the job id (`j…`)")),
    request_body(content = Object, description = "`{}`", content_type = "application/json"),
    responses((status = 200, description = "the job's status after cancelling", body = JobStatus), (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError), (status = 415, description = "the body is not `application/json`", body = ApiError))
)]
async fn cancel_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>> {
    let scope = caller.scope();
    let status = state
        .writer
        .run(move |store| {
            store.job_access(&id, &scope)?;
            store.cancel(&id, now_ms())
        })
        .await?;
    state.job_events_changed();
    tracing::info!(job = %status.job_id, key = %caller.key_id, "job cancelled");
    Ok(Json(status))
}

/// Largest `POST /v1/jobs/{id}/slices` body: a page of slices. Inputs of any total size go in
/// pages, so neither side holds more than a page at once.
pub const MAX_SLICES_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// `POST /v1/jobs/{id}/slices`: a page of slices for an open job.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/slices", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "the job id")), request_body = AddSlicesRequest,
    responses((status = 200, description = "added: the first new slice's index and the job's new total", body = AddSlicesResponse),
        (status = 400, description = "an empty page, a job that is not open or not running, or over the slice limit", body = ApiError),
        (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError),
        (status = 413, description = "the page is over 16 MiB", body = ApiError))
)]
async fn add_slices(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    request: Request,
) -> Result<Json<AddSlicesResponse>> {
    let body = read_body(request).await?;
    let page: AddSlicesRequest = blocking(move || parse_body(&body)).await?;
    if page.slices.is_empty() {
        return Err(Error::invalid("slices", "the page has no slices"));
    }
    let scope = caller.scope();
    let max_total = state.config.deploy.max_slices as u64;
    let (first, total) = state
        .writer
        .run(move |store| {
            store.job_access(&id, &scope)?;
            store.add_slices(&id, &page.slices, max_total)
        })
        .await?;
    state.work_available.notify_waiters();
    Ok(Json(AddSlicesResponse { first, total }))
}

/// `POST /v1/jobs/{id}/close`: no more slices for an open job; it completes once they are done.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/close", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "the job id")),
    responses((status = 200, description = "closed (closing again changes nothing): the job's status", body = JobStatus),
        (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError))
)]
async fn close_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>> {
    let scope = caller.scope();
    let status = state
        .writer
        .run(move |store| {
            store.job_access(&id, &scope)?;
            store.close(&id, now_ms())
        })
        .await?;
    state.job_events_changed();
    tracing::info!(job = %status.job_id, key = %caller.key_id, total = status.total, "job closed");
    Ok(Json(status))
}

/// Deletes a finished job with everything stored for it; a running one is refused (409
/// `conflict`): cancel it first.
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs", security(("api_key" = [])), params(("id" = String, Path, description = "the job id (`j…`)")),
    responses((status = 200, description = "deleted, with its slices, results, leases, console and (when unused) bundle", body = JobDeleted),
        (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError), (status = 409, description = "the job is still running: cancel it first", body = ApiError))
)]
async fn delete_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobDeleted>> {
    let scope = caller.scope();
    let deleted = state
        .writer
        .run(move |store| {
            store.job_access(&id, &scope)?;
            store.delete_job(&id, now_ms())
        })
        .await?;
    tracing::info!(job = %deleted.job_id, slices = deleted.slices, key = %caller.key_id, "job deleted");
    Ok(Json(deleted))
}

#[utoipa::path(
    put, path = "/v1/bundles", tag = "jobs", security(("api_key" = [])),
    request_body(content = GzipBytes, description = "the `.tar.gz` bytes", content_type = "application/gzip"),
    responses((status = 201, description = "stored under its sha256", body = BundleStored),
        (status = 400, description = "an unusable bundle; the message names the entry", body = ApiError), (status = 401, description = "no valid API key", body = ApiError), (status = 413, description = "the body is over `--max-body-bytes`", body = ApiError),
        (status = 415, description = "the body is not `application/gzip`", body = ApiError))
)]
async fn upload_bundle(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request: Request,
) -> Result<impl IntoResponse> {
    let bytes = read_body(request).await?;
    let limits = state.config.bundle;
    let (bytes, sha256) = blocking(move || {
        bundle::check(&bytes, &limits).map_err(|error| Error::invalid("bundle", error.to_string()))?;
        let sha256 = bundle::content_address(&bytes);
        Ok((bytes, sha256))
    })
    .await?;
    let key = sha256.clone();
    state.writer.run(move |store| store.put_bundle(&key, &bytes, now_ms())).await?;
    tracing::info!(%sha256, key = %caller.key_id, "bundle stored");
    Ok((StatusCode::CREATED, Json(BundleStored { sha256 })))
}

#[utoipa::path(
    get, path = "/v1/bundles/{sha256}", tag = "workers",
    params(("sha256" = String, Path, description = "the bundle's sha256, as `PUT /v1/bundles` returned it")),
    responses((status = 200, description = "the bundle's bytes (immutable)", body = GzipBytes, content_type = "application/gzip"),
        (status = 404, description = "no such bundle", body = ApiError))
)]
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

/// `{"ok": true}`: the scheduler is up.
#[utoipa::path(
    get, path = "/v1/health", tag = "workers",
    responses((status = 200, description = "the scheduler is up", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health { ok: true })
}

/// The OpenAPI 3.1 description of `/v1`, generated from the handlers' annotations.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "workers",
    responses((status = 200, description = "this description (OpenAPI 3.1)", body = Object))
)]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

#[utoipa::path(
    get, path = "/v1/packages", tag = "workers",
    responses((status = 200, description = "the Pyodide packages this scheduler can serve", body = Vec<String>))
)]
async fn list_packages(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(state.packages.available())
}

#[utoipa::path(
    post, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    request_body = CreateKeyRequest,
    responses((status = 201, description = "the new key; the whole key is shown only here", body = CreatedKey), (status = 400, description = "a field is missing, malformed or out of range; `field` names it", body = ApiError), (status = 401, description = "no valid API key", body = ApiError),
        (status = 403, description = "not an admin key", body = ApiError), (status = 415, description = "the body is not `application/json`", body = ApiError))
)]
async fn create_key(
    State(state): State<AppState>,
    Admin(admin): Admin,
    JsonBody(request): JsonBody<CreateKeyRequest>,
) -> Result<impl IntoResponse> {
    let created = state.writer.run(move |store| store.create_key(&request.name, request.admin, now_ms())).await?;
    tracing::info!(key = %created.info.id, name = %created.info.name, admin = created.info.admin, by = %admin.key_id, "API key created");
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get, path = "/v1/keys", tag = "keys", security(("api_key" = [])),
    responses((status = 200, description = "every key, oldest first, never a secret", body = Vec<ApiKeyInfo>), (status = 401, description = "no valid API key", body = ApiError),
        (status = 403, description = "not an admin key", body = ApiError))
)]
async fn list_keys(State(state): State<AppState>, Admin(_): Admin) -> Result<Json<Vec<ApiKeyInfo>>> {
    Ok(Json(state.readers.run(read::list_keys).await?))
}

#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", tag = "keys", security(("api_key" = [])),
    params(("id" = String, Path, description = "the key id (`k…`)")),
    request_body(content = Object, description = "`{}`", content_type = "application/json"),
    responses((status = 200, description = "the key, with `revoked_ms`", body = ApiKeyInfo),
        (status = 400, description = "the last admin key cannot be revoked", body = ApiError), (status = 401, description = "no valid API key", body = ApiError),
        (status = 403, description = "not an admin key", body = ApiError), (status = 404, description = "no such key", body = ApiError), (status = 415, description = "the body is not `application/json`", body = ApiError))
)]
async fn revoke_key(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyInfo>> {
    let revoked = state.writer.run(move |store| store.revoke_key(&id, now_ms())).await?;
    // Committed: from now on the key is refused, also where it was cached.
    state.forget_key(&revoked.id);
    tracing::info!(key = %revoked.id, name = %revoked.name, by = %admin.key_id, "API key revoked");
    Ok(Json(revoked))
}

/// `GET /v1/health`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    ok: bool,
}

/// `GET /v1/jobs/{id}/console`'s answer: lines after `after`, oldest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ConsoleLines {
    lines: Vec<ConsoleLine>,
}

/// `PUT /v1/bundles`'s answer: the address the bundle is stored under.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct BundleStored {
    sha256: String,
}

/// A bundle's bytes in the description: a gzip-compressed tar archive, not a JSON array.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Only describes a body; the handlers read and send raw bytes.
struct GzipBytes(Vec<u8>);

/// The OpenAPI description of `/v1`: every annotated handler, the protocol's types as schemas,
/// and the two bearer schemes (deployer API keys, worker tokens). A test checks it against
/// docs/PROTOCOL.md, so the description, the handlers and the document cannot drift apart.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tessera scheduler protocol",
        version = "1",
        description = "HTTP + JSON under /v1: deployer endpoints (API key) and worker endpoints \
                       (open, worker token). docs/PROTOCOL.md describes every endpoint with examples."
    ),
    paths(
        health, openapi_json, register, contributor_totals, lease, heartbeat, submit_results, download_bundle,
        list_packages, deploy, list_jobs, job_status, delete_job, slice_history, job_results, job_console, job_events,
        add_slices, close_job, cancel_job,
        upload_bundle, create_key, list_keys, revoke_key
    ),
    components(schemas(ApiError)),
    modifiers(&BearerSchemes),
    tags(
        (name = "jobs", description = "deployer endpoints: an API key on every request"),
        (name = "keys", description = "API keys: admin keys only"),
        (name = "workers", description = "worker endpoints: open and cross-origin; leases and results need the worker token"),
    )
)]
struct ApiDoc;

/// Adds the security schemes the operations name: `api_key` and `worker_token`.
struct BearerSchemes;

impl utoipa::Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tsk_<id>_<secret>")
                    .description(Some("a deployer API key: `Authorization: Bearer tsk_…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "worker_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the token `POST /v1/workers` returned"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI 3.1 description of `/v1` that `GET /v1/openapi.json` serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// Event streams open at once; past it a new one is answered 503 `busy`. Each costs a task, a
/// reader query when there is news, and at most one page of events in memory.
pub const MAX_EVENT_STREAMS: usize = 10_000;
/// Most events read from the store at once for one stream.
const EVENT_PAGE: u64 = 256;
/// A page stops growing once its results and text pass this many bytes (a slow client holds at
/// most about one page, whatever the job's size: the stream reads the next page only when the
/// connection has taken the last one).
const EVENT_PAGE_BYTES: usize = 1024 * 1024;
/// `progress` events are sent at most this often per stream.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// A comment line is sent after this long without an event, so proxies keep the stream open and
/// a client notices a dead connection.
pub const EVENTS_KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

/// `GET /v1/jobs/{id}/events`: the job's event log as server-sent events, from after `after` (or
/// the `Last-Event-ID` header a reconnecting `EventSource` sends), then live until the job ends.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("api_key" = [])),
    params(("id" = String, Path, description = "the job id"),
        ("after" = Option<u64>, Query, description = "the last event position already seen (default 0; or the `Last-Event-ID` header)")),
    responses((status = 200, description = "`text/event-stream`: `result`, `console`, `state` (each with its position as `id`) and `progress` events; ends after the final state", content_type = "text/event-stream", body = String),
        (status = 400, description = "a `Last-Event-ID` that is not a position", body = ApiError),
        (status = 401, description = "no valid API key", body = ApiError), (status = 404, description = "no such job (or another deployer's)", body = ApiError),
        (status = 503, description = "too many event streams open", body = ApiError))
)]
async fn job_events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response> {
    let after = match query.after {
        Some(after) => after,
        None => match headers.get("last-event-id") {
            None => 0,
            Some(value) => value.to_str().ok().and_then(|text| text.trim().parse().ok()).ok_or_else(|| {
                Error::invalid("Last-Event-ID", "the last event id is not an event position (an integer ≥ 0)")
            })?,
        },
    };
    state.read_own_job(&caller, id.clone(), |_, _| Ok(())).await?;
    let permit = state.event_streams.clone().try_acquire_owned().map_err(|_| Error::Busy)?;
    let changes = state.job_events.subscribe();
    let stream = EventStream {
        readers: state.readers.clone(),
        job_id: id,
        after,
        pending: std::collections::VecDeque::new(),
        ended: false,
        changes,
        progress: None,
        progress_sent_at: None,
        progress_stale: true,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        stream.next_event().await.map(|event| (Ok::<_, Infallible>(event), stream))
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(EVENTS_KEEP_ALIVE));
    Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))], sse).into_response())
}

/// One client's position in a job's event log, and what it needs to go on from there.
struct EventStream {
    readers: Readers,
    job_id: String,
    /// The last position delivered (or the one the client resumed after).
    after: u64,
    /// The rest of the page read last, already encoded.
    pending: std::collections::VecDeque<SseEvent>,
    /// The final state event is in `pending`: the stream ends once it is sent.
    ended: bool,
    changes: watch::Receiver<u64>,
    /// The last `progress` sent, and when.
    progress: Option<Value>,
    progress_sent_at: Option<tokio::time::Instant>,
    /// Something changed since progress was last looked at.
    progress_stale: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl EventStream {
    /// The next event to send, waiting for one when caught up; `None` ends the stream (after the
    /// final state event, or when the job can no longer be read).
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            // Marked seen before reading: a change committed after this read wakes the wait below.
            self.changes.borrow_and_update();
            let (job_id, after) = (self.job_id.clone(), self.after);
            let page = self
                .readers
                .run(move |connection| read::events(connection, &job_id, after, EVENT_PAGE, EVENT_PAGE_BYTES))
                .await;
            let (events, job_state) = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(job = %self.job_id, %error, "event stream ended: the job's events cannot be read");
                    return None;
                }
            };
            if !events.is_empty() {
                for event in events {
                    self.after = event.position;
                    self.ended |= event.is_final();
                    match encode_event(&event) {
                        Ok(encoded) => self.pending.push_back(encoded),
                        Err(error) => {
                            tracing::error!(job = %self.job_id, %error, "event stream ended: an event cannot be encoded");
                            return None;
                        }
                    }
                }
                continue;
            }
            if job_state.is_final() {
                // Caught up past the final state event (a client resuming after the end).
                return None;
            }
            if let Some(event) = self.progress_event().await {
                return Some(event);
            }
            let due = self.progress_stale.then(|| self.progress_sent_at.map(|sent| sent + PROGRESS_INTERVAL)).flatten();
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.progress_stale = true;
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
            }
        }
    }

    /// A `progress` event when progress was reported since the last one, at most one per
    /// [`PROGRESS_INTERVAL`]; `None` when nothing moved or it is too soon.
    async fn progress_event(&mut self) -> Option<SseEvent> {
        if !self.progress_stale {
            return None;
        }
        let now = tokio::time::Instant::now();
        if self.progress_sent_at.is_some_and(|sent| now < sent + PROGRESS_INTERVAL) {
            return None;
        }
        self.progress_stale = false;
        let job_id = self.job_id.clone();
        let status = match self.readers.run(move |connection| read::job_status(connection, &job_id)).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(job = %self.job_id, %error, "cannot read the job's progress");
                return None;
            }
        };
        let running: Vec<Value> = status
            .running
            .iter()
            .map(|slice| serde_json::json!({"slice": slice.slice, "progress": slice.progress}))
            .collect();
        let progress = serde_json::json!({
            "done": status.done, "errors": status.errors, "total": status.total, "running": running,
        });
        if self.progress.as_ref() == Some(&progress) {
            return None;
        }
        self.progress_sent_at = Some(now);
        let event = SseEvent::default().event("progress").data(progress.to_string());
        self.progress = Some(progress);
        Some(event)
    }
}

/// An event of the log as sent: `event:` its kind, `id:` its position, `data:` its JSON.
fn encode_event(event: &JobEvent) -> Result<SseEvent> {
    let data = match &event.body {
        EventBody::Result(record) => serde_json::to_string(record),
        EventBody::Console(line) => serde_json::to_string(line),
        EventBody::State(status) => serde_json::to_string(status),
    }
    .map_err(|error| Error::Store(format!("cannot encode event {}: {error}", event.position)))?;
    Ok(SseEvent::default().event(event.kind().as_str()).id(event.position.to_string()).data(data))
}
