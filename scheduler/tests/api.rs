//! Protocol v1 over real HTTP on a loopback port, against a real SQLite file.

use std::time::Duration;

use serde_json::{json, Value};
use tessera_protocol::bundle::testing::{raw_archive, EntryType};
use tessera_protocol::{LeaseResponse, RegisterResponse, ResultsResponse, SliceHistory, WorkerLimits};
use tessera_scheduler::server::ServerConfig;

mod common;
use common::{create_key, serve, test_config};
use tessera_scheduler::store::Store;
use tessera_scheduler::validate::{validate_deploy, DeployLimits};

struct Server {
    url: String,
    http: reqwest::Client,
    /// A deployer's API key (not an admin one).
    key: String,
    _dir: tempfile::TempDir,
}

fn config(dir: &tempfile::TempDir, max_body_bytes: usize) -> ServerConfig {
    ServerConfig {
        max_body_bytes,
        worker_limits: WorkerLimits { max_lease_slices: 50, max_wait_ms: 2_000, ..WorkerLimits::default() },
        ..test_config(dir)
    }
}

async fn start(max_body_bytes: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (addr, key) = serve(config(&dir, max_body_bytes)).await;
    Server { url: format!("http://{addr}"), http: reqwest::Client::new(), key, _dir: dir }
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

    /// A deployer GET with the test's key.
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.key), None).await
    }

    /// A deployer POST with the test's key.
    async fn deployer_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post(path, Some(&self.key), body).await
    }

    /// `PUT /v1/bundles` as the CLI sends it: `application/gzip`, with the test's key.
    async fn put_bundle(&self, bytes: Vec<u8>) -> reqwest::Response {
        self.http
            .put(format!("{}/v1/bundles", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/gzip")
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    async fn raw_post(&self, path: &str, body: &'static str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1{}", self.url, path))
            .bearer_auth(&self.key)
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
        server.deployer_post("/jobs", json!({"program": "(x) => x + 1", "slices": [1, 2, 3], "name": "inc"})).await;
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
    server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1]})).await;
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
        let (status, error) = server.deployer_post("/jobs", body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["field"].as_str(), Some(field), "{body} → {error}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let (status, error) = server.raw_post("/jobs", "{\"program\": \"f\", ").await;
    assert_eq!((status, error["code"].as_str()), (400, Some("malformed_json")));
    let huge = json!({"program": "f", "slices": vec![1; 5000]});
    let (status, error) = server.deployer_post("/jobs", huge).await;
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

    server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1]})).await;
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 1})).await;
    let lease_id = leased["leases"][0]["lease_id"].as_str().unwrap();
    let wrong = json!({"results": [{"lease_id": lease_id, "token": "wrong", "outcome": {"kind": "ok", "value": 1}}]});
    let (status, answer) = server.post("/results", Some(&worker.token), wrong).await;
    assert_eq!((status, answer["acks"][0]["status"].as_str()), (200, Some("refused")), "{answer}");
    assert!(answer["acks"][0]["message"].as_str().unwrap().contains("token"), "{answer}");
    let unknown = json!({"results": [{"lease_id": "lnope", "token": "t", "outcome": {"kind": "ok", "value": 1}}]});
    let (status, answer) = server.post("/results", Some(&worker.token), unknown).await;
    assert_eq!((status, answer["acks"][0]["status"].as_str()), (200, Some("refused")), "{answer}");
    let (status, error) = server.post("/results", Some("forged"), json!({"results": []})).await;
    assert_eq!((status, error["field"].as_str()), (403, Some("authorization")));
    let (status, error) = server.post("/leases", Some(&worker.token), json!({"max_slices": "many"})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("max_slices")));
}

