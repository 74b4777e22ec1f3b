// Tessera sandbox: the script of one sandbox Web Worker (a classic Blob worker).
//
// The scheduler's build writes this file into the sandbox host page (pyodide-loader/sandbox.html,
// an opaque-origin iframe whose policy allows no network at all), which starts it from a Blob URL
// and hands it the core's data port with 'init' (the core: crate/src/web/sandbox.rs).
// A sandbox serves one job for its whole life:
//   core → sandbox  {type:'init', worktime, pyodideUrl, interruptBuffer?,   (Pyodide starts loading at once)
//                    runtimeModule?: bool,                     (the host page sends the compiled interpreter)
//                    snapshot?: Blob, makeSnapshot?: bool,   (restore that runtime snapshot; make one)
//                    packageSnapshot?: Blob,                   (restore this package snapshot first)
//                    packageSnapshotRead?: bool,               (the host page sends its heap and files)
//                    makePackageSnapshot?: [package, …]}       (make one if the job loads these; [] any)
//                   {type:'setup', job, files}                (run the program once)
//                   {type:'runs', items: [{id, datum}, …]}    (slices, run in order; datum as JSON text)
//                   {type:'asset', id, blob | error}          (a runtime file asked for with 'fetch')
//   sandbox → core  {type:'fetch', id, url}                   (bytes-in: a Pyodide file or wheel, set-up only)
//                   {type:'phase', phase: 'packages' | 'program'}  (set-up progress, for the page)
//                   {type:'setup-done'}
//                   {type:'setup-error', message, stack}      (the program failed: its fault)
//                   {type:'setup-fault', message}             (runtime/packages/files failed: not its fault)
//                   {type:'result', id, json, heap} | {type:'error', id, message, stack, heap, interrupted?}
//                   {type:'answers', items: [result | error, …]}  (answers held back to travel together)
//                   {type:'progress', id, value} | {type:'console', stream, text}
//                   {type:'fatal', message}                   (Pyodide is unusable: replace this sandbox)
//                   {type:'snapshot-restored', ms, interpreter: 'reused' | 'compiled'} | {type:'snapshot-rejected', reason}
//                   {type:'snapshot-made', ms, snapshot: ArrayBuffer (transferred)} | {type:'snapshot-failed', reason, lasting}
//                   (each snapshot report with `packages: true` when it is about the package snapshot;
//                   made and restored ones then say which packages it `holds`)
//
// Runtime snapshots: a sandbox given a snapshot restores Pyodide from it (a fraction of a fresh
// start) and reseeds Python's random generators, since every restore starts from the same state.
// If it cannot (another Pyodide build, a damaged copy) it says why and starts afresh. A sandbox
// told to make one snapshots Pyodide right after a fresh start and the set-up of Tessera's Python
// side — before any file or code of a job is in it — and hands the bytes to the core, which keeps
// them for later sandboxes.
// Package snapshots (the `packageSnapshots` option, on by default): a snapshot taken once the
// job's packages are loaded and imported, before the job's files or code are in the sandbox. A
// restore cannot carry what loading a package did outside the wasm heap — the package files, the
// compiled libraries and the table slots their functions sit in — so the snapshot records where
// each library landed, and a restore lays the files out again, reloads the libraries at those
// same places (Emscripten's reload path, the one threads use), then puts the heap back. This leans
// on Emscripten's internals (checked for Pyodide 0.27.7): anything that does not fit — another
// build, a table of another size — is refused and the sandbox falls back to the plain snapshot.
// The compiled interpreter: the host page compiles pyodide.asm.wasm once for every worker it
// starts ({type:'runtime-module', module} on this worker's own channel, after 'init'; module null
// when it has none) — a sandbox started in a frame that served one before compiles nothing.
// The package snapshot's bytes: the host page reads them while this worker starts ({type:
// 'package-snapshot-read', heap, files}, ArrayBuffers handed over; without them: not read).
// interruptBuffer (a SharedArrayBuffer the host page creates when cross-origin isolated) is handed
// to Pyodide: the host writes 2 into it, on the core's order, to raise KeyboardInterrupt.
// Values cross as JSON text; bytes travel as {"$bytes": "<base64>"}, numpy arrays and scalars as
// {"$ndarray": {dtype, shape, data}} (see docs/PROTOCOL.md, "Values").
//
// Bytes in: the sandbox has no network. Pyodide's own requests (`fetch`, `importScripts`) are
// served from memory with the bytes the core fetched and sent; once set-up is over that stops.
//
// Control messages travel over the MessagePort that came with 'init'; it lives only in this
// script's closure, so guest code (Python through the `js` module, or a JavaScript work function)
// can neither read the core's messages nor forge answers. Once the runtime, packages and bundle
// are loaded — before any job code runs — `lockdown()` removes the network and storage APIs
// (defence in depth; the wall is the sandbox host's Content-Security-Policy, docs/SECURITY.md).
(() => {
'use strict';

let port = null;
// Answers held back to travel together: a message to the core crosses processes and costs far
// more than a light slice, so while more slices of the same `runs` batch wait, answers are held
// until HOLD_MS have passed since the first held slice started (a slow slice's answer goes at
// once). Any other message (console, progress, fatal…) sends the held answers first, so the
// order of everything the core hears is unchanged.
// Only a sandbox the core can interrupt holds answers: should a slice hang after held ones, the
// watchdog's interrupt (due when the first held slice's limit runs out, within HOLD_MS of the
// hanging slice's own) stops it, and its answer, marked `interrupted`, goes with the held ones.
const HOLD_MS = 16;
let held = [];
let heldSince = 0;
function sendHeld() {
  if (!held.length) return;
  const items = held;
  held = [];
  port.postMessage({ type: 'answers', items });
}
const post = (message, transfer) => {
  if (!port) return;
  sendHeld();
  port.postMessage(message, transfer || []);
};
/** A slice's answer; `more` when further slices of its batch wait to run, `started` when it began. */
function answer(message, more, started) {
  if (!port) return;
  if (!held.length) heldSince = started;
  held.push(message);
  if (!more || !interruptBuffer || performance.now() - heldSince >= HOLD_MS) sendHeld();
}
let worktime = null;
let pyodideUrl = null;
let pyodideLoading = null;
let pyodide = null;
let runSlice = null;
let currentRun = null;
let interruptBuffer = null;
let snapshot = null;
let makeSnapshot = false;
let packageSnapshot = null;
let makePackageSnapshot = null;
let packagesRestored = false;
// The interpreter compiled by the host page: a Promise of {module, reused} (module null: none).
let runtimeModule = null;
// Compiling the interpreter takes ≈ 1 s on this machine kind; far longer means it is not coming.
const RUNTIME_MODULE_WAIT_MS = 10000;
let receiveRuntimeModule = () => {};
// The package snapshot's heap and files as the host page read them while this worker started
// (the page's thread is idle then, this one busy with Pyodide's JavaScript): a Promise of
// {heap, files} (ArrayBuffers, handed over) or null (this worker reads the snapshot itself).
let hostRead = null;
let receiveHostRead = () => {};
// How this sandbox got its interpreter, reported with a restored snapshot: 'reused' (compiled by
// its frame for an earlier sandbox), or 'compiled' (for this one).
let interpreter = 'compiled';
// Kept before anything else runs: the map-basic program is loaded with it after the lockdown.
const loadScript = self.importScripts.bind(self);

// What the sandbox policy blocked, told to the deployer: the program tried to reach something.
self.addEventListener('securitypolicyviolation', (event) => {
  post({ type: 'console', stream: 'stderr', text: `[tessera sandbox] blocked by the sandbox policy: ${event.effectiveDirective} ${event.blockedURI}` });
});

/** A set-up failure that is not the program's fault (the runtime, a package or a file). */
class SetupFault extends Error {}

function text(part) {
  if (typeof part === 'string') return part;
  if (part instanceof Error) return part.stack || String(part);
  try { return JSON.stringify(part); } catch (_) { return String(part); }
}

// Guest console output goes to the deployer, not the page's console.
for (const [method, stream] of [['log', 'stdout'], ['info', 'stdout'], ['debug', 'stdout'], ['warn', 'stderr'], ['error', 'stderr']]) {
  console[method] = (...parts) => post({ type: 'console', stream, text: parts.map(text).join(' ') });
}

/** Reports progress (0..1, or nothing for "still alive"); available to map-basic work functions. */
self.progress = (value) => {
  post({ type: 'progress', id: currentRun, value: typeof value === 'number' && isFinite(value) ? value : null });
  return true;
};

function bytesToBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function base64ToBytes(b64) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** JSON text for a JavaScript result: typed arrays become {"$bytes": …}, undefined becomes null. */
function toWire(value) {
  return JSON.stringify(value === undefined ? null : value, (_key, v) => {
    if (v instanceof ArrayBuffer) return { $bytes: bytesToBase64(new Uint8Array(v)) };
    if (ArrayBuffer.isView(v)) return { $bytes: bytesToBase64(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)) };
    return v;
  });
}

function fromWire(json) {
  return JSON.parse(json, (_key, v) => (v && typeof v === 'object' && typeof v.$bytes === 'string' && Object.keys(v).length === 1 ? base64ToBytes(v.$bytes) : v));
}

// ---- map-basic: a JavaScript work function --------------------------------------------------
function setupMapBasic(job) {
  sealAssets();
  lockdown();
  post({ type: 'phase', phase: 'program' });
  // No eval (the policy forbids it): the program is a Blob-URL script that hands its value over.
  const slot = '__tesseraWork' + Math.random().toString(36).slice(2);
  const url = URL.createObjectURL(new Blob([`self[${JSON.stringify(slot)}] = (${job.program}\n);`], { type: 'text/javascript' }));
  let work;
  try {
    loadScript(url);
    work = self[slot];
  } finally {
    delete self[slot];
    URL.revokeObjectURL(url);
  }
  if (typeof work !== 'function') throw new TypeError('the program is not a function; write `(datum, ...args) => result`');
  const args = JSON.parse(job.argumentsJson);
  runSlice = async (datumJson) => toWire(await work(fromWire(datumJson), ...args));
}

// ---- pyodide: a Python program that registers a slice handler -------------------------------
const PYTHON_RUNTIME = String.raw`
import base64, json, os, sys, traceback, types

class _TesseraState:
    handler = None

def _set_slice_handler(fn):
    if not callable(fn):
        raise TypeError("dcp.set_slice_handler needs a callable, got " + type(fn).__name__)
    _TesseraState.handler = fn

def _progress(value=None):
    if value is not None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError("dcp.progress takes a number from 0.0 to 1.0")
    _tessera_host_progress(value)
    return True

_module = types.ModuleType("dcp", "Tessera's job API, compatible with DCP's Pyodide worktime.")
_module.set_slice_handler = _set_slice_handler
_module.progress = _progress
sys.modules["dcp"] = _module
sys.modules["tessera"] = _module

def _to_wire(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_to_wire(item) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("result dict keys must be str, got " + type(key).__name__)
            out[key] = _to_wire(item)
        return out
    kind = type(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _ndarray_to_wire(numpy, value)
    raise TypeError("a slice result of type " + kind.__module__ + "." + kind.__qualname__
                    + " cannot be returned; return JSON types, bytes, or numpy arrays/scalars")

# numpy values travel as {"$ndarray": {"dtype": descr, "shape": [...], "data": base64 of C-order
# bytes, "scalar"?: true}} (docs/PROTOCOL.md, "Values"). numpy is imported only for a value that
# holds one: jobs without numpy keep plain JSON.
def _ndarray_to_wire(numpy, value):
    scalar = isinstance(value, numpy.generic)
    array = numpy.asarray(value)
    if array.dtype.hasobject:
        raise TypeError("a numpy array of dtype object cannot be sent; use numeric, bool, string or structured dtypes")
    wire = {"dtype": numpy.lib.format.dtype_to_descr(array.dtype), "shape": list(array.shape),
            "data": base64.b64encode(numpy.ascontiguousarray(array).tobytes()).decode("ascii")}
    if scalar:
        wire["scalar"] = True
    return {"$ndarray": wire}

def _descr_from_json(descr):
    if isinstance(descr, str):
        return descr
    fields = []
    for field in descr:
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        item = [name, _descr_from_json(field[1])]
        if len(field) > 2:
            item.append(tuple(field[2]))
        fields.append(tuple(item))
    return fields

def _ndarray_from_wire(wire):
    try:
        import importlib
        numpy = importlib.import_module("numpy")
    except ImportError as error:
        raise ImportError("a value holds a numpy array ($ndarray) but numpy is not loaded: add numpy to the job's packages") from error
    dtype = numpy.lib.format.descr_to_dtype(_descr_from_json(wire["dtype"]))
    if dtype.hasobject:
        raise TypeError("a numpy array of dtype object cannot be received")
    array = numpy.frombuffer(base64.b64decode(wire["data"]), dtype=dtype).reshape(wire["shape"]).copy()
    return array[()] if wire.get("scalar") else array

def _from_wire(value):
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            return base64.b64decode(value["$bytes"])
        if len(value) == 1 and isinstance(value.get("$ndarray"), dict):
            return _ndarray_from_wire(value["$ndarray"])
        return {key: _from_wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_wire(item) for item in value]
    return value

def _tessera_setup(program, program_name, arguments, env, root):
    os.makedirs(root, exist_ok=True)
    os.chdir(root)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    sys.argv = [program_name] + [a if isinstance(a, str) else json.dumps(a) for a in json.loads(arguments)]
    os.environ.update(json.loads(env))
    code = compile(program, program_name, "exec")
    exec(code, {"__name__": "__main__", "__file__": os.path.join(root, program_name)})
    if _TesseraState.handler is None:
        raise RuntimeError("no slice handler registered: the program must call dcp.set_slice_handler(fn)")

def _tessera_run(datum_json):
    result = _TesseraState.handler(_from_wire(json.loads(datum_json)))
    return json.dumps(_to_wire(result), allow_nan=False)
`;

// ---- bytes in: Pyodide's files come from the core, over the port --------------------------------
const assets = new Map(); // absolute URL → Promise<Blob>
const awaitingAssets = new Map(); // request id → {resolve, reject}
let nextAssetId = 1;
let assetsSealed = false;

/** The bytes of `url` (a file of the Pyodide distribution), asked of the core once. */
function asset(url) {
  if (assetsSealed) return Promise.reject(new TypeError('the sandbox has no network (asked for ' + url + ')'));
  let bytes = assets.get(url);
  if (!bytes) {
    bytes = new Promise((resolve, reject) => {
      const id = nextAssetId++;
      awaitingAssets.set(id, { resolve, reject });
      post({ type: 'fetch', id, url });
    });
    assets.set(url, bytes);
  }
  return bytes;
}

function receiveAsset(message) {
  const waiting = awaitingAssets.get(message.id);
  if (!waiting) return;
  awaitingAssets.delete(message.id);
  if (message.blob instanceof Blob) waiting.resolve(message.blob);
  else waiting.reject(new TypeError(String(message.error || 'the core sent no bytes')));
}

/** Set-up is over: nothing more is asked of the core, whoever asks. */
function sealAssets() {
  assetsSealed = true;
  assets.clear();
}

const MIME = { js: 'text/javascript', mjs: 'text/javascript', wasm: 'application/wasm', json: 'application/json' };
const mimeOf = (url) => MIME[url.slice(url.lastIndexOf('.') + 1)] || 'application/octet-stream';

/** A Blob URL (in this sandbox's own opaque origin) holding the bytes of `url`. */
async function assetScriptUrl(url) {
  return URL.createObjectURL(new Blob([await asset(url)], { type: mimeOf(url) }));
}

// The URL each Response `fetchFromMemory` made stands for (a made Response has no URL of its own).
const servedUrls = new WeakMap();

/** Pyodide's `fetch`, from memory: the same Response a server would give, for known files only. */
async function fetchFromMemory(input) {
  const url = new URL(typeof input === 'string' ? input : String((input && input.url) || input), pyodideUrl).href;
  const blob = await asset(url);
  const response = new Response(blob, { status: 200, headers: { 'Content-Type': mimeOf(url) } });
  servedUrls.set(response, url);
  return response;
}

function startPyodide() {
  if (!pyodideLoading) {
    pyodideLoading = (async () => {
      self.fetch = fetchFromMemory;
      // Pyodide loads pyodide.asm.js with importScripts (synchronous): have its bytes first.
      // Both scripts asked of the core at once.
      const runtimeUrl = pyodideUrl + 'pyodide.asm.js';
      const [runtimeScript, loader] = await Promise.all([assetScriptUrl(runtimeUrl), assetScriptUrl(pyodideUrl + 'pyodide.mjs')]);
      self.importScripts = (...urls) => loadScript(...urls.map((url) => (url === runtimeUrl ? runtimeScript : url)));
      const { loadPyodide } = await import(loader);
      return withRuntimeModule(() => loadPyodideSomehow(loadPyodide));
    })();
  }
  return pyodideLoading;
}

/** Runs `load` with Pyodide's instantiation of its interpreter (`WebAssembly.instantiateStreaming`
 *  of pyodide.asm.wasm) served from the module the host page compiled, when it sends one. */
async function withRuntimeModule(load) {
  if (!runtimeModule) return load();
  const instantiateStreaming = WebAssembly.instantiateStreaming;
  const runtimeWasm = pyodideUrl + 'pyodide.asm.wasm';
  WebAssembly.instantiateStreaming = async (source, imports) => {
    const response = await source;
    const given = servedUrls.get(response) === runtimeWasm ? await moduleOrNothingAfter(RUNTIME_MODULE_WAIT_MS) : null;
    if (given && given.module) {
      interpreter = given.reused ? 'reused' : 'compiled';
      return { module: given.module, instance: await WebAssembly.instantiate(given.module, imports) };
    }
    return instantiateStreaming.call(WebAssembly, response, imports);
  };
  try {
    return await load();
  } finally {
    WebAssembly.instantiateStreaming = instantiateStreaming;
  }
}

/** The host page's compiled interpreter, or null (this worker compiles its own) if it has not
 *  come within `ms`: a frame that cannot give one never holds a sandbox's set-up. */
function moduleOrNothingAfter(ms) {
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(() => resolve(null), ms); });
  return Promise.race([runtimeModule, late]).finally(() => clearTimeout(timer));
}

