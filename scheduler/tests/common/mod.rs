//! Shared by the scheduler's HTTP tests: a test configuration and a server on a loopback port.
#![allow(dead_code)] // Each test file uses part of it.

use std::net::SocketAddr;

use tessera_protocol::{BundleLimits, WorkerLimits};
use tessera_scheduler::server::{app, router, Housekeeping, ServerConfig};
use tessera_scheduler::store::{LeasePolicy, Store};
use tessera_scheduler::validate::DeployLimits;

/// A configuration with its database in `dir`, the embedded site, no Pyodide distribution,
/// a 1,000-byte result limit and default request limits; tests override what they exercise.
pub fn test_config(dir: &tempfile::TempDir) -> ServerConfig {
    ServerConfig {
        database: dir.path().join("test.db"),
        www: None,
        pyodide: dir.path().join("no-pyodide"),
        lease: LeasePolicy { ttl_ms: 60_000, max_attempts: 3, max_result_bytes: 1_000 },
        max_body_bytes: 64 * 1024 * 1024,
        deploy: DeployLimits::default(),
        bundle: BundleLimits::default(),
        worker_limits: WorkerLimits::default(),
        worker_key: None,
        deployer_origins: Vec::new(),
        retention: None,
    }
}

/// Makes an API key in `config`'s database (creating it if new); returns the whole key.
pub fn create_key(config: &ServerConfig, name: &str, admin: bool) -> String {
    Store::open(&config.database).unwrap().create_key(name, admin, 0).unwrap().key
}

/// Serves `config` on a free loopback port in the background; returns the bound address and a
/// deployer key (not an admin one) made for the test.
pub async fn serve(config: ServerConfig) -> (SocketAddr, String) {
    let key = create_key(&config, "tester", false);
    let app = router(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, key)
}

/// Like [`serve`], and also returns the server's housekeeping, so a test can run a retention
/// pass at a time of its choosing.
pub async fn serve_with_housekeeping(config: ServerConfig) -> (SocketAddr, String, Housekeeping) {
    let key = create_key(&config, "tester", false);
    let (app, housekeeping) = app(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, key, housekeeping)
}

/// A scheduler served on a loopback port for one test, with a deployer key and a plain HTTP
/// client, and the worker side of the protocol spelled out once.
pub struct TestServer {
    pub url: String,
    pub http: reqwest::Client,
    /// A deployer key (not an admin one).
    pub key: String,
    pub config: ServerConfig,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with [`test_config`] in a temporary folder.
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(&dir);
        let (addr, key) = serve(config.clone()).await;
        TestServer { url: format!("http://{addr}"), http: reqwest::Client::new(), key, config, _dir: dir }
    }

    /// Registers a worker with one sandbox; returns its token.
    pub async fn register_worker(&self) -> String {
        let response = self
            .http
            .post(format!("{}/v1/workers", self.url))
            .json(&serde_json::json!({"sandboxes": 1}))
            .send()
            .await
            .unwrap();
        response.json::<tessera_protocol::RegisterResponse>().await.unwrap().token
    }

    /// Leases up to `max` slices for `worker` without waiting.
    pub async fn lease(&self, worker: &str, max: u32) -> Vec<tessera_protocol::Lease> {
        let response = self
            .http
            .post(format!("{}/v1/leases", self.url))
            .bearer_auth(worker)
            .json(&serde_json::json!({"max_slices": max, "wait_ms": 0}))
            .send()
            .await
            .unwrap();
        response.json::<tessera_protocol::LeaseResponse>().await.unwrap().leases
    }

    /// Submits `results` (protocol result items) for `worker`; asserts each was accepted.
    pub async fn submit_accepted(&self, worker: &str, results: Vec<serde_json::Value>) {
        let response = self
            .http
            .post(format!("{}/v1/results", self.url))
            .bearer_auth(worker)
            .json(&serde_json::json!({"results": results}))
            .send()
            .await
            .unwrap();
        let acks: serde_json::Value = response.json().await.unwrap();
        assert!(acks["acks"].as_array().unwrap().iter().all(|ack| ack["status"] == "accepted"), "{acks}");
    }
}
