//! Sandboxes: each one a classic Blob Web Worker running `pyodide-loader/sandbox-worker.js`,
//! inside its own `<iframe sandbox="allow-scripts">` (an opaque origin) loaded from the
//! scheduler's `/sandbox.html`, whose policy allows no network at all. The script comes with that
//! page (the scheduler's build writes it in), not with the core.
//!
//! The core talks to a sandbox over two private `MessagePort`s it hands the iframe once the iframe
//! announces itself (checked by `event.source`): the *control* port to the host page (start the
//! worker, interrupt it) and the *data* port, which the host page passes on to the worker
//! (set-up, slices, answers). Pyodide's files travel in as bytes over the data port
//! ([`RuntimeFiles`]), so the sandbox needs no network. Each sandbox is bound to one job:
//! `prepare` sets it up once (runtime, packages, bundle, program), every slice after that is one
//! message round trip. When the page is cross-origin isolated, the host page gives each Pyodide
//! sandbox an interrupt buffer, so a runaway slice can be stopped with `KeyboardInterrupt`
//! instead of losing the sandbox. Removing the iframe ends everything inside it. A Pyodide sandbox
//! restores Pyodide from the page's runtime snapshot, or makes it (`super::snapshots`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures::channel::oneshot;
use futures::FutureExt;
use js_sys::{Array, Object, Reflect, Uint8Array};
use serde_json::Value;
use tessera_protocol::json::{self, ObjectWriter};
use tessera_protocol::{BundleEntry, ConsoleLine, SliceOutcome, Worktime};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{HtmlIFrameElement, MessageChannel, MessageEvent, MessagePort};

use super::assets::RuntimeFiles;
use super::fields::{required, Fields};
use super::snapshots::RuntimeSnapshots;
use crate::small_map::SmallMap;
use crate::snapshot_book::holds_what_was_asked;
use crate::supervisor::{
    PreparedJob, Sandbox, SandboxFactory, SetupOutcome, SetupPhase, SliceProgress, SliceRun, Task, WorkerEvent,
};
use crate::WorkerError;

/// Messages the sandbox script posts back (read by [`FromSandbox::read`]).
#[derive(Debug)]
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
        /// It ended with the KeyboardInterrupt the core's interrupt raises.
        interrupted: bool,
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
    /// Bytes in: the runtime asks for one of its files (answered only during set-up).
    Fetch {
        id: u32,
        url: String,
    },
    /// It made the runtime snapshot it was asked for (the bytes, a transferred `ArrayBuffer`, in
    /// `snapshot`).
    SnapshotMade {
        ms: f64,
        /// The packages a package snapshot holds.
        holds: Vec<String>,
    },
    /// It could not make one (`lasting`: it would fail again in this browser).
    SnapshotFailed {
        reason: String,
        lasting: bool,
    },
    /// It restored Pyodide from the snapshot it was given.
    SnapshotRestored {
        ms: f64,
        /// The packages a restored package snapshot held.
        holds: Vec<String>,
        /// How it got its interpreter: `reused` (compiled by its frame for an earlier sandbox)
        /// or `compiled`.
        interpreter: Option<String>,
    },
    /// It could not restore the snapshot it was given, and started Pyodide afresh.
    SnapshotRejected {
        reason: String,
    },
    /// Its set-up reached `phase` (shown on the page).
    Phase {
        phase: SetupPhase,
    },
}

/// Messages the sandbox host page (the iframe) posts on the control port (read by
/// [`FromHost::read`]).
#[derive(Debug)]
enum FromHost {
    /// It took the sandbox's ports: the frame's page is alive.
    Connected,
    /// The worker was started; `interruptible` when it got an interrupt buffer.
    Started { interruptible: bool },
    /// The worker could not start or failed outside any request.
    Crashed { message: String },
    /// The host page's policy blocked something (logged with the sandbox's output).
    Blocked { uri: String, directive: String },
}

impl FromSandbox {
    /// Reads a message that names its kind in `type` (`{type: 'result', id, json, heap}`).
    fn read(message: &JsValue) -> Result<FromSandbox, String> {
        let (kind, fields) = kind_and_fields(message)?;
        let read = || -> Result<FromSandbox, String> {
            let text = |name: &str| required(name, fields.string(name)?);
            let id = |name: &str| Ok::<_, String>(fields.whole(name, 0..=u32::MAX.into())?.map(|id| id as u32));
            Ok(match kind.as_str() {
                "setup-done" => FromSandbox::SetupDone,
                "setup-error" => FromSandbox::SetupError { message: text("message")?, stack: fields.string("stack")? },
                "setup-fault" => FromSandbox::SetupFault { message: text("message")? },
                "result" => FromSandbox::Result {
                    id: required("id", id("id")?)?,
                    json: text("json")?,
                    heap: fields.number("heap")?,
                },
                "error" => FromSandbox::Error {
                    id: id("id")?,
                    message: text("message")?,
                    stack: fields.string("stack")?,
                    heap: fields.number("heap")?,
                    interrupted: fields.flag("interrupted")?.unwrap_or(false),
                },
                "progress" => FromSandbox::Progress { id: id("id")?, value: fields.number("value")? },
                "console" => FromSandbox::Console { stream: text("stream")?, text: text("text")? },
                "fatal" => FromSandbox::Fatal { message: text("message")? },
                "fetch" => FromSandbox::Fetch { id: required("id", id("id")?)?, url: text("url")? },
                "snapshot-made" => FromSandbox::SnapshotMade {
                    ms: required("ms", fields.number("ms")?)?,
                    holds: fields.strings("holds")?,
                },
                "snapshot-failed" => FromSandbox::SnapshotFailed {
                    reason: text("reason")?,
                    lasting: required("lasting", fields.flag("lasting")?)?,
                },
                "snapshot-restored" => FromSandbox::SnapshotRestored {
                    ms: required("ms", fields.number("ms")?)?,
                    holds: fields.strings("holds")?,
                    interpreter: fields.string("interpreter")?,
                },
                "snapshot-rejected" => FromSandbox::SnapshotRejected { reason: text("reason")? },
                "phase" => FromSandbox::Phase {
                    phase: match text("phase")?.as_str() {
                        "packages" => SetupPhase::Packages,
                        "program" => SetupPhase::Program,
                        other => return Err(format!("phase: no phase is called {}", json::write(other))),
                    },
                },
                other => return Err(format!("no message is called {}", json::write(other))),
            })
        };
        read().map_err(|error| format!("`{kind}`: {error}"))
    }
}

