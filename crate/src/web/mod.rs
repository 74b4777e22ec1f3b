//! The browser edge of the worker core: `fetch`, isolated sandboxes (Web Workers in opaque-origin
//! iframes) and the files they get as bytes, timers and the JavaScript API.

pub mod assets;
pub mod clock;
mod fields;
pub mod gzip;
pub mod http;
pub mod sandbox;
pub mod snapshots;

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::supervisor::{
    valid_cpu_share, Controls, Farewell, StopHandle, Supervisor, SupervisorConfig, WorkerEvent, MAX_SANDBOXES,
};
use crate::WorkerError;
use clock::BrowserClock;
use http::HttpSchedulerClient;
use sandbox::IsolatedSandboxFactory;

/// Options the page passes to `new TesseraWorker({...})` (read by [`WorkerOptions::read`]).
#[derive(Debug, Default)]
struct WorkerOptions {
    /// Scheduler root URL; defaults to the page's origin.
    scheduler: Option<String>,
    /// Sandboxes (1–64); defaults to `navigator.hardwareConcurrency − 1`, at least 1.
    sandboxes: Option<u32>,
    /// The share of each sandbox's time spent on slices (0.05–1, default 1).
    cpu_share: Option<f64>,
    /// Who accepted slices are credited to: an id the page keeps (16–64 of `A-Z a-z 0-9 _ -`).
    contributor: Option<String>,
    /// Stop after this many ms without work.
    idle_exit_ms: Option<u64>,
    max_slices_per_sandbox: Option<u32>,
    /// Recycle a sandbox whose heap grew past this many bytes.
    max_sandbox_heap_bytes: Option<u64>,
    /// Recycle a sandbox idle this long (ms).
    sandbox_idle_ms: Option<u64>,
    /// Where the Pyodide distribution is served; defaults to `<scheduler>/pyodide/`.
    pyodide_url: Option<String>,
    prewarm_spare: Option<bool>,
    /// How long a sandbox may take to load its runtime and set a job up (ms).
    setup_timeout_ms: Option<u64>,
    /// A private pool's worker key (`tessera serve --worker-key`).
    worker_key: Option<String>,
    /// Start Pyodide sandboxes from a memory snapshot made in this browser (default true).
    runtime_snapshots: Option<bool>,
    /// Start them from a snapshot also holding their job's packages (default true).
    package_snapshots: Option<bool>,
}

impl WorkerOptions {
    /// The options the core knows, as the page names them; `onEvent` is read on its own.
    const NAMES: [&'static str; 15] = [
        "scheduler",
        "sandboxes",
        "cpuShare",
        "contributor",
        "idleExitMs",
        "maxSlicesPerSandbox",
        "maxSandboxHeapBytes",
        "sandboxIdleMs",
        "pyodideUrl",
        "prewarmSpare",
        "setupTimeoutMs",
        "workerKey",
        "runtimeSnapshots",
        "packageSnapshots",
        "onEvent",
    ];

    /// Reads `options` (absent or `null`: the defaults), refusing a field of the wrong type or
    /// an unknown one, with its name (`sandboxes: expected a whole number …, not the text "x"`).
    fn read(options: &JsValue) -> Result<WorkerOptions, WorkerError> {
        if options.is_undefined() || options.is_null() {
            return Ok(WorkerOptions::default());
        }
        let fields = fields::Fields::of(options).map_err(WorkerError::Options)?;
        if let Some(name) = fields.unknown(&Self::NAMES).first() {
            return Err(WorkerError::Options(format!(
                "unknown option `{name}` (the options are {})",
                Self::NAMES.join(", ")
            )));
        }
        let read = || -> Result<WorkerOptions, String> {
            let millis = |name: &str| fields.whole(name, 0..=u64::MAX);
            Ok(WorkerOptions {
                scheduler: fields.string("scheduler")?,
                sandboxes: fields.whole("sandboxes", 1..=MAX_SANDBOXES as u64)?.map(|n| n as u32),
                cpu_share: fields.number("cpuShare")?,
                contributor: fields.string("contributor")?,
                idle_exit_ms: millis("idleExitMs")?,
                max_slices_per_sandbox: fields.whole("maxSlicesPerSandbox", 0..=u32::MAX.into())?.map(|n| n as u32),
                max_sandbox_heap_bytes: fields.whole("maxSandboxHeapBytes", 0..=u64::MAX)?,
                sandbox_idle_ms: millis("sandboxIdleMs")?,
                pyodide_url: fields.string("pyodideUrl")?,
                prewarm_spare: fields.flag("prewarmSpare")?,
                setup_timeout_ms: millis("setupTimeoutMs")?,
                worker_key: fields.string("workerKey")?,
                runtime_snapshots: fields.flag("runtimeSnapshots")?,
                package_snapshots: fields.flag("packageSnapshots")?,
            })
        };
        read().map_err(WorkerError::Options)
    }
}

