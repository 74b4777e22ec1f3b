//! Shared by the browser tests: the live scheduler's URL and API key, and the jobs they set sandboxes up
//! with.
#![allow(dead_code)] // Each test file uses part of it.

use std::collections::BTreeMap;
use std::rc::Rc;

use tessera_protocol::{BundleEntry, JobDescriptor, Worktime};
use tessera_worker::supervisor::PreparedJob;

/// The scheduler `scripts/with-scheduler` started for this run (its URL is fixed at build time).
#[allow(clippy::option_env_unwrap)] // Failing at run time, with this message, is the point.
pub fn scheduler() -> &'static str {
    option_env!("TESSERA_TEST_SCHEDULER").expect(
        "TESSERA_TEST_SCHEDULER is not set: run the browser tests through scripts/with-scheduler (make test-browser)",
    )
}

/// The API key of that scheduler (its first admin key), for the tests that deploy.
#[allow(clippy::option_env_unwrap)] // As above.
pub fn api_key() -> &'static str {
    option_env!("TESSERA_TEST_API_KEY").expect(
        "TESSERA_TEST_API_KEY is not set: run the browser tests through scripts/with-scheduler (make test-browser)",
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
