//! Four Pyodide sandboxes starting at once, as a worker with four sandboxes starts them: each one
//! must come up and run its slice. Pyodide has an open report of `loadPyodide` hanging in Firefox
//! when more than two workers load at once (pyodide issue 5044); `make test-browser` runs this in
//! Firefox ESR as well as Chromium. Round one is a first visit (one sandbox makes the runtime
//! snapshot while three load afresh), round two restores that snapshot four times at once.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use futures::future::join_all;
use serde_json::json;
use tessera_protocol::{SliceOutcome, Worktime};
use tessera_worker::supervisor::{Sandbox, SandboxFactory, SetupOutcome, WorkerEvent};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use tessera_worker::web::snapshots::forget_stored;
use wasm_bindgen_test::*;

mod common;
use common::{python_job, scheduler};

wasm_bindgen_test_configure!(run_in_browser);

/// Sandboxes started at once: more than the two pyodide issue 5044 says Firefox handles.
const TOGETHER: usize = 4;

const PROGRAM: &str = "import dcp, sys\n\ndcp.set_slice_handler(lambda x: [x * x, sys.version_info[0]])\n";

/// Creates [`TOGETHER`] Pyodide sandboxes, sets them all up at once, runs one slice in each at
/// once, checks every answer, and ends them.
async fn start_together(factory: &IsolatedSandboxFactory) {
    let sandboxes: Vec<Rc<dyn Sandbox>> =
        (0..TOGETHER).map(|_| factory.create(Worktime::Pyodide, &[]).unwrap()).collect();
    let setups = join_all(sandboxes.iter().map(|sandbox| sandbox.prepare(python_job(PROGRAM)))).await;
    for (index, setup) in setups.iter().enumerate() {
        assert!(matches!(setup, SetupOutcome::Ready { .. }), "sandbox {index} of {TOGETHER}: {setup:?}");
    }
    let runs = join_all(
        sandboxes.iter().enumerate().map(|(index, sandbox)| sandbox.run(index as u64, json!(index + 2), Rc::default())),
    )
    .await;
    for (index, run) in runs.iter().enumerate() {
        assert_eq!(run.outcome, SliceOutcome::Ok { value: json!([(index + 2) * (index + 2), 3]) }, "sandbox {index}");
    }
    for sandbox in sandboxes {
        sandbox.terminate();
    }
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn four_pyodide_sandboxes_start_at_once_fresh_and_then_from_the_snapshot() {
    forget_stored().await.unwrap();
    let snapshots: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let reasons: Rc<RefCell<Vec<String>>> = Rc::default();
    let reasons_sink = reasons.clone();
    let sink = snapshots.clone();
    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap().with_events(
        Rc::new(move |event| {
            if let WorkerEvent::RuntimeSnapshot { outcome, reason, .. } = event {
                sink.borrow_mut().push(*outcome);
                reasons_sink.borrow_mut().extend(reason.clone());
            }
        }),
    );
    start_together(&factory).await;
    assert_eq!(*snapshots.borrow(), ["made"], "one sandbox made the snapshot, three loaded afresh");
    start_together(&factory).await;
    assert_eq!(*snapshots.borrow(), ["made", "restored", "restored", "restored", "restored"], "{:?}", reasons.borrow());
}