/// `navigator.hardwareConcurrency − 1`, at least 1: leave one core to the person using the machine.
fn default_sandboxes() -> usize {
    let global = js_sys::global();
    let cores = js_sys::Reflect::get(&global, &"navigator".into())
        .and_then(|navigator| js_sys::Reflect::get(&navigator, &"hardwareConcurrency".into()))
        .ok()
        .and_then(|value| value.as_f64())
        .unwrap_or(2.0) as usize;
    cores.saturating_sub(1).clamp(1, MAX_SANDBOXES)
}

fn page_origin() -> Option<String> {
    let location = js_sys::Reflect::get(&js_sys::global(), &"location".into()).ok()?;
    js_sys::Reflect::get(&location, &"origin".into()).ok()?.as_string()
}

/// The most leases one farewell beacon names: `sendBeacon` bodies are limited to 64 KiB.
const FAREWELL_MAX_LEASES: usize = 300;

/// A browser worker: `new TesseraWorker(options)`, then `await worker.run()`; `worker.stop()` ends it,
/// `pause()`/`resume()`, `setSandboxes(n)` and `setCpuShare(p)` steer it while it runs.
/// When the page goes away (`pagehide`), every lease it holds is given back at once with
/// `navigator.sendBeacon`, so the slices are retried elsewhere without waiting for their leases
/// to expire and without costing them an attempt.
#[wasm_bindgen]
pub struct TesseraWorker {
    supervisor: RefCell<Option<Supervisor<HttpSchedulerClient, IsolatedSandboxFactory, BrowserClock>>>,
    stop: StopHandle,
    controls: Controls,
    on_pagehide: Option<Closure<dyn FnMut()>>,
}

/// Stops the worker and sends the farewell beacon; runs synchronously inside `pagehide`.
fn say_farewell(stop: &StopHandle, farewell: &Farewell, results_url: &str) {
    stop.stop();
    let Some(batch) = farewell.batch("the page was closed", FAREWELL_MAX_LEASES) else { return };
    let json = tessera_protocol::json::write(&batch);
    let Some(window) = web_sys::window() else { return };
    // text/plain keeps the beacon a simple request (no CORS preflight) from any page.
    let options = web_sys::BlobPropertyBag::new();
    options.set_type("text/plain");
    let parts = js_sys::Array::of1(&JsValue::from_str(&json));
    if let Ok(blob) = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options) {
        let _ = window.navigator().send_beacon_with_opt_blob(results_url, Some(&blob));
    }
}

#[wasm_bindgen]
impl TesseraWorker {
    /// Builds a worker from options; `onEvent` (a function) receives every supervisor event.
    #[wasm_bindgen(constructor)]
    pub fn new(options: JsValue) -> Result<TesseraWorker, JsError> {
        console_error_panic_hook::set_once();
        let on_event = js_sys::Reflect::get(&options, &"onEvent".into())
            .ok()
            .and_then(|value| value.dyn_into::<js_sys::Function>().ok());
        let parsed = WorkerOptions::read(&options).map_err(|error| JsError::new(&error.to_string()))?;
        let scheduler = parsed.scheduler.or_else(page_origin).ok_or_else(|| {
            JsError::new(&WorkerError::Options("no scheduler URL and no page origin".into()).to_string())
        })?;
        let scheduler = scheduler.trim_end_matches('/').to_string();
        let sandboxes = parsed.sandboxes.map(|n| n as usize).unwrap_or_else(default_sandboxes);
        if !(1..=MAX_SANDBOXES).contains(&sandboxes) {
            let error = WorkerError::Options(format!("sandboxes must be 1–{MAX_SANDBOXES}, not {sandboxes}"));
            return Err(JsError::new(&error.to_string()));
        }
        let mut config = SupervisorConfig::with_sandboxes(sandboxes);
        if let Some(share) = parsed.cpu_share {
            config.cpu_share = valid_cpu_share(share).map_err(|error| JsError::new(&error.to_string()))?;
        }
        config.idle_exit_ms = parsed.idle_exit_ms;
        if let Some(max) = parsed.max_slices_per_sandbox {
            config.max_slices_per_sandbox = max.max(1);
        }
        if let Some(bytes) = parsed.max_sandbox_heap_bytes {
            config.max_sandbox_heap_bytes = bytes;
        }
        if let Some(idle) = parsed.sandbox_idle_ms {
            config.max_sandbox_idle_ms = idle;
        }
        if let Some(prewarm) = parsed.prewarm_spare {
            config.prewarm_spare = prewarm;
        }
        if let Some(timeout) = parsed.setup_timeout_ms {
            config.setup_timeout_ms = timeout.max(1);
        }
        let listener: Rc<dyn Fn(&WorkerEvent)> = Rc::new(move |event: &WorkerEvent| {
            if let Some(callback) = &on_event {
                let value = js_sys::JSON::parse(&tessera_protocol::json::write(event)).ok();
                if let Some(value) = value {
                    let _ = callback.call1(&JsValue::NULL, &value);
                }
            }
        });
        let pyodide_url = parsed.pyodide_url.unwrap_or_else(|| format!("{scheduler}/pyodide/"));
        let factory = IsolatedSandboxFactory::new(&scheduler, &pyodide_url)
            .map_err(|error| JsError::new(&error.to_string()))?
            .with_runtime_snapshots(parsed.runtime_snapshots.unwrap_or(true))
            // `runtimeSnapshots: false` starts every sandbox afresh, package snapshots included.
            .with_package_snapshots(
                parsed.package_snapshots.unwrap_or(true) && parsed.runtime_snapshots.unwrap_or(true),
            )
            .with_events(listener.clone())
            .start_pyodide_ahead();
        if let Some(id) = parsed.contributor.as_deref().filter(|id| !tessera_protocol::is_contributor_id(id)) {
            let error = WorkerError::Options(format!(
                "contributor must be 16–64 characters of A-Z a-z 0-9 _ -, not {} ({} characters)",
                tessera_protocol::json::write(id),
                id.chars().count()
            ));
            return Err(JsError::new(&error.to_string()));
        }
        let client = HttpSchedulerClient::new(&scheduler)
            .with_worker_key(parsed.worker_key)
            .with_contributor(parsed.contributor);
        let results_url = client.results_url();
        let supervisor = Supervisor::new(client, factory, BrowserClock::new(), config, listener);
        let (stop, controls) = (supervisor.stop_handle(), supervisor.controls());
        let on_pagehide = web_sys::window().map(|window| {
            let (stop, farewell) = (stop.clone(), supervisor.farewell());
            let closure = Closure::<dyn FnMut()>::new(move || say_farewell(&stop, &farewell, &results_url));
            let _ = window.add_event_listener_with_callback("pagehide", closure.as_ref().unchecked_ref());
            closure
        });
        Ok(TesseraWorker { supervisor: RefCell::new(Some(supervisor)), stop, controls, on_pagehide })
    }