impl FromHost {
    /// Reads a message that names its kind in `type` (`{type: 'started', interruptible}`).
    /// A kind this core does not know is `None`, ignored: the host page is the scheduler's, and
    /// one newer than this core (a page left open across an upgrade) may say more.
    fn read(message: &JsValue) -> Result<Option<FromHost>, String> {
        let (kind, fields) = kind_and_fields(message)?;
        let read = || -> Result<Option<FromHost>, String> {
            let text = |name: &str| required(name, fields.string(name)?);
            Ok(Some(match kind.as_str() {
                "connected" => FromHost::Connected,
                "started" => {
                    FromHost::Started { interruptible: required("interruptible", fields.flag("interruptible")?)? }
                }
                "crashed" => FromHost::Crashed { message: text("message")? },
                "blocked" => FromHost::Blocked { uri: text("uri")?, directive: text("directive")? },
                _ => return Ok(None),
            }))
        };
        read().map_err(|error| format!("`{kind}`: {error}"))
    }
}

/// A message's kind (its `type`) and its fields.
fn kind_and_fields(message: &JsValue) -> Result<(String, Fields<'_>), String> {
    let fields = Fields::of(message)?;
    let kind = fields.string("type")?.ok_or_else(|| "it has no `type`".to_string())?;
    Ok((kind, fields))
}

/// How a request to the sandbox ended, with the output printed before the answer came.
enum Reply {
    Done(Result<String, (String, Option<String>)>, Vec<ConsoleLine>),
    /// The slice was stopped by an interrupt the watchdog ordered (possibly while watching the
    /// slice before it, whose answer the sandbox held back to send with this one's).
    Interrupted(Vec<ConsoleLine>),
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
    pending: RefCell<SmallMap<u32, Pending>>,
    console: RefCell<Vec<ConsoleLine>>,
    crashed: RefCell<Option<String>>,
    /// The sandbox's heap size at its last answer.
    heap_bytes: Cell<Option<u64>>,
    /// The host page started the worker with an interrupt buffer.
    interruptible: Cell<bool>,
    /// The host page answered (its script ran under its policy and the worker started).
    started: Cell<bool>,
    /// The host page took the sandbox's ports (it answers before it starts the worker).
    connected: Cell<bool>,
    /// The interpreter's bytes went to the host page, which compiles them for later sandboxes.
    sent_interpreter: Cell<bool>,
    /// Set-up is over (done, failed or faulted): runtime files are no longer handed out.
    setup_over: Cell<bool>,
    /// This sandbox's part in the page's runtime snapshot (Pyodide sandboxes, once ordered).
    snapshot: RefCell<Option<SnapshotRole>>,
    /// Its part in the page's package snapshot (with the `packageSnapshots` option).
    package_snapshot: RefCell<Option<SnapshotRole>>,
    /// Told of each set-up phase (`Sandbox::watch_setup`).
    setup_watcher: RefCell<Option<Box<dyn Fn(SetupPhase)>>>,
}

/// A Pyodide sandbox's order about a snapshot, and where its reports go.
struct SnapshotRole {
    snapshots: Rc<RuntimeSnapshots>,
    ticket: u64,
    events: Option<EventListener>,
    /// `None` for the plain runtime snapshot; for the package snapshot, the packages this
    /// sandbox's job was expected to load (empty: not known, any will do).
    packages: Option<Vec<String>>,
}

impl SnapshotRole {
    fn report(&self, outcome: &'static str, ms: Option<f64>, reason: Option<String>, packages: Option<Vec<String>>) {
        self.report_restore(outcome, ms, reason, packages, None);
    }

    fn report_restore(
        &self,
        outcome: &'static str,
        ms: Option<f64>,
        reason: Option<String>,
        packages: Option<Vec<String>>,
        interpreter: Option<String>,
    ) {
        if let Some(events) = &self.events {
            let ms = ms.map(|ms| ms.max(0.0).round() as u64);
            events(&WorkerEvent::RuntimeSnapshot { outcome, ms, reason, packages, interpreter });
        }
    }

    /// A report from the sandbox about the snapshot. A snapshot is taken only from a sandbox
    /// asked to make one, only once (the book knows which), only while it sets up (before any
    /// job code ran in it), and a package snapshot only holding the packages it was asked for.
    fn receive(&self, message: FromSandbox, snapshot: Option<web_sys::Blob>, setup_over: bool) {
        match message {
            FromSandbox::SnapshotMade { ms, holds } => {
                let fits = holds_what_was_asked(self.packages.as_deref(), &holds);
                let packages = self.packages.as_ref().map(|_| holds.clone());
                let taken = fits
                    && snapshot
                        .is_some_and(|snapshot| !setup_over && self.snapshots.made(self.ticket, snapshot, holds));
                if taken {
                    self.report("made", Some(ms), None, packages);
                } else {
                    self.snapshots.not_made(self.ticket, false);
                    let reason = "a snapshot came that was not asked for, or too late; ignored";
                    self.report("failed", None, Some(reason.into()), packages);
                }
            }
            FromSandbox::SnapshotFailed { reason, lasting } => {
                self.snapshots.not_made(self.ticket, lasting);
                self.report("failed", None, Some(reason), self.packages.clone());
            }
            FromSandbox::SnapshotRestored { ms, holds, interpreter } => {
                self.report_restore("restored", Some(ms), None, self.packages.as_ref().map(|_| holds), interpreter)
            }
            FromSandbox::SnapshotRejected { reason } => {
                self.snapshots.rejected(self.ticket);
                self.report("rejected", None, Some(reason), self.packages.clone());
            }
            _ => {}
        }
    }
}