#[tokio::test]
async fn cancel_stops_leasing_and_serves_static_files_with_mime_types() {
    let server = start(1 << 20).await;
    let (_, deployed) =
        server.deployer_post("/jobs", json!({"program": "(x) => x", "range": {"start": 0, "end": 10}})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let (status, cancelled) = server.deployer_post(&format!("/jobs/{job_id}/cancel"), json!({})).await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("cancelled")));
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 5})).await;
    assert!(leased["leases"].as_array().unwrap().is_empty());

    let page = server.http.get(format!("{}/contribute.js", server.url)).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/javascript");
    let plain = page.bytes().await.unwrap();
    for encoding in ["br", "gzip"] {
        let compressed = server
            .http
            .get(format!("{}/contribute.js", server.url))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(compressed.headers()["content-encoding"], encoding, "the page's files travel compressed");
        assert!(compressed.bytes().await.unwrap().len() < plain.len() / 2);
    }
    let cors = server
        .http
        .get(format!("{}/v1/health", server.url))
        .header("origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cors.headers()["access-control-allow-origin"], "*");
    // The same answer for every origin: no `Vary` on it, and no headers exposed to pages (every
    // answer a volunteer's worker gets would carry them).
    assert!(cors.headers().get("vary").is_none(), "{:?}", cors.headers());
    assert!(cors.headers().get("access-control-expose-headers").is_none(), "{:?}", cors.headers());
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/leases", server.url))
        .header("origin", "http://elsewhere.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert_eq!(preflight.headers()["access-control-allow-methods"], "*");
    // Named: a `*` would not cover `Authorization` (the Fetch standard), which workers send.
    assert_eq!(preflight.headers()["access-control-allow-headers"], "authorization,content-type");
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
        let response = server.put_bundle(bytes).await;
        assert_eq!(response.status().as_u16(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], "bundle");
        assert!(error["message"].as_str().unwrap().contains(expected), "{error}");
    }
    let too_big = vec![0u8; 2 << 20];
    let response = server.put_bundle(too_big).await;
    assert_eq!(response.status().as_u16(), 413);

    let good = tessera_protocol::bundle::pack(&[tessera_protocol::BundleEntry::File {
        path: "m.py".into(),
        bytes: b"X = 1".to_vec(),
    }])
    .unwrap();
    let response = server.put_bundle(good.clone()).await;
    assert_eq!(response.status().as_u16(), 201);
    let sha256 = response.json::<Value>().await.unwrap()["sha256"].as_str().unwrap().to_string();
    let fetched =
        server.http.get(format!("{}/v1/bundles/{sha256}", server.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(fetched.as_ref(), good.as_slice());
    let (status, deployed) = server
        .deployer_post("/jobs", json!({"program": "import m", "slices": [1], "worktime": "pyodide", "bundle": sha256}))
        .await;
    assert_eq!(status, 200, "{deployed}");
}

fn ok_item(lease: &Value, value: Value) -> Value {
    json!({"lease_id": lease["lease_id"], "token": lease["token"], "outcome": {"kind": "ok", "value": value}})
}

#[tokio::test]
async fn a_batch_is_judged_per_item() {
    let server = start(1 << 20).await;
    let (_, deployed) = server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1, 2, 3]})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 3})).await;
    let leases = leased["leases"].as_array().unwrap();
    let mut forged = ok_item(&leases[1], json!(0));
    forged["token"] = json!("forged");
    let big = json!("x".repeat(2_000));
    let batch = json!({"results": [ok_item(&leases[0], big), forged, ok_item(&leases[2], json!(3))]});
    let (status, answer) = server.post("/results", Some(&worker.token), batch).await;
    assert_eq!(status, 200, "{answer}");
    let acks: Vec<_> = answer["acks"].as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(acks, vec!["accepted", "refused", "accepted"]);
    assert!(answer["acks"][0]["message"].as_str().unwrap().contains("1000-byte limit"), "{answer}");
    let (_, page) = server.get(&format!("/jobs/{job_id}/results")).await;
    assert_eq!(page["results"][0]["status"], "error", "{page}");
    assert_eq!(page["results"][1]["status"], "pending", "the refused item stored nothing: {page}");
    assert_eq!(page["results"][2]["value"], 3);
    // The refused slice is still leased; its real result completes the job, with one error.
    let (_, answer) =
        server.post("/results", Some(&worker.token), json!({"results": [ok_item(&leases[1], json!(2))]})).await;
    assert_eq!(answer["acks"][0]["status"], "accepted");
    let (_, status) = server.get(&format!("/jobs/{job_id}")).await;
    assert_eq!((status["state"].as_str(), status["errors"].as_u64()), (Some("complete_with_errors"), Some(1)));
}

