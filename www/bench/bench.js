// `make bench` (scripts/bench opens this page with `tessera worker --page bench/`). Every number is
// taken in headless Chromium against a live `tessera serve`; scripts/bench takes the medians and
// ranges over the rounds and prints the table. One page load runs one phase; the phases:
//
// Main run (one `tessera worker`, one browser profile, so a warm HTTP cache):
//  warm       fetches every file once, loads raw Pyodide once (warm compiled-code cache) and runs
//             one numpy job through the worker core (so whatever the core keeps between visits —
//             the start-up snapshot in Cache Storage, if it makes one — is in place, as for a
//             returning volunteer). Then, ROUNDS times:
//  measure    (c) cold start: page open → first accepted result of a numpy job (`performance.now()`
//             counts from navigation start); (b) N trivial slices through the whole system with one
//             sandbox; (a) raw Pyodide calling the same trivial handler N times in one Web Worker;
//             the raw side of (c): `new Worker` → loadPyodide + loadPackage('numpy') done, the mean
//             of one load just before this page opened and one after (b); and the same raw load
//             with Pyodide's wasm handed over as bytes (a Blob-backed Response; the browser keeps no
//             compiled-code cache for such a module).
//  plain-snapshots  (only when the core has the `packageSnapshots` option) (c) again with
//             `packageSnapshots: false` (the plain runtime snapshot only), on its own fresh page.
//  no-snapshots  (only when the core has the `runtimeSnapshots` option) (c) again with
//             `runtimeSnapshots: false` (no snapshot at all), on its own fresh page.
//  memory     one idle Python sandbox with numpy loaded: Chromium's memory (PSS summed over every
//             process of this browser, read from /proc by bench/memory-probe.py) just before it
//             starts and 1.5 s after it is ready; ours (a TesseraWorker with 1 sandbox and no spare
//             that ran one numpy slice and sits idle, bound to a job kept running by a slice that
//             this page holds as a second worker) and raw (a plain Web Worker with Pyodide + numpy
//             and the same tiny program), one after the other with 2 s of settling before each,
//             the order alternating by round. Ours includes everything the sandbox costs: its
//             frame's renderer process, the page's side, and what the core keeps for it (Pyodide's
//             files and the runtime snapshot, as Blobs), in whichever process Chromium holds them.
//             Between the two, an empty sandbox frame (`memory_sandbox_frame_mb`): what the
//             isolation alone costs.
//  compute    respawn: a numpy job with `maxSlicesPerSandbox: 1` (every slice gets a new sandbox,
//             no spare): from one slice's end (its result reached the core) to the next slice's
//             start in its new sandbox (its end minus its own run time); the median of 3. Then
//             throughput on numpy slices calibrated to ≈ 100 ms in raw Pyodide, with 1 and 2
//             sandboxes (no spare), counted only while every sandbox is warm and busy, against
//             the same function called back to back in a raw Pyodide worker just before and just
//             after the 1-sandbox run. That raw worker's load is the "before" raw cold start of
//             the next round.
// Fresh-profile runs (each its own `tessera worker`, so an empty profile: nothing cached):
//  first-ours page open → first accepted numpy result, on a first visit.
//  first-raw  `new Worker` → loadPyodide + loadPackage('numpy'), on a first visit.
//  js-bytes   the bytes the contribute page fetches to run a JavaScript (map-basic) job on a first
//             visit (see jsJobBytes).
const params = new URLSearchParams(location.search);
const PHASE = params.get('phase') || 'warm';
const N = parseInt(params.get('n') || '2000', 10);
const ROUNDS = parseInt(params.get('rounds') || '3', 10);
const ROUND = parseInt(params.get('round') || '1', 10);
// The scheduler's API key for deploying (scripts/bench passes it); carried from page to page.
const API_KEY = params.get('apiKey') || '';
// bench/memory-probe.py's address (scripts/bench passes it); without it the memory phase is skipped.
const MEMORY_URL = params.get('memoryUrl') || '';
// Whether this core has the `runtimeSnapshots` option (scripts/bench looks for it in the wasm).
const SNAPSHOT_OPTION = params.get('snapshotOption') === '1';
// Whether this core has the `packageSnapshots` option (on by default): a round then also
// measures (c) with it off. BENCH_PACKAGE_SNAPSHOTS=0 turns it off for every worker of the bench.
const PACKAGE_OPTION = params.get('packageOption') === '1';
const PACKAGE_SNAPSHOTS_OFF = params.get('packageSnapshots') === '0';
// `runtimeSnapshots=0`: no snapshot at all for every worker of the bench (to see what snapshots
// change, e.g. in the memory phase).
const RUNTIME_SNAPSHOTS_OFF = params.get('runtimeSnapshots') === '0';
const PYODIDE = location.origin + '/pyodide/';
const STORE = 'tessera-bench';
const RESPAWN_SLICES = 4;
const COMPUTE_SLICES_PER_SANDBOX = 40;
const RAW_COMPUTE_CALLS = 20;
// Slices (and raw calls) left out at the start of a throughput measure, on both sides.
const WARMUP_SLICES = 5;
const say = (text) => { console.log('[tessera] ' + text); document.getElementById('out').textContent += text + '\n'; };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const NUMPY_JOB = 'import dcp\nimport numpy as np\n\ndcp.set_slice_handler(lambda x: float(np.sum(np.arange(x))))\n';
const TRIVIAL_JOB = 'import dcp\n\ndcp.set_slice_handler(lambda x: x)\n';
// The compute-bound slice: numpy on a small array (cache-resident, so memory bandwidth does not
// limit two sandboxes on two cores), REPS times; REPS is calibrated to ≈ 100 ms in raw Pyodide.
const COMPUTE_SOURCE = `
import numpy as np
_x = np.linspace(0.0, 1.0, 4096)
def work(seed):
    total = 0.0
    for i in range(REPS):
        total += float(np.sqrt(_x * (i + seed) + 1.0).sum())
    return total
`;
const COMPUTE_JOB = `import sys\nimport dcp\nREPS = int(sys.argv[1])\n${COMPUTE_SOURCE}\ndcp.set_slice_handler(work)\n`;
// What the raw worker runs once Pyodide and numpy are loaded: the trivial handler of (a), numpy
// imported and used once (as NUMPY_JOB does), and the compute function.
const RAW_SETUP = `import json
import numpy as np
first = float(np.sum(np.arange(4)))
def handler(x):
    return x
def run(text):
    return json.dumps(handler(json.loads(text)))
REPS = 1
${COMPUTE_SOURCE}`;