impl Drop for SnapshotRole {
    /// A sandbox that goes away without handing in the snapshot it was to make frees the task
    /// for the next one (the book ignores this for a sandbox that already handed one in).
    fn drop(&mut self) {
        self.snapshots.not_made(self.ticket, false);
    }
}

/// Where the factory's reports (runtime snapshots) go: the worker's event listener.
pub type EventListener = Rc<dyn Fn(&WorkerEvent)>;

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
        if matches!(message, FromSandbox::SetupDone | FromSandbox::SetupError { .. } | FromSandbox::SetupFault { .. }) {
            self.setup_over.set(true);
        }
        match message {
            // Handled by the data port's handler: it holds the files and the port, and the
            // message itself (a made snapshot's bytes).
            FromSandbox::Fetch { .. }
            | FromSandbox::SnapshotMade { .. }
            | FromSandbox::SnapshotFailed { .. }
            | FromSandbox::SnapshotRestored { .. }
            | FromSandbox::SnapshotRejected { .. } => {}
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
            FromSandbox::Error { id, message, stack, heap, interrupted } => {
                match id.and_then(|id| self.pending.borrow_mut().remove(&id)) {
                    Some(pending) => {
                        self.heap_bytes.set(heap.map(|bytes| bytes as u64));
                        let reply = if interrupted {
                            Reply::Interrupted(self.take_console())
                        } else {
                            Reply::Done(Err((message, stack)), self.take_console())
                        };
                        let _ = pending.reply.send(reply);
                    }
                    None => self.crash(format!("sandbox protocol error: {message}")),
                }
            }
            FromSandbox::Progress { id, value } => {
                if let Some(progress) = id.and_then(|id| self.pending.borrow().get(&id).map(|p| p.progress.clone())) {
                    progress.report(value);
                }
            }
            FromSandbox::Phase { phase } => {
                if let Some(watcher) = &*self.setup_watcher.borrow() {
                    watcher(phase);
                }
            }
            FromSandbox::Fatal { message } => self.crash(message),
            FromSandbox::Console { stream, text } => {
                self.console.borrow_mut().push(ConsoleLine { slice: None, stream, text, seq: None })
            }
        }
    }

    /// A report about the runtime snapshot (or the package snapshot, `packages`); `snapshot`
    /// holds the bytes a `snapshot-made` carried.
    fn receive_snapshot(&self, message: FromSandbox, snapshot: Option<web_sys::Blob>, packages: bool) {
        let role = if packages { &self.package_snapshot } else { &self.snapshot };
        if let Some(role) = &*role.borrow() {
            role.receive(message, snapshot, self.setup_over.get());
        }
    }

    fn receive_from_host(&self, message: FromHost) {
        match message {
            FromHost::Connected => self.connected.set(true),
            FromHost::Started { interruptible } => {
                self.started.set(true);
                self.interruptible.set(interruptible);
            }
            FromHost::Crashed { message } => self.crash(message),
            FromHost::Blocked { uri, directive } => self.console.borrow_mut().push(ConsoleLine {
                slice: None,
                stream: "stderr".into(),
                text: format!("[tessera sandbox] blocked by the sandbox policy: {directive} {uri}"),
                seq: None,
            }),
        }
    }
}

/// How long the host page may take to load and start its worker. A page blocked by a policy
/// (or a scheduler without `/sandbox.html`) never answers at all, and `loadPyodide` hangs rather
/// than rejects when a file is blocked: the core's own clock is the only way to notice.
const HOST_START_TIMEOUT_MS: u32 = 15_000;
/// How long the host page of a frame that served a sandbox before may take to take the next
/// one's ports. It answers at once when it is alive (a message between two processes); one whose
/// renderer ended while the frame waited never does, and the sandbox is then a fault after this
/// long, not after [`HOST_START_TIMEOUT_MS`].
const SERVED_FRAME_ANSWER_MS: u32 = 3_000;

/// An opaque-origin frame loading (or holding) the sandbox host page. Opening one before it is
/// needed hides the frame's start (its own renderer process, `/sandbox.html`). It hosts one
/// sandbox at a time, each connected with its own two ports ([`Tenancy`]); a frame whose sandbox
/// ended without fault serves the next one ([`IdleFrames`]), with the interpreter its host page
/// compiled for the last. Dropping it removes the iframe, which ends everything inside it.
struct Frame {
    iframe: HtmlIFrameElement,
    /// The ports of the sandbox to connect, until the frame has announced itself.
    announcement: Rc<RefCell<Announcement>>,
    /// It served a sandbox before, so its host page may have ended since (a renderer that
    /// crashed or was reclaimed says nothing): the next sandbox checks that it answers.
    served: bool,
    /// Its host page was sent the interpreter's bytes, and holds the module it compiled.
    holds_interpreter: bool,
    _on_window_message: WindowListener,
}

/// Whether the frame's host page has said it is ready (only then can ports be handed to it).
enum Announcement {
    /// Not yet; the ports of the sandbox to connect then, if one was asked for.
    Awaited(Option<Array>),
    Made,
}

/// One sandbox's two ports to its frame. The worker's own `postMessage` is reachable from guest
/// code, so nothing on it is trusted — and the worker has no way to reach this page's window.
struct Tenancy {
    /// To the host page: start, interrupt, stop.
    control: MessagePort,
    /// To the worker (through the host page): the only way in or out of the sandbox the core
    /// listens to.
    data: MessagePort,
    shared: Rc<Shared>,
    _on_data: Closure<dyn FnMut(MessageEvent)>,
    _on_control: Closure<dyn FnMut(MessageEvent)>,
}

