//! Protocol v1 over real HTTP on a loopback port, against a real SQLite file.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tessera_protocol::bundle::testing::{raw_archive, EntryType};
use tessera_protocol::{BundleLimits, LeaseResponse, RegisterResponse, ResultsResponse};
use tessera_scheduler::server::{router, ServerConfig};
use tessera_scheduler::store::LeasePolicy;
use tessera_scheduler::validate::DeployLimits;

struct Server {
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(max_body_bytes: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        database: dir.path().join("api.db"),
        www: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../www"),
        pyodide: dir.path().join("no-pyodide"),
        lease: LeasePolicy { ttl_ms: 60_000, max_attempts: 3 },
        max_body_bytes,
        deploy: DeployLimits::default(),
        bundle: BundleLimits::default(),
        max_wait_ms: 2_000,
    };
    let app = router(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { url, http: reqwest::Client::new(), _dir: dir }
}

impl Server {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}/v1{}", self.url, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    async fn raw_post(&self, path: &str, body: &'static str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1{}", self.url, path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self) -> RegisterResponse {
        let (status, body) = self.post("/workers", None, json!({"sandboxes": 1})).await;
        assert_eq!(status, 200);
        serde_json::from_value(body).unwrap()
    }
}

#[tokio::test]
async fn deploy_lease_result_status_round_trip() {
    let server = start(1 << 20).await;
    let (status, deployed) =
        server.post("/jobs", None, json!({"program": "(x) => x + 1", "slices": [1, 2, 3], "name": "inc"})).await;
    assert_eq!(status, 200, "{deployed}");
    let job_id = deployed["job_id"].as_str().unwrap().to_string();
    let worker = server.register().await;

    let (status, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 10})).await;
    assert_eq!(status, 200);
    let leased: LeaseResponse = serde_json::from_value(leased).unwrap();
    assert_eq!(leased.leases.len(), 3);
    assert_eq!(leased.jobs[0].program, "(x) => x + 1");

    let (status, beat) = server
        .post("/leases/heartbeat", Some(&worker.token), json!({"leases": [{"lease_id": leased.leases[0].lease_id, "token": leased.leases[0].token, "progress": 0.5}]}))
        .await;
    assert_eq!((status, beat["extended"].as_array().unwrap().len()), (200, 1));

    let results: Vec<Value> = leased
        .leases
        .iter()
        .map(|l| json!({"lease_id": l.lease_id, "token": l.token, "outcome": {"kind": "ok", "value": l.datum.as_i64().unwrap() + 1}}))
        .collect();
    let (status, acks) = server.post("/results", Some(&worker.token), json!({"results": results})).await;
    assert_eq!(status, 200);
    let acks: ResultsResponse = serde_json::from_value(acks).unwrap();
    assert!(acks.acks.iter().all(|a| a.status == tessera_protocol::ResultStatus::Accepted));
    // Resending the same batch is acknowledged and ignored.
    let (status, again) = server.post("/results", Some(&worker.token), json!({"results": results})).await;
    assert_eq!((status, again["acks"][0]["status"].as_str()), (200, Some("duplicate")));

    let (_, status) = server.get(&format!("/jobs/{job_id}")).await;
    assert_eq!((status["state"].as_str(), status["done"].as_u64()), (Some("complete"), Some(3)));
    let (_, page) = server.get(&format!("/jobs/{job_id}/results")).await;
    let values: Vec<i64> = page["results"].as_array().unwrap().iter().map(|r| r["value"].as_i64().unwrap()).collect();
    assert_eq!(values, vec![2, 3, 4]);
}

#[tokio::test]
async fn long_poll_wakes_when_work_arrives() {
    let server = start(1 << 20).await;
    let worker = server.register().await;
    let url = server.url.clone();
    let token = worker.token.clone();
    let waiting = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/leases"))
            .bearer_auth(token)
            .json(&json!({"max_slices": 5, "wait_ms": 10_000}))
            .send()
            .await
            .unwrap();
        response.json::<LeaseResponse>().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.post("/jobs", None, json!({"program": "(x) => x", "slices": [1]})).await;
    let leased = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(leased.leases.len(), 1);
}