// Raw Pyodide in a plain Web Worker, driven by messages {id, cmd, ...} → {id, ok, value | error}.
const RAW_WORKER = `
let py = null;
const commands = {
  async load({ url, wasmAsBytes, setup }) {
    if (wasmAsBytes) {
      const network = self.fetch;
      self.fetch = async (input, init) => String(input).endsWith('.wasm')
        ? new Response(await (await network(input)).blob(), { headers: { 'Content-Type': 'application/wasm' } })
        : network(input, init);
    }
    const { loadPyodide } = await import(url + 'pyodide.mjs');
    py = await loadPyodide({ indexURL: url });
    await py.loadPackage(['numpy'], { messageCallback: () => {} });
    py.runPython(setup);
  },
  trivial({ n }) {
    const handler = py.globals.get('handler');
    const run = py.globals.get('run');
    let start = performance.now();
    for (let i = 0; i < n; i++) handler(i);
    const direct = performance.now() - start;
    start = performance.now();
    for (let i = 0; i < n; i++) JSON.parse(run(JSON.stringify(i)));
    return { direct, json: performance.now() - start };
  },
  calibrate({ targetMs }) {
    const work = py.globals.get('work');
    const time = (reps) => { py.globals.set('REPS', reps); const start = performance.now(); work(0); return performance.now() - start; };
    let reps = 10;
    time(reps);
    let ms = Math.min(time(reps), time(reps));
    while (ms < 20) { reps *= 4; ms = Math.min(time(reps), time(reps)); }
    // Scale to the target, then again from a measurement at that size (the fastest of three).
    for (let i = 0; i < 3 && Math.abs(ms - targetMs) > targetMs / 10; i++) {
      reps = Math.max(1, Math.round(reps * targetMs / ms));
      ms = Math.min(time(reps), time(reps), time(reps));
    }
    return { reps, ms };
  },
  compute({ reps, count }) {
    py.globals.set('REPS', reps);
    const work = py.globals.get('work');
    const times = [];
    for (let i = 0; i < count; i++) { const start = performance.now(); work(i); times.push(performance.now() - start); }
    return { times };
  },
};
self.onmessage = async ({ data }) => {
  try { postMessage({ id: data.id, ok: true, value: await commands[data.cmd](data) }); }
  catch (error) { postMessage({ id: data.id, ok: false, error: String((error && error.stack) || error) }); }
};`;