/// One sandbox: a Web Worker inside an opaque-origin frame of its own (for as long as it lives).
pub struct IsolatedSandbox {
    tenancy: Tenancy,
    /// `None` once the sandbox has ended.
    frame: RefCell<Option<Frame>>,
    /// Where the frame goes when this sandbox ends without fault.
    idle_frames: std::rc::Weak<IdleFrames>,
    next_id: Cell<u32>,
    /// Slices asked for in this turn of the page's event loop, sent together in one `runs`
    /// message when the turn ends: a message to another process costs far more than a slice
    /// of light work, so a refilled pipeline travels in one.
    outgoing: Rc<RefCell<Vec<JsValue>>>,
    _start_timeout: gloo_timers::callback::Timeout,
    /// Set for a sandbox started in a frame that served one before ([`SERVED_FRAME_ANSWER_MS`]).
    _answer_timeout: Option<gloo_timers::callback::Timeout>,
}

/// A `message` listener on the page's window, removed when dropped.
struct WindowListener {
    window: web_sys::Window,
    closure: Closure<dyn FnMut(MessageEvent)>,
}

impl Drop for WindowListener {
    fn drop(&mut self) {
        let _ = self.window.remove_event_listener_with_callback("message", self.closure.as_ref().unchecked_ref());
    }
}

impl Frame {
    /// Adds a hidden frame loading `host_url`, ready to connect a sandbox's ports when it
    /// announces itself.
    fn open(host_url: &str, page_origin: &str) -> Result<Frame, WorkerError> {
        let error = |error: JsValue| WorkerError::Sandbox(describe(&error));
        let window =
            web_sys::window().ok_or_else(|| WorkerError::Sandbox("sandboxes need a page (a window)".into()))?;
        let document = window.document().ok_or_else(|| WorkerError::Sandbox("sandboxes need a document".into()))?;
        let iframe = document.create_element("iframe").map_err(error)?.unchecked_into::<HtmlIFrameElement>();
        // allow-scripts and nothing else: never allow-same-origin, so the frame's origin is opaque.
        iframe.set_attribute("sandbox", "allow-scripts").map_err(error)?;
        iframe.set_attribute("allow", "cross-origin-isolated").map_err(error)?;
        iframe.set_attribute("aria-hidden", "true").map_err(error)?;
        // Hidden through the CSSOM, not a `style` attribute: a page with a strict
        // Content-Security-Policy (no 'unsafe-inline' styles) blocks the attribute, and the frame
        // would show; `important` keeps the page's own `iframe { … }` rules off it.
        iframe.style().set_property_with_priority("display", "none", "important").map_err(error)?;
        let fragment = String::from(js_sys::encode_uri_component(page_origin));
        iframe.set_src(&format!("{host_url}#host={fragment}"));

        // The frame announces itself to this window; only that frame's announcement is taken,
        // and only once. Ports asked for before that go to it then.
        let announcement = Rc::new(RefCell::new(Announcement::Awaited(None)));
        let (frame, announced) = (iframe.clone(), announcement.clone());
        let on_window_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let Some(frame_window) = frame.content_window() else { return };
            let from_frame = event.source().is_some_and(|source| Object::is(&source, &frame_window));
            let announcing = Reflect::get(&event.data(), &"type".into())
                .ok()
                .and_then(|kind| kind.as_string())
                .is_some_and(|kind| kind == "tessera-sandbox-ready");
            if !from_frame || !announcing {
                return;
            }
            let awaited = std::mem::replace(&mut *announced.borrow_mut(), Announcement::Made);
            if let Announcement::Awaited(Some(ports)) = awaited {
                connect(&frame_window, &ports);
            }
        });
        window
            .add_event_listener_with_callback("message", on_window_message.as_ref().unchecked_ref())
            .map_err(error)?;
        let on_window_message = WindowListener { window, closure: on_window_message };

        let parent = document.body().map(web_sys::Element::from).or_else(|| document.document_element());
        parent
            .ok_or_else(|| WorkerError::Sandbox("the page has no element to hold a sandbox".into()))?
            .append_child(&iframe)
            .map_err(error)?;
        Ok(Frame {
            iframe,
            announcement,
            served: false,
            holds_interpreter: false,
            _on_window_message: on_window_message,
        })
    }

    /// Hands `ports` (control, data) to the frame's host page, now or once it announces itself;
    /// the host page ends whatever sandbox it held before.
    fn hand_ports(&self, ports: Array) {
        let mut announcement = self.announcement.borrow_mut();
        match &mut *announcement {
            Announcement::Awaited(waiting) => *waiting = Some(ports),
            Announcement::Made => {
                if let Some(frame_window) = self.iframe.content_window() {
                    connect(&frame_window, &ports);
                }
            }
        }
    }
}

/// Posts the `connect` carrying a sandbox's two ports to a frame's host page. The frame's
/// origin is opaque ("null"): only '*' can address it; the ports decide.
fn connect(frame_window: &web_sys::Window, ports: &Array) {
    let connect = Object::new();
    set(&connect, "type", &"connect".into());
    // Asks for `connected` at once (a core from before it, still open in a page across an
    // upgrade of the scheduler, does not ask, and is not sent a message it cannot read).
    set(&connect, "answer", &true.into());
    let _ = frame_window.post_message_with_transfer(&connect, "*", ports);
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.iframe.remove();
    }
}

