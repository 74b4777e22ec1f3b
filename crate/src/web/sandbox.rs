//! Sandboxes as Web Workers: a classic Blob worker running `pyodide-loader/sandbox-worker.js`.
//!
//! The worker script is embedded in the wasm, so the core needs nothing but its own bytes to
//! start a sandbox. Each worker is bound to one job: `prepare` sets it up once (runtime,
//! packages, bundle, program), every slice after that is one message round trip. When the page is
//! cross-origin isolated, each Pyodide sandbox gets an interrupt buffer (a `SharedArrayBuffer`),
//! so a runaway slice can be stopped with `KeyboardInterrupt` instead of losing the sandbox.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures::channel::oneshot;
use futures::FutureExt;
use js_sys::{Array, Int32Array, Object, Reflect, SharedArrayBuffer, Uint8Array};
use serde::Deserialize;
use serde_json::Value;
use tessera_protocol::{BundleEntry, ConsoleLine, SliceOutcome, Worktime};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{Blob, BlobPropertyBag, ErrorEvent, MessageChannel, MessageEvent, MessagePort, Url, Worker};

use crate::supervisor::{PreparedJob, Sandbox, SandboxFactory, SetupOutcome, SliceProgress, SliceRun, Task};
use crate::WorkerError;

/// The sandbox script, embedded at build time.
pub const SANDBOX_SCRIPT: &str = include_str!("../../../pyodide-loader/sandbox-worker.js");

/// Messages the sandbox script posts back.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum FromSandbox {
    SetupDone,
    /// The program failed while setting up.
    SetupError {
        message: String,
        stack: Option<String>,
    },
    /// The sandbox could not set up for reasons not the program's (runtime, packages, files).
    SetupFault {
        message: String,
    },
    Result {
        id: u32,
        json: String,
        heap: Option<f64>,
    },
    Error {
        id: Option<u32>,
        message: String,
        stack: Option<String>,
        heap: Option<f64>,
    },
    Progress {
        id: Option<u32>,
        value: Option<f64>,
    },
    Console {
        stream: String,
        text: String,
    },
    /// The runtime is unusable (e.g. a fatal Pyodide error): the sandbox must be replaced.
    Fatal {
        message: String,
    },
}

/// How a request to the sandbox ended, with the output printed before the answer came.
enum Reply {
    Done(Result<String, (String, Option<String>)>, Vec<ConsoleLine>),
    /// The sandbox could not do it, through no fault of the program.
    Fault(String),
    Crashed(String),
}

/// A slice sent to the sandbox and not answered yet.
struct Pending {
    reply: oneshot::Sender<Reply>,
    progress: Rc<SliceProgress>,
}

/// State shared between the sandbox handle and its message handlers.
#[derive(Default)]
struct Shared {
    setup: RefCell<Option<oneshot::Sender<Reply>>>,
    pending: RefCell<HashMap<u32, Pending>>,
    console: RefCell<Vec<ConsoleLine>>,
    crashed: RefCell<Option<String>>,
    /// The sandbox's heap size at its last answer.
    heap_bytes: Cell<Option<u64>>,
}

impl Shared {
    fn crash(&self, reason: String) {
        self.crashed.replace(Some(reason.clone()));
        if let Some(sender) = self.setup.borrow_mut().take() {
            let _ = sender.send(Reply::Crashed(reason.clone()));
        }
        for (_, pending) in self.pending.borrow_mut().drain() {
            let _ = pending.reply.send(Reply::Crashed(reason.clone()));
        }
    }

    fn take_console(&self) -> Vec<ConsoleLine> {
        std::mem::take(&mut *self.console.borrow_mut())
    }

    fn receive(&self, message: FromSandbox) {
        match message {
            FromSandbox::SetupDone => {
                if let Some(sender) = self.setup.borrow_mut().take() {
                    let _ = sender.send(Reply::Done(Ok(String::new()), self.take_console()));
                }
            }
            FromSandbox::SetupError { message, stack } => {
                if let Some(sender) = self.setup.borrow_mut().take() {
                    let _ = sender.send(Reply::Done(Err((message, stack)), self.take_console()));
                }
            }
            FromSandbox::SetupFault { message } => {
                if let Some(sender) = self.setup.borrow_mut().take() {
                    let _ = sender.send(Reply::Fault(message));
                }
            }
            FromSandbox::Result { id, json, heap } => {
                self.heap_bytes.set(heap.map(|bytes| bytes as u64));
                if let Some(pending) = self.pending.borrow_mut().remove(&id) {
                    let _ = pending.reply.send(Reply::Done(Ok(json), self.take_console()));
                }
            }
            FromSandbox::Error { id, message, stack, heap } => {
                match id.and_then(|id| self.pending.borrow_mut().remove(&id)) {
                    Some(pending) => {
                        self.heap_bytes.set(heap.map(|bytes| bytes as u64));
                        let _ = pending.reply.send(Reply::Done(Err((message, stack)), self.take_console()));
                    }
                    None => self.crash(format!("sandbox protocol error: {message}")),
                }
            }
            FromSandbox::Progress { id, value } => {
                if let Some(progress) = id.and_then(|id| self.pending.borrow().get(&id).map(|p| p.progress.clone())) {
                    progress.report(value);
                }
            }
            FromSandbox::Fatal { message } => self.crash(message),
            FromSandbox::Console { stream, text } => {
                self.console.borrow_mut().push(ConsoleLine { slice: None, stream, text, seq: None })
            }
        }
    }
}