class RawPyodide {
  constructor() {
    this.pending = new Map();
    this.nextId = 0;
    this.started = performance.now();
    this.worker = new Worker(URL.createObjectURL(new Blob([RAW_WORKER], { type: 'text/javascript' })));
    this.worker.onmessage = ({ data }) => {
      const pending = this.pending.get(data.id);
      this.pending.delete(data.id);
      if (data.ok) pending.resolve(data.value); else pending.reject(new Error('raw Pyodide: ' + data.error));
    };
    this.worker.onerror = (event) => {
      for (const pending of this.pending.values()) pending.reject(new Error('raw Pyodide: ' + event.message));
      this.pending.clear();
    };
  }

  call(cmd, args = {}) {
    return new Promise((resolve, reject) => {
      const id = ++this.nextId;
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, cmd, ...args });
    });
  }

  /** Loads Pyodide + numpy + RAW_SETUP; resolves with ms since `new Worker`. */
  async load(wasmAsBytes = false) {
    await this.call('load', { url: PYODIDE, wasmAsBytes, setup: RAW_SETUP });
    return performance.now() - this.started;
  }

  terminate() { this.worker.terminate(); }
}

/** A cold raw load in a fresh worker: ms from `new Worker` to numpy ready. */
async function rawCold(wasmAsBytes = false) {
  const raw = new RawPyodide();
  try { return await raw.load(wasmAsBytes); } finally { raw.terminate(); }
}

let corePromise = null;
/** The worker core (wasm), loaded once per page. */
function core() {
  corePromise ??= import('../pkg/tessera_worker.js').then(async (module) => { await module.default(); return module; });
  return corePromise;
}

/** Opens `phase` of `round` on a fresh page, keeping every other parameter. */
function go(phase, round, extra = {}) {
  const next = new URLSearchParams(params);
  next.set('phase', phase);
  next.set('round', String(round));
  for (const [key, value] of Object.entries(extra)) next.set(key, String(value));
  location.replace(`${location.pathname}?${next}`);
}