/** Pyodide from the package snapshot, else from the plain snapshot, else afresh. */
async function loadPyodideSomehow(loadPyodide) {
  if (packageSnapshot) {
    const started = performance.now();
    try {
      const { py, holds } = await restorePackages(loadPyodide, packageSnapshot);
      const restored = withRuntime(py);
      post({ type: 'snapshot-restored', packages: true, holds, interpreter, ms: performance.now() - started });
      packagesRestored = true;
      snapshot = null;
      return restored;
    } catch (error) {
      post({ type: 'snapshot-rejected', packages: true, reason: firstLine(error) });
    } finally {
      packageSnapshot = null;
    }
  }
  if (snapshot) {
    const started = performance.now();
    try {
      const restored = withRuntime(await restorePyodide(loadPyodide, snapshot));
      post({ type: 'snapshot-restored', interpreter, ms: performance.now() - started });
      return restored;
    } catch (error) {
      post({ type: 'snapshot-rejected', reason: firstLine(error) });
    } finally {
      snapshot = null;
    }
  }
  return freshPyodide(loadPyodide);
}

/** Sets Tessera's Python side up (the `dcp` module, the value codecs, set-up and run helpers)
 *  unless it came with a snapshot: a snapshot holds it, so a restored sandbox skips the imports
 *  and compiling it (the slowest first steps of a restored interpreter). */
