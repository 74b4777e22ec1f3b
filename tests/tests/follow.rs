//! `tessera results JOB --follow` prints each result as it arrives over the job's event stream,
//! and survives the scheduler dying mid-job (`kill -9`, restart on the same database and port):
//! it reconnects from the last event it received, and every slice is printed exactly once.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tessera_e2e::{wait_until, Scheduler};

#[test]
fn results_follow_prints_every_slice_once_across_a_scheduler_restart() {
    const TOTAL: u64 = 30;
    let mut scheduler = Scheduler::start();
    let program =
        scheduler.file("nap.js", "async (x) => { await new Promise((r) => setTimeout(r, 300)); return x * 3; }");
    let job_id = scheduler.deploy(&[&program, "--range", &format!("0:{TOTAL}")]);

    let mut follow = scheduler
        .command()
        .args(["results", &job_id, "--follow", "--json"])
        .env("TESSERA_API_KEY", &scheduler.api_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tessera results --follow");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = follow.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        })
    };

    let worker = scheduler.worker_with(2, &[]);
    wait_until(
        Duration::from_secs(120),
        || format!("some results printed before the kill\n{}", scheduler.log()),
        || (lines.lock().expect("lines").len() >= 4).then_some(()),
    );
    scheduler.kill();
    let printed_before = lines.lock().expect("lines").len();
    std::thread::sleep(Duration::from_secs(2));
    scheduler.start_again();

    let status = wait_until(
        Duration::from_secs(180),
        || format!("tessera results --follow to exit\n{}", scheduler.log()),
        || follow.try_wait().expect("try_wait"),
    );
    reader.join().expect("reader");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(status.success(), "results --follow failed: {stderr}");
    assert!(stderr.is_empty(), "--json prints nothing on stderr: {stderr}");

    let lines = lines.lock().expect("lines").clone();
    assert!(printed_before < lines.len(), "results arrived after the restart too");
    let mut slices: Vec<u64> = Vec::new();
    for line in &lines {
        let result: Value = serde_json::from_str(line).expect("a JSON line");
        let x = result["slice"].as_u64().expect("slice");
        assert_eq!(result, json!({"slice": x, "status": "ok", "value": x * 3}));
        slices.push(x);
    }
    let mut sorted = slices.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..TOTAL).collect::<Vec<_>>(), "every slice exactly once, in arrival order: {slices:?}");
    drop(worker);

    // Following an ended job prints its results at once and ends (exit status: the job's).
    let again = scheduler.tessera(&["results", &job_id, "--follow"]);
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout).lines().count() as u64, TOTAL);
    assert!(String::from_utf8_lossy(&again.stderr).contains("complete"), "a summary on stderr");
}