/** Adds `values` to this round's record (kept in sessionStorage across page loads). */
function record(values) {
  const rounds = JSON.parse(sessionStorage.getItem(STORE) || '[]');
  rounds[ROUND - 1] = { ...(rounds[ROUND - 1] || {}), ...values };
  sessionStorage.setItem(STORE, JSON.stringify(rounds));
  return rounds;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

async function deploy(body) {
  const headers = { 'content-type': 'application/json', authorization: 'Bearer ' + API_KEY };
  const response = await fetch('/v1/jobs', { method: 'POST', headers, body: JSON.stringify(body) });
  if (!response.ok) throw new Error('deploy: ' + await response.text());
  return response.json();
}

/**
 * Starts a TesseraWorker and follows its events. `run.done` resolves when it stops; `run.until(p)`
 * resolves at the first event for which `p(run)` holds.
 */
async function startWorker(options) {
  const { TesseraWorker } = await core();
  const run = {
    accepted: 0, firstAccepted: null, firstFinished: null, sandboxCreated: null, allAccepted: null,
    finishes: [], snapshots: [], waiters: [], expected: Infinity,
  };
  run.until = (predicate) => new Promise((resolve) => {
    if (predicate(run)) resolve(); else run.waiters.push({ predicate, resolve });
  });
  const worker = new TesseraWorker({
    sandboxes: 1, ...(PACKAGE_SNAPSHOTS_OFF ? { packageSnapshots: false } : {}),
    ...(RUNTIME_SNAPSHOTS_OFF ? { runtimeSnapshots: false } : {}), ...options,
    onEvent: (event) => {
      const now = performance.now();
      if (event.type === 'sandboxCreated' && run.sandboxCreated === null) run.sandboxCreated = now;
      if (event.type === 'sliceFinished') {
        if (run.firstFinished === null) run.firstFinished = now;
        run.finishes.push({ t: now, ms: event.ms, sandbox: event.sandbox, outcome: event.outcome });
      }
      if (event.type === 'runtimeSnapshot') {
        const which = event.packages && event.packages.length ? `packages ${event.packages.join(',')} ` : '';
        run.snapshots.push(which + event.outcome + (event.ms !== null && event.ms !== undefined ? ` ${event.ms} ms` : '') + (event.interpreter === 'reused' ? ' (interpreter reused)' : '') + (event.reason ? ` (${event.reason})` : ''));
      }
      if (event.type === 'submitted') {
        run.accepted += event.accepted;
        if (run.firstAccepted === null && event.accepted > 0) run.firstAccepted = now;
        if (run.accepted >= run.expected && run.allAccepted === null) run.allAccepted = now;
      }
      run.waiters = run.waiters.filter(({ predicate, resolve }) => (predicate(run) ? (resolve(), false) : true));
    },
  });
  run.worker = worker;
  run.done = worker.run();
  return run;
}

/** Runs a worker until idle and checks that all `expected` results were accepted. */
async function runWorker(expected, options) {
  const run = await startWorker({ idleExitMs: 1500, ...options });
  run.expected = expected;
  await run.done;
  if (run.accepted < expected) throw new Error(`only ${run.accepted} of ${expected} results were accepted`);
  const failed = run.finishes.filter((finish) => finish.outcome !== 'ok');
  if (failed.length) throw new Error(`${failed.length} slices did not finish ok (${failed[0].outcome})`);
  if (run.snapshots.length) say(`  runtime snapshot: ${run.snapshots.join(', ')}`);
  return run;
}

async function coldNumpyRun(options = {}) {
  await core();
  await deploy({ worktime: 'pyodide', program: NUMPY_JOB, range: { start: 0, end: 4 }, name: 'bench-numpy' });
  return runWorker(4, options);
}

async function warm() {
  const lock = await (await fetch(PYODIDE + 'pyodide-lock.json')).json();
  const files = ['pyodide.mjs', 'pyodide.asm.js', 'pyodide.asm.wasm', 'python_stdlib.zip', lock.packages.numpy.file_name];
  await Promise.all(files.map((file) => fetch(PYODIDE + file).then((r) => r.arrayBuffer())));
  // One throwaway raw load, so both sides find the browser's compiled-code cache warm.
  await rawCold();
  // Ours once, so the measured cold starts find what a returning volunteer's browser has.
  await coldNumpyRun();
  sessionStorage.removeItem(STORE);
  const before = await rawCold();
  go(ROUND_PHASES[0], 1, { rawBefore: before.toFixed(1) });
}

async function measure() {
  // (c) our cold start, measured from navigation start.
  const cold = await coldNumpyRun();
  // (b) N trivial slices through the whole system with one sandbox (and no spare loading beside it).
  await deploy({ worktime: 'pyodide', program: TRIVIAL_JOB, range: { start: 0, end: N }, name: 'bench-trivial' });
  const warmRun = await runWorker(N, { prewarmSpare: false });
  // (a) and the raw side of (c).
  const raw = new RawPyodide();
  const rawAfter = await raw.load();
  const trivial = await raw.call('trivial', { n: N });
  raw.terminate();
  const rawWasmAsBytes = await rawCold(true);
  const rawBefore = parseFloat(params.get('rawBefore'));
  const rawColdMs = (rawBefore + rawAfter) / 2;
  const systemPerSlice = (warmRun.allAccepted - warmRun.firstFinished) / (N - 1);
  record({
    n: N,
    raw_handler_call_ms: trivial.direct / N,
    raw_handler_call_json_ms: trivial.json / N,
    system_per_slice_ms: systemPerSlice,
    system_overhead_per_slice_ms: systemPerSlice - trivial.direct / N,
    system_cold_first_result_ms: cold.firstAccepted,
    system_cold_sandbox_created_ms: cold.sandboxCreated,
    system_cold_first_slice_finished_ms: cold.firstFinished,
    raw_cold_pyodide_numpy_ms: rawColdMs,
    raw_cold_before_ms: rawBefore,
    raw_cold_after_ms: rawAfter,
    raw_cold_wasm_as_bytes_ms: rawWasmAsBytes,
    cold_ratio_wasm_as_bytes: cold.firstAccepted / rawWasmAsBytes,
    cold_ratio: cold.firstAccepted / rawColdMs,
  });
  say(`round ${ROUND}/${ROUNDS}: ${systemPerSlice.toFixed(3)} ms/slice, cold ${cold.firstAccepted.toFixed(0)} ms, ratio ${(cold.firstAccepted / rawColdMs).toFixed(2)}`);
  nextPhase('measure');
}

/**
 * (c) again with the worker `options` of a variant (`suffix` names its keys, `label` its line),
 * against the raw cold start of this round's measure page.
 */
async function coldVariant(phase, options, suffix, label) {
  const cold = await coldNumpyRun(options);
  const rounds = JSON.parse(sessionStorage.getItem(STORE) || '[]');
  const rawColdMs = rounds[ROUND - 1].raw_cold_pyodide_numpy_ms;
  record({
    [`system_cold_${suffix}_ms`]: cold.firstAccepted,
    [`cold_ratio_${suffix}`]: cold.firstAccepted / rawColdMs,
  });
  say(`  ${label}: cold ${cold.firstAccepted.toFixed(0)} ms, ratio ${(cold.firstAccepted / rawColdMs).toFixed(2)}`);
  nextPhase(phase);
}

const plainSnapshots = () => coldVariant('plain-snapshots', { packageSnapshots: false }, 'plain_snapshots', 'plain snapshots only');
const noSnapshots = () => coldVariant('no-snapshots', { runtimeSnapshots: false }, 'no_snapshots', 'without snapshots');

/**
 * Registers as a second worker and leases one slice of the job just deployed, heartbeating it;
 * returns a function that stops the heartbeats (cancelling the job then ends the lease).
 */
async function holdOneSlice() {
  const post = async (path, body, token) => {
    const headers = { 'content-type': 'application/json', ...(token ? { authorization: 'Bearer ' + token } : {}) };
    const response = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) });
    if (!response.ok) throw new Error(`${path}: ${await response.text()}`);
    return response.json();
  };
  const { token } = await post('/v1/workers', { sandboxes: 1 });
  const { leases } = await post('/v1/leases', { max_slices: 1, wait_ms: 0 }, token);
  if (leases.length !== 1) throw new Error(`holding a slice: leased ${leases.length}`);
  const held = { leases: [{ lease_id: leases[0].lease_id, token: leases[0].token }] };
  const timer = setInterval(() => post('/v1/leases/heartbeat', held, token).catch(() => {}), 5000);
  return () => clearInterval(timer);
}

