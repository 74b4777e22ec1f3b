//! Bundles in the browser: validation (the same Rust code the scheduler runs, compiled to wasm)
//! and the writer that puts a bundle into a Pyodide sandbox's in-memory filesystem.
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use serde_json::json;
use tessera_protocol::bundle::testing::{raw_archive, EntryType};
use tessera_protocol::bundle::{pack, unpack, BundleEntry, BundleError, BundleLimits};
use tessera_protocol::{SliceOutcome, Worktime};
use tessera_worker::supervisor::{SandboxFactory, SetupOutcome};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use wasm_bindgen_test::*;

mod common;
use common::{job_with, scheduler};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn validation_runs_in_wasm_and_names_the_entry() {
    let limits = BundleLimits::default();
    assert_eq!(
        unpack(&raw_archive("../up.py", EntryType::Regular), &limits),
        Err(BundleError::ParentDirectory { entry: "../up.py".into() })
    );
    assert_eq!(
        unpack(&raw_archive("/abs.py", EntryType::Regular), &limits),
        Err(BundleError::AbsolutePath { entry: "/abs.py".into() })
    );
    assert!(
        matches!(unpack(&raw_archive("link", EntryType::Symlink), &limits), Err(BundleError::ForbiddenKind { ref entry, .. }) if entry == "link")
    );
    assert!(matches!(unpack(&raw_archive("dev", EntryType::Block), &limits), Err(BundleError::ForbiddenKind { .. })));
    let big = pack(&[BundleEntry::File { path: "big".into(), bytes: vec![7; 4096] }]).unwrap();
    let small = BundleLimits { max_unpacked_bytes: 1024, ..limits };
    assert!(matches!(unpack(&big, &small), Err(BundleError::TooLarge { .. })));
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_bundle_is_written_into_the_pyodide_filesystem() {
    let entries = vec![
        BundleEntry::Directory { path: "pkg".into() },
        BundleEntry::File { path: "pkg/__init__.py".into(), bytes: b"GREETING = 'hi from pkg'\n".to_vec() },
        BundleEntry::File { path: "data/deep/values.txt".into(), bytes: b"1 2 3\n".to_vec() },
    ];
    // Round-trip through the archive format, exactly as the worker receives it.
    let entries = unpack(&pack(&entries).unwrap(), &BundleLimits::default()).unwrap();
    let job = job_with(Worktime::Pyodide, "import dcp, os, sys\nimport pkg\n\ndef handler(x):\n    numbers = open('data/deep/values.txt').read().split()\n    return [pkg.GREETING, sum(map(int, numbers)) * x, os.getcwd() == sys.path[0]]\n\ndcp.set_slice_handler(handler)\n", vec![], entries);
    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap();
    let sandbox = factory.create(Worktime::Pyodide, &[]).unwrap();
    let setup = sandbox.prepare(job).await;
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    let run = sandbox.run(0, json!(2), Rc::default()).await;
    assert_eq!(run.outcome, SliceOutcome::Ok { value: json!(["hi from pkg", 12, true]) }, "{:?}", run.console);
    assert!(
        run.heap_bytes.is_some_and(|bytes| bytes > 1 << 20),
        "a Pyodide sandbox reports its heap: {:?}",
        run.heap_bytes
    );
    sandbox.terminate();
}
