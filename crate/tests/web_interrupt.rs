//! The watchdog's first rung in a real browser: a runaway Python slice is stopped with
//! `KeyboardInterrupt` through Pyodide's interrupt buffer, and the sandbox stays usable.
//! The test page is cross-origin isolated (wasm-bindgen's runner serves COOP/COEP), as the
//! contribute page is.
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use serde_json::json;
use tessera_protocol::{SliceOutcome, Worktime};
use tessera_worker::supervisor::{SandboxFactory, SetupOutcome};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use wasm_bindgen_test::*;

mod common;
use common::{python_job, scheduler};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
async fn a_runaway_python_slice_is_interrupted_and_the_sandbox_keeps_working() {
    let isolated = js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into()).unwrap();
    assert_eq!(isolated.as_bool(), Some(true), "the interrupt needs a cross-origin isolated page");
    let job = python_job("import dcp\n\ndef handler(x):\n    if x == 'spin':\n        while True:\n            pass\n    return x * 2\n\ndcp.set_slice_handler(handler)\n");
    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap();
    let sandbox = factory.create(Worktime::Pyodide).unwrap();
    let setup = sandbox.prepare(job).await;
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    let spinning = sandbox.run(0, json!("spin"), Rc::default());
    let interrupter = sandbox.clone();
    wasm_bindgen_futures::spawn_local(async move {
        gloo_timers::future::TimeoutFuture::new(300).await;
        assert!(interrupter.interrupt(), "a Pyodide sandbox on an isolated page can be interrupted");
    });
    let run = spinning.await;
    assert!(
        matches!(&run.outcome, SliceOutcome::Error { message, .. } if message.contains("KeyboardInterrupt")),
        "{run:?}"
    );
    let after = sandbox.run(1, json!(21), Rc::default()).await;
    assert_eq!(after.outcome, SliceOutcome::Ok { value: json!(42) }, "the same sandbox runs the next slice");
    sandbox.terminate();
}
