//! `GET /v1/jobs/{id}/events` over real HTTP on a loopback port, against a real SQLite file:
//! events arrive in order with their positions, a stream resumed from the last position misses
//! nothing and repeats nothing, and the stream ends after the job's final state.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tessera_protocol::Lease;

mod common;
use common::{create_key, TestServer};

/// One server-sent event: its `id:` (none for `progress`), name and JSON data.
#[derive(Clone, Debug)]
struct Sse {
    id: Option<u64>,
    name: String,
    data: Value,
}

/// Reads server-sent events off a streaming response, one at a time.
struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

impl EventReader {
    /// The next event, skipping keep-alive comments; `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse().unwrap());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if name.is_empty() {
                    continue; // a comment (keep-alive)
                }
                return Some(Sse { id, name, data: serde_json::from_str(&data).unwrap() });
            }
            match self.response.chunk().await.unwrap() {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => {
                    assert!(self.buffer.trim().is_empty(), "the stream ended mid-event: {:?}", self.buffer);
                    return None;
                }
            }
        }
    }

    /// The next event that has a position (skipping `progress`).
    async fn next_logged(&mut self) -> Option<Sse> {
        loop {
            let event = self.next().await?;
            if event.name != "progress" {
                return Some(event);
            }
            assert_eq!(event.id, None, "progress events carry no position");
        }
    }
}

impl TestServer {
    async fn deploy(&self, slices: Value) -> String {
        let response = self
            .http
            .post(format!("{}/v1/jobs", self.url))
            .bearer_auth(&self.key)
            .json(&json!({"program": "(x) => x", "slices": slices}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_string()
    }

    fn events_request(&self, job_id: &str, query: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}/v1/jobs/{job_id}/events{query}", self.url))
    }

    async fn events(&self, job_id: &str, after: u64) -> EventReader {
        let response = self.events_request(job_id, &format!("?after={after}")).bearer_auth(&self.key).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        EventReader { response, buffer: String::new() }
    }

    /// Returns each lease's datum as its value, with one console line per slice.
    async fn finish(&self, worker: &str, leases: &[Lease]) {
        let results: Vec<Value> = leases
            .iter()
            .map(|lease| {
                json!({"lease_id": lease.lease_id, "token": lease.token, "outcome": {"kind": "ok", "value": lease.datum},
                       "console": [{"slice": lease.slice, "stream": "stdout", "text": format!("slice {}", lease.slice)}]})
            })
            .collect();
        self.submit_accepted(worker, results).await;
    }
}

#[tokio::test]
async fn events_arrive_in_order_with_positions_and_the_stream_ends_at_the_final_state() {
    let server = TestServer::start().await;
    let job_id = server.deploy(json!([10, 11, 12])).await;
    let mut stream = server.events(&job_id, 0).await;
    let first = stream.next_logged().await.unwrap();
    assert_eq!((first.id, first.name.as_str(), first.data["state"].as_str()), (Some(1), "state", Some("running")));
    assert_eq!(first.data["total"], 3);

    let worker = server.register_worker().await;
    let leases = server.lease(&worker, 3).await;
    server.finish(&worker, &leases[..1]).await;
    let console = stream.next_logged().await.unwrap();
    assert_eq!((console.id, console.name.as_str()), (Some(2), "console"));
    assert_eq!((console.data["slice"].as_u64(), console.data["text"].as_str()), (Some(0), Some("slice 0")));
    assert_eq!(console.data["stream"], "stdout");
    let result = stream.next_logged().await.unwrap();
    assert_eq!((result.id, result.name.as_str()), (Some(3), "result"));
    assert_eq!(result.data, json!({"slice": 0, "status": "ok", "value": 10}));

    let error = json!({"lease_id": leases[1].lease_id, "token": leases[1].token,
                       "outcome": {"kind": "error", "message": "ValueError: 11", "stack": "Traceback …"}});
    let response =
        server.http.post(format!("{}/v1/results", server.url)).bearer_auth(&worker).json(&json!({"results": [error]}));
    assert_eq!(response.send().await.unwrap().status(), 200);
    let failed = stream.next_logged().await.unwrap();
    assert_eq!(failed.id, Some(4));
    assert_eq!(failed.data, json!({"slice": 1, "status": "error", "error": "ValueError: 11", "stack": "Traceback …"}));

    server.finish(&worker, &leases[2..]).await;
    let mut rest = Vec::new();
    while let Some(event) = stream.next().await {
        rest.push(event);
    }
    let logged: Vec<_> = rest.iter().filter(|event| event.name != "progress").collect();
    let names: Vec<_> = logged.iter().map(|event| (event.id.unwrap(), event.name.as_str())).collect();
    assert_eq!(names, vec![(5, "console"), (6, "result"), (7, "state")], "{rest:?}");
    let last = logged[2];
    assert_eq!((last.data["state"].as_str(), last.data["done"].as_u64()), (Some("complete_with_errors"), Some(2)));

    // The whole log again from the start, then from the end: it ends at once.
    let mut replay = server.events(&job_id, 0).await;
    let mut ids = Vec::new();
    while let Some(event) = replay.next_logged().await {
        ids.push(event.id.unwrap());
    }
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    assert!(server.events(&job_id, 7).await.next().await.is_none());
    assert!(server.events(&job_id, u64::MAX).await.next().await.is_none(), "past every event");
}

#[tokio::test]
async fn a_reconnect_from_the_last_id_misses_nothing_and_repeats_nothing() {
    let server = TestServer::start().await;
    let job_id = server.deploy(json!([0, 1, 2, 3, 4, 5, 6, 7])).await;
    let worker = server.register_worker().await;
    let leases = server.lease(&worker, 8).await;
    assert_eq!(leases.len(), 8);

    let mut seen = Vec::new();
    let mut stream = server.events(&job_id, 0).await;
    server.finish(&worker, &leases[..3]).await;
    // Read up to the second result, then drop the connection mid-stream.
    let mut results = 0;
    while results < 2 {
        let event = stream.next_logged().await.unwrap();
        results += usize::from(event.name == "result");
        seen.push(event);
    }
    drop(stream);

    // More happens while nobody listens.
    server.finish(&worker, &leases[3..6]).await;
    let last = seen.last().unwrap().id.unwrap();
    // Resume with the header an EventSource sends.
    let response = server
        .events_request(&job_id, "")
        .bearer_auth(&server.key)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = EventReader { response, buffer: String::new() };
    let mut results = 0;
    while results < 3 {
        let event = stream.next_logged().await.unwrap();
        results += usize::from(event.name == "result");
        seen.push(event);
    }
    drop(stream);

    server.finish(&worker, &leases[6..]).await;
    let last = seen.last().unwrap().id.unwrap();
    let mut stream = server.events(&job_id, last).await;
    while let Some(event) = stream.next_logged().await {
        seen.push(event);
    }

    let ids: Vec<u64> = seen.iter().map(|event| event.id.unwrap()).collect();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, expected, "every position once, in order");
    let slices: Vec<u64> =
        seen.iter().filter(|event| event.name == "result").map(|event| event.data["slice"].as_u64().unwrap()).collect();
    assert_eq!(slices.iter().copied().collect::<BTreeSet<_>>(), (0..8).collect(), "{slices:?}");
    assert_eq!(slices.len(), 8, "no result twice: {slices:?}");
    let console = seen.iter().filter(|event| event.name == "console").count();
    assert_eq!(console, 8);
    let last = seen.last().unwrap();
    assert_eq!((last.name.as_str(), last.data["state"].as_str()), ("state", Some("complete")));
}