async function cancel(job) {
  const headers = { 'content-type': 'application/json', authorization: 'Bearer ' + API_KEY };
  const response = await fetch(`/v1/jobs/${job}/cancel`, { method: 'POST', headers, body: '{}' });
  if (!response.ok) throw new Error('cancel: ' + await response.text());
}

async function probe() {
  const response = await fetch(MEMORY_URL + '/sample', { cache: 'no-store' });
  if (!response.ok) throw new Error('memory probe: ' + response.status);
  return response.json();
}

async function memory() {
  if (!MEMORY_URL) { say('  memory: skipped (no memoryUrl)'); nextPhase('memory'); return; }
  await core(); // loaded before either side, so neither counts it
  // Chromium's sandboxed processes are not dumpable: only root reads their memory. Not measured
  // rather than counted too low.
  const unreadable = (await probe()).unreadable;
  if (unreadable.length) {
    say(`  memory: not measured (cannot read Chromium processes ${unreadable.join(', ')}; run as root)`);
    nextPhase('memory');
    return;
  }
  const growth = {};
  // `frame`: an empty sandbox frame, as the core opens one (`sandbox="allow-scripts"`, an opaque
  // origin, so Chromium gives it its own renderer process) with nothing in it: what isolation
  // alone costs, the part of ours that a raw worker in the page does not pay.
  // The frame goes first: measured after a side, it would count that side's processes exiting.
  const sides = ['frame', ...(ROUND % 2 ? ['raw', 'ours'] : ['ours', 'raw'])];
  for (const side of sides) {
    await sleep(2000); // what the previous page or side left behind settles (exiting processes)
    const before = await probe();
    let after;
    if (side === 'frame') {
      const frame = document.createElement('iframe');
      frame.setAttribute('sandbox', 'allow-scripts');
      frame.setAttribute('allow', 'cross-origin-isolated');
      frame.style.setProperty('display', 'none', 'important');
      const ready = new Promise((resolve) => {
        const listener = (event) => {
          if (event.source === frame.contentWindow && event.data && event.data.type === 'tessera-sandbox-ready') {
            removeEventListener('message', listener);
            resolve();
          }
        };
        addEventListener('message', listener);
      });
      frame.src = `/sandbox.html#host=${encodeURIComponent(location.origin)}`;
      document.body.append(frame);
      await ready;
      await sleep(1500);
      after = await probe();
      frame.remove();
    } else if (side === 'raw') {
      const raw = new RawPyodide();
      await raw.load();
      await sleep(1500);
      after = await probe();
      raw.terminate();
    } else {
      // A job of two slices, one of which another (fake) worker holds: the job stays running, so
      // our sandbox stays set up and idle after its one slice (a finished job's sandboxes go).
      const job = await deploy({ worktime: 'pyodide', program: NUMPY_JOB, range: { start: 0, end: 2 }, name: 'bench-memory' });
      const release = await holdOneSlice();
      const run = await startWorker({ sandboxes: 1, prewarmSpare: false });
      run.expected = 1;
      await run.until((r) => r.allAccepted !== null);
      await sleep(1500);
      after = await probe();
      release();
      await cancel(job.job_id);
      run.worker.stop();
      await run.done;
    }
    const pss = (sample, type) => sample.processes.filter((p) => p.type === type).reduce((sum, p) => sum + p.pss_kb, 0);
    growth[side] = {
      pss: (after.pss_kb - before.pss_kb) / 1024,
      rss: (after.rss_kb - before.rss_kb) / 1024,
      browser: (pss(after, 'browser') - pss(before, 'browser')) / 1024,
      renderers: (pss(after, 'renderer') - pss(before, 'renderer')) / 1024,
    };
  }
  record({
    memory_per_python_sandbox_mb: growth.ours.pss,
    raw_pyodide_memory_mb: growth.raw.pss,
    memory_per_python_sandbox_rss_mb: growth.ours.rss,
    raw_pyodide_memory_rss_mb: growth.raw.rss,
    memory_per_python_sandbox_browser_process_mb: growth.ours.browser,
    memory_per_python_sandbox_renderers_mb: growth.ours.renderers,
    memory_sandbox_frame_mb: growth.frame.pss,
  });
  const parts = (g) => `${g.pss.toFixed(1)} MB PSS (renderers ${g.renderers.toFixed(1)}, browser process ${g.browser.toFixed(1)})`;
  say(`  memory: ours +${parts(growth.ours)}, raw +${parts(growth.raw)}, an empty sandbox frame +${parts(growth.frame)}`);
  nextPhase('memory');
}

