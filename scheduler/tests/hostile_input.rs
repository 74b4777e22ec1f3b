//! Hostile input costs little (docs/SECURITY.md, "Hostile input"): bombs, lying headers and
//! oversized bodies are refused early, cheaply, and store nothing. Real HTTP on a loopback port.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_protocol::bundle::testing::{metadata_bomb, EntryType};
use tessera_protocol::{BundleLimits, WorkerLimits};
use tessera_scheduler::server::ServerConfig;
use tessera_scheduler::validate::DeployLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{serve, test_config};

struct Server {
    url: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    /// A deployer's API key.
    key: String,
    _dir: tempfile::TempDir,
}

fn small_bundles() -> BundleLimits {
    BundleLimits { max_compressed_bytes: 1024 * 1024, max_unpacked_bytes: 1024 * 1024, max_entries: 100 }
}

async fn start(deploy: DeployLimits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        deploy,
        bundle: small_bundles(),
        worker_limits: WorkerLimits { max_wait_ms: 5_000, ..WorkerLimits::default() },
        ..test_config(&dir)
    };
    let (addr, key) = serve(config).await;
    Server { url: format!("http://{addr}"), addr, http: reqwest::Client::new(), key, _dir: dir }
}

impl Server {
    async fn jobs(&self) -> Vec<Value> {
        let response = self.http.get(format!("{}/v1/jobs", self.url)).bearer_auth(&self.key).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let jobs: Value = response.json().await.unwrap();
        jobs.as_array().cloned().unwrap_or_else(|| panic!("not a list: {jobs}"))
    }

    async fn put_bundle(&self, bytes: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{}/v1/bundles", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/gzip")
            .body(bytes)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn bundle_status(&self, bytes: &[u8]) -> u16 {
        let sha256 = tessera_protocol::bundle::content_address(bytes);
        self.http.get(format!("{}/v1/bundles/{sha256}", self.url)).send().await.unwrap().status().as_u16()
    }

    /// A JSON POST; deployer paths (`/jobs`) carry the test's key.
    async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/v1{path}", self.url));
        if path.starts_with("/jobs") {
            request = request.bearer_auth(&self.key);
        }
        let response = request.header("content-type", "application/json").body(body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }
}

/// `{"program": "f", "slices": [0,0,…]}` with `count` slices.
fn many_slices(count: usize) -> Vec<u8> {
    let mut body = br#"{"program": "(x) => x", "slices": ["#.to_vec();
    body.reserve(count * 2 + 4);
    for i in 0..count {
        body.extend_from_slice(if i == 0 { b"0" } else { b",0" });
    }
    body.extend_from_slice(b"]}");
    body
}

#[tokio::test]
async fn a_gzip_bomb_bundle_is_refused_with_a_clear_message_and_not_stored() {
    let server = start(DeployLimits::default()).await;
    // 10 MiB of zeros in a long-name record, ~10 KiB compressed, against a 1 MiB unpacked limit.
    let bomb = metadata_bomb(EntryType::GNULongName, 10 * 1024 * 1024, 0);
    assert!(bomb.len() < 64 * 1024);
    let (status, error) = server.put_bundle(bomb.clone()).await;
    assert_eq!((status, error["code"].as_str(), error["field"].as_str()), (400, Some("invalid_field"), Some("bundle")));
    assert!(error["message"].as_str().unwrap().contains("decompresses to more than"), "{error}");
    assert_eq!(server.bundle_status(&bomb).await, 404);
}

#[tokio::test]
async fn huge_long_name_and_pax_bundles_are_refused_and_not_stored() {
    let server = start(DeployLimits::default()).await;
    for kind in [EntryType::GNULongName, EntryType::XHeader] {
        let bomb = metadata_bomb(kind, 20 * 1024 * 1024, b'a');
        let (status, error) = server.put_bundle(bomb.clone()).await;
        assert_eq!((status, error["field"].as_str()), (400, Some("bundle")), "{kind:?}: {error}");
        assert!(error["message"].as_str().unwrap().contains("refused while reading"), "{error}");
        assert_eq!(server.bundle_status(&bomb).await, 404);
    }
}