function withRuntime(py) {
  if (!py.runPython('"_tessera_setup" in globals()')) py.runPython(PYTHON_RUNTIME);
  return py;
}

const firstLine = (error) => String((error && error.message) || error).trim().split('\n')[0];

// Every restore starts from the snapshot maker's state: Python's `random` (and numpy's, should
// a snapshot ever hold it) are reseeded from the browser's entropy before any job code runs.
const RESEED = String.raw`
def _tessera_reseed():
    import random, sys
    random.seed()
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
_tessera_reseed()
del _tessera_reseed
`;

// Before a snapshot: what is in the heap now (the interpreter, Tessera's Python side, the packages)
// lives as long as the sandbox, so Python's collector is told to leave it out of its full
// collections, in the maker and in every restored sandbox (numpy alone is ≈ 10⁵ objects).
const FREEZE = "__import__('gc').collect(); __import__('gc').freeze()";

/** Pyodide restored from a runtime snapshot; throws (and leaves nothing behind) if it does not fit. */
async function restorePyodide(loadPyodide, blob) {
  const bytes = await blob.arrayBuffer();
  const restored = await loadSnapshot(loadPyodide, new Uint8Array(bytes));
  release(bytes);
  restored.runPython(RESEED);
  return restored;
}

/** Frees `buffer`'s memory now (the heap's copy is in Pyodide), not whenever it is collected.
 *  For bytes read from a Blob, `buffer.transfer(0)` frees nothing: the browser's own handle on
 *  them lives until a garbage collection, which an idle sandbox may not see for minutes (Chromium
 *  kept all 35 MB of a package snapshot's heap so). Transferred into a message that no one will
 *  read, the bytes go with the message when its channel closes. */
