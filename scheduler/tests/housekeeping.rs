//! Housekeeping over real HTTP on a real SQLite file: the retention sweep, `DELETE
//! /v1/jobs/{id}`, and the OpenAPI description checked against docs/PROTOCOL.md.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{create_key, serve_with_housekeeping, test_config};
use serde_json::{json, Value};
use tessera_protocol::{JobDeleted, LeaseResponse, RegisterResponse};
use tessera_scheduler::server::{now_ms, Housekeeping};

const DAY: Duration = Duration::from_secs(86_400);

struct Server {
    url: String,
    http: reqwest::Client,
    /// A deployer key (not an admin one).
    key: String,
    config: tessera_scheduler::server::ServerConfig,
    housekeeping: Housekeeping,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&dir);
    let (addr, key, housekeeping) = serve_with_housekeeping(config.clone()).await;
    Server { url: format!("http://{addr}"), http: reqwest::Client::new(), key, config, housekeeping, _dir: dir }
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}/v1{}", self.url, path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.key), None).await
    }

    async fn delete(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, key, None).await
    }

    async fn deploy(&self, body: Value) -> String {
        let (status, answer) = self.call(reqwest::Method::POST, "/jobs", Some(&self.key), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer["job_id"].as_str().unwrap().to_string()
    }

    async fn bundle(&self, text: &str) -> String {
        let bytes = tessera_protocol::bundle::pack(&[tessera_protocol::BundleEntry::File {
            path: "helper.py".into(),
            bytes: text.as_bytes().to_vec(),
        }])
        .unwrap();
        let response = self
            .http
            .put(format!("{}/v1/bundles", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/gzip")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["sha256"].as_str().unwrap().to_string()
    }

    async fn bundle_status(&self, sha256: &str) -> u16 {
        self.http.get(format!("{}/v1/bundles/{sha256}", self.url)).send().await.unwrap().status().as_u16()
    }

    /// Registers a worker crediting `contributor`; returns its token.
    async fn register(&self, contributor: &str) -> String {
        let body = json!({"sandboxes": 1, "contributor": contributor});
        let (status, answer) = self.call(reqwest::Method::POST, "/workers", None, Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        serde_json::from_value::<RegisterResponse>(answer).unwrap().token
    }

    /// Leases every queued slice with `token` and returns each with its datum as the result,
    /// with a console line and a measured time.
    async fn run_all(&self, token: &str) {
        let ask = json!({"max_slices": 100, "wait_ms": 0});
        let (status, answer) = self.call(reqwest::Method::POST, "/leases", Some(token), Some(ask)).await;
        assert_eq!(status, 200, "{answer}");
        let leases = serde_json::from_value::<LeaseResponse>(answer).unwrap().leases;
        assert!(!leases.is_empty());
        let results: Vec<Value> = leases
            .iter()
            .map(|lease| {
                json!({"lease_id": lease.lease_id, "token": lease.token, "compute_ms": 3,
                       "outcome": {"kind": "ok", "value": lease.datum},
                       "console": [{"slice": lease.slice, "stream": "stdout", "text": "hi"}]})
            })
            .collect();
        let (status, answer) =
            self.call(reqwest::Method::POST, "/results", Some(token), Some(json!({"results": results}))).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["acks"].as_array().unwrap().iter().all(|ack| ack["status"] == "accepted"), "{answer}");
    }
}

fn python_job(bundle: &str) -> Value {
    json!({"worktime": "pyodide", "program": "import dcp\ndcp.set_slice_handler(lambda x: x)\n",
           "slices": [1, 2], "bundle": bundle})
}

#[tokio::test]
async fn retention_deletes_an_expired_job_with_its_results_and_bundle_and_nothing_else() {
    let server = start().await;
    let contributor = "retention-test-volunteer";
    let worker = server.register(contributor).await;
    let old_bundle = server.bundle("X = 1\n").await;
    let old = server.deploy(python_job(&old_bundle)).await;
    server.run_all(&worker).await;
    let (_, status) = server.get(&format!("/jobs/{old}")).await;
    assert_eq!(status["state"], "complete", "{status}");
    let kept_bundle = server.bundle("Y = 2\n").await;
    let running = server.deploy(python_job(&kept_bundle)).await;
    let (_, credits_before) = server.call(reqwest::Method::GET, &format!("/workers/{contributor}"), None, None).await;
    assert_eq!(credits_before["slices"], 2, "{credits_before}");

    // Nothing has ended a day ago yet: a pass now deletes nothing.
    assert!(server.housekeeping.sweep(now_ms(), DAY).await.unwrap().is_empty());
    assert_eq!(server.get(&format!("/jobs/{old}")).await.0, 200);

    // Two days on, with one day's retention: the finished job goes, with its bundle (no other
    // job names it and its upload is long past); the running job and its bundle stay.
    let deleted = server.housekeeping.sweep(now_ms() + 2 * DAY.as_millis() as u64, DAY).await.unwrap();
    assert_eq!(deleted, vec![JobDeleted { job_id: old.clone(), slices: 2, bundle_deleted: true }]);
    for path in [format!("/jobs/{old}"), format!("/jobs/{old}/results"), format!("/jobs/{old}/console")] {
        let (status, error) = server.get(&path).await;
        assert_eq!((status, error["code"].as_str()), (404, Some("not_found")), "{path}: {error}");
    }
    assert_eq!(server.bundle_status(&old_bundle).await, 404);
    assert_eq!(server.bundle_status(&kept_bundle).await, 200);
    let (status, job) = server.get(&format!("/jobs/{running}")).await;
    assert_eq!((status, job["queued"].as_u64()), (200, Some(2)), "{job}");
    let (_, jobs) = server.get("/jobs").await;
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    let (_, credits_after) = server.call(reqwest::Method::GET, &format!("/workers/{contributor}"), None, None).await;
    assert_eq!(credits_after, credits_before, "contributors keep their credits");
}

#[tokio::test]
async fn delete_needs_the_owner_refuses_a_running_job_and_leaves_a_404() {
    let server = start().await;
    let job = server.deploy(json!({"program": "(x) => x", "slices": [1, 2, 3]})).await;
    let path = format!("/jobs/{job}");

    let (status, error) = server.delete(&path, None).await;
    assert_eq!((status, error["code"].as_str()), (401, Some("unauthorized")), "{error}");
    let stranger = create_key(&server.config, "stranger", false);
    let (status, error) = server.delete(&path, Some(&stranger)).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")), "another deployer's job: {error}");

    let (status, error) = server.delete(&path, Some(&server.key)).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")), "{error}");
    assert!(error["message"].as_str().unwrap().contains("cancel it first"), "{error}");
    assert_eq!(server.get(&path).await.1["state"], "running", "a refusal changes nothing");

    let (status, _) =
        server.call(reqwest::Method::POST, &format!("{path}/cancel"), Some(&server.key), Some(json!({}))).await;
    assert_eq!(status, 200);
    let (status, deleted) = server.delete(&path, Some(&server.key)).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(
        serde_json::from_value::<JobDeleted>(deleted).unwrap(),
        JobDeleted { job_id: job.clone(), slices: 3, bundle_deleted: false }
    );
    for path in [path.clone(), format!("{path}/results"), format!("{path}/slices/0")] {
        assert_eq!(server.get(&path).await.0, 404, "{path}");
    }
    let (status, error) = server.delete(&path, Some(&server.key)).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")), "deleting again: {error}");

    // An admin key may delete any deployer's finished job.
    let other = server.deploy(json!({"program": "(x) => x", "slices": [1]})).await;
    let admin = create_key(&server.config, "admin-2", true);
    let other_path = format!("/jobs/{other}");
    server.call(reqwest::Method::POST, &format!("{other_path}/cancel"), Some(&admin), Some(json!({}))).await;
    assert_eq!(server.delete(&other_path, Some(&admin)).await.0, 200);
    assert_eq!(server.get(&other_path).await.0, 404);
}

/// `METHOD /v1/path` pairs mentioned in `text` (query strings dropped).
fn endpoints_in(text: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let needle = format!("{method} /v1/");
        let mut rest = text;
        while let Some(at) = rest.find(&needle) {
            let after = &rest[at + method.len() + 1..];
            let end = after
                .find(|c: char| c.is_whitespace() || matches!(c, '`' | '?' | ',' | ')' | '"'))
                .unwrap_or(after.len());
            found.insert((method.to_string(), after[..end].to_string()));
            rest = &after[end..];
        }
    }
    found
}

#[tokio::test]
async fn the_openapi_description_matches_protocol_md_and_the_router() {
    let server = start().await;
    // Open: no key needed.
    let response = server.http.get(format!("{}/v1/openapi.json", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let description: Value = response.json().await.unwrap();
    assert!(description["openapi"].as_str().unwrap().starts_with("3.1"), "{}", description["openapi"]);
    let schemes = &description["components"]["securitySchemes"];
    assert_eq!(
        (schemes["api_key"]["type"].as_str(), schemes["api_key"]["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    for schema in ["DeployRequest", "JobStatus", "JobDeleted", "ApiError", "SliceOutcome", "ContributorTotals"] {
        assert!(description["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    let mut described = BTreeSet::new();
    for (path, item) in description["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            described.insert((method.to_uppercase(), path.clone()));
            let secured = operation["security"].as_array().map(|security| !security.is_empty()).unwrap_or(false);
            let deployer = operation["tags"][0] == "jobs" || operation["tags"][0] == "keys";
            assert_eq!(secured, deployer || path.starts_with("/v1/leases") || path == "/v1/results", "{method} {path}");
        }
    }

    let protocol = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap();
    let documented = endpoints_in(&protocol);
    let undocumented: Vec<_> = described.difference(&documented).collect();
    assert!(undocumented.is_empty(), "in openapi.json but not in docs/PROTOCOL.md: {undocumented:?}");
    let missing: Vec<_> = documented.difference(&described).collect();
    assert!(missing.is_empty(), "in docs/PROTOCOL.md but not in openapi.json: {missing:?}");

    // Every described operation is routed: the server answers it itself (a JSON error at worst),
    // never with 405 or the static site's 404.
    for (method, path) in &described {
        let concrete = path.replace("{contributor}", "nobody-nobody-nobody").replace('{', "x").replace('}', "");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let content_type = if path == "/v1/bundles" { "application/gzip" } else { "application/json" };
        let response = server
            .http
            .request(method.clone(), format!("{}{concrete}", server.url))
            .bearer_auth(&server.key)
            .header("content-type", content_type)
            .body(if method == reqwest::Method::GET || method == reqwest::Method::DELETE { "" } else { "{}" })
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {concrete}");
        if status == 404 {
            assert_eq!(body["code"], "not_found", "{method} {concrete} fell through to the static site");
        }
    }
}
