//! Shared by the scheduler's HTTP tests: a test configuration and a server on a loopback port.
#![allow(dead_code)] // Each test file uses part of it.

use std::net::SocketAddr;

use tessera_protocol::{BundleLimits, WorkerLimits};
use tessera_scheduler::server::{router, ServerConfig};
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
