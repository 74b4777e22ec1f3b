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
use common::{a_spinning_slice_is_interrupted, interrupting, python_job, scheduler, SPINNING_PROGRAM};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_runaway_python_slice_is_interrupted_and_the_sandbox_keeps_working() {
    let isolated = js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into()).unwrap();
    assert_eq!(isolated.as_bool(), Some(true), "the interrupt needs a cross-origin isolated page");
    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap();
    let sandbox = factory.create(Worktime::Pyodide, &[]).unwrap();
    let setup = sandbox.prepare(python_job(SPINNING_PROGRAM)).await;
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    a_spinning_slice_is_interrupted(sandbox.clone()).await;
    sandbox.terminate();
}

/// Light slices sent together with a runaway one: the sandbox holds the light slices' answers to
/// send them with the next, so they are still held while the runaway one spins. The interrupt
/// stops the runaway slice, which alone is reported timed out; the held answers arrive intact.
#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn answers_held_behind_a_runaway_slice_arrive_and_only_it_times_out() {
    use futures::future::join_all;
    use serde_json::json;
    use std::rc::Rc;
    use tessera_protocol::SliceOutcome;

    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap();
    let sandbox = factory.create(Worktime::Pyodide, &[]).unwrap();
    let setup = sandbox.prepare(python_job(SPINNING_PROGRAM)).await;
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    // Asked for in one turn: they travel to the sandbox in one batch, the runaway one last.
    let mut runs: Vec<_> = (0..5).map(|x| sandbox.run(x, json!(x), Rc::default())).collect();
    runs.push(sandbox.run(5, json!("spin"), Rc::default()));
    let outcomes: Vec<SliceOutcome> =
        interrupting(&sandbox, join_all(runs)).await.into_iter().map(|run| run.outcome).collect();
    for (x, outcome) in outcomes[..5].iter().enumerate() {
        assert_eq!(outcome, &SliceOutcome::Ok { value: json!(2 * x) }, "slice {x}");
    }
    assert!(
        matches!(&outcomes[5], SliceOutcome::TimedOut { message } if message.contains("interrupted")),
        "{:?}",
        outcomes[5]
    );
    let after = sandbox.run(6, json!(21), Rc::default()).await;
    assert_eq!(after.outcome, SliceOutcome::Ok { value: json!(42) }, "the same sandbox runs the next slice");
    sandbox.terminate();
}