    /// Runs until stopped or idle; resolves with the reason (`"stopped"`, `"idle"`).
    pub fn run(&self) -> Result<js_sys::Promise, JsError> {
        let supervisor = self
            .supervisor
            .borrow_mut()
            .take()
            .ok_or_else(|| JsError::new("this worker already ran; create a new TesseraWorker"))?;
        Ok(wasm_bindgen_futures::future_to_promise(async move { Ok(JsValue::from_str(&supervisor.run().await)) }))
    }

    /// Asks the worker to stop: unfinished slices go back to the scheduler, sandboxes end.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Starts no new slice until `resume()`: running slices finish, queued ones go back to the
    /// scheduler for other workers, sandboxes stay loaded.
    pub fn pause(&self) {
        self.controls.pause();
    }

    pub fn resume(&self) {
        self.controls.resume();
    }

    /// Whether the worker is paused.
    #[wasm_bindgen(getter)]
    pub fn paused(&self) -> bool {
        self.controls.is_paused()
    }

    /// Runs `n` slices at once (1–64) from now on; sandboxes beyond that end once idle.
    #[wasm_bindgen(js_name = setSandboxes)]
    pub fn set_sandboxes(&self, n: f64) -> Result<(), JsError> {
        let whole = n.fract() == 0.0 && n >= 0.0;
        let sandboxes = if whole { n as usize } else { usize::MAX };
        self.controls.set_sandboxes(sandboxes).map_err(|_| {
            let error = WorkerError::Options(format!(
                "sandboxes must be a whole number 1–{MAX_SANDBOXES}, not {}",
                crate::supervisor::in_decimals(n)
            ));
            JsError::new(&error.to_string())
        })
    }

    /// How many sandboxes this worker runs.
    #[wasm_bindgen(getter)]
    pub fn sandboxes(&self) -> usize {
        self.controls.sandboxes()
    }

    /// Spends `share` (0.05–1) of each sandbox's time on slices: after a slice of `t` ms, the
    /// sandbox rests `t · (1 − share) / share` ms.
    #[wasm_bindgen(js_name = setCpuShare)]
    pub fn set_cpu_share(&self, share: f64) -> Result<(), JsError> {
        self.controls.set_cpu_share(share).map_err(|error| JsError::new(&error.to_string()))
    }

    /// The share of each sandbox's time spent on slices.
    #[wasm_bindgen(getter, js_name = cpuShare)]
    pub fn cpu_share(&self) -> f64 {
        self.controls.cpu_share()
    }
}

impl Drop for TesseraWorker {
    fn drop(&mut self) {
        if let (Some(window), Some(closure)) = (web_sys::window(), &self.on_pagehide) {
            let _ = window.remove_event_listener_with_callback("pagehide", closure.as_ref().unchecked_ref());
        }
    }
}