function release(buffer) {
  const channel = new MessageChannel();
  channel.port1.postMessage(buffer, [buffer]);
  channel.port1.close();
  channel.port2.close();
}

/** Pyodide loaded from the snapshot `bytes` (or a promise of them: Pyodide runs its JavaScript
 *  while they come), not reseeded yet. */
async function loadSnapshot(loadPyodide, bytes) {
  let heapBuffer = null;
  const checked = Promise.resolve(bytes).then((bytes) => {
    // Pyodide's layout: 4 words (magic, offset of the heap, …), a build id, then the wasm heap, a
    // whole number of 64 KiB pages. Pyodide checks the magic and the build id itself.
    const heapAt = bytes.length >= 16 ? new DataView(bytes.buffer, bytes.byteOffset).getUint32(4, true) : 0;
    if (heapAt < 48 || heapAt >= bytes.length || (bytes.length - heapAt) % 65536 !== 0) {
      throw new Error(`the snapshot is damaged (${bytes.length} bytes, not a whole wasm heap)`);
    }
    heapBuffer = bytes.buffer;
    return bytes;
  });
  checked.catch(() => {}); // its failure is Pyodide's to report, if it got that far
  // Pyodide copies the heap in with one `HEAP8.set` of a view of these bytes: done by copyHeap.
  const set = Int8Array.prototype.set;
  Int8Array.prototype.set = function (source, offset) {
    if (source instanceof Uint8Array && source.buffer === heapBuffer && !offset) return copyHeap(this, source);
    return set.call(this, source, offset);
  };
  let restored;
  try {
    restored = await loadPyodide({ indexURL: pyodideUrl, _loadSnapshot: checked, _makeSnapshot: makePackageSnapshot !== null });
  } finally {
    Int8Array.prototype.set = set;
  }
  // Pyodide keeps its options: let the snapshot's bytes (now copied into the heap) go.
  delete restored._api.config._loadSnapshot;
  return restored;
}

// The unit the kernel gives memory in: a page never written holds no memory.
const PAGE_BYTES = 4096;

/** Makes the heap's memory `target` (a fresh or reloaded WebAssembly memory) hold the snapshot's
 *  heap `source`, writing only pages that must change. A snapshot's heap is a quarter zeros
 *  (≈ 9 of numpy's 35 MB: what the heap had grown to but not used): copied whole, those pages
 *  would take memory that a freshly loaded Pyodide never touches. */
