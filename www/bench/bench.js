// `make bench`: measures, in one headless Chromium run,
//  (a) raw Pyodide calling a trivial handler N times inside one Web Worker;
//  (b) the same handler as N slices through the whole system (scheduler → worker core → sandbox →
//      result accepted) with 1 sandbox;
//  (c) cold start: page open → first accepted result of a numpy job, against raw loadPyodide +
//      loadPackage('numpy') in the same browser; and against the same raw load with Pyodide's wasm
//      handed over as bytes (a Blob-backed Response), which is what a sandbox with no network must
//      do: the browser keeps no compiled-code cache for such a module.
// It repeats in ROUNDS rounds (each a fresh page open) and reports medians with their ranges.
// Phase "warm" first fetches every file and loads Pyodide once, so both sides of (c) see the same
// warm HTTP cache and compiled-code cache; the raw side of (c) is the mean of one load just before
// the measured page opens and one after (b).
import init, { TesseraWorker } from '../pkg/tessera_worker.js';

const params = new URLSearchParams(location.search);
const N = parseInt(params.get('n') || '2000', 10);
const ROUNDS = parseInt(params.get('rounds') || '3', 10);
const ROUND = parseInt(params.get('round') || '1', 10);
// The scheduler's API key for deploying (scripts/bench passes it); carried from round to round.
const API_KEY = params.get('apiKey') || '';
const PYODIDE = location.origin + '/pyodide/';
const say = (text) => { console.log('[tessera] ' + text); document.getElementById('out').textContent += text + '\n'; };

const NUMPY_JOB = 'import dcp\nimport numpy as np\n\ndcp.set_slice_handler(lambda x: float(np.sum(np.arange(x))))\n';
const TRIVIAL_JOB = 'import dcp\n\ndcp.set_slice_handler(lambda x: x)\n';

const RAW_WORKER = `
self.onmessage = async (event) => {
  const { url, n, wasmAsBytes } = event.data;
  if (wasmAsBytes) {
    const network = self.fetch;
    self.fetch = async (input, init) => String(input).endsWith('.wasm')
      ? new Response(await (await network(input)).blob(), { headers: { 'Content-Type': 'application/wasm' } })
      : network(input, init);
  }
  const { loadPyodide } = await import(url + 'pyodide.mjs');
  const py = await loadPyodide({ indexURL: url });
  await py.loadPackage(['numpy'], { messageCallback: () => {} });
  py.runPython('import json\\nimport numpy as np\\nfirst = float(np.sum(np.arange(4)))\\ndef handler(x):\\n    return x\\ndef run(text):\\n    return json.dumps(handler(json.loads(text)))\\n');
  postMessage({ type: 'ready' });
  const handler = py.globals.get('handler');
  const run = py.globals.get('run');
  let start = performance.now();
  for (let i = 0; i < n; i++) handler(i);
  const direct = performance.now() - start;
  start = performance.now();
  for (let i = 0; i < n; i++) JSON.parse(run(JSON.stringify(i)));
  const json = performance.now() - start;
  postMessage({ type: 'done', direct, json });
};`;