#[tokio::test]
async fn limits_are_announced_and_enforced() {
    let server = start(1 << 20).await;
    let worker = server.register().await;
    assert_eq!(worker.limits.max_lease_slices, 50);
    assert_eq!(worker.limits.max_request_bytes, 1 << 20);
    assert_eq!(worker.limits.max_result_bytes, 1_000);
    assert_eq!(worker.limits.max_wait_ms, 2_000);
    let (status, error) = server.post("/leases", Some(&worker.token), json!({"max_slices": 51})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("max_slices")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("50"), "{error}");
    let (status, _) = server.post("/leases", Some(&worker.token), json!({"max_slices": 50})).await;
    assert_eq!(status, 200);
    let beats: Vec<Value> = (0..10_001).map(|i| json!({"lease_id": format!("l{i}"), "token": "t"})).collect();
    let (status, error) = server.post("/leases/heartbeat", Some(&worker.token), json!({"leases": beats})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("leases")), "{error}");
}

#[tokio::test]
async fn cancel_ends_the_job_for_lease_and_heartbeat() {
    let server = start(1 << 20).await;
    let (_, deployed) = server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1, 2, 3]})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 2})).await;
    let lease = leased["leases"][0].clone();
    let (_, cancelled) = server.deployer_post(&format!("/jobs/{job_id}/cancel"), json!({})).await;
    assert_eq!(cancelled["state"], "cancelled");
    let beat = json!({"leases": [{"lease_id": lease["lease_id"], "token": lease["token"]}]});
    let (_, answer) = server.post("/leases/heartbeat", Some(&worker.token), beat).await;
    assert_eq!(answer["lost"], json!([lease["lease_id"]]));
    assert_eq!(answer["ended_jobs"], json!([job_id]));
    let ask = json!({"max_slices": 2, "wait_ms": 10_000, "known_jobs": [job_id]});
    let (_, answer) = server.post("/leases", Some(&worker.token), ask).await;
    assert_eq!(answer["ended_jobs"], json!([job_id]), "answered at once: {answer}");
    let (_, answer) =
        server.post("/results", Some(&worker.token), json!({"results": [ok_item(&lease, json!(1))]})).await;
    assert_eq!(answer["acks"][0]["status"], "stale");
}

#[tokio::test]
async fn slice_history_shows_every_attempt() {
    let server = start(1 << 20).await;
    let (_, deployed) = server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1]})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 1})).await;
    let lease = &leased["leases"][0];
    let released = json!({"results": [{"lease_id": lease["lease_id"], "token": lease["token"],
        "outcome": {"kind": "released", "reason": "tab closed"}}]});
    let (_, answer) = server.post("/results", Some(&worker.token), released).await;
    assert_eq!(answer["acks"][0]["status"], "released");
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 1})).await;
    server.post("/results", Some(&worker.token), json!({"results": [ok_item(&leased["leases"][0], json!(1))]})).await;
    let (status, history) = server.get(&format!("/jobs/{job_id}/slices/0")).await;
    assert_eq!(status, 200, "{history}");
    let history: SliceHistory = serde_json::from_value(history).unwrap();
    assert_eq!(history.attempts_counted, 1);
    let outcomes: Vec<_> = history.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["released", "ok"]);
    assert_eq!(history.attempts[0].message.as_deref(), Some("tab closed"));
    let (status, _) = server.get(&format!("/jobs/{job_id}/slices/7")).await;
    assert_eq!(status, 404);
    let (status, error) = server.get(&format!("/jobs/{job_id}/slices/x")).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("slice")));
}

#[tokio::test]
async fn job_limits_are_validated_stored_and_sent() {
    let server = start(1 << 20).await;
    let (status, error) =
        server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1], "slice_timeout_ms": 50})).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("slice_timeout_ms")), "{error}");
    let body = json!({"program": "(x) => x", "slices": [1], "slice_timeout_ms": 1_500, "no_progress_timeout_ms": 900});
    let (_, deployed) = server.deployer_post("/jobs", body).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let (_, status) = server.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(
        (status["slice_timeout_ms"].as_u64(), status["no_progress_timeout_ms"].as_u64()),
        (Some(1_500), Some(900))
    );
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 1})).await;
    assert_eq!(leased["jobs"][0]["slice_timeout_ms"], 1_500);
    assert_eq!(leased["jobs"][0]["no_progress_timeout_ms"], 900);
}