#[tokio::test]
async fn a_cancelled_job_ends_its_stream() {
    let server = TestServer::start().await;
    let job_id = server.deploy(json!([1, 2])).await;
    let mut stream = server.events(&job_id, 0).await;
    assert_eq!(stream.next_logged().await.unwrap().data["state"], "running");
    let response = server
        .http
        .post(format!("{}/v1/jobs/{job_id}/cancel", server.url))
        .bearer_auth(&server.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let end = stream.next_logged().await.unwrap();
    assert_eq!((end.id, end.name.as_str(), end.data["state"].as_str()), (Some(2), "state", Some("cancelled")));
    assert!(stream.next_logged().await.is_none());
}

#[tokio::test]
async fn progress_reported_by_heartbeats_is_streamed_without_a_position() {
    let server = TestServer::start().await;
    let job_id = server.deploy(json!([1])).await;
    let worker = server.register_worker().await;
    let leases = server.lease(&worker, 1).await;
    let mut stream = server.events(&job_id, 1).await;
    let beat = json!({"leases": [{"lease_id": leases[0].lease_id, "token": leases[0].token, "progress": 0.5}]});
    let response = server.http.post(format!("{}/v1/leases/heartbeat", server.url)).bearer_auth(&worker).json(&beat);
    assert_eq!(response.send().await.unwrap().status(), 200);
    // Progress events come until one shows the heartbeat's progress (the first may predate it).
    loop {
        let event = stream.next().await.unwrap();
        assert_eq!((event.name.as_str(), event.id), ("progress", None), "{event:?}");
        assert_eq!((event.data["total"].as_u64(), event.data["done"].as_u64()), (Some(1), Some(0)));
        if event.data["running"] == json!([{"slice": 0, "progress": 0.5}]) {
            break;
        }
    }
}

#[tokio::test]
async fn events_need_a_key_and_the_job_owners_key() {
    let server = TestServer::start().await;
    let job_id = server.deploy(json!([1])).await;
    let other = create_key(&server.config, "other", false);
    let answer = server.events_request(&job_id, "").send().await.unwrap();
    assert_eq!(answer.status(), 401);
    let answer = server.events_request(&job_id, "").bearer_auth(&other).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    let answer = server.events_request("jnope", "").bearer_auth(&server.key).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    let answer =
        server.events_request(&job_id, "").bearer_auth(&server.key).header("last-event-id", "x").send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["field"], "Last-Event-ID");
}
