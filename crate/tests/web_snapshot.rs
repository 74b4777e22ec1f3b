//! Runtime snapshots in a real browser: the first Pyodide sandbox makes one, later sandboxes
//! restore it and compute exactly what a fresh one computes — but draw their own random numbers;
//! a damaged or foreign snapshot is refused with its reason, the sandbox starts afresh and makes
//! the replacement; the interrupt still works in a restored sandbox. Package snapshots (the
//! `packageSnapshots` option) likewise: numpy restored with the snapshot computes what a fresh
//! load computes, draws its own random numbers, can be interrupted, and a damaged package snapshot
//! falls back to the plain one and is replaced. A retired sandbox's frame serves the next
//! sandbox with the interpreter it compiled; a terminated one's does not.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};
use tessera_protocol::{SliceOutcome, Worktime};
use tessera_worker::supervisor::{PreparedJob, Sandbox, SandboxFactory, SetupOutcome, WorkerEvent};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use tessera_worker::web::snapshots::{forget_stored, store_for, store_packages_for, stored_for, stored_packages_for};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

mod common;
use common::{a_spinning_slice_is_interrupted, js_job, new_frames, python_job, scheduler, SPINNING_PROGRAM};

wasm_bindgen_test_configure!(run_in_browser);

const NUMPY_PROGRAM: &str = r#"
import os
import random
import dcp
import numpy as np

def handler(x):
    return {
        "computed": float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]) * x)) + float(np.arange(1000).sum()),
        "argv": list(os.sys.argv),
        "random": random.random(),
        "numpy_random": float(np.random.random()),
    }

dcp.set_slice_handler(handler)
"#;

fn pyodide() -> String {
    format!("{}/pyodide/", scheduler())
}

fn numpy_job() -> Rc<PreparedJob> {
    let job = python_job(NUMPY_PROGRAM);
    let mut descriptor = job.descriptor.clone();
    descriptor.packages = vec!["numpy".into()];
    // An integer past 2^53 reaches `sys.argv` as it was deployed, not rounded by a JavaScript number.
    descriptor.arguments = vec![json!(9_007_199_254_740_993u64), json!("x"), json!({"k": [1, 2]})];
    Rc::new(PreparedJob { descriptor, bundle: vec![] })
}

/// A Python job without packages (the cheaper sandbox, where numpy is not the point).
fn plain_job() -> Rc<PreparedJob> {
    python_job("import dcp\n\ndcp.set_slice_handler(lambda x: x * 2)\n")
}

