//! `tessera deploy --open`, `tessera add-slices` and `tessera close` against a real scheduler:
//! a file of slices larger than a page goes in several pages, every slice lands once and in
//! order, and a closed job takes no more.

use tessera_e2e::{text, Scheduler};

#[test]
fn an_open_job_takes_a_file_of_slices_in_pages_and_closes() {
    const TOTAL: u64 = 25_000; // three pages of at most 10,000
    let scheduler = Scheduler::start();
    let program = scheduler.file("double.js", "(x) => x.n * 2");
    let job_id = scheduler.deploy(&[&program, "--open", "--name", "fed"]);
    let status = scheduler.status(&job_id);
    assert_eq!(
        (status["state"].as_str(), status["open"].as_bool(), status["total"].as_u64()),
        (Some("running"), Some(true), Some(0))
    );

    let lines: Vec<String> = (0..TOTAL).map(|n| format!("{{\"n\": {n}}}")).collect();
    let file = scheduler.file("slices.jsonl", &(lines.join("\n") + "\n"));
    let added = scheduler.tessera(&["add-slices", &job_id, &file, "--json"]);
    assert!(added.status.success(), "{}", text(&added));
    let answer: serde_json::Value = serde_json::from_slice(&added.stdout).expect("JSON");
    assert_eq!((answer["added"].as_u64(), answer["total"].as_u64()), (Some(TOTAL), Some(TOTAL)));
    let again = scheduler.tessera(&["add-slices", &job_id, &scheduler.file("more.jsonl", "{\"n\": -1}\n")]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!("{} in all", TOTAL + 1)), "{}", text(&again));

    let status = scheduler.status(&job_id);
    assert_eq!((status["total"].as_u64(), status["queued"].as_u64()), (Some(TOTAL + 1), Some(TOTAL + 1)));

    let bad = scheduler.tessera(&["add-slices", &job_id, &scheduler.file("bad.jsonl", "1\nnot json\n")]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 2"), "{}", text(&bad));
    assert_eq!(scheduler.status(&job_id)["total"], TOTAL + 1, "a file with a bad line sends nothing of its page");

    let closed = scheduler.tessera(&["close", &job_id]);
    assert!(closed.status.success(), "{}", text(&closed));
    let status = scheduler.status(&job_id);
    assert_eq!((status["state"].as_str(), status.get("open")), (Some("running"), None), "{status}");
    let refused = scheduler.tessera(&["add-slices", &job_id, &scheduler.file("late.jsonl", "1\n")]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not open"), "{}", text(&refused));
}
