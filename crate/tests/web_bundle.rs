//! Bundles in the browser: inflating (the browser's `DecompressionStream`, within the bounds the
//! native inflater keeps), validation (the same Rust code the scheduler runs, compiled to wasm)
//! and the writer that puts a bundle into a Pyodide sandbox's in-memory filesystem.
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use serde_json::json;
use tessera_protocol::bundle::testing::{metadata_bomb, raw_archive, EntryType};
use tessera_protocol::bundle::{self, pack, stream_cap, unpack_tar, BundleEntry, BundleError, BundleLimits};
use tessera_protocol::{SliceOutcome, Worktime};
use tessera_worker::supervisor::{SandboxFactory, SetupOutcome};
use tessera_worker::web::gzip::inflate;
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use wasm_bindgen_test::*;

mod common;
use common::{job_with, scheduler};

wasm_bindgen_test_configure!(run_in_browser);

/// What the core does with a bundle's tar.gz: the browser inflates it, Rust validates the tar.
async fn unpack(tar_gz: &[u8], limits: &BundleLimits) -> Result<Vec<BundleEntry>, BundleError> {
    unpack_tar(&inflate(tar_gz, limits).await?[..], limits)
}

#[wasm_bindgen_test]
async fn validation_runs_in_wasm_and_names_the_entry() {
    let limits = BundleLimits::default();
    assert_eq!(
        unpack(&raw_archive("../up.py", EntryType::Regular), &limits).await,
        Err(BundleError::ParentDirectory { entry: "../up.py".into() })
    );
    assert_eq!(
        unpack(&raw_archive("/abs.py", EntryType::Regular), &limits).await,
        Err(BundleError::AbsolutePath { entry: "/abs.py".into() })
    );
    assert!(
        matches!(unpack(&raw_archive("link", EntryType::Symlink), &limits).await, Err(BundleError::ForbiddenKind { ref entry, .. }) if entry == "link")
    );
    assert!(matches!(
        unpack(&raw_archive("dev", EntryType::Block), &limits).await,
        Err(BundleError::ForbiddenKind { .. })
    ));
    let big = pack(&[BundleEntry::File { path: "big".into(), bytes: vec![7; 4096] }]).unwrap();
    let small = BundleLimits { max_unpacked_bytes: 1024, ..limits };
    assert!(matches!(unpack(&big, &small).await, Err(BundleError::TooLarge { .. })));
}

#[wasm_bindgen_test]
async fn the_browser_inflates_a_bundle_within_the_bounds_the_native_inflater_keeps() {
    let limits = BundleLimits { max_compressed_bytes: 1024 * 1024, max_unpacked_bytes: 256 * 1024, max_entries: 16 };
    let files = [
        BundleEntry::Directory { path: "pkg".into() },
        BundleEntry::File {
            path: "pkg/data.bin".into(),
            bytes: (0..100_000u32).map(|n| (n * 7 % 251) as u8).collect(),
        },
    ];
    let archive = pack(&files).unwrap();
    let tar = inflate(&archive, &limits).await.unwrap();
    assert_eq!(tar, bundle::inflate(&archive, &limits).unwrap(), "the same tar as flate2's");
    assert_eq!(unpack_tar(&tar[..], &limits).unwrap(), files);
    // A gzip bomb (10 MiB of zeros in ~10 KiB) stops inflating one byte past the cap.
    let bomb = metadata_bomb(EntryType::GNULongName, 10 * 1024 * 1024, 0);
    let inflated = inflate(&bomb, &limits).await.unwrap();
    assert_eq!(inflated.len() as u64, stream_cap(&limits) + 1);
    assert_eq!(unpack_tar(&inflated[..], &limits), Err(BundleError::Inflated { limit: stream_cap(&limits) }));
    // Not gzip, cut short, or over the compressed limit: refused, with the reason.
    let refusal = inflate(b"not a tarball", &limits).await.unwrap_err();
    assert!(matches!(refusal, BundleError::Unreadable { ref reason } if !reason.is_empty()), "{refusal:?}");
    let cut = inflate(&archive[..archive.len() / 2], &limits).await;
    assert!(matches!(cut, Err(BundleError::Unreadable { .. })), "{cut:?}");
    let tight = BundleLimits { max_compressed_bytes: archive.len() - 1, ..limits };
    assert!(matches!(inflate(&archive, &tight).await, Err(BundleError::TooLarge { .. })));
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
    let entries = unpack(&pack(&entries).unwrap(), &BundleLimits::default()).await.unwrap();
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