/// The factory's `runtime_snapshot` reports about the plain snapshot, as (outcome, reason).
type Reports = Rc<RefCell<Vec<(&'static str, Option<String>)>>>;

fn new_factory() -> (IsolatedSandboxFactory, Reports) {
    let (factory, reports) = factory_reporting(false);
    (factory, reports.plain)
}

/// What a factory reported: about the plain snapshot, about the package snapshot, and which
/// packages each package snapshot report said it held.
struct Reported {
    plain: Reports,
    packages: Reports,
    held: Rc<RefCell<Vec<(&'static str, Vec<String>)>>>,
}

/// A factory, with package snapshots on or off, and what it reports.
fn factory_reporting(package_snapshots: bool) -> (IsolatedSandboxFactory, Reported) {
    let reported = Reported { plain: Rc::default(), packages: Rc::default(), held: Rc::default() };
    let (plain, packages, held) = (reported.plain.clone(), reported.packages.clone(), reported.held.clone());
    let factory = IsolatedSandboxFactory::new(scheduler(), &pyodide())
        .unwrap()
        .with_package_snapshots(package_snapshots)
        .with_events(Rc::new(move |event| {
            if let WorkerEvent::RuntimeSnapshot { outcome, reason, packages: layer, .. } = event {
                match layer {
                    None => plain.borrow_mut().push((outcome, reason.clone())),
                    Some(names) => {
                        packages.borrow_mut().push((outcome, reason.clone()));
                        held.borrow_mut().push((outcome, names.clone()));
                    }
                }
            }
        }));
    (factory, reported)
}

/// Far above a set-up's few seconds, and below the runner's limit for the whole file.
const SETUP_DEADLINE_MS: u32 = 90_000;

fn outcomes(reports: &Reports) -> Vec<&'static str> {
    reports.borrow().iter().map(|(outcome, _)| *outcome).collect()
}

async fn ready_sandbox(factory: &IsolatedSandboxFactory, job: Rc<PreparedJob>) -> Rc<dyn Sandbox> {
    let sandbox = factory.create(Worktime::Pyodide, &job.descriptor.packages).unwrap();
    // A set-up that never ends fails here, with the page's log, not at the runner's time limit.
    let deadline = gloo_timers::future::TimeoutFuture::new(SETUP_DEADLINE_MS);
    let setup = match futures::future::select(sandbox.prepare(job), deadline).await {
        futures::future::Either::Left((setup, _)) => setup,
        futures::future::Either::Right(_) => panic!("the sandbox was not set up within {SETUP_DEADLINE_MS} ms"),
    };
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    sandbox
}

/// Sets a new sandbox up with `job` and runs one slice in it.
async fn one_slice(factory: &IsolatedSandboxFactory, job: Rc<PreparedJob>, datum: Value) -> Value {
    let sandbox = ready_sandbox(factory, job).await;
    let run = sandbox.run(0, datum, Rc::default()).await;
    sandbox.terminate();
    match run.outcome {
        SliceOutcome::Ok { value } => value,
        other => panic!("{other:?}"),
    }
}

/// The stored snapshot's bytes, once the core has stored it (storing happens after it is taken,
/// and writing tens of megabytes can take seconds on a loaded machine: it waits up to a minute).
async fn stored_bytes() -> Vec<u8> {
    for _ in 0..1200 {
        if let Some(blob) = stored_for(&pyodide()).await.unwrap() {
            let buffer = wasm_bindgen_futures::JsFuture::from(blob.array_buffer()).await.unwrap();
            return js_sys::Uint8Array::new(&buffer).to_vec();
        }
        gloo_timers::future::TimeoutFuture::new(50).await;
    }
    panic!("no snapshot was stored within a minute");
}

async fn store(bytes: &[u8]) {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).unwrap();
    store_for(&pyodide(), &blob).await.unwrap();
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn restored_sandboxes_compute_like_a_fresh_one_and_draw_their_own_random_numbers() {
    forget_stored().await.unwrap();
    let (factory, reports) = new_factory();
    let fresh = one_slice(&factory, numpy_job(), json!(3)).await;
    assert_eq!(fresh["argv"], json!(["main.py", "9007199254740993", "x", "{\"k\": [1, 2]}"]));
    assert_eq!(outcomes(&reports), ["made"], "the first sandbox starts afresh and makes the snapshot");
    let first = one_slice(&factory, numpy_job(), json!(3)).await;
    let second = one_slice(&factory, numpy_job(), json!(3)).await;
    assert_eq!(outcomes(&reports), ["made", "restored", "restored"]);
    for restored in [&first, &second] {
        assert_eq!(restored["computed"], fresh["computed"]);
        assert_eq!(restored["argv"], fresh["argv"]);
    }
    assert_ne!(first["random"], second["random"], "two restores share a random stream: {first} {second}");
    assert_ne!(first["numpy_random"], second["numpy_random"], "{first} {second}");
    assert!(stored_bytes().await.len() > 1_000_000, "the snapshot is kept for later visits");
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_damaged_snapshot_is_refused_with_its_reason_and_replaced() {
    forget_stored().await.unwrap();
    store(&[7u8; 200_000]).await;
    let (factory, reports) = new_factory();
    let value = one_slice(&factory, plain_job(), json!(2)).await;
    assert_eq!(value, json!(4));
    let reports_now = reports.borrow().clone();
    assert_eq!(reports_now[0].0, "rejected", "{reports_now:?}");
    assert!(reports_now[0].1.as_deref().unwrap_or_default().contains("damaged"), "{reports_now:?}");
    assert_eq!(reports_now[1].0, "made", "the sandbox that refused it makes the replacement: {reports_now:?}");
    one_slice(&factory, plain_job(), json!(2)).await;
    assert_eq!(outcomes(&reports).last(), Some(&"restored"));
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_snapshot_of_another_pyodide_build_is_refused_and_replaced() {
    forget_stored().await.unwrap();
    let (factory, _) = new_factory();
    one_slice(&factory, plain_job(), json!(1)).await;
    let mut foreign = stored_bytes().await;
    // Bytes 16..48 are the Pyodide build id the snapshot was made by.
    for byte in &mut foreign[16..48] {
        *byte ^= 0x5a;
    }
    store(&foreign).await;
    let (factory, reports) = new_factory();
    one_slice(&factory, plain_job(), json!(1)).await;
    let reports_now = reports.borrow().clone();
    assert_eq!(reports_now[0].0, "rejected", "{reports_now:?}");
    assert!(reports_now[0].1.as_deref().unwrap_or_default().contains("build id"), "{reports_now:?}");
    assert_eq!(reports_now[1].0, "made", "{reports_now:?}");
    assert_ne!(stored_bytes().await[16..48], foreign[16..48], "the foreign snapshot was replaced");
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_restored_sandbox_can_still_be_interrupted() {
    let isolated = js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into()).unwrap();
    assert_eq!(isolated.as_bool(), Some(true), "the interrupt needs a cross-origin isolated page");
    let (factory, reports) = new_factory();
    let job = python_job(SPINNING_PROGRAM);
    // The first sandbox restores a stored snapshot, or makes one; the second surely restores.
    ready_sandbox(&factory, job.clone()).await.terminate();
    let sandbox = ready_sandbox(&factory, job).await;
    assert_eq!(outcomes(&reports).last(), Some(&"restored"), "{:?}", reports.borrow());
    a_spinning_slice_is_interrupted(sandbox.clone()).await;
    sandbox.terminate();
}

/// Forgets every stored snapshot, then makes the plain one (so that what follows is about the
/// package snapshot only).
async fn only_a_plain_snapshot_stored() {
    forget_stored().await.unwrap();
    let (factory, _) = new_factory();
    one_slice(&factory, plain_job(), json!(1)).await;
    stored_bytes().await;
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn package_snapshots_restore_numpy_computing_like_a_fresh_load_with_their_own_random_numbers() {
    only_a_plain_snapshot_stored().await;
    let (factory, Reported { plain, packages, held }) = factory_reporting(true);
    let fresh = one_slice(&factory, numpy_job(), json!(3)).await;
    assert_eq!(outcomes(&packages), ["made"], "the first numpy sandbox makes the package snapshot");
    let first = one_slice(&factory, numpy_job(), json!(3)).await;
    let second = one_slice(&factory, numpy_job(), json!(3)).await;
    assert_eq!(outcomes(&packages), ["made", "restored", "restored"], "{:?}", packages.borrow());
    assert_eq!(outcomes(&plain), ["restored"], "only the maker restored the plain snapshot: {:?}", plain.borrow());
    for restored in [&first, &second] {
        assert_eq!(restored["computed"], fresh["computed"], "numpy (linalg imported after the restore) computes alike");
        assert_eq!(restored["argv"], fresh["argv"]);
    }
    assert_ne!(first["random"], second["random"], "two restores share a random stream: {first} {second}");
    assert_ne!(first["numpy_random"], second["numpy_random"], "{first} {second}");
    let stored = stored_packages_for(&pyodide()).await.unwrap().expect("the package snapshot is kept for later visits");
    let holds = |outcome: &str| held.borrow().iter().any(|(said, names)| *said == outcome && *names == ["numpy"]);
    assert!(holds("made") && holds("restored"), "the reports say what the snapshot holds: {:?}", held.borrow());
    assert_eq!(stored.packages, ["numpy"]);
    // The interrupt still stops a slice in a sandbox restored with numpy.
    let mut spinning = python_job(SPINNING_PROGRAM).descriptor.clone();
    spinning.packages = vec!["numpy".into()];
    let sandbox = ready_sandbox(&factory, Rc::new(PreparedJob { descriptor: spinning, bundle: vec![] })).await;
    assert_eq!(outcomes(&packages).last(), Some(&"restored"));
    a_spinning_slice_is_interrupted(sandbox.clone()).await;
    sandbox.terminate();
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_damaged_package_snapshot_falls_back_to_the_plain_one_and_is_replaced() {
    only_a_plain_snapshot_stored().await;
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(&[9u8; 100_000][..]));
    let damaged = web_sys::Blob::new_with_u8_array_sequence(&parts).unwrap();
    store_packages_for(&pyodide(), &damaged, &["numpy"]).await.unwrap();
    let (factory, Reported { plain, packages, .. }) = factory_reporting(true);
    let value = one_slice(&factory, numpy_job(), json!(3)).await;
    let computed = value["computed"].as_f64().unwrap_or_default();
    assert!((computed - (45.0 + 499_500.0)).abs() < 1e-6, "{value}");
    let reports_now = packages.borrow().clone();
    assert_eq!(reports_now[0].0, "rejected", "{reports_now:?}");
    assert!(reports_now[0].1.as_deref().unwrap_or_default().contains("damaged"), "{reports_now:?}");
    assert_eq!(reports_now[1].0, "made", "the sandbox that refused it makes the replacement: {reports_now:?}");
    assert_eq!(outcomes(&plain), ["restored"], "it fell back to the plain snapshot: {:?}", plain.borrow());
    one_slice(&factory, numpy_job(), json!(3)).await;
    assert_eq!(outcomes(&packages).last(), Some(&"restored"));
}

const SCIENCE_PROGRAM: &str = r#"
import dcp
import numpy as np
import pandas as pd
import scipy.linalg
import scipy.optimize
from sklearn.linear_model import LinearRegression

def handler(x):
    frame = pd.DataFrame({"a": np.arange(10.0) * x, "b": np.arange(10.0) ** 2})
    fit = LinearRegression().fit(frame[["a"]], frame["b"])
    return {
        "mean": float(frame.mean().sum()),
        "slope": float(fit.coef_[0]),
        "det": float(scipy.linalg.det(np.array([[x, 1.0], [1.0, 2.0]]))),
        "root": float(scipy.optimize.brentq(lambda t: t ** 3 - x, 0.0, 10.0)),
        "numpy_random": float(np.random.random()),
    }

dcp.set_slice_handler(handler)
"#;

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn package_snapshots_hold_pandas_scipy_and_scikit_learn_alike() {
    only_a_plain_snapshot_stored().await;
    let mut descriptor = python_job(SCIENCE_PROGRAM).descriptor.clone();
    descriptor.packages = ["numpy", "pandas", "scipy", "scikit-learn"].map(String::from).to_vec();
    let job = Rc::new(PreparedJob { descriptor, bundle: vec![] });
    let (factory, Reported { packages, .. }) = factory_reporting(true);
    let fresh = one_slice(&factory, job.clone(), json!(3.0)).await;
    let first = one_slice(&factory, job.clone(), json!(3.0)).await;
    let second = one_slice(&factory, job, json!(3.0)).await;
    assert_eq!(outcomes(&packages), ["made", "restored", "restored"], "{:?}", packages.borrow());
    for key in ["mean", "slope", "det", "root"] {
        assert_eq!(first[key], fresh[key], "{key}: {first} {fresh}");
        assert_eq!(second[key], fresh[key], "{key}: {second} {fresh}");
    }
    assert_ne!(first["numpy_random"], second["numpy_random"], "{first} {second}");
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_retired_sandboxs_frame_serves_the_next_with_the_interpreter_compiled_once() {
    only_a_plain_snapshot_stored().await;
    let interpreters: Rc<RefCell<Vec<Option<String>>>> = Rc::default();
    let seen = interpreters.clone();
    let factory = IsolatedSandboxFactory::new(scheduler(), &pyodide()).unwrap().with_events(Rc::new(move |event| {
        if let WorkerEvent::RuntimeSnapshot { outcome: "restored", interpreter, .. } = event {
            seen.borrow_mut().push(interpreter.clone());
        }
    }));
    new_frames();
    let run = |sandbox: Rc<dyn Sandbox>, datum: i64| async move {
        match sandbox.run(0, json!(datum), Rc::default()).await.outcome {
            SliceOutcome::Ok { value } => value,
            other => panic!("{other:?}"),
        }
    };
    let first = ready_sandbox(&factory, plain_job()).await;
    assert_eq!(run(first.clone(), 2).await, json!(4));
    // A JavaScript sandbox's frame, kept after the first one's: the Pyodide sandbox after them
    // takes the frame holding the compiled interpreter, not the one that waited least.
    let javascript = factory.create(Worktime::MapBasic, &[]).unwrap();
    assert!(matches!(javascript.prepare(js_job("(x) => 2 * x", vec![])).await, SetupOutcome::Ready { .. }));
    assert_eq!(run(javascript.clone(), 1).await, json!(2));
    assert_eq!(new_frames().length(), 1, "the JavaScript sandbox has a frame of its own");
    first.retire();
    drop(first);
    javascript.retire();
    drop(javascript);
    let second = ready_sandbox(&factory, plain_job()).await;
    assert_eq!(new_frames().length(), 0, "the second sandbox runs in the first one's frame");
    assert_eq!(run(second.clone(), 3).await, json!(6));
    let reused = [Some("compiled".to_string()), Some("reused".to_string())];
    assert_eq!(*interpreters.borrow(), reused, "compiled by the frame once, for both");
    // A terminated sandbox (at fault, or past its time) takes its frame, and the interpreter
    // compiled there, with it: the next one gets the JavaScript sandbox's frame and compiles.
    second.terminate();
    let third = ready_sandbox(&factory, plain_job()).await;
    assert_eq!(new_frames().length(), 0, "the sandbox after a terminated one gets the other kept frame");
    assert_eq!(run(third.clone(), 4).await, json!(8));
    assert_eq!(interpreters.borrow().last(), Some(&Some("compiled".to_string())));
    third.terminate();
}

/// The sandbox script's `copyHeap` (with the page size it uses), cut out of the script: the
/// function that puts a snapshot's heap into a sandbox's memory.
fn copy_heap() -> js_sys::Function {
    let script = include_str!("../../pyodide-loader/sandbox-worker.js");
    let page = script.lines().find(|line| line.starts_with("const PAGE_BYTES")).expect("the script sets PAGE_BYTES");
    let start = script.find("function copyHeap(").expect("the script has copyHeap");
    // The function ends where its braces balance (its only string, a template, has balanced ones).
    let mut depth = 0;
    let mut end = None;
    for (at, character) in script[start..].char_indices() {
        match character {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(start + at + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let function = &script[start..end.expect("copyHeap ends")];
    let make = js_sys::Function::new_no_args(&format!("{page}\n{function}\nreturn copyHeap;"));
    make.call0(&JsValue::NULL).unwrap().dyn_into().unwrap()
}

#[wasm_bindgen_test]
fn a_restore_leaves_exactly_the_snapshots_heap_in_memory_and_refuses_one_too_long() {
    const PAGE: usize = 4096;
    let copy_heap = copy_heap();
    // The snapshot's heap: pages 0 and 2 hold data (page 2 only in its last byte), 1 and 3 are zeros.
    let mut heap = vec![0u8; 4 * PAGE];
    heap[..PAGE].fill(7);
    heap[3 * PAGE - 1] = 9;
    // The memory it goes into, one page longer: what instantiation wrote (pages 1, 3 and the page
    // past the heap, which must end as zeros) and page 2's old content.
    let mut memory = vec![0u8; 5 * PAGE];
    memory[PAGE + 10] = 1;
    memory[2 * PAGE] = 5;
    memory[4 * PAGE - 1] = 1;
    memory[4 * PAGE + 100] = 1;
    let target = js_sys::Uint8Array::from(&memory[..]);
    copy_heap.call2(&JsValue::NULL, &target, &js_sys::Uint8Array::from(&heap[..])).unwrap();
    let mut expected = heap.clone();
    expected.resize(5 * PAGE, 0);
    let written = target.to_vec();
    let first_wrong = written.iter().zip(&expected).position(|(got, want)| got != want);
    assert_eq!(first_wrong, None, "the memory differs from the heap from that byte on");
    assert_eq!(written.len(), expected.len());

    // (That the zero pages are left unwritten shows as memory, in `make bench`'s memory phase.)
    let too_long = js_sys::Uint8Array::from(&vec![1u8; 6 * PAGE][..]);
    let error = copy_heap.call2(&JsValue::NULL, &target, &too_long).unwrap_err();
    let message = String::from(error.dyn_into::<js_sys::Error>().unwrap().message());
    assert_eq!(message, format!("a heap of {} bytes does not fit a memory of {}", 6 * PAGE, 5 * PAGE));
}