/** Opens the measuring page for `round`: every round starts from a fresh page open. */
function next(round, rawBefore) {
  const key = encodeURIComponent(API_KEY);
  location.replace(`${location.pathname}?phase=measure&n=${N}&rounds=${ROUNDS}&round=${round}&rawBefore=${rawBefore.toFixed(1)}&apiKey=${key}`);
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

async function warm() {
  const lock = await (await fetch(PYODIDE + 'pyodide-lock.json')).json();
  const files = ['pyodide.mjs', 'pyodide.asm.js', 'pyodide.asm.wasm', 'python_stdlib.zip', lock.packages.numpy.file_name];
  await Promise.all(files.map((file) => fetch(PYODIDE + file).then((r) => r.arrayBuffer())));
  // One throwaway load, so both sides of (c) also find the browser's compiled-code cache warm.
  await rawPyodide();
  // The raw side of (c) is measured on both sides of ours (here, and after (b)), and averaged.
  const before = await rawPyodide();
  sessionStorage.removeItem('tessera-bench');
  next(1, before.ready);
}

/** Runs a worker until idle; returns the times of its first accepted result and of the N-th. */
async function runWorker(expected, options) {
  const times = { firstAccepted: null, firstFinished: null, allAccepted: null, sandboxCreated: null, firstStarted: null };
  let accepted = 0;
  const worker = new TesseraWorker({
    sandboxes: 1, idleExitMs: 1500, ...options,
    onEvent: (event) => {
      const now = performance.now();
      if (event.type === 'slice_finished' && times.firstFinished === null) times.firstFinished = now;
      if (event.type === 'sandbox_created' && times.sandboxCreated === null) times.sandboxCreated = now;
      if (event.type === 'slice_started' && times.firstStarted === null) times.firstStarted = now;
      if (event.type === 'submitted') {
        accepted += event.accepted;
        if (times.firstAccepted === null && event.accepted > 0) times.firstAccepted = now;
        if (accepted >= expected && times.allAccepted === null) times.allAccepted = now;
      }
    },
  });
  await worker.run();
  if (accepted < expected) throw new Error(`only ${accepted} of ${expected} results were accepted`);
  return times;
}

/** Raw Pyodide + numpy in a plain Web Worker; `wasmAsBytes`: its wasm from a Blob, as bytes-in does. */
function rawPyodide(wasmAsBytes = false) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(new Blob([RAW_WORKER], { type: 'text/javascript' }));
    const started = performance.now();
    const worker = new Worker(url);
    let ready = null;
    worker.onerror = (event) => reject(new Error(event.message));
    worker.onmessage = (event) => {
      if (event.data.type === 'ready') ready = performance.now() - started;
      if (event.data.type === 'done') { worker.terminate(); resolve({ ready, ...event.data }); }
    };
    worker.postMessage({ url: PYODIDE, n: N, wasmAsBytes });
  });
}

async function measure() {
  await init();
  // (c) our cold start, measured from navigation start (performance.now() is relative to it).
  await deploy({ worktime: 'pyodide', program: NUMPY_JOB, range: { start: 0, end: 4 }, name: 'bench-numpy' });
  const cold = await runWorker(4, {});
  // (b) N trivial slices through the whole system with one sandbox (and no spare loading beside it).
  await deploy({ worktime: 'pyodide', program: TRIVIAL_JOB, range: { start: 0, end: N }, name: 'bench-trivial' });
  const warm = await runWorker(N, { prewarmSpare: false });
  // (a) and the raw side of (c).
  const raw = await rawPyodide();
  const rawWasmAsBytes = await rawPyodide(true);
  const rawCold = (parseFloat(params.get('rawBefore')) + raw.ready) / 2;
  const systemPerSlice = (warm.allAccepted - warm.firstFinished) / (N - 1);
  const results = {
    n: N,
    raw_handler_call_ms: raw.direct / N,
    raw_handler_call_json_ms: raw.json / N,
    system_per_slice_ms: systemPerSlice,
    system_overhead_per_slice_ms: systemPerSlice - raw.direct / N,
    system_cold_first_result_ms: cold.firstAccepted,
    system_cold_sandbox_created_ms: cold.sandboxCreated,
    system_cold_first_slice_finished_ms: cold.firstFinished,
    raw_cold_pyodide_numpy_ms: rawCold,
    raw_cold_before_ms: parseFloat(params.get('rawBefore')),
    raw_cold_after_ms: raw.ready,
    raw_cold_wasm_as_bytes_ms: rawWasmAsBytes.ready,
    cold_ratio_wasm_as_bytes: cold.firstAccepted / rawWasmAsBytes.ready,
    cold_ratio: cold.firstAccepted / rawCold,
  };
  const rounds = JSON.parse(sessionStorage.getItem('tessera-bench') || '[]');
  rounds.push(results);
  sessionStorage.setItem('tessera-bench', JSON.stringify(rounds));
  say(`round ${ROUND}/${ROUNDS}: ${systemPerSlice.toFixed(3)} ms/slice, cold ratio ${results.cold_ratio.toFixed(2)}`);
  if (ROUND < ROUNDS) {
    // The raw load that closed this round opens the next one's comparison.
    next(ROUND + 1, raw.ready);
    return;
  }
  const summary = { rounds: rounds.length, user_agent: navigator.userAgent };
  for (const key of Object.keys(results)) {
    summary[key] = median(rounds.map((round) => round[key]));
    summary[key + '_range'] = [Math.min(...rounds.map((r) => r[key])), Math.max(...rounds.map((r) => r[key]))];
  }
  summary.each_round = rounds;
  say('bench ' + JSON.stringify(summary));
  say('exit: bench done');
}

say('started benchmark phase ' + (params.get('phase') || 'warm'));
(params.get('phase') === 'measure' ? measure() : warm()).catch((error) => say('fatal: ' + (error.stack || error)));