#[tokio::test]
async fn python_syntax_errors_are_refused_at_deploy() {
    if std::process::Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 is not installed; skipping");
        return;
    }
    let server = start(1 << 20).await;
    let broken = json!({"worktime": "pyodide", "program": "import dcp\n\ndef handler(x)\n    return x\n",
        "program_name": "broken.py", "slices": [1]});
    let (status, error) = server.deployer_post("/jobs", broken).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("program")), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("broken.py, line 3: SyntaxError"), "{message}");
    let good = tessera_protocol::bundle::pack(&[tessera_protocol::BundleEntry::File {
        path: "lib/helper.py".into(),
        bytes: b"def f(:\n    pass\n".to_vec(),
    }])
    .unwrap();
    let response = server.put_bundle(good).await;
    let sha256 = response.json::<Value>().await.unwrap()["sha256"].as_str().unwrap().to_string();
    let (status, error) = server
        .deployer_post(
            "/jobs",
            json!({"program": "import dcp", "slices": [1], "worktime": "pyodide", "bundle": sha256}),
        )
        .await;
    assert_eq!((status, error["field"].as_str()), (400, Some("bundle")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("lib/helper.py, line 1"), "{error}");
    let (_, jobs) = server.get("/jobs").await;
    assert_eq!(jobs.as_array().unwrap().len(), 0, "nothing stored: {jobs}");
}

#[tokio::test]
async fn a_restarted_server_keeps_leases_alive() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, 1 << 20);
    config.lease.ttl_ms = 1;
    // Before the restart: a lease taken with a 1 ms ttl, long overdue by the time the server starts.
    let (job_id, token, lease) = {
        let mut store = Store::open(&config.database).unwrap();
        let registered = store.register_worker(None, 1, None, 0).unwrap();
        let (worker, token) = (registered.worker_id, registered.token);
        let job = validate_deploy(
            serde_json::from_value(json!({"program": "(x) => x", "slices": [1]})).unwrap(),
            &DeployLimits::default(),
        )
        .unwrap();
        let job_id = store.deploy(job, 0).unwrap();
        let leased = store.lease(&worker, 1, &[], &[], 0, config.lease).unwrap();
        (job_id, token, serde_json::to_value(&leased.leases[0]).unwrap())
    };
    // The server extends it at start, before its reaper's first pass, so the result still lands.
    config.lease.ttl_ms = 60_000;
    // The job was stored without an owner: only an admin key sees it.
    let key = create_key(&config, "admin", true);
    let url = format!("http://{}", serve(config).await.0);
    let server = Server { url, http: reqwest::Client::new(), key, _dir: dir };
    // Let the new reaper run at least once.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, answer) = server.post("/results", Some(&token), json!({"results": [ok_item(&lease, json!(1))]})).await;
    assert_eq!(answer["acks"][0]["status"], "accepted", "{answer}");
    let (_, status) = server.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(status["state"], "complete");
}

#[tokio::test]
async fn a_closing_pages_beacon_releases_its_leases_at_no_cost() {
    let server = start(1 << 20).await;
    let (_, deployed) = server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1, 2]})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let worker = server.register().await;
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 2})).await;
    let released: Vec<Value> = leased["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lease| {
            json!({"lease_id": lease["lease_id"], "token": lease["token"],
                   "outcome": {"kind": "released", "reason": "the page was closed"}})
        })
        .collect();
    // What navigator.sendBeacon sends: text/plain, no Authorization header, the token in the body.
    let beacon = json!({"results": released, "worker_token": worker.token}).to_string();
    let response = server
        .http
        .post(format!("{}/v1/results", server.url))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(beacon)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let acks: Vec<_> = answer["acks"].as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(acks, vec!["released", "released"], "{answer}");
    let (_, history) = server.get(&format!("/jobs/{job_id}/slices/0")).await;
    assert_eq!(history["attempts_counted"], 0, "a release costs no attempt: {history}");
    let (_, status) = server.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(status["queued"], 2, "queued again at once: {status}");
    // Without a token anywhere, the beacon is refused.
    let bare = json!({"results": []}).to_string();
    let response = server.http.post(format!("{}/v1/results", server.url)).body(bare).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