function copyHeap(target, source) {
  if (source.length > target.length || source.byteOffset % 4 || source.length % PAGE_BYTES) {
    throw new RangeError(`a heap of ${source.length} bytes does not fit a memory of ${target.length}`);
  }
  const from = new Int32Array(source.buffer, source.byteOffset, source.length >>> 2);
  const to = new Int32Array(target.buffer, target.byteOffset, target.length >>> 2);
  const words = PAGE_BYTES >>> 2;
  const zero = (array, at) => {
    for (let index = at; index < at + words; index++) if (array[index] !== 0) return false;
    return true;
  };
  let run = -1; // where the pages to copy begin, while there is a run of them
  for (let at = 0; at < to.length; at += words) {
    if (at < from.length && !zero(from, at)) {
      if (run < 0) run = at;
      continue;
    }
    if (run >= 0) to.set(from.subarray(run, at), run);
    run = -1;
    // Reading a page never written gives zeros and takes no memory.
    if (!zero(to, at)) to.fill(0, at, at + words);
  }
  if (run >= 0) to.set(from.subarray(run), run);
}

/** Pyodide started afresh, Tessera's Python side set up; snapshotted at once when the core asked
 *  for a snapshot. */
async function freshPyodide(loadPyodide) {
  const fresh = withRuntime(await loadPyodide({ indexURL: pyodideUrl, _makeSnapshot: makeSnapshot || makePackageSnapshot !== null }));
  if (makeSnapshot) {
    const started = performance.now();
    try {
      // Its own buffer (copied only if Pyodide's is part of a larger one), transferred: the core
      // keeps the bytes in a Blob of the page's, which outlives this sandbox and its frame.
      fresh.runPython(FREEZE);
      const made = fresh.makeMemorySnapshot();
      const bytes = made.byteOffset === 0 && made.byteLength === made.buffer.byteLength ? made : made.slice();
      post({ type: 'snapshot-made', ms: performance.now() - started, snapshot: bytes.buffer }, [bytes.buffer]);
    } catch (error) {
      post({ type: 'snapshot-failed', reason: firstLine(error), lasting: true });
    }
  }
  return fresh;
}

// ---- package snapshots ----------------------------------------------------------------------
// Layout: a 16-byte header (magic, format, length of the description, length of the Pyodide
// snapshot), the description (JSON), Pyodide's own snapshot of the heap, then the package files.
const PACKAGE_SNAPSHOT_MAGIC = 0x4b505354; // "TSPK"
const PACKAGE_SNAPSHOT_FORMAT = 1;
// Emscripten's record of a loaded library (`struct dso`): the reload path reads "loaded" (byte 8),
// the memory base and size, the table base and size (bytes 12–27) and no bytes (28–35).
const LIBRARY_RECORD_BYTES = 64;

/** Every file under `dirs` (missing folders are skipped). */
function filesUnder(FS, dirs) {
  const found = [];
  const walk = (dir) => {
    let names;
    try { names = FS.readdir(dir); } catch (_) { return; }
    for (const name of names) {
      if (name === '.' || name === '..') continue;
      const path = dir + '/' + name;
      if (FS.isDir(FS.stat(path).mode)) walk(path);
      else found.push(path);
    }
  };
  dirs.forEach(walk);
  return found;
}

/** Where Pyodide installs packages: site-packages, and the folder for shared libraries. */
function installDirs(py) {
  const loader = py._api.package_loader;
  return [...new Set([loader.get_install_dir('site'), loader.get_install_dir('dynlib')])];
}

/** Loads `packages` as Pyodide does, noting where each compiled library lands in memory and in
 *  the function table, and which files appear: what a package snapshot must replay. */
async function loadPackagesNoted(py, packages, options) {
  const M = py._module;
  const dirs = installDirs(py);
  const before = new Set(filesUnder(M.FS, dirs));
  const libraries = [];
  const load = M.loadDynamicLibrary;
  M.loadDynamicLibrary = function (name, flags, localScope, handle) {
    if (handle !== undefined) return load.call(this, name, flags, localScope, handle);
    const record = M._calloc(LIBRARY_RECORD_BYTES, 1);
    const tableBefore = M.wasmTable.length;
    const forget = () => { delete M.LDSO.loadedLibsByHandle[record]; M._free(record); };
    return Promise.resolve(load.call(this, name, flags, localScope, record)).then((loaded) => {
      const words = M.HEAPU32;
      libraries.push({
        name, global: Boolean(flags.global), tableBefore, tableAfter: M.wasmTable.length,
        memoryBase: words[(record + 12) >>> 2], memorySize: words[(record + 16) >>> 2],
        tableBase: words[(record + 20) >>> 2], tableSize: words[(record + 24) >>> 2],
      });
      forget();
      return loaded;
    }, (error) => { forget(); throw error; });
  };
  try {
    await py.loadPackage(packages, options);
  } finally {
    M.loadDynamicLibrary = load;
  }
  return { dirs, libraries, files: filesUnder(M.FS, dirs).filter((path) => !before.has(path)) };
}

