//! Deployer authentication and job ownership over real HTTP on a loopback port, against a real
//! SQLite file (docs/SECURITY.md, "Deployer ↔ scheduler"): every refusal is a clear error and
//! stores nothing.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tessera_scheduler::server::ServerConfig;

mod common;
use common::{create_key, serve, test_config};

struct Server {
    url: String,
    http: reqwest::Client,
    /// A deployer key ("tester", not admin).
    key: String,
    /// An admin key.
    admin: String,
    config: ServerConfig,
    _dir: tempfile::TempDir,
}

async fn start_with(edit: impl FnOnce(&mut ServerConfig)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    edit(&mut config);
    let admin = create_key(&config, "admin", true);
    let (addr, key) = serve(config.clone()).await;
    Server { url: format!("http://{addr}"), http: reqwest::Client::new(), key, admin, config, _dir: dir }
}

async fn start() -> Server {
    start_with(|_| {}).await
}

/// A response's status, JSON body and headers.
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl Server {
    fn request(&self, method: reqwest::Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}/v1{path}", self.url));
        match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn send(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Answer { status, body: response.json().await.unwrap_or(Value::Null), headers }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        Self::send(self.request(reqwest::Method::GET, path, key)).await
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> Answer {
        Self::send(self.request(reqwest::Method::POST, path, key).json(&body)).await
    }

    /// Deploys a three-slice job with `key`; returns its id.
    async fn deploy(&self, key: &str) -> String {
        let answer = self.post("/jobs", Some(key), json!({"program": "(x) => x", "slices": [1, 2, 3]})).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["job_id"].as_str().unwrap().to_string()
    }

    /// Every job, as the admin key sees them.
    async fn all_jobs(&self) -> Vec<Value> {
        let answer = self.get("/jobs", Some(&self.admin)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body.as_array().unwrap().clone()
    }

    /// Makes a key through the API with the admin key.
    async fn new_key(&self, name: &str, admin: bool) -> Value {
        let answer = self.post("/keys", Some(&self.admin), json!({"name": name, "admin": admin})).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body
    }
}

fn assert_unauthorized(answer: &Answer, message: &str) {
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(answer.body["code"], "unauthorized", "{}", answer.body);
    assert_eq!(answer.body["field"], "authorization", "{}", answer.body);
    assert!(answer.body["message"].as_str().unwrap().contains(message), "{}", answer.body);
    assert!(answer.headers.contains_key("www-authenticate"), "a 401 names its scheme");
}

#[tokio::test]
async fn no_key_or_a_wrong_key_is_refused_with_401_and_nothing_stored() {
    let server = start().await;
    let deploy = json!({"program": "(x) => x", "slices": [1]});
    let answer = server.post("/jobs", None, deploy.clone()).await;
    assert_unauthorized(&answer, "missing `Authorization: Bearer <API key>`");
    assert!(answer.body["message"].as_str().unwrap().contains("TESSERA_API_KEY"), "{}", answer.body);
    // Malformed, unknown, and a real key's id with a wrong secret: the same answer for all three.
    let (id, _) = server.key.strip_prefix("tsk_").unwrap().split_once('_').unwrap();
    for wrong in ["not-a-key", "tsk_knope_0123", &format!("tsk_{id}_{}", "0".repeat(48))] {
        let answer = server.post("/jobs", Some(wrong), deploy.clone()).await;
        assert_unauthorized(&answer, "unknown API key");
    }
    // Every deployer endpoint asks for the key, also for a job that exists.
    let job_id = server.deploy(&server.key).await;
    for path in [
        "/jobs".to_string(),
        format!("/jobs/{job_id}"),
        format!("/jobs/{job_id}/results"),
        format!("/jobs/{job_id}/console"),
        format!("/jobs/{job_id}/slices/0"),
        "/keys".to_string(),
    ] {
        assert_unauthorized(&server.get(&path, None).await, "missing");
    }
    assert_unauthorized(&server.post(&format!("/jobs/{job_id}/cancel"), None, json!({})).await, "missing");
    let bundle = tessera_protocol::bundle::pack(&[tessera_protocol::BundleEntry::File {
        path: "m.py".into(),
        bytes: b"X = 1".to_vec(),
    }])
    .unwrap();
    let upload = server
        .request(reqwest::Method::PUT, "/bundles", None)
        .header("content-type", "application/gzip")
        .body(bundle.clone());
    assert_unauthorized(&Server::send(upload).await, "missing");
    // Nothing stored: the one job is the one deployed with the key, still running; no bundle.
    let jobs = server.all_jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "running");
    let sha256 = tessera_protocol::bundle::content_address(&bundle);
    assert_eq!(server.get(&format!("/bundles/{sha256}"), None).await.status, 404);
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_its_next_request() {
    let server = start().await;
    let bob = server.new_key("bob", false).await;
    let bob_key = bob["key"].as_str().unwrap().to_string();
    let job_id = server.deploy(&bob_key).await;
    // Read once, so the key is in the scheduler's cache of verified keys.
    assert_eq!(server.get(&format!("/jobs/{job_id}"), Some(&bob_key)).await.status, 200);
    let revoked =
        server.post(&format!("/keys/{}/revoke", bob["id"].as_str().unwrap()), Some(&server.admin), json!({})).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(revoked.body["revoked_ms"].as_u64().is_some(), "{}", revoked.body);
    assert_unauthorized(&server.get(&format!("/jobs/{job_id}"), Some(&bob_key)).await, "was revoked");
    let answer = server.post("/jobs", Some(&bob_key), json!({"program": "(x) => x", "slices": [1]})).await;
    assert_unauthorized(&answer, "(bob) was revoked");
    assert_eq!(server.all_jobs().await.len(), 1, "the revoked key's deploy stored nothing");
    // Revoking again changes nothing; other keys keep working.
    let again =
        server.post(&format!("/keys/{}/revoke", bob["id"].as_str().unwrap()), Some(&server.admin), json!({})).await;
    assert_eq!((again.status, &again.body["revoked_ms"]), (200, &revoked.body["revoked_ms"]));
    assert_eq!(server.get("/jobs", Some(&server.key)).await.status, 200);
}

#[tokio::test]
async fn another_deployer_can_neither_read_nor_cancel_a_job() {
    let server = start().await;
    let alice = server.new_key("alice", false).await["key"].as_str().unwrap().to_string();
    let job_id = server.deploy(&alice).await;
    let bobs_job = server.deploy(&server.key).await;
    // The other deployer is told what it would be told for a job that does not exist.
    let nonexistent = server.get("/jobs/jnope", Some(&server.key)).await;
    assert_eq!((nonexistent.status, nonexistent.body["code"].as_str()), (404, Some("not_found")));
    for path in [
        format!("/jobs/{job_id}"),
        format!("/jobs/{job_id}/results"),
        format!("/jobs/{job_id}/console"),
        format!("/jobs/{job_id}/slices/0"),
    ] {
        let answer = server.get(&path, Some(&server.key)).await;
        assert_eq!((answer.status, answer.body["code"].as_str()), (404, Some("not_found")), "{path}: {}", answer.body);
        assert_eq!(answer.body["message"], format!("job `{job_id}` does not exist"), "{path}");
    }
    let cancel = server.post(&format!("/jobs/{job_id}/cancel"), Some(&server.key), json!({})).await;
    assert_eq!((cancel.status, cancel.body["code"].as_str()), (404, Some("not_found")), "{}", cancel.body);
    // The owner's job is untouched, and each deployer lists only its own jobs.
    let status = server.get(&format!("/jobs/{job_id}"), Some(&alice)).await;
    assert_eq!(
        (status.status, status.body["state"].as_str(), status.body["queued"].as_u64()),
        (200, Some("running"), Some(3))
    );
    let ids = |answer: Answer| -> Vec<String> {
        answer.body.as_array().unwrap().iter().map(|job| job["job_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(server.get("/jobs", Some(&alice)).await), vec![job_id.clone()]);
    assert_eq!(ids(server.get("/jobs", Some(&server.key)).await), vec![bobs_job.clone()]);
    // An admin key sees and cancels any job.
    assert_eq!(ids(server.get("/jobs", Some(&server.admin)).await).len(), 2);
    assert_eq!(server.get(&format!("/jobs/{job_id}/results"), Some(&server.admin)).await.status, 200);
    let cancelled = server.post(&format!("/jobs/{job_id}/cancel"), Some(&server.admin), json!({})).await;
    assert_eq!((cancelled.status, cancelled.body["state"].as_str()), (200, Some("cancelled")));
}

#[tokio::test]
async fn a_cross_origin_plain_text_deploy_is_refused_with_415_and_nothing_stored() {
    let server = start().await;
    let body = json!({"program": "(x) => x", "slices": [1]}).to_string();
    // What a page on another origin can send without asking first: text/plain, a form, nothing.
    for content_type in [Some("text/plain;charset=UTF-8"), Some("application/x-www-form-urlencoded"), None] {
        let mut request = server
            .request(reqwest::Method::POST, "/jobs", Some(&server.key))
            .header("origin", "http://evil.example")
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let answer = Server::send(request).await;
        assert_eq!(answer.status, 415, "{content_type:?}: {}", answer.body);
        assert_eq!(answer.body["code"], "unsupported_media_type");
        assert_eq!(answer.body["field"], "content-type");
        assert!(
            answer.body["message"].as_str().unwrap().contains("`Content-Type: application/json`"),
            "{}",
            answer.body
        );
        assert!(!answer.headers.contains_key("access-control-allow-origin"), "{content_type:?}");
    }
    let cancel = server.request(reqwest::Method::POST, "/jobs/jx/cancel", Some(&server.key)).body("{}");
    assert_eq!(Server::send(cancel.header("content-type", "text/plain")).await.status, 415);
    let bundle = server.request(reqwest::Method::PUT, "/bundles", Some(&server.key)).body(b"x".to_vec());
    let answer = Server::send(bundle.header("content-type", "text/plain")).await;
    assert_eq!(answer.status, 415, "{}", answer.body);
    assert!(answer.body["message"].as_str().unwrap().contains("application/gzip"), "{}", answer.body);
    assert!(server.all_jobs().await.is_empty(), "nothing stored");

    // Deployer endpoints send no CORS headers, not even to a preflight; worker endpoints and the
    // static files do.
    let listed =
        server.request(reqwest::Method::GET, "/jobs", Some(&server.key)).header("origin", "http://evil.example");
    let listed = Server::send(listed).await;
    assert_eq!(listed.status, 200);
    assert!(!listed.headers.contains_key("access-control-allow-origin"));
    assert_eq!(listed.headers["cross-origin-resource-policy"], "same-origin");
    let preflight = server
        .request(reqwest::Method::OPTIONS, "/jobs", None)
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type");
    let preflight = Server::send(preflight).await;
    assert!(!preflight.headers.contains_key("access-control-allow-origin"), "status {}", preflight.status);
    for path in ["/v1/health", "/v1/packages", "/sandbox.html", "/contribute.js"] {
        let response = server
            .http
            .get(format!("{}{path}", server.url))
            .header("origin", "http://elsewhere.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["access-control-allow-origin"], "*", "{path}");
    }
    let register = server
        .http
        .post(format!("{}/v1/workers", server.url))
        .header("origin", "http://elsewhere.example")
        .json(&json!({"sandboxes": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 200);
    assert_eq!(register.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn listed_deployer_origins_get_cors_and_still_need_a_key() {
    let server = start_with(|config| config.deployer_origins = vec!["http://dash.example".into()]).await;
    let preflight = |origin: &'static str| {
        server
            .request(reqwest::Method::OPTIONS, "/jobs", None)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
    };
    let allowed = Server::send(preflight("http://dash.example")).await;
    assert_eq!(allowed.headers["access-control-allow-origin"], "http://dash.example");
    let other = Server::send(preflight("http://evil.example")).await;
    assert!(!other.headers.contains_key("access-control-allow-origin"));
    let keyless = server.request(reqwest::Method::GET, "/jobs", None).header("origin", "http://dash.example");
    assert_eq!(Server::send(keyless).await.status, 401);
}

#[tokio::test]
async fn a_private_pool_registers_only_workers_with_its_key() {
    let server = start_with(|config| config.worker_key = Some("pool-secret".into())).await;
    let answer = server.post("/workers", None, json!({"sandboxes": 1})).await;
    assert_eq!(
        (answer.status, answer.body["code"].as_str(), answer.body["field"].as_str()),
        (403, Some("wrong_token"), Some("worker_key"))
    );
    assert!(answer.body["message"].as_str().unwrap().contains("private pool"), "{}", answer.body);
    let answer = server.post("/workers", None, json!({"sandboxes": 1, "worker_key": "guess"})).await;
    assert_eq!((answer.status, answer.body["field"].as_str()), (403, Some("worker_key")), "{}", answer.body);
    assert!(answer.body["message"].as_str().unwrap().contains("wrong worker key"), "{}", answer.body);
    let answer = server.post("/workers", None, json!({"sandboxes": 1, "worker_key": "pool-secret"})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let token = answer.body["token"].as_str().unwrap().to_string();
    server.deploy(&server.key).await;
    let leased = server.post("/leases", Some(&token), json!({"max_slices": 5})).await;
    assert_eq!((leased.status, leased.body["leases"].as_array().map(Vec::len)), (200, Some(3)));
    // An open scheduler ignores a worker key.
    let open = start().await;
    assert_eq!(open.post("/workers", None, json!({"sandboxes": 1, "worker_key": "any"})).await.status, 200);
}

#[tokio::test]
async fn only_admin_keys_manage_keys_and_secrets_are_shown_once() {
    let server = start().await;
    let refused = server.post("/keys", Some(&server.key), json!({"name": "sneaky", "admin": true})).await;
    assert_eq!((refused.status, refused.body["code"].as_str()), (403, Some("forbidden")), "{}", refused.body);
    assert_eq!(server.get("/keys", Some(&server.key)).await.status, 403);
    let created = server.new_key("ci", false).await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(key.starts_with(&format!("tsk_{id}_")), "{created}");
    let listed = server.get("/keys", Some(&server.admin)).await;
    assert_eq!(listed.status, 200);
    let text = listed.body.to_string();
    let secret = key.rsplit('_').next().unwrap();
    assert!(!text.contains(secret) && !text.contains("hash"), "a listing shows no secret: {text}");
    let names: Vec<&str> = listed.body.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["admin", "tester", "ci"]);
    let bad = server.post("/keys", Some(&server.admin), json!({"name": ""})).await;
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("name")));
    let unknown = server.post("/keys/knope/revoke", Some(&server.admin), json!({})).await;
    assert_eq!(unknown.status, 404);
    // The last admin key cannot be revoked: no one could manage keys any more.
    let admin_id = listed.body[0]["id"].as_str().unwrap();
    let last = server.post(&format!("/keys/{admin_id}/revoke"), Some(&server.admin), json!({})).await;
    assert_eq!((last.status, last.body["field"].as_str()), (400, Some("id")), "{}", last.body);
    assert!(last.body["message"].as_str().unwrap().contains("last admin key"), "{}", last.body);
}

#[tokio::test]
async fn the_database_holds_only_a_hash_of_each_key() {
    let server = start().await;
    let created = server.new_key("stored", false).await;
    let key = created["key"].as_str().unwrap();
    let secret = key.rsplit('_').next().unwrap();
    assert_eq!(secret.len(), 48, "192 random bits");
    let connection = rusqlite::Connection::open(&server.config.database).unwrap();
    let hash: String = connection
        .query_row("SELECT hash FROM api_keys WHERE id = ?1", [created["id"].as_str().unwrap()], |row| row.get(0))
        .unwrap();
    assert_eq!(hash, hex::encode(Sha256::digest(secret.as_bytes())));
    drop(connection);
    // Neither the key nor its secret is anywhere in the database or its write-ahead log.
    for file in [server.config.database.clone(), server.config.database.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(secret), "{} holds the secret", file.display());
    }
}
