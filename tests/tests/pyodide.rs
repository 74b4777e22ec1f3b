//! Python jobs (pyodide worktime) end to end: real scheduler, real headless Chromium, real Pyodide
//! with numpy and pandas from the self-hosted distribution.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use tessera_e2e::{text, Scheduler};

const DCP_STYLE: &str = r#"
import os
import sys

import dcp
import numpy as np
import pandas as pd
from helpers.scaling import scale

factor = int(sys.argv[1])
label = sys.argv[2]
assert sys.argv[0] == "dcp_style.py", sys.argv
env = (os.environ["ALPHA"], os.environ["BETA"], os.environ["GAMMA"])

def handler(n):
    frame = pd.DataFrame({"v": np.arange(n + 1)})
    dcp.progress(0.5)
    return {
        "total": int(frame["v"].sum()) * factor,
        "scaled": scale(n),
        "label": label,
        "env": list(env),
        "mean": np.float64(frame["v"].mean()),
        "cwd_file": open("data/greeting.txt").read().strip(),
    }

dcp.set_slice_handler(handler)
"#;

#[test]
fn a_dcp_style_program_with_argv_bundle_env_numpy_and_pandas() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("dcp_style.py", DCP_STYLE);
    scheduler.file("bundle/helpers/__init__.py", "");
    scheduler.file("bundle/helpers/scaling.py", "def scale(n):\n    return n * 0.5\n");
    scheduler.file("bundle/data/greeting.txt", "hello from the bundle\n");
    let bundle = scheduler.dir.path().join("bundle").to_string_lossy().into_owned();
    let (results, deployed, worker) = scheduler.run_job(
        1,
        &[
            "--worktime",
            "pyodide",
            &program,
            "--bundle",
            &bundle,
            "--range",
            "0:200",
            "--arg",
            "3",
            "--arg",
            "tag-7",
            "--env",
            "ALPHA=a",
            "--env",
            "BETA=b=c",
            "--env",
            "GAMMA=γ",
        ],
    );
    assert!(deployed.status.success(), "{}\n{}", text(&deployed), text(&worker));
    assert_eq!(results.len(), 200);
    for result in &results {
        let n = result["slice"].as_i64().unwrap();
        assert_eq!(result["status"], "ok", "{result}");
        let value = &result["value"];
        assert_eq!(value["total"], json!(n * (n + 1) / 2 * 3));
        assert_eq!(value["scaled"], json!(n as f64 * 0.5));
        assert_eq!(value["label"], "tag-7");
        assert_eq!(value["env"], json!(["a", "b=c", "γ"]));
        assert_eq!(value["mean"], json!(n as f64 / 2.0));
        assert_eq!(value["cwd_file"], "hello from the bundle");
    }
}

#[test]
fn a_program_without_a_slice_handler_fails_the_job_once() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("nohandler.py", "import dcp\nx = 1\n");
    let (results, deployed, _) = scheduler.run_job(1, &["--worktime", "pyodide", &program, "--range", "0:20"]);
    assert!(!deployed.status.success(), "a failed job exits non-zero");
    assert!(results.iter().all(|r| r["status"] == "pending"), "no slice ran: {results:?}");
    let status: Value =
        serde_json::from_slice(&scheduler.tessera(&["status", "--json", &job_id(&scheduler)]).stdout).unwrap();
    assert_eq!(status["state"], "failed");
    assert!(status["error"].as_str().unwrap().contains("no slice handler registered"), "{status}");
}

#[test]
fn a_syntax_error_is_refused_at_deploy_with_the_file_and_line() {
    // The scheduler checks Python syntax at deploy time: nothing reaches a worker.
    let scheduler = Scheduler::start();
    let program = scheduler.file("broken.py", "import dcp\n\ndef handler(x)\n    return x\n");
    let deployed = scheduler.tessera(&["deploy", "--worktime", "pyodide", &program, "--range", "0:20"]);
    assert!(!deployed.status.success(), "{}", text(&deployed));
    let error = String::from_utf8_lossy(&deployed.stderr);
    assert!(error.contains("SyntaxError") && error.contains("broken.py") && error.contains("line 3"), "{error}");
    assert!(scheduler.tessera(&["jobs", "--json"]).stdout.is_empty(), "nothing stored");
}

