//! An installed `tessera`: the binary copied out of the build tree and run from a folder that
//! holds nothing of the source tree serves the contribute page and the worker core it carries,
//! finds the Pyodide distribution where scripts/bootstrap put it, and its worker runs a Python job.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use serde_json::json;
use tessera_e2e::{tessera_bin, text, Scheduler};

/// `GET path` over HTTP/1.0: the status line and the body.
fn get(scheduler: &Scheduler, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", scheduler.port)).expect("connect to the scheduler");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let split = answer.windows(4).position(|window| window == b"\r\n\r\n").expect("headers end");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, answer[split + 4..].to_vec())
}

#[test]
fn a_copied_binary_serves_the_page_and_runs_a_python_job_from_an_empty_folder() {
    let installed = tempfile::tempdir().expect("temp dir");
    let binary = installed.path().join("tessera");
    std::fs::copy(tessera_bin(), &binary).expect("copy the binary");
    // The only test in this file: every `tessera` the harness starts is now the copy.
    std::env::set_var("TESSERA_BIN", &binary);
    std::env::remove_var("TESSERA_WWW");

    let scheduler = Scheduler::start();
    let mut kept: Vec<_> = std::fs::read_dir(scheduler.dir.path())
        .expect("the scheduler's folder")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    let ours = |name: &String| name.starts_with("e2e.db") || name == "serve.log" || name == "credentials";
    assert!(kept.iter().all(ours), "only the database, the log and the saved key: {kept:?}");

    let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("../www");
    for (path, file) in [
        ("/", "index.html"),
        ("/contribute.js", "contribute.js"),
        ("/pkg/tessera_worker_bg.wasm", "pkg/tessera_worker_bg.wasm"),
    ] {
        let (status, body) = get(&scheduler, path);
        assert!(status.contains(" 200 "), "GET {path}: {status}");
        let mut built = std::fs::read(www.join(file)).expect("the built file");
        if file.ends_with(".js") {
            // JavaScript is served without its comments (scheduler/build.rs).
            built = js_without_comments(&String::from_utf8(built).expect("UTF-8")).expect("strippable").into_bytes();
        }
        assert!(body == built, "GET {path} serves the built {file}");
    }
    let (status, _) = get(&scheduler, "/pyodide/pyodide.mjs");
    assert!(status.contains(" 200 "), "the Pyodide distribution is found where bootstrap put it: {status}");

    let program = scheduler.file(
        "mean.py",
        "import sys\nimport numpy as np\nimport dcp\n\ndcp.set_slice_handler(lambda n: float(np.arange(n).mean()))\n",
    );
    let (results, deployed, worker) = scheduler.run_job(1, &["--worktime", "pyodide", &program, "--range", "1:5"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    assert!(worker.status.success(), "{}", text(&worker));
    let values: Vec<_> = results.iter().map(|result| result["value"].clone()).collect();
    assert_eq!(values, [json!(0.0), json!(0.5), json!(1.0), json!(1.5)], "{}", text(&deployed));
}

include!("../../build-support/js_without_comments.rs");
