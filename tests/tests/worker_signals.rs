//! `tessera worker` ends its browser however it is stopped: SIGTERM, SIGINT (Ctrl-C) and SIGHUP
//! close Chromium, end every process of its tree and remove the temporary profile before the worker
//! exits with a message; a `kill -9` of the worker still takes Chromium down within seconds (its
//! death signal), though the profile then stays behind.

use std::time::Duration;

use tessera_e2e::{processes_naming, remove_profiles, wait_until, Scheduler, Worker};

/// A worker whose page has started, with its browser's processes recorded (more than the
/// launcher: Chromium and its helpers) and its one profile directory.
fn started_worker(scheduler: &Scheduler) -> (Worker, Vec<std::path::PathBuf>) {
    let mut worker = scheduler.worker_with(1, &[]);
    worker.wait_for_event("the page started", Duration::from_secs(60), |event| event.kind == "started");
    let mut tree = worker.process_tree();
    for _ in 0..50 {
        if tree.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        tree = worker.process_tree();
    }
    assert!(tree.len() >= 4, "the browser's helpers run under the worker: {tree:?}\n{}", worker.output());
    let profiles = worker.profiles();
    assert_eq!(profiles.len(), 1, "one profile among {tree:?}: {profiles:?}\n{}", worker.output());
    assert!(profiles[0].is_dir(), "{profiles:?}");
    (worker, profiles)
}

fn stops_cleanly_on(signal: i32, name: &str) {
    let scheduler = Scheduler::start();
    let (mut worker, profiles) = started_worker(&scheduler);
    worker.signal(signal);
    let status = worker.wait_exit(Duration::from_secs(20));
    worker.process_tree();
    assert!(status.success(), "{name}: {status}\n{}", worker.output());
    assert_eq!(worker.still_running(), Vec::<u32>::new(), "{name}: browser processes survived\n{}", worker.output());
    // Also none that left the worker's tree (a daemonized helper) and still names the profile.
    assert_eq!(processes_naming(&profiles[0]), Vec::<u32>::new(), "{name}: {}", worker.output());
    assert!(
        !profiles[0].exists(),
        "{name}: the profile {} was left behind\n{}",
        profiles[0].display(),
        worker.output()
    );
    let output = worker.output();
    assert!(output.contains(&format!("stopped by {name}")), "{name}: no message saying why it stopped\n{output}");
}

#[test]
fn sigterm_ends_the_browser_and_removes_the_profile() {
    stops_cleanly_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_ends_the_browser_and_removes_the_profile() {
    stops_cleanly_on(libc::SIGINT, "SIGINT");
}

#[test]
fn sighup_ends_the_browser_and_removes_the_profile() {
    stops_cleanly_on(libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigkill_of_the_worker_takes_the_browser_down() {
    let scheduler = Scheduler::start();
    let (mut worker, profiles) = started_worker(&scheduler);
    worker.signal(libc::SIGKILL);
    worker.wait_exit(Duration::from_secs(10));
    wait_until(
        Duration::from_secs(10),
        || {
            format!(
                "the browser to die with its worker; still running {:?}, naming the profile {:?}",
                worker.still_running(),
                processes_naming(&profiles[0])
            )
        },
        || (worker.still_running().is_empty() && processes_naming(&profiles[0]).is_empty()).then_some(()),
    );
    // Nobody was left to remove it.
    remove_profiles(&profiles);
}