/**
 * Slices per second while every sandbox is warm and busy: from the moment the last sandbox to
 * warm up finished its first WARMUP_SLICES + 1 slices (its first also paid for set-up; the next
 * few run while the engine still optimises Pyodide's hot code) to the moment the first to run
 * out of work finished its last; each sandbox's rate is (its finishes in that window − 1) ÷ (its
 * last − its first finish in it), and the rates add up.
 */
function steadyThroughput(finishes, sandboxes) {
  const bySandbox = new Map();
  for (const finish of finishes) {
    if (!bySandbox.has(finish.sandbox)) bySandbox.set(finish.sandbox, []);
    bySandbox.get(finish.sandbox).push(finish.t);
  }
  if (bySandbox.size !== sandboxes) throw new Error(`${bySandbox.size} sandboxes ran slices, not ${sandboxes}`);
  const start = Math.max(...[...bySandbox.values()].map((times) => times[Math.min(WARMUP_SLICES, times.length - 1)]));
  const end = Math.min(...[...bySandbox.values()].map((times) => times[times.length - 1]));
  let rate = 0;
  for (const times of bySandbox.values()) {
    const inside = times.filter((t) => t >= start && t <= end);
    if (inside.length < 5) {
      // One sandbox warmed up so late that the others had done nearly all the work: no
      // measurement this round (reported as missing, not as a number).
      say(`  throughput with ${sandboxes} sandboxes: only ${inside.length} slices of one sandbox ran while all were busy; not measured this round`);
      return null;
    }
    rate += (inside.length - 1) / (inside[inside.length - 1] - inside[0]) * 1000;
  }
  return rate;
}

async function computeThroughput(sandboxes, reps) {
  const slices = COMPUTE_SLICES_PER_SANDBOX * sandboxes;
  await deploy({ worktime: 'pyodide', program: COMPUTE_JOB, arguments: [reps], range: { start: 0, end: slices }, name: `bench-compute-${sandboxes}` });
  const run = await runWorker(slices, { sandboxes, prewarmSpare: false });
  return { rate: steadyThroughput(run.finishes, sandboxes) };
}

