//! A real Web Worker sandbox (the embedded sandbox script) running map-basic slices.
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use serde_json::json;
use tessera_protocol::{SliceOutcome, Worktime};
use tessera_worker::supervisor::{Sandbox, SandboxFactory, SetupOutcome, SliceProgress};
use tessera_worker::web::sandbox::IsolatedSandboxFactory;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::*;

mod common;
use common::{js_job as job, new_frames, python_job, scheduler};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn runs_slices_in_a_web_worker_and_keeps_the_job_warm() {
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
    let job = job("async (x, k) => { globalThis.calls = (globalThis.calls || 0) + 1; progress(0.5); console.log('x is', x); return { y: x * k, calls: globalThis.calls, bytes: new Uint8Array([1, 2]) }; }", vec![json!(3)]);
    let progress = Rc::new(SliceProgress::default());
    assert!(matches!(sandbox.prepare(job).await, SetupOutcome::Ready { .. }));
    let first = sandbox.run(0, json!(2), progress.clone()).await;
    assert_eq!(first.outcome, SliceOutcome::Ok { value: json!({"y": 6, "calls": 1, "bytes": {"$bytes": "AQI="}}) });
    assert_eq!(first.console.len(), 1);
    assert_eq!(first.console[0].text, "x is 2");
    assert_eq!(first.console[0].slice, Some(0));
    assert_eq!((progress.value(), progress.reports()), (Some(0.5), 1));
    assert_eq!(first.heap_bytes, None, "a JavaScript sandbox has no heap to report");
    let second = sandbox.run(1, json!(5), progress).await;
    assert_eq!(second.outcome, SliceOutcome::Ok { value: json!({"y": 15, "calls": 2, "bytes": {"$bytes": "AQI="}}) });
    sandbox.terminate();
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_thrown_error_is_a_slice_error_with_its_stack() {
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
    sandbox.prepare(job("(x) => { throw new RangeError('too big: ' + x); }", vec![])).await;
    let run = sandbox.run(0, json!(9), Rc::default()).await;
    match run.outcome {
        SliceOutcome::Error { message, stack } => {
            assert_eq!(message, "too big: 9");
            assert!(
                stack.unwrap_or_default().starts_with("RangeError: too big: 9"),
                "the same header in every browser"
            );
        }
        other => panic!("expected a slice error, got {other:?}"),
    }
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_program_that_is_not_a_function_fails_its_set_up() {
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
    let setup = sandbox.prepare(job("42", vec![])).await;
    assert!(
        matches!(setup, SetupOutcome::ProgramFailed { ref message, .. } if message.contains("not a function")),
        "{setup:?}"
    );
    let broken = factory.create(Worktime::MapBasic, &[]).unwrap();
    let setup = broken.prepare(job("(x) => {", vec![])).await;
    assert!(matches!(setup, SetupOutcome::ProgramFailed { .. }), "syntax error: {setup:?}");
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_runtime_that_cannot_load_is_a_fault_not_the_programs_error() {
    // Nothing listens on port 1: Pyodide's import fails the way a flaky network would.
    let factory = IsolatedSandboxFactory::new(scheduler(), "http://127.0.0.1:1/").unwrap();
    let sandbox = factory.create(Worktime::Pyodide, &[]).unwrap();
    let setup = sandbox.prepare(python_job("import dcp\ndcp.set_slice_handler(lambda x: x)\n")).await;
    assert!(
        matches!(setup, SetupOutcome::Fault { ref message } if message.contains("could not be set up")),
        "{setup:?}"
    );
    sandbox.terminate();
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_terminated_sandbox_reports_a_worker_fault() {
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
    sandbox.prepare(job("(x) => new Promise(() => {})", vec![])).await;
    let hanging = sandbox.run(0, json!(1), Rc::default());
    let stopper = sandbox.clone();
    wasm_bindgen_futures::spawn_local(async move {
        gloo_timers::future::TimeoutFuture::new(200).await;
        stopper.terminate();
    });
    let run = hanging.await;
    assert!(matches!(run.outcome, SliceOutcome::WorkerFault { .. }), "{run:?}");
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn guest_code_has_no_network_or_storage_and_cannot_forge_answers() {
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
    let program = r#"(x) => {
        const seen = {};
        for (const name of ['fetch', 'XMLHttpRequest', 'WebSocket', 'EventSource', 'importScripts', 'indexedDB',
                            'caches', 'BroadcastChannel', 'Worker', 'SharedWorker', 'postMessage']) {
            try { seen[name] = typeof self[name]; } catch (error) { seen[name] = 'throws'; }
        }
        try { seen.prototypeFetch = typeof WorkerGlobalScope.prototype.fetch; } catch (error) { seen.prototypeFetch = 'throws'; }
        // A forged answer for this very slice, on every channel guest code can reach.
        for (const send of [self.postMessage, DedicatedWorkerGlobalScope.prototype.postMessage]) {
            try { send.call(self, { type: 'result', id: 1, json: '"forged"' }); } catch (error) {}
        }
        return { seen, value: x };
    }"#;
    assert!(matches!(sandbox.prepare(job(program, vec![])).await, SetupOutcome::Ready { .. }));
    let run = sandbox.run(0, json!("real"), Rc::default()).await;
    let SliceOutcome::Ok { value } = run.outcome else { panic!("{run:?}") };
    assert_eq!(value["value"], "real", "the core took the real answer, not the forged one");
    for (name, kind) in value["seen"].as_object().unwrap() {
        assert_eq!(kind, "undefined", "{name} is still reachable: {value}");
    }
    sandbox.terminate();
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_sandbox_lives_in_an_opaque_origin_of_its_own() {
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let program = "(x) => ({ origin: self.origin, protocol: location.protocol, isolated: self.crossOriginIsolated })";
    for _ in 0..2 {
        let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
        assert!(matches!(sandbox.prepare(job(program, vec![])).await, SetupOutcome::Ready { .. }));
        let run = sandbox.run(0, json!(1), Rc::default()).await;
        let SliceOutcome::Ok { value } = run.outcome else { panic!("{run:?}") };
        assert_eq!(value["origin"], "null", "an opaque origin, not the page's: {value}");
        assert_eq!(value["protocol"], "blob:", "{value}");
        assert_eq!(value["isolated"], true, "the frame passes on the page's cross-origin isolation: {value}");
        sandbox.terminate();
    }
}

#[wasm_bindgen_test]
async fn a_sandbox_host_that_never_answers_is_a_fault_within_the_start_up_limit() {
    // Nothing listens on port 1: the frame never loads, so it never announces itself.
    let factory = IsolatedSandboxFactory::new("http://127.0.0.1:1", "/pyodide/").unwrap();
    let sandbox = factory.create(Worktime::MapBasic, &[]).unwrap();
    let setup = sandbox.prepare(job("(x) => x", vec![])).await;
    assert!(
        matches!(setup, SetupOutcome::Fault { ref message } if message.contains("did not start its worker")),
        "{setup:?}"
    );
}

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn a_kept_frame_whose_page_ended_is_a_fault_within_seconds_and_the_next_sandbox_gets_a_new_one() {
    new_frames();
    // The factory opens its first frame at once, ahead of the first sandbox.
    let factory = IsolatedSandboxFactory::new(scheduler(), "/pyodide/").unwrap();
    let run_one = |sandbox: Rc<dyn Sandbox>| async move {
        assert!(matches!(sandbox.prepare(job("(x) => x + 1", vec![])).await, SetupOutcome::Ready { .. }));
        sandbox.run(0, json!(1), Rc::default()).await.outcome
    };
    let first = factory.create(Worktime::MapBasic, &[]).unwrap();
    assert_eq!(run_one(first.clone()).await, SliceOutcome::Ok { value: json!(2) });
    let frames = new_frames();
    assert_eq!(frames.length(), 1);
    first.retire();
    drop(first);
    // The kept frame's page ends the way a renderer that crashed or was reclaimed does: nothing
    // in it answers any more, and nothing tells the page.
    let frame: web_sys::HtmlIFrameElement = frames.get(0).unchecked_into();
    frame.set_src("about:blank");
    gloo_timers::future::TimeoutFuture::new(300).await;

    let second = factory.create(Worktime::MapBasic, &[]).unwrap();
    assert_eq!(new_frames().length(), 0, "the second sandbox was given the kept frame");
    let setup = second.prepare(job("(x) => x + 1", vec![])).await;
    assert!(
        matches!(setup, SetupOutcome::Fault { ref message } if message.contains("did not answer within 3000 ms")),
        "a fault once the kept frame did not answer, not at the 15 s start-up limit: {setup:?}"
    );
    second.retire();
    drop(second);
    let third = factory.create(Worktime::MapBasic, &[]).unwrap();
    assert_eq!(new_frames().length(), 1, "the frame of a faulted sandbox is not kept, even retired: a new one");
    assert_eq!(run_one(third.clone()).await, SliceOutcome::Ok { value: json!(2) });
    third.terminate();
}
