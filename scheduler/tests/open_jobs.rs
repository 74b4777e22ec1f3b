//! Open jobs over real HTTP on a loopback port, against a real SQLite file: deployed open (with
//! or without slices), fed more slices in pages, leased and run as they arrive, never complete
//! until closed, and closed.

use serde_json::{json, Value};
use tessera_protocol::Lease;

mod common;
use common::{create_key, TestServer};

impl TestServer {
    async fn call(&self, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}/v1{path}", self.url)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, &self.key, Some(body)).await
    }

    async fn status(&self, job_id: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/jobs/{job_id}"), &self.key, None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Returns each leased datum doubled.
    async fn finish(&self, worker: &str, leases: &[Lease]) {
        let results: Vec<Value> = leases
            .iter()
            .map(|lease| {
                json!({"lease_id": lease.lease_id, "token": lease.token,
                                "outcome": {"kind": "ok", "value": lease.datum.as_i64().unwrap() * 2}})
            })
            .collect();
        self.submit_accepted(worker, results).await;
    }
}

#[tokio::test]
async fn an_open_job_takes_slices_in_pages_and_completes_only_once_closed() {
    let server = TestServer::start().await;
    let (status, deployed) = server.post("/jobs", json!({"program": "(x) => x * 2", "open": true})).await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["total"], 0);
    let job_id = deployed["job_id"].as_str().unwrap().to_string();
    let job = server.status(&job_id).await;
    assert_eq!(
        (job["state"].as_str(), job["open"].as_bool(), job["total"].as_u64()),
        (Some("running"), Some(true), Some(0))
    );

    let (status, page) = server.post(&format!("/jobs/{job_id}/slices"), json!({"slices": [0, 1, 2]})).await;
    assert_eq!((status, page), (200, json!({"first": 0, "total": 3})));
    let worker = server.register_worker().await;
    let leases = server.lease(&worker, 100).await;
    assert_eq!(leases.iter().map(|lease| lease.slice).collect::<Vec<_>>(), vec![0, 1, 2]);
    server.finish(&worker, &leases).await;
    let job = server.status(&job_id).await;
    assert_eq!((job["state"].as_str(), job["done"].as_u64()), (Some("running"), Some(3)), "open: not complete yet");

    let (status, page) = server.post(&format!("/jobs/{job_id}/slices"), json!({"slices": [3, 4]})).await;
    assert_eq!((status, page), (200, json!({"first": 3, "total": 5})));
    let leases = server.lease(&worker, 100).await;
    assert_eq!(
        leases.iter().map(|lease| (lease.slice, lease.datum.clone())).collect::<Vec<_>>(),
        vec![(3, json!(3)), (4, json!(4))]
    );
    server.finish(&worker, &leases).await;

    let (status, closed) = server.post(&format!("/jobs/{job_id}/close"), json!({})).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!((closed["state"].as_str(), closed["done"].as_u64()), (Some("complete"), Some(5)));
    assert_eq!(closed.get("open"), None, "a closed job is not open");
    let (_, results) = server.call(reqwest::Method::GET, &format!("/jobs/{job_id}/results"), &server.key, None).await;
    let values: Vec<i64> =
        results["results"].as_array().unwrap().iter().map(|r| r["value"].as_i64().unwrap()).collect();
    assert_eq!(values, vec![0, 2, 4, 6, 8]);

    // Closed: no more slices; closing again changes nothing.
    let (status, refused) = server.post(&format!("/jobs/{job_id}/slices"), json!({"slices": [5]})).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("slices")), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("not open"), "{refused}");
    let (status, again) = server.post(&format!("/jobs/{job_id}/close"), json!({})).await;
    assert_eq!((status, again["state"].as_str()), (200, Some("complete")));
    assert_eq!(server.status(&job_id).await["total"], 5);
}

#[tokio::test]
async fn closing_an_open_job_with_work_left_completes_it_when_the_work_is_done() {
    let server = TestServer::start().await;
    let (status, deployed) =
        server.post("/jobs", json!({"program": "(x) => x * 2", "open": true, "slices": [7]})).await;
    assert_eq!((status, deployed["total"].as_u64()), (200, Some(1)));
    let job_id = deployed["job_id"].as_str().unwrap().to_string();
    let worker = server.register_worker().await;
    let leases = server.lease(&worker, 100).await;
    let (_, closed) = server.post(&format!("/jobs/{job_id}/close"), json!({})).await;
    assert_eq!((closed["state"].as_str(), closed["leased"].as_u64()), (Some("running"), Some(1)));
    server.finish(&worker, &leases).await;
    assert_eq!(server.status(&job_id).await["state"], "complete");

    // An open job closed with no slices at all is complete at once.
    let (_, empty) = server.post("/jobs", json!({"program": "(x) => x", "open": true})).await;
    let empty = empty["job_id"].as_str().unwrap().to_string();
    let (_, closed) = server.post(&format!("/jobs/{empty}/close"), json!({})).await;
    assert_eq!((closed["state"].as_str(), closed["total"].as_u64()), (Some("complete"), Some(0)));
}

#[tokio::test]
async fn adding_slices_is_refused_clearly_and_stores_nothing() {
    let server = TestServer::start().await;
    let (_, closed_job) = server.post("/jobs", json!({"program": "(x) => x", "slices": [1]})).await;
    let closed_job = closed_job["job_id"].as_str().unwrap().to_string();
    let (status, refused) = server.post(&format!("/jobs/{closed_job}/slices"), json!({"slices": [2]})).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("slices")), "{refused}");

    let (_, open) = server.post("/jobs", json!({"program": "(x) => x", "open": true})).await;
    let open = open["job_id"].as_str().unwrap().to_string();
    let (status, refused) = server.post(&format!("/jobs/{open}/slices"), json!({"slices": []})).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("slices")));
    let (status, refused) = server.post(&format!("/jobs/{open}/slices"), json!({"slices": "x"})).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("slices")), "{refused}");
    // Another deployer's job does not exist for them; without a key, nothing happens.
    let other = create_key(&server.config, "other", false);
    let (status, _) =
        server.call(reqwest::Method::POST, &format!("/jobs/{open}/slices"), &other, Some(json!({"slices": [1]}))).await;
    assert_eq!(status, 404);
    let (status, _) = server.call(reqwest::Method::POST, &format!("/jobs/{open}/close"), &other, Some(json!({}))).await;
    assert_eq!(status, 404);
    let response = server.http.post(format!("{}/v1/jobs/{open}/slices", server.url)).json(&json!({"slices": [1]}));
    assert_eq!(response.send().await.unwrap().status(), 401);
    // A cancelled open job takes no more.
    let (_, _) = server.post(&format!("/jobs/{open}/cancel"), json!({})).await;
    let (status, refused) = server.post(&format!("/jobs/{open}/slices"), json!({"slices": [1]})).await;
    assert_eq!(status, 400);
    assert!(refused["message"].as_str().unwrap().contains("cancelled"), "{refused}");
    assert_eq!(server.status(&open).await["total"], 0, "nothing was stored");
}

#[tokio::test]
async fn an_open_job_needs_no_slices_but_a_closed_one_does() {
    let server = TestServer::start().await;
    let (status, refused) = server.post("/jobs", json!({"program": "(x) => x"})).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("slices")));
    let (status, refused) = server.post("/jobs", json!({"program": "(x) => x", "slices": []})).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("slices")));
    let (status, _) = server.post("/jobs", json!({"program": "(x) => x", "slices": [], "open": true})).await;
    assert_eq!(status, 200);
}