/** A package snapshot of `py`, its `packages` loaded (as `noted`) and imported, nothing else in it. */
function makePackageSnapshotOf(py, packages, noted) {
  const M = py._module;
  const lockfile = py._api.lockfile_packages || {};
  const modules = packages.flatMap((name) => (lockfile[name.toLowerCase()] || {}).imports || []);
  py.runPython(`[__import__(name) for name in ${JSON.stringify(modules)}]`);
  // Pyodide's check expects its table of loaded packages empty, as after a fresh start.
  const channels = { ...py.loadedPackages };
  for (const name of Object.keys(channels)) delete py.loadedPackages[name];
  let heap;
  try {
    py.runPython(FREEZE);
    heap = py.makeMemorySnapshot();
  } finally {
    Object.assign(py.loadedPackages, channels);
  }
  const files = noted.files.map((path) => ({ path, bytes: M.FS.readFile(path) }));
  const description = new TextEncoder().encode(JSON.stringify({
    packages, channels, libraries: noted.libraries,
    handles: Object.entries(M.LDSO.loadedLibsByHandle).map(([handle, dso]) => [Number(handle), dso.name]),
    files: files.map((file) => [file.path, file.bytes.length]),
  }));
  const size = 16 + description.length + heap.length + files.reduce((sum, file) => sum + file.bytes.length, 0);
  const out = new Uint8Array(size);
  new Uint32Array(out.buffer, 0, 4).set([PACKAGE_SNAPSHOT_MAGIC, PACKAGE_SNAPSHOT_FORMAT, description.length, heap.length]);
  let at = 16;
  for (const part of [description, heap, ...files.map((file) => file.bytes)]) {
    out.set(part, at);
    at += part.length;
  }
  // The parts (copies: Pyodide's snapshot, the files as read) go now, not at a collection.
  [heap, ...files.map((file) => file.bytes)].forEach((part) => release(part.buffer));
  return out;
}

/** A package snapshot's parts: its description, heap and files (taken from `given`, what the host
 *  page read, when that fits; unused, it is let go at once), the libraries compiling; throws if
 *  the snapshot is damaged. */
async function readPackageSnapshot(blob, given) {
  const header = blob.size >= 16 ? new Uint32Array(await blob.slice(0, 16).arrayBuffer()) : [0, 0, 0, 0];
  const heapStart = 16 + header[2];
  const filesStart = heapStart + header[3];
  const valid = header[0] === PACKAGE_SNAPSHOT_MAGIC && header[1] === PACKAGE_SNAPSHOT_FORMAT && filesStart <= blob.size;
  const read = await given;
  const fits = valid && read !== null && read.heap.byteLength === filesStart - heapStart && read.files.byteLength === blob.size - filesStart;
  if (read && !fits) [read.heap, read.files].forEach(release);
  if (!valid) throw new Error(`the package snapshot is damaged or of another format (${blob.size} bytes)`);
  // Read in parts: the heap's bytes are let go once restored, the files' stay as the files.
  const [about, heapBytes, fileBytes] = await Promise.all([
    blob.slice(16, heapStart).text().then(JSON.parse),
    fits ? read.heap : blob.slice(heapStart, filesStart).arrayBuffer(),
    fits ? read.files : blob.slice(filesStart).arrayBuffer(),
  ]);
  const files = new Map();
  let at = 0;
  for (const [path, length] of about.files) {
    if (at + length > fileBytes.byteLength) throw new Error('the package snapshot is damaged (its files are cut short)');
    files.set(path, new Uint8Array(fileBytes, at, length));
    at += length;
  }
  // The libraries compile (off this thread) while Pyodide restores.
  const compiled = new Map(about.libraries.map(({ name }) => {
    const compiling = files.has(name) ? WebAssembly.compile(files.get(name)) : Promise.reject(new Error(`the package snapshot lacks ${name}`));
    compiling.catch(() => {});
    return [name, compiling];
  }));
  return { about, heap: new Uint8Array(heapBytes), files, compiled };
}

/** Pyodide restored from a package snapshot, its packages ready (`py`), and which they are
 *  (`holds`); throws if anything does not fit (the caller then falls back to the plain snapshot). */
async function restorePackages(loadPyodide, blob) {
  // Pyodide runs its JavaScript while the parts are read: a read by this worker's thread waits
  // for that, the host page's does not.
  const parts = readPackageSnapshot(blob, hostRead);
  hostRead = null;
  const py = await loadSnapshot(loadPyodide, parts.then(({ heap }) => heap));
  const { about, heap, files, compiled } = await parts;
  const heapBytes = heap.buffer;
  const M = py._module;
  const made = new Set(); // each folder made once (making one that exists throws, inside Emscripten)
  for (const [path, bytes] of files) {
    const folder = path.slice(0, path.lastIndexOf('/'));
    if (!made.has(folder)) M.FS.mkdirTree(folder);
    made.add(folder);
    M.FS.writeFile(path, bytes, { canOwn: true });
  }
  for (const library of about.libraries) {
    if (M.wasmTable.length !== library.tableBefore) {
      throw new Error(`the package snapshot does not fit: the function table holds ${M.wasmTable.length} entries where ${library.name} expects ${library.tableBefore}`);
    }
    // Emscripten's reload path (what its loadDynamicLibrary does, with the module compiled
    // already): a record saying "loaded at these bases" puts the library back where it was,
    // without allocating.
    const record = M._calloc(LIBRARY_RECORD_BYTES, 1);
    M.HEAPU8[record + 8] = 1;
    M.HEAPU32.set([library.memoryBase, library.memorySize, library.tableBase, library.tableSize], (record + 12) >>> 2);
    const flags = { loadAsync: true, nodelete: true, allowUndefined: true, global: library.global };
    const dso = M.newDSO(library.name, record, 'loading');
    dso.global = library.global;
    const exports = await M.loadWebAssemblyModule(await compiled.get(library.name), flags, library.name, {}, record);
    if (library.global) M.mergeLibSymbols(exports, library.name);
    dso.exports = exports;
    delete M.LDSO.loadedLibsByHandle[record];
    // Pyodide also finds a library by its file name.
    const base = library.name.slice(library.name.lastIndexOf('/') + 1);
    M.LDSO.loadedLibsByName[base] = M.LDSO.loadedLibsByName[base] || dso;
    if (M.wasmTable.length !== library.tableAfter) {
      throw new Error(`the package snapshot does not fit: ${library.name} ends the function table at ${M.wasmTable.length}, not ${library.tableAfter}`);
    }
  }
  // Loading wrote the libraries' initial data over the heap: put the snapshot's heap back.
  const wasmHeap = heap.subarray(new DataView(heapBytes).getUint32(4, true));
  copyHeap(M.HEAPU8, wasmHeap);
  release(heapBytes);
  // What lives outside the heap: Pyodide's table of loaded packages, and the handles Python's
  // imports opened (the heap remembers them; Emscripten's table of them is JavaScript).
  Object.assign(py.loadedPackages, about.channels);
  for (const [handle, name] of about.handles) {
    if (!M.LDSO.loadedLibsByHandle[handle] && M.LDSO.loadedLibsByName[name]) M.LDSO.loadedLibsByHandle[handle] = M.LDSO.loadedLibsByName[name];
  }
  py.runPython(RESEED);
  return { py, holds: about.packages };
}

