//! Guest Python has no ambient authority once its job is set up: the network APIs are gone from
//! the worker's global scope, and Python modules that captured them (pyodide.http, micropip) are
//! dropped. Defence in depth: the wall is the sandbox host's CSP (docs/SECURITY.md).
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

const PROGRAM: &str = r#"
import dcp
import js
# Imported before the lockdown, as a program's own imports would be: it captured fetch/XHR.
import pyodide.http

def handler(x):
    # Removed globals read as undefined, which Python sees as None.
    seen = {name: getattr(js, name, None) is not None for name in ["fetch", "XMLHttpRequest", "WebSocket", "importScripts", "indexedDB"]}
    try:
        from pyodide.http import open_url
        open_url("/v1/health")
        seen["open_url"] = "reached the network"
    except Exception as error:
        seen["open_url"] = type(error).__name__
    return seen

dcp.set_slice_handler(handler)
"#;

#[wasm_bindgen_test]
#[ignore = "needs a live scheduler (make test-browser)"]
async fn python_cannot_reach_the_network_after_set_up() {
    let job = python_job(PROGRAM);
    let factory = IsolatedSandboxFactory::new(scheduler(), &format!("{}/pyodide/", scheduler())).unwrap();
    let sandbox = factory.create(Worktime::Pyodide, &[]).unwrap();
    let setup = sandbox.prepare(job).await;
    assert!(matches!(setup, SetupOutcome::Ready { .. }), "{setup:?}");
    let run = sandbox.run(0, json!(1), Rc::default()).await;
    let SliceOutcome::Ok { value } = run.outcome else { panic!("{run:?}") };
    for name in ["fetch", "XMLHttpRequest", "WebSocket", "importScripts", "indexedDB"] {
        assert_eq!(value[name], false, "js.{name} is reachable: {value}");
    }
    assert_ne!(value["open_url"], "reached the network", "{value}");
    sandbox.terminate();
}