/// One Web Worker sandbox. Dropping it terminates the worker.
pub struct WebWorkerSandbox {
    worker: Worker,
    /// The control channel: the only way in or out of the sandbox the core listens to. The
    /// worker's own `postMessage` is reachable from guest code, so nothing on it is trusted.
    port: MessagePort,
    shared: Rc<Shared>,
    /// Shared with Pyodide (`setInterruptBuffer`): writing 2 raises `KeyboardInterrupt`.
    interrupt_buffer: Option<Int32Array>,
    next_id: Cell<u32>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(ErrorEvent)>,
}

impl WebWorkerSandbox {
    fn start(script_url: &str, worktime: Worktime, pyodide_url: &str) -> Result<WebWorkerSandbox, WorkerError> {
        let interrupt_buffer = (worktime == Worktime::Pyodide && cross_origin_isolated())
            .then(|| Int32Array::new(&SharedArrayBuffer::new(4)));
        let worker = Worker::new(script_url).map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        let shared = Rc::new(Shared::default());
        let receiver = shared.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            match serde_wasm_bindgen::from_value::<FromSandbox>(event.data()) {
                Ok(message) => receiver.receive(message),
                Err(error) => receiver.crash(format!("unreadable message from the sandbox: {error}")),
            }
        });
        let crasher = shared.clone();
        let on_error = Closure::<dyn FnMut(ErrorEvent)>::new(move |event: ErrorEvent| {
            event.prevent_default();
            crasher.crash(format!("sandbox crashed: {}", event.message()));
        });
        let channel = MessageChannel::new().map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        let port = channel.port1();
        port.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        let init = Object::new();
        set(&init, "type", &"init".into());
        set(&init, "worktime", &worktime.as_str().into());
        set(&init, "pyodideUrl", &pyodide_url.into());
        if let Some(buffer) = &interrupt_buffer {
            set(&init, "interruptBuffer", buffer);
        }
        worker
            .post_message_with_transfer(&init, &Array::of1(&channel.port2()))
            .map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        Ok(WebWorkerSandbox {
            worker,
            port,
            shared,
            interrupt_buffer,
            next_id: Cell::new(1),
            _on_message: on_message,
            _on_error: on_error,
        })
    }

    /// Sends the job's set-up message, transferring the bundle's bytes.
    fn send_setup(&self, job: &PreparedJob) -> Result<oneshot::Receiver<Reply>, WorkerError> {
        let descriptor = &job.descriptor;
        let serializer = serde_wasm_bindgen::Serializer::json_compatible();
        let job_value = serde::Serialize::serialize(
            &serde_json::json!({
                "jobId": descriptor.job_id,
                "program": descriptor.program,
                "programName": descriptor.program_name,
                "arguments": descriptor.arguments,
                "env": descriptor.env,
                "packages": descriptor.packages,
            }),
            &serializer,
        )
        .map_err(|error| WorkerError::Sandbox(error.to_string()))?;
        let files = Array::new();
        let transfer = Array::new();
        for entry in &job.bundle {
            let file = Object::new();
            set(&file, "path", &entry.path().into());
            if let BundleEntry::File { bytes, .. } = entry {
                let array = Uint8Array::from(bytes.as_slice());
                transfer.push(&array.buffer());
                set(&file, "bytes", &array);
            }
            files.push(&file);
        }
        let message = Object::new();
        set(&message, "type", &"setup".into());
        set(&message, "job", &job_value);
        set(&message, "files", &files);
        let (sender, receiver) = oneshot::channel();
        self.shared.setup.replace(Some(sender));
        self.port
            .post_message_with_transferable(&message, &transfer)
            .map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        Ok(receiver)
    }

    fn send_run(&self, datum: &Value, progress: Rc<SliceProgress>) -> Result<oneshot::Receiver<Reply>, WorkerError> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let message = Object::new();
        set(&message, "type", &"run".into());
        set(&message, "id", &id.into());
        set(&message, "datum", &datum.to_string().into());
        let (sender, receiver) = oneshot::channel();
        self.shared.pending.borrow_mut().insert(id, Pending { reply: sender, progress });
        self.port.post_message(&message).map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        Ok(receiver)
    }
}