async function compute() {
  await core();
  // Respawn: every slice in a new sandbox; from one result reaching the core to the next slice
  // starting to run (its result's arrival minus its own run time) in the replacement sandbox.
  await deploy({ worktime: 'pyodide', program: NUMPY_JOB, range: { start: 0, end: RESPAWN_SLICES }, name: 'bench-respawn' });
  const respawnRun = await runWorker(RESPAWN_SLICES, { sandboxes: 1, prewarmSpare: false, maxSlicesPerSandbox: 1 });
  const respawns = [];
  for (let k = 1; k < respawnRun.finishes.length; k++) {
    const { t, ms } = respawnRun.finishes[k];
    respawns.push(t - ms - respawnRun.finishes[k - 1].t);
  }
  // Raw Pyodide: loaded (the next round's "before" raw cold start), the slice calibrated to
  // ≈ 100 ms, then the function called back to back just before and just after our 1-sandbox
  // run (the worker idles in between), so a change in the machine's load hits both sides.
  const raw = new RawPyodide();
  const rawReady = await raw.load();
  await raw.call('compute', { reps: 100, count: 2 * WARMUP_SLICES }); // as ours, past the warm-up
  const { reps } = await raw.call('calibrate', { targetMs: 100 });
  const rawRate = async () => {
    const { times } = await raw.call('compute', { reps, count: RAW_COMPUTE_CALLS });
    return { rate: (times.length - 1) / times.slice(1).reduce((a, b) => a + b, 0) * 1000, times: times.slice(1) };
  };
  const rawBefore = await rawRate();
  const one = await computeThroughput(1, reps);
  const rawAfter = await rawRate();
  raw.terminate();
  const two = await computeThroughput(2, reps);
  const rawMean = (rawBefore.rate + rawAfter.rate) / 2;
  record({
    respawn_ms: median(respawns),
    respawn_max_ms: Math.max(...respawns),
    compute_reps: reps,
    raw_compute_call_ms: median([...rawBefore.times, ...rawAfter.times]),
    throughput_1_sandbox_per_s: one.rate,
    throughput_2_sandboxes_per_s: two.rate,
    raw_throughput_per_s: rawMean,
    scaling_2_sandboxes: one.rate && two.rate ? two.rate / one.rate : null,
    compute_efficiency: one.rate ? one.rate / rawMean : null,
  });
  const rate = (value) => (value ? value.toFixed(2) : '—');
  say(`  respawn ${median(respawns).toFixed(0)} ms (${respawns.map((ms) => ms.toFixed(0)).join(', ')}); ` +
    `slice ${reps} repetitions; throughput ${rate(one.rate)}/s with 1 sandbox, ${rate(two.rate)}/s with 2, ` +
    `raw ${rate(rawBefore.rate)}/s before and ${rate(rawAfter.rate)}/s after the 1-sandbox run`);
  nextPhase('compute', { rawBefore: rawReady.toFixed(1) });
}

// Every phase a round can run, in order; a round runs those this core has options for.
const ROUND_PHASE_NAMES = ['measure', 'plain-snapshots', 'no-snapshots', 'memory', 'compute'];
const ALL_ROUND_PHASES = ROUND_PHASE_NAMES.filter((name) =>
  (name !== 'plain-snapshots' || (PACKAGE_OPTION && !PACKAGE_SNAPSHOTS_OFF)) && (name !== 'no-snapshots' || SNAPSHOT_OPTION));
// `phases=memory,compute` (scripts/bench's BENCH_PHASES): a round runs only those, in that order.
const ROUND_PHASES = params.get('phases') ? params.get('phases').split(',') : ALL_ROUND_PHASES;
const NOT_A_ROUND_PHASE = ROUND_PHASES.find((name) => !ROUND_PHASE_NAMES.includes(name));

/** Goes on to the phase after `current`, the next round, or reports everything. */
function nextPhase(current, extra = {}) {
  const index = ROUND_PHASES.indexOf(current);
  if (index + 1 < ROUND_PHASES.length) { go(ROUND_PHASES[index + 1], ROUND, extra); return; }
  if (ROUND < ROUNDS) { go(ROUND_PHASES[0], ROUND + 1, extra); return; }
  const rounds = JSON.parse(sessionStorage.getItem(STORE) || '[]');
  say('bench ' + JSON.stringify({ user_agent: navigator.userAgent, rounds }));
  say('exit: bench done');
}