#[test]
fn handler_errors_unsupported_types_and_bytes() {
    let scheduler = Scheduler::start();
    let program = scheduler.file(
        "odd.py",
        "import dcp\n\ndef handler(x):\n    if isinstance(x, bytes):\n        return x[::-1]\n    if x == 'set':\n        return {1, 2}\n    if x % 2:\n        raise ValueError(f'odd slice {x}')\n    return x * 10\n\ndcp.set_slice_handler(handler)\n",
    );
    let mut slices: Vec<Value> = (0..10).map(Value::from).collect();
    slices.push(json!("set"));
    slices.push(json!({"$bytes": "AQID"}));
    let slices = scheduler.file("slices.json", &Value::Array(slices).to_string());
    let (results, deployed, _) = scheduler.run_job(1, &["--worktime", "pyodide", &program, "--slices", &slices]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    for result in &results[..10] {
        let x = result["slice"].as_i64().unwrap();
        if x % 2 == 1 {
            assert_eq!(result["status"], "error");
            assert_eq!(result["error"], format!("ValueError: odd slice {x}"));
            assert!(result["stack"].as_str().unwrap().contains("Traceback"), "{result}");
        } else {
            assert_eq!(result["value"], json!(x * 10));
        }
    }
    assert_eq!(results[10]["status"], "error");
    assert!(results[10]["error"].as_str().unwrap().contains("builtins.set"), "{}", results[10]);
    assert_eq!(results[11]["value"], json!({"$bytes": "AwIB"}), "bytes stay bytes");
}

#[test]
fn printed_output_reaches_the_deployer() {
    let scheduler = Scheduler::start();
    let program = scheduler.file(
        "chatty.py",
        "import dcp, logging, sys\nprint('setting up')\n\ndef handler(x):\n    print(f'working on {x}')\n    logging.warning('careful with %s', x)\n    return x\n\ndcp.set_slice_handler(handler)\n",
    );
    let worker = scheduler.worker(1);
    let deployed = scheduler.tessera(&["deploy", "--wait", "--worktime", "pyodide", &program, "--range", "0:5"]);
    worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&deployed.stderr);
    assert!(deployed.status.success(), "{}", text(&deployed));
    assert!(stderr.contains("[stdout] setting up"), "{stderr}");
    for x in 0..5 {
        assert!(stderr.contains(&format!("[slice {x} stdout] working on {x}")), "{stderr}");
        assert!(stderr.contains(&format!("[slice {x} stderr] WARNING:root:careful with {x}")), "{stderr}");
    }
    let worker = scheduler.worker(1);
    let quiet =
        scheduler.tessera(&["deploy", "--wait", "--quiet", "--worktime", "pyodide", &program, "--range", "0:2"]);
    worker.wait_with_output().unwrap();
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("working on"), "--quiet hides console output");
}

#[test]
fn the_program_runs_once_per_sandbox_not_per_slice() {
    let scheduler = Scheduler::start();
    let program = scheduler.file(
        "once.py",
        "import builtins, dcp, uuid\nbuiltins.RUNS = getattr(builtins, 'RUNS', 0) + 1\nSANDBOX = uuid.uuid4().hex\n\ndcp.set_slice_handler(lambda x: [SANDBOX, builtins.RUNS])\n",
    );
    let (results, deployed, _) = scheduler.run_job(1, &["--worktime", "pyodide", &program, "--range", "0:60"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    assert_eq!(results.len(), 60);
    assert!(results.iter().all(|r| r["value"][1] == 1), "the program ran once in each sandbox");
    let sandboxes: BTreeSet<String> = results.iter().map(|r| r["value"][0].as_str().unwrap().to_string()).collect();
    assert!(sandboxes.len() <= 2, "60 slices on 1 sandbox (+1 spare) ran the program {} times", sandboxes.len());
}

/// The id of the newest job on this scheduler.
fn job_id(scheduler: &Scheduler) -> String {
    let listing = scheduler.tessera(&["jobs", "--json"]);
    let jobs = tessera_e2e::json_lines(&listing.stdout);
    jobs[0]["job_id"].as_str().unwrap().to_string()
}

#[test]
fn unknown_packages_are_refused_at_deploy_with_the_list_of_available_ones() {
    let scheduler = Scheduler::start();
    let program = scheduler.file("main.py", "import dcp\ndcp.set_slice_handler(lambda x: x)\n");
    let output = scheduler.tessera(&["deploy", &program, "--range", "0:3", "--package", "tensorflow"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown package `tensorflow`") && stderr.contains("numpy") && stderr.contains("pandas"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let jobs = scheduler.tessera(&["jobs", "--json"]);
    assert!(jobs.stdout.is_empty(), "nothing stored");
}
