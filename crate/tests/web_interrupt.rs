//! The watchdog's first rung in a real browser: a runaway Python slice is stopped with
//! `KeyboardInterrupt` through Pyodide's interrupt buffer, and the sandbox stays usable.
//! The test page is cross-origin isolated (wasm-bindgen's runner serves COOP/COEP), as the
//! contribute page is.
#![cfg(target_arch = "wasm32")]

use tessera_protocol::Worktime;
use tessera_worker::supervisor::{SandboxFactory, SetupOutcome};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use wasm_bindgen_test::*;

mod common;
use common::{a_spinning_slice_is_interrupted, python_job, scheduler, SPINNING_PROGRAM};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_runaway_python_slice_is_interrupted_and_the_sandbox_keeps_working() {
    let isolated = js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into()).unwrap();
    assert_eq!(isolated.as_bool(), Some(true), "the interrupt needs a cross-origin isolated page");
    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap();
    let sandbox = factory.create(Worktime::Pyodide).unwrap();
    let setup = sandbox.prepare(python_job(SPINNING_PROGRAM)).await;
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    a_spinning_slice_is_interrupted(sandbox.clone()).await;
    sandbox.terminate();
}