#[tokio::test]
async fn a_deploy_claiming_a_gigabyte_is_refused_with_413_before_its_body_arrives() {
    let server = start(DeployLimits::default()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ncontent-length: 1073741824\r\n\r\n{{\"program\": \"f\", \"slices\": [",
        server.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The rest of the gigabyte never comes: the answer must not wait for it.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(server.jobs().await.is_empty());
}

#[tokio::test]
async fn a_chunked_deploy_over_the_limit_is_cut_off() {
    let server = start(DeployLimits::default()).await;
    // No Content-Length: up to 65 MiB arrives in chunks and is refused once it passes 64 MiB.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        server.key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = [format!("{:x}\r\n", 1024 * 1024).into_bytes(), vec![b' '; 1024 * 1024], b"\r\n".to_vec()].concat();
    for _ in 0..65 {
        if stream.write_all(&chunk).await.is_err() {
            break; // The server answered and closed: expected.
        }
    }
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(server.jobs().await.is_empty());
}

#[tokio::test]
async fn a_deploy_with_more_slices_than_the_limit_is_refused_while_parsing() {
    let server = start(DeployLimits { max_slices: 1_000, ..DeployLimits::default() }).await;
    let (status, error) = server.post_raw("/jobs", many_slices(1_001)).await;
    assert_eq!((status, error["code"].as_str(), error["field"].as_str()), (400, Some("invalid_field"), Some("slices")));
    assert!(error["message"].as_str().unwrap().contains("more than 1000 slices"), "{error}");
    // Ten million tiny slices: refused at the 1,001st, the rest never parsed.
    let started = Instant::now();
    let (status, error) = server.post_raw("/jobs", many_slices(10_000_000)).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("slices")), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // At the limit it is accepted.
    let (status, deployed) = server.post_raw("/jobs", many_slices(1_000)).await;
    assert_eq!((status, deployed["total"].as_u64()), (200, Some(1_000)), "{deployed}");
    assert_eq!(server.jobs().await.len(), 1);
}

#[tokio::test]
async fn worker_endpoints_have_their_own_smaller_body_limits() {
    let server = start(DeployLimits::default()).await;
    let padding = "x".repeat(100 * 1024);
    let (status, error) = server.post_raw("/workers", json!({"sandboxes": 1, "pad": padding}).to_string().into()).await;
    assert_eq!((status, error["code"].as_str()), (413, Some("too_large")), "{error}");
    let padding = "x".repeat(3 * 1024 * 1024);
    let body = json!({"max_slices": 1, "known_jobs": [padding]}).to_string();
    let (status, error) = server.post_raw("/leases", body.into()).await;
    assert_eq!((status, error["code"].as_str()), (413, Some("too_large")), "{error}");
    // A small registration still works.
    let (status, _) = server.post_raw("/workers", json!({"sandboxes": 1}).to_string().into()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn long_polls_do_not_exhaust_the_other_routes() {
    let server = start(DeployLimits::default()).await;
    let (_, worker) = server.post_raw("/workers", json!({"sandboxes": 1}).to_string().into()).await;
    let token = worker["token"].as_str().unwrap().to_string();
    // More waiting long-polls than the general pool has slots.
    let polls = tessera_scheduler::server::MAX_CONCURRENT_REQUESTS + 44;
    let mut waiting = Vec::new();
    for _ in 0..polls {
        let (http, url, token) = (reqwest::Client::new(), server.url.clone(), token.clone());
        waiting.push(tokio::spawn(async move {
            http.post(format!("{url}/v1/leases"))
                .bearer_auth(token)
                .json(&json!({"max_slices": 1, "wait_ms": 5_000}))
                .send()
                .await
                .map(|response| response.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Were long-polls in the general pool, this would wait for them (4 s more).
    let started = Instant::now();
    assert!(server.jobs().await.is_empty());
    assert!(started.elapsed() < Duration::from_millis(2_500), "took {:?}", started.elapsed());
    for poll in waiting {
        assert_eq!(poll.await.unwrap().unwrap(), 200);
    }
}