#[tokio::test]
async fn bad_deploys_get_a_4xx_naming_the_field_and_store_nothing() {
    let server = start(4096).await;
    let cases = [
        (json!({"program": "", "slices": [1]}), "program"),
        (json!({"program": "f", "worktime": "cobol", "slices": [1]}), "worktime"),
        (json!({"program": "f", "slices": "not an array"}), "slices"),
        (json!({"program": "f", "slices": [1], "bundle": "0".repeat(64), "worktime": "pyodide"}), "bundle"),
        (json!({"program": "f", "slices": [1], "worktime": "pyodide", "packages": ["tensorflow"]}), "packages"),
    ];
    for (body, field) in cases {
        let (status, error) = server.post("/jobs", None, body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["field"].as_str(), Some(field), "{body} → {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let (status, error) = server.raw_post("/jobs", "{\"program\": \"f\", ").await;
    assert_eq!((status, error["code"].as_str()), (400, Some("malformed_json")));
    let huge = json!({"program": "f", "slices": vec![1; 5000]});
    let (status, error) = server.post("/jobs", None, huge).await;
    assert_eq!((status, error["code"].as_str()), (413, Some("too_large")));
    let (_, jobs) = server.get("/jobs").await;
    assert_eq!(jobs.as_array().unwrap().len(), 0, "nothing stored: {jobs}");
}

#[tokio::test]
async fn unknown_ids_and_wrong_tokens_are_refused() {
    let server = start(1 << 20).await;
    let (status, error) = server.get("/jobs/jnope").await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    let (status, _) = server.post("/leases", Some("forged"), json!({"max_slices": 1})).await;
    assert_eq!(status, 403);
    let (status, _) = server.post("/leases", None, json!({"max_slices": 1})).await;
    assert_eq!(status, 403);

    server.post("/jobs", None, json!({"program": "(x) => x", "slices": [1]})).await;
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 1})).await;
    let lease_id = leased["leases"][0]["lease_id"].as_str().unwrap();
    let wrong = json!({"results": [{"lease_id": lease_id, "token": "wrong", "outcome": {"kind": "ok", "value": 1}}]});
    let (status, error) = server.post("/results", Some(&worker.token), wrong).await;
    assert_eq!((status, error["field"].as_str()), (403, Some("results[0].token")));
    let unknown = json!({"results": [{"lease_id": "lnope", "token": "t", "outcome": {"kind": "ok", "value": 1}}]});
    let (status, error) = server.post("/results", Some(&worker.token), unknown).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    let (status, error) = server.post("/leases", Some(&worker.token), json!({"max_slices": "many"})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("max_slices")));
}

#[tokio::test]
async fn cancel_stops_leasing_and_serves_static_files_with_mime_types() {
    let server = start(1 << 20).await;
    let (_, deployed) =
        server.post("/jobs", None, json!({"program": "(x) => x", "range": {"start": 0, "end": 10}})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let (status, cancelled) = server.post(&format!("/jobs/{job_id}/cancel"), None, json!({})).await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("cancelled")));
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 5})).await;
    assert!(leased["leases"].as_array().unwrap().is_empty());

    let page = server.http.get(format!("{}/contribute.js", server.url)).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/javascript");
    let cors = server
        .http
        .get(format!("{}/v1/health", server.url))
        .header("origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cors.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn bad_bundles_are_refused_with_the_entry_named() {
    let server = start(1 << 20).await;
    let cases = [
        (raw_archive("../escape.py", EntryType::Regular), "`../escape.py`"),
        (raw_archive("/etc/passwd", EntryType::Regular), "`/etc/passwd`"),
        (raw_archive("sneaky", EntryType::Symlink), "`sneaky` is a symbolic link"),
        (raw_archive("tty", EntryType::Char), "`tty` is a character device"),
        (b"plain text".to_vec(), "not a readable tar.gz"),
    ];
    for (bytes, expected) in cases {
        let response = server.http.put(format!("{}/v1/bundles", server.url)).body(bytes).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], "bundle");
        assert!(error["message"].as_str().unwrap().contains(expected), "{error}");
    }
    let too_big = vec![0u8; 2 << 20];
    let response = server.http.put(format!("{}/v1/bundles", server.url)).body(too_big).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);

    let good = tessera_protocol::bundle::pack(&[tessera_protocol::BundleEntry::File {
        path: "m.py".into(),
        bytes: b"X = 1".to_vec(),
    }])
    .unwrap();
    let response = server.http.put(format!("{}/v1/bundles", server.url)).body(good.clone()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let sha256 = response.json::<Value>().await.unwrap()["sha256"].as_str().unwrap().to_string();
    let fetched =
        server.http.get(format!("{}/v1/bundles/{sha256}", server.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(fetched.as_ref(), good.as_slice());
    let (status, deployed) = server
        .post("/jobs", None, json!({"program": "import m", "slices": [1], "worktime": "pyodide", "bundle": sha256}))
        .await;
    assert_eq!(status, 200, "{deployed}");
}