function pythonError(error) {
  // PythonError's message is the whole traceback. The exception line is the first unindented
  // line after the last frame ("  File …" and its indented source lines).
  const full = String((error && error.message) || error).trimEnd();
  const lines = full.split('\n');
  let last = -1;
  lines.forEach((line, index) => { if (line.startsWith('  File ')) last = index; });
  let message = lines[lines.length - 1] || full;
  for (let index = last + 1; last >= 0 && index < lines.length; index++) {
    if (!lines[index].startsWith(' ')) { message = lines[index]; break; }
  }
  return { message, stack: full };
}

/** Message and stack of a JavaScript error, the same text in every browser. */
function describeError(error) {
  if (!(error instanceof Error)) return { message: String(error), stack: undefined };
  const header = (error.name || 'Error') + ': ' + error.message;
  const stack = String(error.stack || '');
  return { message: error.message, stack: stack.startsWith(header) ? stack : header + '\n' + stack };
}

/** Whether Pyodide declared itself unusable after this error. */
function isFatal(error) {
  return Boolean(error && (error.pyodide_fatal_error || /fatal error/i.test(String(error.message || ''))));
}

/** Bytes of the Python heap (wasm memory), reported with every answer so the core can recycle
 *  a sandbox whose memory has grown too much; null for map-basic. */
function heapBytes() {
  return pyodide ? pyodide._module.HEAPU8.length : null;
}

const JOB_ROOT = '/home/pyodide/job';

/** Whether two package lists name the same packages. */
const samePackages = (a, b) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());

/** Loads the runtime, the job's packages and its bundle: any failure here is a SetupFault. */
async function loadPyodideFor(job, files) {
  try {
    pyodide = await startPyodide();
    const packages = job.packages || [];
    // A package snapshot is made only of a Pyodide not restored from one, for the packages it was
    // ordered for, before anything of the job (its files, its code, its output) is in it.
    let making = makePackageSnapshot !== null && !packagesRestored;
    if (making && (!packages.length || (makePackageSnapshot.length && !samePackages(makePackageSnapshot, packages)))) {
      const reason = packages.length ? 'the job loads other packages than the snapshot was ordered for' : 'the job loads no packages';
      post({ type: 'snapshot-failed', packages: true, reason, lasting: false });
      making = false;
    }
    if (packages.length) {
      post({ type: 'phase', phase: 'packages' });
      const failures = [];
      const options = { messageCallback: () => {}, errorCallback: (text) => failures.push(text) };
      const noted = making ? await loadPackagesNoted(pyodide, packages, options) : null;
      if (!noted) await pyodide.loadPackage(packages, options);
      if (failures.length) throw new Error('packages failed to load: ' + failures.join('; '));
      if (noted) {
        const started = performance.now();
        try {
          const bytes = makePackageSnapshotOf(pyodide, packages, noted);
          post({ type: 'snapshot-made', packages: true, holds: packages, ms: performance.now() - started, snapshot: bytes.buffer }, [bytes.buffer]);
        } catch (error) {
          post({ type: 'snapshot-failed', packages: true, reason: firstLine(error), lasting: false });
        }
      }
    }
    if (interruptBuffer) pyodide.setInterruptBuffer(interruptBuffer);
    const stream = (name) => ({ batched: (line) => post({ type: 'console', stream: name, text: line }) });
    pyodide.setStdout(stream('stdout'));
    pyodide.setStderr(stream('stderr'));
    pyodide.FS.mkdirTree(JOB_ROOT);
    for (const file of files) {
      const path = JOB_ROOT + '/' + file.path;
      if (file.bytes === undefined) {
        pyodide.FS.mkdirTree(path);
      } else {
        pyodide.FS.mkdirTree(path.slice(0, path.lastIndexOf('/')));
        pyodide.FS.writeFile(path, file.bytes);
      }
    }
    pyodide.globals.set('_tessera_host_progress', (value) => self.progress(value === undefined ? null : value));
  } catch (error) {
    throw new SetupFault('the Python runtime could not be set up: ' + String((error && error.message) || error));
  }
}

async function setupPyodide(job, files) {
  await loadPyodideFor(job, files);
  sealAssets();
  lockdown();
  try {
    pyodide.runPython(PYTHON_LOCKDOWN);
  } catch (error) {
    throw new SetupFault('the Python runtime could not be locked down: ' + String((error && error.message) || error));
  }
  const root = JOB_ROOT;
  post({ type: 'phase', phase: 'program' });
  const setup = pyodide.globals.get('_tessera_setup');
  try {
    setup(job.program, job.programName, job.argumentsJson, JSON.stringify(job.env || {}), root);
  } finally {
    setup.destroy();
  }
  const run = pyodide.globals.get('_tessera_run');
  runSlice = async (datumJson) => run(datumJson);
}

// ---- no ambient authority for guest code -----------------------------------------------------
// Network, storage, cross-context messaging and nested workers. They live on the global object
// and on its prototypes (WorkerGlobalScope.prototype.fetch outlives `delete self.fetch`).
const BLOCKED_GLOBALS = [
  'fetch', 'XMLHttpRequest', 'WebSocket', 'WebSocketStream', 'EventSource', 'WebTransport', 'importScripts',
  'indexedDB', 'caches', 'BroadcastChannel', 'Worker', 'SharedWorker', 'RTCPeerConnection', 'postMessage',
];