async function firstOurs() {
  const cold = await coldNumpyRun();
  say('bench-part ' + JSON.stringify({
    kind: 'first_visit_ours',
    first_visit_ms: cold.firstAccepted,
    first_visit_sandbox_created_ms: cold.sandboxCreated,
  }));
  say('exit: first visit measured');
}

/**
 * Bytes the contribute page fetches to run a JavaScript (map-basic) job on a first visit: the
 * real contribute page (/, autostarted, 1 sandbox) in a same-origin frame of this page, which so
 * far fetched only its own HTML and script (this phase never loads the core or Pyodide). Resource
 * Timing of that frame: its document, scripts, style sheet, the core's wasm, each sandbox frame's
 * /sandbox.html (an iframe navigation, reported to its parent), anything else the core fetches
 * (Pyodide files, if it fetched any for the sandbox it starts ahead) and the API calls
 * (registration, leases, results); `transferSize` is what came over the wire (the body as sent,
 * compressed if the server compressed it, plus the headers, which Chromium counts as 300 bytes
 * each); each file's `decodedBodySize` shows what compression saved (`js_job_uncompressed_bytes`).
 * A request aborted before it completed has no entry, so scripts/bench also counts /pyodide/
 * requests in the scheduler's log during this run.
 */
async function jsJobBytes() {
  await deploy({ worktime: 'map-basic', program: '(x) => x * 2', range: { start: 0, end: 4 }, name: 'bench-js-bytes' });
  const frame = document.createElement('iframe');
  frame.src = '/?autostart=1&sandboxes=1';
  document.body.append(frame);
  const deadline = performance.now() + 120_000;
  for (;;) {
    // All four accepted: the contribute page's credits (fetched after an accepted submission)
    // count them.
    const api = frame.contentWindow && frame.contentWindow.Tessera;
    const stats = api && api.stats();
    if (stats && stats.slicesDone === 4 && stats.creditedSlices >= 4) break;
    if (performance.now() > deadline) throw new Error('the contribute page did not finish the JavaScript job');
    await sleep(100);
  }
  await sleep(500);
  const timing = frame.contentWindow.performance;
  const entries = [...timing.getEntriesByType('navigation'), ...timing.getEntriesByType('resource')];
  frame.remove();
  const list = entries.map((entry) => ({
    url: new URL(entry.name).pathname,
    type: entry.initiatorType || 'navigation',
    transfer: entry.transferSize,
    body: entry.encodedBodySize,
    decoded: entry.decodedBodySize,
  }));
  const api = (item) => item.url.startsWith('/v1/');
  const sum = (items, key) => items.reduce((total, item) => total + item[key], 0);
  return {
    js_job_bytes: sum(list, 'transfer'),
    js_job_static_bytes: sum(list.filter((item) => !api(item)), 'transfer'),
    js_job_api_bytes: sum(list.filter(api), 'transfer'),
    js_job_uncompressed_bytes: sum(list, 'decoded'),
    js_job_files: list,
  };
}

async function firstRaw() {
  const ready = await rawCold();
  say('bench-part ' + JSON.stringify({ kind: 'first_visit_raw', raw_first_visit_ms: ready }));
  say('exit: first visit measured');
}

async function jsBytes() {
  say('bench-part ' + JSON.stringify({ kind: 'js_job_bytes', ...await jsJobBytes() }));
  say('exit: bytes measured');
}

const PHASES = {
  warm, measure, 'plain-snapshots': plainSnapshots, 'no-snapshots': noSnapshots, memory, compute, 'first-ours': firstOurs, 'first-raw': firstRaw,
  'js-bytes': jsBytes,
};
say(`started benchmark phase ${PHASE}` + (['warm', 'first-ours', 'first-raw', 'js-bytes'].includes(PHASE) ? '' : ` (round ${ROUND}/${ROUNDS})`));
(NOT_A_ROUND_PHASE !== undefined ? () => Promise.reject(new Error(`phases: ${NOT_A_ROUND_PHASE} is not a round phase (${ROUND_PHASE_NAMES.join(', ')})`))
  : PHASES[PHASE] || (() => Promise.reject(new Error('unknown phase ' + PHASE))))()
  .catch((error) => say('fatal: ' + (error.stack || error)));