impl Tenancy {
    /// Opens a sandbox's two ports to `frame`, and their handlers.
    fn open(frame: &Frame, files: &Rc<RuntimeFiles>) -> Result<Tenancy, WorkerError> {
        let error = |error: JsValue| WorkerError::Sandbox(describe(&error));
        let shared = Rc::new(Shared::default());
        let control_channel = MessageChannel::new().map_err(error)?;
        let data_channel = MessageChannel::new().map_err(error)?;
        let (control, data) = (control_channel.port1(), data_channel.port1());

        let receiver = shared.clone();
        let (files, answer, host) = (files.clone(), data.clone(), control.clone());
        let on_data = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let data = event.data();
            // Answers held back in the sandbox travel together: `{type: 'answers', items: […]}`.
            if Reflect::get(&data, &"type".into()).ok().and_then(|kind| kind.as_string()).as_deref() == Some("answers")
            {
                let Some(items) =
                    Reflect::get(&data, &"items".into()).ok().and_then(|items| items.dyn_into::<Array>().ok())
                else {
                    return receiver.crash("sandbox protocol error: answers without items".into());
                };
                for item in items {
                    match FromSandbox::read(&item) {
                        Ok(answer @ (FromSandbox::Result { .. } | FromSandbox::Error { .. })) => {
                            receiver.receive(answer)
                        }
                        Ok(_) => receiver.crash("sandbox protocol error: only answers travel together".into()),
                        Err(error) => receiver.crash(format!("unreadable answer from the sandbox: {error}")),
                    }
                }
                return;
            }
            match FromSandbox::read(&data) {
                Ok(FromSandbox::Fetch { id, url }) => hand_in(&receiver, &files, &answer, &host, id, url),
                Ok(
                    message @ (FromSandbox::SnapshotMade { .. }
                    | FromSandbox::SnapshotFailed { .. }
                    | FromSandbox::SnapshotRestored { .. }
                    | FromSandbox::SnapshotRejected { .. }),
                ) => {
                    let snapshot = Reflect::get(&event.data(), &"snapshot".into()).ok().and_then(page_owned_blob);
                    let packages = Reflect::get(&event.data(), &"packages".into()).is_ok_and(|flag| flag.is_truthy());
                    receiver.receive_snapshot(message, snapshot, packages)
                }
                Ok(message) => receiver.receive(message),
                Err(error) => receiver.crash(format!("unreadable message from the sandbox: {error}")),
            }
        });
        data.set_onmessage(Some(on_data.as_ref().unchecked_ref()));
        let receiver = shared.clone();
        let on_control =
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| match FromHost::read(&event.data()) {
                Ok(Some(message)) => receiver.receive_from_host(message),
                Ok(None) => {}
                Err(error) => receiver.crash(format!("unreadable message from the sandbox host: {error}")),
            });
        control.set_onmessage(Some(on_control.as_ref().unchecked_ref()));
        frame.hand_ports(Array::of2(&control_channel.port2(), &data_channel.port2()));
        Ok(Tenancy { control, data, shared, _on_data: on_data, _on_control: on_control })
    }

    /// Orders the host page to stop the worker (it then closes its end of the control port);
    /// whatever the worker still sends is not listened to.
    fn stop(&self) {
        self.data.set_onmessage(None);
        self.control.set_onmessage(None);
        let stop = Object::new();
        set(&stop, "type", &"stop".into());
        let _ = self.control.post_message(&stop);
        self.data.close();
    }
}

/// How long a frame whose sandbox ended waits for the next one before it is removed (with its
/// renderer process and the compiled interpreter it holds).
const IDLE_FRAME_MS: u32 = 30_000;
/// At most this many frames wait: a sandbox ending is most often followed by its replacement.
const MAX_IDLE_FRAMES: usize = 2;

/// Frames whose sandbox ended without fault, waiting (a while) for the next sandbox: it then
/// starts without a new renderer process, and a Pyodide sandbox without compiling the
/// interpreter. A frame whose sandbox crashed, hung or was terminated is never kept.
#[derive(Default)]
struct IdleFrames {
    frames: RefCell<Vec<(u64, Frame)>>,
    next_id: Cell<u64>,
}

impl IdleFrames {
    fn keep(self: &Rc<Self>, frame: Frame) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let removed = {
            let mut frames = self.frames.borrow_mut();
            frames.push((id, frame));
            // Over the limit, the frame that waited longest goes, sparing one holding the
            // compiled interpreter while another does not.
            (frames.len() > MAX_IDLE_FRAMES).then(|| {
                let at = frames.iter().position(|(_, frame)| !frame.holds_interpreter).unwrap_or(0);
                frames.remove(at)
            })
        };
        drop(removed);
        let idle = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            gloo_timers::future::TimeoutFuture::new(IDLE_FRAME_MS).await;
            if let Some(idle) = idle.upgrade() {
                let expired = {
                    let mut frames = idle.frames.borrow_mut();
                    frames.iter().position(|(kept, _)| *kept == id).map(|at| frames.remove(at))
                };
                drop(expired);
            }
        });
    }

    /// The frame that waited least among those that hold the compiled interpreter (for a
    /// sandbox that loads Pyodide) or among those that do not (for one that does not, leaving
    /// the interpreter to a later Pyodide sandbox); any frame when none is of that kind.
    fn take(&self, wants_interpreter: bool) -> Option<Frame> {
        let mut frames = self.frames.borrow_mut();
        let at = frames
            .iter()
            .rposition(|(_, frame)| frame.holds_interpreter == wants_interpreter)
            .or_else(|| frames.len().checked_sub(1))?;
        Some(frames.remove(at).1)
    }
}

impl IsolatedSandbox {
    /// Ends the sandbox now: its worker is stopped and what it was running answers as crashed.
    /// A sandbox `retiring` that started and never faulted leaves its frame to the next sandbox;
    /// any other takes its frame with it.
    fn end(&self, retiring: bool) {
        let Some(frame) = self.frame.take() else { return };
        let shared = &self.tenancy.shared;
        let reusable = retiring && shared.started.get() && shared.crashed.borrow().is_none();
        self.tenancy.stop();
        shared.crash(if retiring { "sandbox retired" } else { "sandbox terminated" }.into());
        if let Some(idle_frames) = self.idle_frames.upgrade().filter(|_| reusable) {
            let mut frame = frame;
            frame.served = true;
            frame.holds_interpreter |= shared.sent_interpreter.get();
            idle_frames.keep(frame);
        }
    }
}

impl Drop for IsolatedSandbox {
    /// A sandbox dropped without being ended (one started ahead and not wanted) is retired.
    fn drop(&mut self) {
        self.end(true);
    }
}

