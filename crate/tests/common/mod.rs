//! Shared by the browser tests: the live scheduler's URL and API key, and the jobs they set sandboxes up
//! with.
//!
//! A test that needs the live scheduler is `#[ignore = "needs a live scheduler (make test-browser)"]`:
//! a plain `wasm-pack test --headless --chrome crate` lists it as ignored, and `make test-browser`
//! runs every test with `--include-ignored` through `scripts/with-scheduler`.
#![allow(dead_code)] // Each test file uses part of it.

use std::collections::BTreeMap;
use std::rc::Rc;

use tessera_protocol::{BundleEntry, JobDescriptor, Worktime};
use tessera_worker::supervisor::PreparedJob;

/// The scheduler `scripts/with-scheduler` started for this run (its URL is fixed at build time).
#[allow(clippy::option_env_unwrap)] // Failing at run time, with this message, is the point.
pub fn scheduler() -> &'static str {
    option_env!("TESSERA_TEST_SCHEDULER").expect(
        "TESSERA_TEST_SCHEDULER was not set at build time: run the live-scheduler tests through scripts/with-scheduler (make test-browser)",
    )
}

/// The API key of that scheduler (its first admin key), for the tests that deploy.
#[allow(clippy::option_env_unwrap)] // As above.
pub fn api_key() -> &'static str {
    option_env!("TESSERA_TEST_API_KEY").expect(
        "TESSERA_TEST_API_KEY was not set at build time: run the live-scheduler tests through scripts/with-scheduler (make test-browser)",
    )
}

/// A job of `worktime` running `program` with `arguments` and `bundle`, as a lease would bring it.
pub fn job_with(
    worktime: Worktime,
    program: &str,
    arguments: Vec<serde_json::Value>,
    bundle: Vec<BundleEntry>,
) -> Rc<PreparedJob> {
    let (program_name, bundle_sha) = match worktime {
        Worktime::MapBasic => ("work.js", None),
        Worktime::Pyodide => ("main.py", (!bundle.is_empty()).then(|| "0".repeat(64))),
    };
    Rc::new(PreparedJob {
        descriptor: JobDescriptor {
            job_id: "j-test".into(),
            name: "test".into(),
            worktime,
            program: program.into(),
            program_name: program_name.into(),
            arguments,
            env: BTreeMap::new(),
            packages: vec![],
            bundle: bundle_sha,
            slice_timeout_ms: 60_000,
            no_progress_timeout_ms: None,
        },
        bundle,
    })
}

/// A JavaScript (map-basic) job.
pub fn js_job(program: &str, arguments: Vec<serde_json::Value>) -> Rc<PreparedJob> {
    job_with(Worktime::MapBasic, program, arguments, vec![])
}

/// A Python job without a bundle.
pub fn python_job(program: &str) -> Rc<PreparedJob> {
    job_with(Worktime::Pyodide, program, vec![], vec![])
}

/// A Python job whose handler doubles its datum, or spins forever on `"spin"`.
pub const SPINNING_PROGRAM: &str =
    "import dcp\n\ndef handler(x):\n    if x == 'spin':\n        while True:\n            pass\n    return x * 2\n\ndcp.set_slice_handler(handler)\n";

/// Runs a spinning slice in `sandbox` (set up with [`SPINNING_PROGRAM`]), interrupts it (see
/// [`interrupting`]), and checks it ended timed out (the sandbox marks the `KeyboardInterrupt` its
/// interrupt raised) and the same sandbox runs the next slice.
pub async fn a_spinning_slice_is_interrupted(sandbox: Rc<dyn tessera_worker::supervisor::Sandbox>) {
    use serde_json::json;
    use tessera_protocol::SliceOutcome;

    let run = interrupting(&sandbox, sandbox.run(0, json!("spin"), Rc::default())).await;
    assert!(matches!(&run.outcome, SliceOutcome::TimedOut { message } if message.contains("interrupted")), "{run:?}");
    let after = sandbox.run(1, json!(21), Rc::default()).await;
    assert_eq!(after.outcome, SliceOutcome::Ok { value: json!(42) }, "the same sandbox runs the next slice");
}

/// Awaits `runs`, interrupting `sandbox` every 300 ms until they end. Once is not enough: a
/// sandbox clears the interrupt when a slice starts (a stop meant for the previous slice must not
/// hit it), so on a loaded machine an interrupt that arrives before the spinning slice started
/// would be lost and the slice would spin until the runner's time limit.
pub async fn interrupting<F: std::future::Future>(
    sandbox: &Rc<dyn tessera_worker::supervisor::Sandbox>,
    runs: F,
) -> F::Output {
    use futures::future::{select, Either};

    let mut runs = Box::pin(runs);
    loop {
        match select(runs, gloo_timers::future::TimeoutFuture::new(300)).await {
            Either::Left((output, _)) => return output,
            Either::Right((_, still_running)) => {
                assert!(sandbox.interrupt(), "a Pyodide sandbox on an isolated page can be interrupted");
                runs = still_running;
            }
        }
    }
}

/// Marks the page's frames not seen before and returns them (sandbox frames a test opened).
pub fn new_frames() -> js_sys::Array {
    let fresh = js_sys::Function::new_no_args(
        "const fresh = [...document.querySelectorAll('iframe')].filter((frame) => !frame.dataset.seen);
         fresh.forEach((frame) => { frame.dataset.seen = '1'; });
         return fresh;",
    );
    fresh.call0(&wasm_bindgen::JsValue::NULL).expect("the page can list its frames").into()
}