#[tokio::test]
async fn contributors_register_and_read_their_credits_cross_origin() {
    let server = start(1 << 20).await;
    // Without an id the scheduler opens a contributor; with one it is the browser's own.
    let opened = server.register().await;
    assert!(tessera_protocol::is_contributor_id(&opened.contributor), "{}", opened.contributor);
    let dana = "dana-0123456789_abcdef";
    let (status, body) = server.post("/workers", None, json!({"sandboxes": 1, "contributor": dana})).await;
    assert_eq!(status, 200, "{body}");
    let worker: RegisterResponse = serde_json::from_value(body).unwrap();
    assert_eq!(worker.contributor, dana);
    for bad in [json!("short"), json!("sixteen chars but/slashes"), json!(7)] {
        let (status, error) = server.post("/workers", None, json!({"sandboxes": 1, "contributor": bad})).await;
        assert_eq!(
            (status, error["code"].as_str(), error["field"].as_str()),
            (400, Some("invalid_field"), Some("contributor")),
            "{error}"
        );
    }

    let (_, deployed) = server.deployer_post("/jobs", json!({"program": "(x) => x", "slices": [1, 2, 3, 4]})).await;
    let job_id = deployed["job_id"].as_str().unwrap();
    let (_, leased) = server.post("/leases", Some(&worker.token), json!({"max_slices": 4})).await;
    let leases = leased["leases"].as_array().unwrap();
    // Measured times well under the leases' age, so the cap does not touch them.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let measured = |lease: &Value, compute_ms: Option<u64>| {
        let mut item = ok_item(lease, lease["datum"].clone());
        if let Some(ms) = compute_ms {
            item["compute_ms"] = json!(ms);
        }
        item
    };
    let error = json!({"lease_id": leases[3]["lease_id"], "token": leases[3]["token"], "compute_ms": 90,
        "outcome": {"kind": "error", "message": "boom"}});
    let batch = json!({"results": [measured(&leases[0], Some(40)), measured(&leases[1], Some(35)),
                                   measured(&leases[2], None), error]});
    let (_, answer) = server.post("/results", Some(&worker.token), batch.clone()).await;
    let acks: Vec<_> = answer["acks"].as_array().unwrap().iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(acks, vec!["accepted"; 4], "{answer}");
    let (_, again) = server.post("/results", Some(&worker.token), batch).await;
    assert_eq!(again["acks"][0]["status"], "duplicate", "a resent batch credits nothing more: {again}");

    // What slice history shows as credited is what the contributor's totals say.
    let mut credited_in_history = 0;
    for slice in 0..4 {
        let (_, history) = server.get(&format!("/jobs/{job_id}/slices/{slice}")).await;
        let history: SliceHistory = serde_json::from_value(history).unwrap();
        credited_in_history += history.attempts.iter().filter_map(|attempt| attempt.compute_ms).sum::<u64>();
    }
    assert_eq!(credited_in_history, 75);
    let response = server
        .http
        .get(format!("{}/v1/workers/{dana}", server.url))
        .header("origin", "https://some-site-embedding-the-worker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*", "any page may show its volunteer's credits");
    let totals: Value = response.json().await.unwrap();
    assert_eq!(
        (&totals["contributor"], &totals["slices"], &totals["compute_ms"], &totals["credits"]),
        (&json!(dana), &json!(3), &json!(credited_in_history), &json!(0.075)),
        "{totals}"
    );
    assert!(totals["since_ms"].as_u64().unwrap() > 0, "{totals}");
    // No API key is needed; an unknown id is not found, a malformed one names the field.
    let (status, error) = server.call(reqwest::Method::GET, "/workers/nobody-0123456789abc", None, None).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")), "{error}");
    let (status, error) = server.call(reqwest::Method::GET, "/workers/x", None, None).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("contributor")), "{error}");
    let (status, fresh) =
        server.call(reqwest::Method::GET, &format!("/workers/{}", opened.contributor), None, None).await;
    assert_eq!((status, &fresh["slices"], &fresh["credits"]), (200, &json!(0), &json!(0.0)), "{fresh}");
}