impl IsolatedSandbox {
    /// Starts a `worktime` sandbox in `frame`: the host page starts the worker script, which
    /// starts loading its runtime at once.
    /// A Pyodide sandbox is first given its order about the runtime snapshot (restore it, or
    /// make one), which may wait for the page's one lookup in Cache Storage; the frame loads
    /// meanwhile. With package snapshots on, it is also given the package snapshot for
    /// `packages` (those of the job it is expected to serve; `None` when not known), or told to
    /// make it; the plain snapshot is then its fallback.
    fn start(
        frame: Frame,
        worktime: Worktime,
        packages: Option<&[String]>,
        host_url: &str,
        context: &SandboxContext,
    ) -> Result<IsolatedSandbox, WorkerError> {
        let tenancy = Tenancy::open(&frame, &context.files)?;
        let start = Object::new();
        set(&start, "type", &"start".into());
        set(&start, "interruptible", &(worktime == Worktime::Pyodide).into());
        let init = Object::new();
        set(&init, "worktime", &worktime.as_str().into());
        set(&init, "pyodideUrl", &context.files.base().into());
        set(&start, "init", &init);
        if worktime == Worktime::Pyodide {
            let (control, shared) = (tenancy.control.clone(), tenancy.shared.clone());
            let (snapshots, events) = (context.snapshots.clone(), context.events.clone());
            let package_snapshots = context.package_snapshots.clone();
            let packages = packages.map(<[String]>::to_vec);
            wasm_bindgen_futures::spawn_local(async move {
                let mut restores_packages = false;
                if let Some(package_snapshots) = package_snapshots {
                    let order = package_snapshots.order_for(packages.as_deref()).await;
                    if let Some(snapshot) = &order.restore {
                        set(&init, "packageSnapshot", &snapshot.blob);
                        restores_packages = true;
                    }
                    if order.make {
                        // An empty list: whatever packages the job turns out to load.
                        let names: Array = packages.iter().flatten().map(|name| JsValue::from_str(name)).collect();
                        set(&init, "makePackageSnapshot", &names);
                    }
                    let role = SnapshotRole {
                        snapshots: package_snapshots,
                        ticket: order.ticket,
                        events: events.clone(),
                        packages: Some(packages.unwrap_or_default()),
                    };
                    shared.package_snapshot.replace(Some(role));
                }
                // A sandbox restoring a package snapshot keeps the plain one only as its fallback.
                let order =
                    if restores_packages { snapshots.order_restore_only().await } else { snapshots.order().await };
                if let Some(snapshot) = &order.restore {
                    set(&init, "snapshot", &snapshot.blob);
                }
                set(&init, "makeSnapshot", &order.make.into());
                shared.snapshot.replace(Some(SnapshotRole { snapshots, ticket: order.ticket, events, packages: None }));
                post_start(&control, &shared, &start);
            });
        } else {
            post_start(&tenancy.control, &tenancy.shared, &start);
        }
        let answer_timeout = frame.served.then(|| {
            let watcher = tenancy.shared.clone();
            gloo_timers::callback::Timeout::new(SERVED_FRAME_ANSWER_MS, move || {
                if !watcher.connected.get() && !watcher.started.get() {
                    watcher.crash(format!(
                        "the sandbox's frame, kept from an earlier sandbox, did not answer within \
                         {SERVED_FRAME_ANSWER_MS} ms (its page has ended)"
                    ));
                }
            })
        });
        let watcher = tenancy.shared.clone();
        let host_url = host_url.to_string();
        let start_timeout = gloo_timers::callback::Timeout::new(HOST_START_TIMEOUT_MS, move || {
            if !watcher.started.get() {
                watcher.crash(format!(
                    "the sandbox host {host_url} did not start its worker within {HOST_START_TIMEOUT_MS} ms \
                     (unreachable, or blocked by a policy)"
                ));
            }
        });
        Ok(IsolatedSandbox {
            tenancy,
            frame: RefCell::new(Some(frame)),
            idle_frames: Rc::downgrade(&context.idle_frames),
            next_id: Cell::new(1),
            outgoing: Rc::default(),
            _start_timeout: start_timeout,
            _answer_timeout: answer_timeout,
        })
    }

    /// Sends the job's set-up message, transferring the bundle's bytes.
    fn send_setup(&self, job: &PreparedJob) -> Result<oneshot::Receiver<Reply>, WorkerError> {
        let descriptor = &job.descriptor;
        let mut job_json = String::new();
        ObjectWriter::new(&mut job_json)
            .field("jobId", &descriptor.job_id)
            .field("program", &descriptor.program)
            .field("programName", &descriptor.program_name)
            // As text: Python's `sys.argv` takes it as it is (`JSON.parse` would round an integer
            // past 2^53); a JavaScript program gets it parsed.
            .field("argumentsJson", &json::write(&descriptor.arguments))
            .field("env", &descriptor.env)
            .field("packages", &descriptor.packages)
            .end();
        let job_value = js_sys::JSON::parse(&job_json).map_err(|error| WorkerError::Sandbox(describe(&error)))?;
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
        self.tenancy.shared.setup.replace(Some(sender));
        self.tenancy
            .data
            .post_message_with_transferable(&message, &transfer)
            .map_err(|error| WorkerError::Sandbox(describe(&error)))?;
        Ok(receiver)
    }

