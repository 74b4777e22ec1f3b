//! The scheduler's peak memory stays bounded while it refuses hostile input. One test in its own
//! binary, so the process's high-water mark (`VmHWM`) is this test's alone.

use serde_json::Value;
use tessera_protocol::bundle::testing::{metadata_bomb, EntryType};
use tessera_protocol::BundleLimits;
use tessera_scheduler::server::ServerConfig;
use tessera_scheduler::validate::DeployLimits;

mod common;
use common::{serve, test_config};

/// The process's peak resident memory so far, in bytes.
fn high_water_mark() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_stays_bounded_while_refusing_hostile_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        deploy: DeployLimits { max_slices: 10_000, ..DeployLimits::default() },
        bundle: BundleLimits { max_compressed_bytes: 4 * 1024 * 1024, max_unpacked_bytes: MIB, max_entries: 100 },
        ..test_config(&dir)
    };
    let (addr, key) = serve(config).await;
    let url = format!("http://{addr}");
    let http = reqwest::Client::new();

    // Every hostile body is made before the baseline, so only the scheduler's side is measured.
    let long_name = metadata_bomb(EntryType::GNULongName, 100 * MIB, b'a');
    let pax = metadata_bomb(EntryType::XHeader, 100 * MIB, b'a');
    let mut slices = br#"{"program": "(x) => x", "slices": [0"#.to_vec();
    for _ in 1..10_000_000 {
        slices.extend_from_slice(b",0");
    }
    slices.extend_from_slice(b"]}");
    let jobs = http.get(format!("{url}/v1/jobs")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(jobs.status(), 200);
    let baseline = high_water_mark();

    // A 100 MB GNU long name and a 100 MB PAX record: refused after ~1 MiB, not buffered.
    for bomb in [long_name, pax] {
        let sha256 = tessera_protocol::bundle::content_address(&bomb);
        let response = http
            .put(format!("{url}/v1/bundles"))
            .bearer_auth(&key)
            .header("content-type", "application/gzip")
            .body(bomb)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let stored = http.get(format!("{url}/v1/bundles/{sha256}")).send().await.unwrap();
        assert_eq!(stored.status(), 404);
    }
    let after_bundles = high_water_mark();
    assert!(
        after_bundles - baseline < 32 * MIB,
        "refusing 100 MB metadata bombs raised the peak by {} MiB",
        (after_bundles - baseline) / MIB
    );

    // Ten million tiny slices (a 20 MB body): refused at the 10,001st. Building them all would
    // take over 300 MiB of parsed values.
    let response = http
        .post(format!("{url}/v1/jobs"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(slices)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["field"].as_str(), Some("slices"), "{error}");
    let after_slices = high_water_mark();
    assert!(
        after_slices - baseline < 128 * MIB,
        "refusing ten million slices raised the peak by {} MiB",
        (after_slices - baseline) / MIB
    );

    let jobs: Value = http.get(format!("{url}/v1/jobs")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(jobs, Value::Array(Vec::new()));
}