function lockdown() {
  const scopes = [];
  for (let scope = self; scope && scope !== Object.prototype; scope = Object.getPrototypeOf(scope)) scopes.push(scope);
  for (const scope of scopes) {
    for (const name of BLOCKED_GLOBALS) {
      if (!Object.prototype.hasOwnProperty.call(scope, name)) continue;
      try {
        Object.defineProperty(scope, name, { value: undefined, writable: false, configurable: false, enumerable: false });
      } catch (_) {
        try { delete scope[name]; } catch (_) { /* left as is; the CSP still applies */ }
      }
    }
  }
}

// Python-side references to what lockdown() removed: modules that captured `fetch` or
// `XMLHttpRequest` at import (pyodide.http, micropip) are dropped, and any module attribute
// that is a JavaScript proxy named like a removed global is deleted.
const PYTHON_LOCKDOWN = String.raw`
def _tessera_lockdown(blocked):
    import sys
    import pyodide
    from pyodide.ffi import JsProxy

    for name in [n for n in sys.modules if n == "micropip" or n.startswith("micropip.") or n == "pyodide.http"]:
        del sys.modules[name]
    if "http" in vars(pyodide):
        delattr(pyodide, "http")
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            for key, value in list(namespace.items()):
                if key in blocked and isinstance(value, JsProxy):
                    del namespace[key]

_tessera_lockdown(set(${JSON.stringify(BLOCKED_GLOBALS)}))
del _tessera_lockdown
`;

// ---- messages from the worker core ------------------------------------------------------------
// 'init' arrives on the worker's own channel, with the control port; everything after it on the
// port. Handled strictly one after another: a slice sent while the set-up or another slice is
// still running waits its turn (the core pipelines slices to hide the message round trip).
let turn = Promise.resolve();
self.onmessage = (event) => {
  const message = event.data;
  // From the host page, after 'init': what it prepared for this worker, each once.
  if (port && message && message.type === 'runtime-module' && receiveRuntimeModule) {
    const module = message.module instanceof WebAssembly.Module ? message.module : null;
    receiveRuntimeModule({ module, reused: module !== null && message.reused === true });
    receiveRuntimeModule = null;
  } else if (port && message && message.type === 'package-snapshot-read' && receiveHostRead) {
    const fine = message.heap instanceof ArrayBuffer && message.files instanceof ArrayBuffer;
    receiveHostRead(fine ? { heap: message.heap, files: message.files } : null);
    receiveHostRead = null;
  }
  if (port) {
    if (!receiveRuntimeModule && !receiveHostRead) self.onmessage = null;
    return;
  }
  if (!message || message.type !== 'init' || !event.ports || !event.ports[0]) return;
  port = event.ports[0];
  if (message.runtimeModule === true) runtimeModule = new Promise((resolve) => { receiveRuntimeModule = resolve; });
  else receiveRuntimeModule = null;
  if (message.packageSnapshotRead === true) hostRead = new Promise((resolve) => { receiveHostRead = resolve; });
  else receiveHostRead = null;
  if (!receiveRuntimeModule && !receiveHostRead) self.onmessage = null;
  port.onmessage = (portEvent) => {
    const data = portEvent.data;
    // Bytes for a set-up in progress: answered at once, not queued behind that set-up.
    if (data && data.type === 'asset') receiveAsset(data);
    else if (data && data.type === 'runs' && Array.isArray(data.items)) {
      // Several slices in one message (the core sends a refilled pipeline at once): one turn each.
      data.items.forEach((item, index) => {
        const more = index + 1 < data.items.length;
        turn = turn.then(() => handle({ type: 'run', id: item.id, datum: item.datum, more }));
      });
    } else turn = turn.then(() => handle(data));
  };
  turn = turn.then(() => handle(message));
};

async function handle(message) {
  switch (message.type) {
    case 'init':
      worktime = message.worktime;
      pyodideUrl = message.pyodideUrl;
      interruptBuffer = message.interruptBuffer || null;
      snapshot = message.snapshot instanceof Blob ? message.snapshot : null;
      makeSnapshot = message.makeSnapshot === true;
      packageSnapshot = message.packageSnapshot instanceof Blob ? message.packageSnapshot : null;
      makePackageSnapshot = Array.isArray(message.makePackageSnapshot) ? message.makePackageSnapshot.map(String) : null;
      if (worktime === 'pyodide') startPyodide().catch(() => {});
      return;
    case 'setup':
      try {
        if (worktime === 'pyodide') await setupPyodide(message.job, message.files || []);
        else setupMapBasic(message.job);
        post({ type: 'setup-done' });
      } catch (error) {
        if (error instanceof SetupFault) {
          post({ type: 'setup-fault', message: error.message });
          return;
        }
        const described = worktime === 'pyodide' ? pythonError(error) : describeError(error);
        post({ type: 'setup-error', message: described.message, stack: described.stack });
      }
      return;
    case 'run':
      currentRun = message.id;
      // A stop request that came after the previous slice ended must not hit this one.
      if (interruptBuffer) Atomics.store(interruptBuffer, 0, 0);
      const started = performance.now();
      try {
        const json = await runSlice(message.datum);
        answer({ type: 'result', id: message.id, json, heap: heapBytes() }, message.more, started);
      } catch (error) {
        if (pyodide && isFatal(error)) {
          post({ type: 'fatal', message: 'Pyodide suffered a fatal error: ' + String((error && error.message) || error) });
          return;
        }
        const described = worktime === 'pyodide' ? pythonError(error) : describeError(error);
        // KeyboardInterrupt is what the core's interrupt raises: the watchdog stopped this slice.
        const interrupted = worktime === 'pyodide' && Boolean(error && error.type === 'KeyboardInterrupt');
        answer({ type: 'error', id: message.id, message: described.message, stack: described.stack, heap: heapBytes(), interrupted }, message.more, started);
      } finally {
        currentRun = null;
      }
      return;
    default:
      post({ type: 'error', id: message.id, message: 'unknown message type ' + message.type });
  }
}
})();