    fn send_run(&self, datum: &Value, progress: Rc<SliceProgress>) -> Result<oneshot::Receiver<Reply>, WorkerError> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let item = Object::new();
        set(&item, "id", &id.into());
        set(&item, "datum", &json::write(datum).into());
        let (sender, receiver) = oneshot::channel();
        self.tenancy.shared.pending.borrow_mut().insert(id, Pending { reply: sender, progress });
        let first = {
            let mut outgoing = self.outgoing.borrow_mut();
            outgoing.push(item.into());
            outgoing.len() == 1
        };
        if first {
            // Runs once the current turn's synchronous work is done (a microtask), after every
            // slice this turn hands out.
            let (outgoing, data, shared) =
                (self.outgoing.clone(), self.tenancy.data.clone(), self.tenancy.shared.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let items: js_sys::Array = outgoing.take().into_iter().collect();
                let message = Object::new();
                set(&message, "type", &"runs".into());
                set(&message, "items", &items);
                if let Err(error) = data.post_message(&message) {
                    shared.crash(format!("slices could not be sent to the sandbox: {}", describe(&error)));
                }
            });
        }
        Ok(receiver)
    }
}

/// Orders the host page to start the worker (`start` carries its `init`; the page has the script).
fn post_start(control: &MessagePort, shared: &Shared, start: &Object) {
    if let Err(error) = control.post_message(start) {
        shared.crash(format!("the sandbox host could not be started: {}", describe(&error)));
    }
}

fn set(target: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(target, &JsValue::from_str(key), value);
}

/// Answers a sandbox's request for a runtime file: only while it is setting up, only files of
/// the Pyodide folder ([`RuntimeFiles::get`]), from memory after the first fetch.
/// The interpreter's bytes go to the host page too (`runtime-wasm`; null if there are none): it
/// compiles them once for every sandbox its frame hosts. Asked for only by a sandbox that loads
/// Pyodide, so a page that runs JavaScript jobs only never downloads them.
fn hand_in(
    shared: &Rc<Shared>,
    files: &Rc<RuntimeFiles>,
    port: &MessagePort,
    host: &MessagePort,
    id: u32,
    url: String,
) {
    let answer = Object::new();
    set(&answer, "type", &"asset".into());
    set(&answer, "id", &id.into());
    if shared.setup_over.get() {
        set(&answer, "error", &format!("{url}: the sandbox is set up; it gets no more files").into());
        let _ = port.post_message(&answer);
        return;
    }
    let (files, port, host, shared) = (files.clone(), port.clone(), host.clone(), shared.clone());
    wasm_bindgen_futures::spawn_local(async move {
        let got = files.get(&url).await;
        if url == format!("{}pyodide.asm.wasm", files.base()) {
            let order = Object::new();
            set(&order, "type", &"runtime-wasm".into());
            set(&order, "blob", &got.clone().map(JsValue::from).unwrap_or(JsValue::NULL));
            shared.sent_interpreter.set(host.post_message(&order).is_ok() && got.is_ok());
        }
        match got {
            Ok(blob) => set(&answer, "blob", &blob),
            Err(message) => set(&answer, "error", &message.into()),
        }
        let _ = port.post_message(&answer);
    });
}

