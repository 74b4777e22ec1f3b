//! The attack suite: guest code tries every way out of its sandbox we know of, as a Python job
//! and as a JavaScript (map-basic) job, in the real `tessera worker` (headless Chromium).
//!
//! Each slice is one attack (`tests/attacks/attacks.{py,js}`) that reports what it observed,
//! but the ground truth is elsewhere: a canary HTTP server on another loopback port logs every
//! request that reaches it, and the scheduler logs every request it serves (same-origin
//! attempts). Every attack URL names its attack, so a request that got through says which.
//! The test asserts that nothing reached either, that no forged control message was taken as a
//! result, and that the worker kept working (every attack slice answered; a plain job after).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::Scheduler;

/// An HTTP server on its own loopback port that records the first line of every request.
struct Canary {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Canary {
    fn start() -> Canary {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the canary");
        let url = format!("http://{}", listener.local_addr().expect("canary address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    log.lock().expect("canary log").push(line.trim().to_string());
                    // Answer as permissively as possible, so a request that got out would succeed.
                    let body = "self.canaryReached = true;";
                    let _ = (&stream).write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/javascript\r\nAccess-Control-Allow-Origin: *\r\n\
                             Cross-Origin-Resource-Policy: cross-origin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        Canary { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("canary log").clone()
    }

    /// Proves the canary sees a request that does reach it, then forgets it.
    fn check_and_clear(&self) {
        let mut stream =
            std::net::TcpStream::connect(self.url.trim_start_matches("http://")).expect("reach the canary");
        stream.write_all(b"GET /control HTTP/1.1\r\nHost: canary\r\n\r\n").expect("ask the canary");
        let mut answer = String::new();
        let _ = BufReader::new(stream).read_line(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(self.requests(), vec!["GET /control HTTP/1.1".to_string()]);
        self.requests.lock().expect("canary log").clear();
    }
}

const PYTHON_ATTACKS: &[&str] = &[
    "fetch-canary",
    "fetch-scheduler",
    "fetch-relative",
    "xhr",
    "websocket",
    "eventsource",
    "import-scripts",
    "indexeddb",
    "caches",
    "local-storage",
    "broadcast-channel",
    "post-message-parent",
    "cookie",
    "nested-worker",
    "prototype-fetch",
    "js-eval-fetch",
    "js-eval-import",
    "js-function-fetch",
    "run-js",
    "pyfetch",
    "open-url",
    "micropip-install",
    "load-package-url",
    "urllib",
    "other-job-files",
    "forge-control-message",
];

const JS_ATTACKS: &[&str] = &[
    "fetch-relative",
    "fetch-scheduler",
    "fetch-no-cors",
    "fetch-canary",
    "xhr",
    "websocket",
    "eventsource",
    "import-scripts",
    "dynamic-import",
    "indexeddb",
    "caches",
    "local-storage",
    "broadcast-channel",
    "post-message-parent",
    "post-message-top",
    "cookie",
    "nested-worker",
    "nested-worker-url",
    "shared-worker",
    "prototype-fetch",
    "eval-fetch",
    "function-import",
    "font",
    "send-beacon",
    "forge-control-message",
    "forge-via-prototype",
];

/// Requests the scheduler served for a path naming an attack (`/py-…`, `/js-…`, `attack=`).
fn attack_requests_served(scheduler: &Scheduler) -> Vec<String> {
    let log = request_log(scheduler);
    // The log is working: the worker's own requests are in it.
    assert!(log.contains("path=/v1/leases") && log.contains("served"), "no request log:\n{log}");
    log.lines()
        .filter(|line| line.contains("/py-") || line.contains("/js-") || line.contains("attack="))
        .map(str::to_string)
        .collect()
}

/// The scheduler's whole log (one line per request served; plain text, as it is not a terminal).
fn request_log(scheduler: &Scheduler) -> String {
    std::fs::read_to_string(scheduler.dir.path().join("serve.log")).unwrap_or_default()
}

/// Deploys `program` (with `worktime`) with one slice per attack; returns each slice's observation.
fn run_attacks(scheduler: &Scheduler, worktime: &str, program: &str, attacks: &[&str], canary: &Canary) -> Vec<Value> {
    let slices = scheduler.file(&format!("{worktime}-slices.json"), &serde_json::to_string(attacks).unwrap());
    let job = scheduler.deploy(&[
        "--worktime",
        worktime,
        program,
        "--slices",
        &slices,
        "--arg",
        &canary.url,
        "--arg",
        &scheduler.url,
        "--slice-timeout",
        "60s",
    ]);
    let status = scheduler.wait_for_state(&job, "complete", Duration::from_secs(180));
    assert_eq!(status["state"], "complete", "every attack slice answered: {status}\n{}", scheduler.log());
    let results = scheduler.results(&job);
    assert_eq!(results.len(), attacks.len());
    results
        .into_iter()
        .zip(attacks)
        .map(|(result, attack)| {
            assert_eq!(result["status"], "ok", "the sandbox survived `{attack}`: {result}");
            assert_eq!(result["value"]["attack"], *attack, "each slice's own answer, nothing forged: {result}");
            result["value"].clone()
        })
        .collect()
}

#[test]
fn guest_code_reaches_no_network_no_storage_no_other_job_and_cannot_forge_answers() {
    let canary = Canary::start();
    canary.check_and_clear();
    let scheduler = Scheduler::start_with_request_log();
    let mut worker = scheduler.worker_with(2, &[]);

    // Another job's files: a job with a secret in its bundle runs first, in this same worker.
    scheduler.file("secret/secret.txt", "the other job's secret\n");
    let secret_program = scheduler.file(
        "secret.py",
        "import dcp\n\ndef handler(x):\n    return open('secret.txt').read()\n\ndcp.set_slice_handler(handler)\n",
    );
    let bundle = scheduler.dir.path().join("secret").to_string_lossy().into_owned();
    let secret_job =
        scheduler.deploy(&["--worktime", "pyodide", &secret_program, "--bundle", &bundle, "--range", "0:2"]);
    scheduler.wait_for_state(&secret_job, "complete", Duration::from_secs(180));
    assert_eq!(scheduler.results(&secret_job)[0]["value"], "the other job's secret\n");

    let python = scheduler.file("attacks.py", include_str!("../attacks/attacks.py"));
    let python_results = run_attacks(&scheduler, "pyodide", &python, PYTHON_ATTACKS, &canary);
    let javascript = scheduler.file("attacks.js", include_str!("../attacks/attacks.js"));
    let javascript_results = run_attacks(&scheduler, "map-basic", &javascript, JS_ATTACKS, &canary);

    // Requests already under way when a slice answered get a moment to land.
    std::thread::sleep(Duration::from_secs(3));
    let report = json!({"python": python_results, "javascript": javascript_results});
    eprintln!("observations: {report:#}");
    assert_eq!(canary.requests(), Vec::<String>::new(), "requests reached the canary; observations: {report:#}");
    assert_eq!(attack_requests_served(&scheduler), Vec::<String>::new(), "requests reached the scheduler: {report:#}");
    // Bytes in: every Python sandbox of this worker got the runtime from the core's memory, so the
    // scheduler served Pyodide's wasm once, whatever the number of sandboxes.
    let log = request_log(&scheduler);
    let runtime_downloads =
        log.lines().filter(|line| line.contains("path=/pyodide/pyodide.asm.wasm") && line.contains("served")).count();
    let python_sandboxes = worker.lines().iter().filter(|line| line.text.contains("created (pyodide)")).count();
    assert!(python_sandboxes >= 2, "{}", worker.output());
    assert_eq!(runtime_downloads, 1, "{python_sandboxes} Python sandboxes, one download of the runtime");
    for observation in python_results.iter().chain(&javascript_results) {
        let attack = observation["attack"].as_str().unwrap_or_default();
        if attack == "other-job-files" {
            assert_eq!(observation["outcome"], "refused", "another job's files were readable: {observation}");
        }
    }

    // The worker kept working: a plain job after all that.
    let plain = scheduler.file("plain.js", "(x) => x * 2");
    let job = scheduler.deploy(&[&plain, "--range", "0:20"]);
    scheduler.wait_for_state(&job, "complete", Duration::from_secs(60));
    let values: Vec<Value> = scheduler.results(&job).iter().map(|result| result["value"].clone()).collect();
    assert_eq!(values, (0..20).map(|x| json!(x * 2)).collect::<Vec<_>>());
    assert!(worker.is_running(), "the worker is still up: {}", worker.output());
}