/// Whether the page may share memory with its workers (COOP/COEP served): interrupts need it.
fn cross_origin_isolated() -> bool {
    Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|value| value.as_bool())
        .unwrap_or(false)
}

fn set(target: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(target, &JsValue::from_str(key), value);
}

/// Text of a JavaScript exception, for error messages.
pub fn describe(error: &JsValue) -> String {
    error
        .dyn_ref::<js_sys::Error>()
        .map(|error| String::from(error.message()))
        .or_else(|| error.as_string())
        .unwrap_or_else(|| format!("{error:?}"))
}

async fn wait(receiver: Result<oneshot::Receiver<Reply>, WorkerError>) -> Reply {
    match receiver {
        Ok(receiver) => receiver.await.unwrap_or_else(|_| Reply::Crashed("sandbox went away".into())),
        Err(error) => Reply::Crashed(error.to_string()),
    }
}

impl Sandbox for Rc<WebWorkerSandbox> {
    fn prepare(&self, job: Rc<PreparedJob>) -> Task<SetupOutcome> {
        let sandbox = self.clone();
        async move {
            if let Some(reason) = sandbox.shared.crashed.borrow().clone() {
                return SetupOutcome::Fault { message: reason };
            }
            match wait(sandbox.send_setup(&job)).await {
                Reply::Done(Ok(_), console) => SetupOutcome::Ready { console },
                Reply::Done(Err((message, stack)), console) => SetupOutcome::ProgramFailed { message, stack, console },
                Reply::Fault(message) | Reply::Crashed(message) => SetupOutcome::Fault { message },
            }
        }
        .boxed_local()
    }

    fn run(&self, slice: u64, datum: Value, progress: Rc<SliceProgress>) -> Task<SliceRun> {
        let sandbox = self.clone();
        async move {
            if let Some(reason) = sandbox.shared.crashed.borrow().clone() {
                return SliceRun {
                    outcome: SliceOutcome::WorkerFault { message: reason },
                    console: vec![],
                    heap_bytes: None,
                };
            }
            let (outcome, lines) = match wait(sandbox.send_run(&datum, progress)).await {
                Reply::Done(Ok(json), lines) => match serde_json::from_str(&json) {
                    Ok(value) => (SliceOutcome::Ok { value }, lines),
                    Err(error) => {
                        (SliceOutcome::Error { message: format!("result is not JSON: {error}"), stack: None }, lines)
                    }
                },
                Reply::Done(Err((message, stack)), lines) => (SliceOutcome::Error { message, stack }, lines),
                Reply::Fault(message) | Reply::Crashed(message) => (SliceOutcome::WorkerFault { message }, Vec::new()),
            };
            let console = lines.into_iter().map(|line| ConsoleLine { slice: Some(slice), ..line }).collect();
            SliceRun { outcome, console, heap_bytes: sandbox.shared.heap_bytes.get() }
        }
        .boxed_local()
    }

    fn interrupt(&self) -> bool {
        match &self.interrupt_buffer {
            // 2 is SIGINT: Pyodide raises KeyboardInterrupt at the next bytecode boundary.
            Some(buffer) => js_sys::Atomics::store(buffer, 0, 2).is_ok(),
            None => false,
        }
    }

    fn terminate(&self) {
        self.worker.terminate();
        self.shared.crash("sandbox terminated".into());
    }
}

impl Drop for WebWorkerSandbox {
    fn drop(&mut self) {
        self.port.set_onmessage(None);
        self.port.close();
        self.worker.set_onerror(None);
        self.worker.terminate();
    }
}

/// Creates Web Worker sandboxes from one Blob URL of the embedded script.
pub struct WebWorkerFactory {
    script_url: String,
    pyodide_url: String,
}

impl WebWorkerFactory {
    /// `pyodide_url` is the folder the Pyodide distribution is served from (ending in `/`).
    pub fn new(pyodide_url: &str) -> Result<WebWorkerFactory, WorkerError> {
        let parts = Array::of1(&JsValue::from_str(SANDBOX_SCRIPT));
        let options = BlobPropertyBag::new();
        options.set_type("text/javascript");
        let blob = Blob::new_with_str_sequence_and_options(&parts, &options)
            .map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        let script_url =
            Url::create_object_url_with_blob(&blob).map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        Ok(WebWorkerFactory { script_url, pyodide_url: pyodide_url.to_string() })
    }
}

impl SandboxFactory for WebWorkerFactory {
    fn create(&self, worktime: Worktime) -> Result<Rc<dyn Sandbox>, WorkerError> {
        let sandbox = Rc::new(WebWorkerSandbox::start(&self.script_url, worktime, &self.pyodide_url)?);
        Ok(Rc::new(sandbox))
    }
}

impl Drop for WebWorkerFactory {
    fn drop(&mut self) {
        let _ = Url::revoke_object_url(&self.script_url);
    }
}