/// The snapshot bytes a sandbox transferred, as a Blob of this page's own: one that stays
/// readable whatever becomes of the sandbox and its frame.
fn page_owned_blob(bytes: JsValue) -> Option<web_sys::Blob> {
    let buffer = bytes.dyn_into::<js_sys::ArrayBuffer>().ok()?;
    web_sys::Blob::new_with_buffer_source_sequence(&js_sys::Array::of1(&buffer)).ok()
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

impl Sandbox for Rc<IsolatedSandbox> {
    fn prepare(&self, job: Rc<PreparedJob>) -> Task<SetupOutcome> {
        let sandbox = self.clone();
        async move {
            if let Some(reason) = sandbox.tenancy.shared.crashed.borrow().clone() {
                return SetupOutcome::Fault { message: reason };
            }
            match wait(sandbox.send_setup(&job)).await {
                Reply::Done(Ok(_), console) => SetupOutcome::Ready { console },
                Reply::Done(Err((message, stack)), console) => SetupOutcome::ProgramFailed { message, stack, console },
                Reply::Interrupted(console) => {
                    SetupOutcome::ProgramFailed { message: "the set-up was interrupted".into(), stack: None, console }
                }
                Reply::Fault(message) | Reply::Crashed(message) => SetupOutcome::Fault { message },
            }
        }
        .boxed_local()
    }

    fn run(&self, slice: u64, datum: Value, progress: Rc<SliceProgress>) -> Task<SliceRun> {
        let sandbox = self.clone();
        async move {
            if let Some(reason) = sandbox.tenancy.shared.crashed.borrow().clone() {
                return SliceRun {
                    outcome: SliceOutcome::WorkerFault { message: reason },
                    console: vec![],
                    heap_bytes: None,
                };
            }
            let (outcome, lines) = match wait(sandbox.send_run(&datum, progress)).await {
                Reply::Done(Ok(text), lines) => match json::parse(&text, super::http::browser_float) {
                    Ok(value) => (SliceOutcome::Ok { value }, lines),
                    Err(error) => {
                        (SliceOutcome::Error { message: format!("the result is {error}"), stack: None }, lines)
                    }
                },
                Reply::Done(Err((message, stack)), lines) => (SliceOutcome::Error { message, stack }, lines),
                Reply::Interrupted(lines) => {
                    let message = "interrupted: it ran past its time limit".to_string();
                    (SliceOutcome::TimedOut { message }, lines)
                }
                Reply::Fault(message) | Reply::Crashed(message) => (SliceOutcome::WorkerFault { message }, Vec::new()),
            };
            let console = lines.into_iter().map(|line| ConsoleLine { slice: Some(slice), ..line }).collect();
            SliceRun { outcome, console, heap_bytes: sandbox.tenancy.shared.heap_bytes.get() }
        }
        .boxed_local()
    }

    fn interrupt(&self) -> bool {
        if !self.tenancy.shared.interruptible.get() {
            return false;
        }
        // The host page writes 2 (SIGINT) into the buffer it shares with the worker: Pyodide
        // raises KeyboardInterrupt at the next bytecode boundary.
        let order = Object::new();
        set(&order, "type", &"interrupt".into());
        self.tenancy.control.post_message(&order).is_ok()
    }

    fn terminate(&self) {
        self.end(false);
    }

    fn retire(&self) {
        self.end(true);
    }

    fn watch_setup(&self, observer: Box<dyn Fn(SetupPhase)>) {
        self.tenancy.shared.setup_watcher.replace(Some(observer));
    }
}

/// What every sandbox of a page shares: the runtime files, the runtime snapshot, the frames
/// waiting for a sandbox, and where reports go.
struct SandboxContext {
    files: Rc<RuntimeFiles>,
    idle_frames: Rc<IdleFrames>,
    snapshots: Rc<RuntimeSnapshots>,
    /// The package snapshot layer (`None`: the `packageSnapshots` option is off).
    package_snapshots: Option<Rc<RuntimeSnapshots>>,
    events: Option<EventListener>,
}

/// Creates isolated sandboxes for one page: where the host page is, the page's own origin (the
/// only one the host page will talk to) and the runtime files, shared by all its sandboxes.
pub struct IsolatedSandboxFactory {
    host_url: String,
    page_origin: String,
    context: SandboxContext,
    /// What was started ahead of the first sandbox, so its start overlaps registration and leasing.
    ahead: RefCell<Option<Ahead>>,
}

/// Started before any sandbox was asked for.
enum Ahead {
    /// A frame, loading its host page.
    Frame(Frame),
    /// A Pyodide sandbox in it, already restoring (or starting) its runtime.
    Pyodide(IsolatedSandbox),
}

impl IsolatedSandboxFactory {
    /// `scheduler` is the scheduler's root URL (it serves `/sandbox.html`); `pyodide_url` the
    /// folder the Pyodide distribution is served from (ending in `/`).
    pub fn new(scheduler: &str, pyodide_url: &str) -> Result<IsolatedSandboxFactory, WorkerError> {
        let page_origin = web_sys::window()
            .and_then(|window| window.location().origin().ok())
            .ok_or_else(|| WorkerError::Sandbox("sandboxes need a page with an origin".into()))?;
        let host_url = format!("{}/sandbox.html", scheduler.trim_end_matches('/'));
        let files = RuntimeFiles::new(&absolute(pyodide_url)?);
        let snapshots = RuntimeSnapshots::new(files.base(), true);
        // Opened now; if it cannot be, the first sandbox opens its own and reports why.
        let ahead = RefCell::new(Frame::open(&host_url, &page_origin).ok().map(Ahead::Frame));
        let context =
            SandboxContext { files, idle_frames: Rc::default(), snapshots, package_snapshots: None, events: None };
        Ok(IsolatedSandboxFactory { host_url, page_origin, context, ahead })
    }

    /// Starts a Pyodide sandbox now, in the frame opened ahead, betting the first job is Python:
    /// its runtime loads while the worker registers and leases. The first Pyodide sandbox asked
    /// for is that one; if a JavaScript sandbox is asked for first, it is dropped (an idle Pyodide
    /// holds memory a JavaScript-only volunteer should keep). Call it after configuring.
    pub fn start_pyodide_ahead(self) -> Self {
        let taken = self.ahead.borrow_mut().take();
        let started = taken.and_then(|ahead| match ahead {
            Ahead::Frame(frame) => {
                IsolatedSandbox::start(frame, Worktime::Pyodide, None, &self.host_url, &self.context)
                    .ok()
                    .map(Ahead::Pyodide)
            }
            started => Some(started),
        });
        self.ahead.replace(started);
        self
    }

    /// `false`: every Pyodide sandbox starts Pyodide afresh, with no runtime snapshot (the
    /// `runtimeSnapshots` option; snapshots are on by default).
    pub fn with_runtime_snapshots(mut self, enabled: bool) -> Self {
        if !enabled {
            self.context.snapshots = RuntimeSnapshots::new(self.context.files.base(), false);
        }
        self
    }

    /// `true`: Pyodide sandboxes restore a snapshot holding their job's packages, loaded and
    /// imported (the `packageSnapshots` option of `TesseraWorker`, on there by default; a
    /// factory has it off until asked). It leans on Emscripten's internals, and falls back to
    /// the plain snapshot whenever one does not fit.
    pub fn with_package_snapshots(mut self, enabled: bool) -> Self {
        self.context.package_snapshots = enabled.then(|| RuntimeSnapshots::for_packages(self.context.files.base()));
        self
    }

    /// Sends the factory's own reports (`runtime_snapshot` events) to `events`.
    pub fn with_events(mut self, events: EventListener) -> Self {
        self.context.events = Some(events);
        self
    }
}

/// `url` resolved against the page: the sandbox's own location is a `blob:` URL, useless as a base.
fn absolute(url: &str) -> Result<String, WorkerError> {
    let base = web_sys::window()
        .and_then(|window| window.location().href().ok())
        .ok_or_else(|| WorkerError::Sandbox("sandboxes need a page with a location".into()))?;
    web_sys::Url::new_with_base(url, &base)
        .map(|resolved| resolved.href())
        .map_err(|_| WorkerError::Options(format!("pyodide URL `{url}` is not a URL")))
}

impl SandboxFactory for IsolatedSandboxFactory {
    fn create(&self, worktime: Worktime, packages: &[String]) -> Result<Rc<dyn Sandbox>, WorkerError> {
        let frame = match (self.ahead.borrow_mut().take(), worktime) {
            (Some(Ahead::Pyodide(sandbox)), Worktime::Pyodide) => return Ok(Rc::new(Rc::new(sandbox))),
            (Some(Ahead::Frame(frame)), _) => frame,
            // A started Pyodide sandbox, not wanted first, is dropped (its frame waits for the next).
            (Some(Ahead::Pyodide(_)), _) | (None, _) => {
                match self.context.idle_frames.take(worktime == Worktime::Pyodide) {
                    Some(frame) => frame,
                    None => Frame::open(&self.host_url, &self.page_origin)?,
                }
            }
        };
        Ok(Rc::new(Rc::new(IsolatedSandbox::start(frame, worktime, Some(packages), &self.host_url, &self.context)?)))
    }
}
