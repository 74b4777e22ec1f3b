// The contribute page: asks before anything runs, then shows what the worker does (www/tessera.js
// does the work; this file only draws it).
//
// Query parameters (used by `tessera worker` and the tests): autostart=1 (start without a click;
// the automatic pauses are then off: a server has no tab to hide and no battery), sandboxes=N,
// exitWhenIdle=1, idleMs=N, logSlices=1 (a line per slice start and end, watchdog interrupt and
// ended job), pyodideUrl=URL, workerKey=KEY (a private pool's key, `tessera serve --worker-key`).
// Lines starting with "[tessera]" are also written to the console, where `tessera worker` reads them.
//
// The page exposes the same `window.Tessera` API as embed.js, for scripting it.
import {
  Tessera, publicApi, CPU_SHARES, CONTRIBUTOR_KEY, MAX_SANDBOXES, clampCores, defaultCores, maxCores, loadSettings, saveSettings, validContributorId,
} from './tessera.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const logSlices = params.get('logSlices') === '1';
const autostart = params.get('autostart') === '1';
const exitWhenIdle = params.get('exitWhenIdle') === '1';
const SETTINGS = 'tessera.settings';

// ---- settings: remembered in localStorage; the query string wins ----
const saved = loadSettings(SETTINGS);
const settings = {
  cores: Number.isFinite(saved.cores) ? clampCores(saved.cores) : defaultCores(),
  cpuShare: CPU_SHARES.includes(saved.cpuShare) ? saved.cpuShare : 1,
  pauseWhenHidden: saved.pauseWhenHidden !== false,
  pauseOnBattery: saved.pauseOnBattery !== false,
};
const querySandboxes = parseInt(params.get('sandboxes') || '', 10);
const save = () => saveSettings(SETTINGS, settings);

// ---- the event log and the console lines `tessera worker` and the tests read ----
const MAX_LOG = 200;

function log(text, { quiet = false } = {}) {
  console.log('[tessera] ' + text);
  if (quiet) return;
  const item = document.createElement('li');
  const time = document.createElement('time');
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, ' ', text);
  $('log').prepend(item);
  while ($('log').children.length > MAX_LOG) $('log').lastChild.remove();
}

const controller = new Tessera({
  // `tessera worker --cores N` may ask for more sandboxes than this machine has cores.
  maxCores: querySandboxes > 0 ? MAX_SANDBOXES : maxCores(),
  pauseWhenHidden: !autostart && settings.pauseWhenHidden,
  pauseOnBattery: !autostart && settings.pauseOnBattery,
  onCoreEvent,
});
window.Tessera = publicApi(controller);

/** Writes the core's events as the same lines the page always wrote (texts are read by tools). */
function onCoreEvent(event) {
  const counts = controller.totals;
  switch (event.type) {
    case 'registered': log(`registered as ${event.workerId} with ${event.sandboxes} sandbox(es)`); clearProblem(); break;
    case 'leased': log(`leased ${event.count} slice(s)`, { quiet: true }); clearProblem(); break;
    case 'sliceStarted':
      if (logSlices) log(`slice-start job=${event.job} slice=${event.slice} sandbox=${event.sandbox}`, { quiet: true });
      break;
    case 'sliceFinished':
      if (logSlices) {
        // The controller counts this slice right after; the line is written as the old page did.
        log(`slice-end job=${event.job} slice=${event.slice} sandbox=${event.sandbox} outcome=${event.outcome} ms=${event.ms}`, { quiet: true });
      }
      break;
    case 'sliceInterrupted': log(`interrupted job=${event.job} slice=${event.slice} sandbox=${event.sandbox} (${event.reason})`); break;
    case 'jobEnded': log(`job-ended job=${event.job}`); break;
    case 'submitted': log(`submitted: ${event.accepted} accepted, ${event.duplicate} duplicate, ${event.stale} stale, ${event.requeued} requeued, ${event.released} released, ${event.refused} refused (${counts.slicesDone} done, ${counts.sliceErrors} errors)`, { quiet: true }); break;
    case 'sandboxCreated': log(`sandbox ${event.sandbox} created (${event.worktime})`); break;
    case 'sandboxRemoved': log(logSlices ? `sandbox-removed sandbox=${event.sandbox} reason=${event.reason}` : `sandbox ${event.sandbox} removed: ${event.reason}`); break;
    case 'schedulerUnreachable': log(`scheduler unreachable for ${event.request} (${event.message}); retrying in ${event.retryMs} ms`); break;
    case 'requestRefused': log(`the scheduler refused a ${event.request} request (not retried): ${event.message}`); break;
    case 'sandboxesFailing': log(`sandboxes keep failing here (${event.failures} in a row); pausing leasing for ${event.pauseMs} ms`); break;
    case 'runtimeSnapshot': {
      const which = !event.packages ? 'runtime snapshot'
        : event.packages.length ? `package snapshot (${event.packages.join(', ')})` : 'package snapshot';
      log(event.outcome === 'rejected' || event.outcome === 'failed'
        ? `${which} ${event.outcome}: ${event.reason}`
        : `${which} ${event.outcome} in ${event.ms} ms${event.interpreter === 'reused' ? ' (interpreter reused)' : ''}`);
      break;
    }
    case 'paused': log('paused'); break;
    case 'resumed': log('resumed'); break;
    case 'idle': log('no work; idle'); break;
    case 'stopped': log(`stopped (${event.reason})`); break;
  }
  schedule();
}

// ---- public events: totals, chart history, problems ----
const CHART_MS = 5 * 60 * 1000;
const BUCKET_MS = 10 * 1000;
// Finished slices counted per second of the last CHART_MS (a ring indexed by the second), so the
// chart and the last-minute rate cost the same at 1,000 slices/s as at one per minute.
const SECOND_MS = 1000;
const SECONDS = CHART_MS / SECOND_MS;
const perSecond = new Uint32Array(SECONDS);
let newestSecond = Math.floor(Date.now() / SECOND_MS);

/** Moves the ring to the current second, forgetting the seconds that left the chart. */
function advanceTo(second) {
  const forget = Math.min(second - newestSecond, SECONDS);
  for (let step = 1; step <= forget; step++) perSecond[(newestSecond + step) % SECONDS] = 0;
  newestSecond = Math.max(newestSecond, second);
}

/** Finished slices in the `count` seconds up to and including `second`. */
function finishedIn(second, count) {
  let sum = 0;
  for (let back = 0; back < count; back++) {
    const at = second - back;
    if (at > newestSecond - SECONDS && at <= newestSecond) sum += perSecond[at % SECONDS];
  }
  return sum;
}

/** Whether any slice finished within the chart's time. */
const anyFinished = () => perSecond.some((count) => count > 0);

controller.on('start', ({ cores }) => {
  log(`started with ${cores} sandbox(es)`);
  $('contributor').textContent = controller.contributor;
  clearProblem();
  scheduleSoon();
});
controller.on('stop', ({ reason }) => {
  if (exitWhenIdle) log(`exit: ${reason}; ${controller.totals.slicesDone} done, ${controller.totals.sliceErrors} errors`);
  scheduleSoon();
});
controller.on('state', scheduleSoon);
controller.on('sliceStart', schedule);
controller.on('sliceProgress', schedule);
controller.on('sliceEnd', () => {
  const second = Math.floor(Date.now() / SECOND_MS);
  advanceTo(second);
  perSecond[second % SECONDS]++;
  schedule();
});
controller.on('credit', schedule);
controller.on('error', ({ kind, message, detail }) => {
  if (kind === 'load') log('fatal: cannot load the worker core: ' + detail);
  showProblem(message);
});

function showProblem(message) {
  $('problem').textContent = message;
  $('problem').hidden = false;
}

function clearProblem() {
  $('problem').hidden = true;
}

// ---- drawing: from controller.stats(), in the next frame for what people do (start, pause…),
// at most RENDER_MS apart for the slices' own events ----
// A worker finishing a thousand slices a second asks for a render a thousand times a second;
// people read the page a few times a second, and the page's thread is the worker's thread.
const RENDER_MS = 250;
let frame = 0;
let renderTimer = 0;
let renderedAt = -Infinity;
function schedule(soon = false) {
  if (frame) return;
  const wait = soon ? 0 : renderedAt + RENDER_MS - performance.now();
  if (wait <= 0) {
    clearTimeout(renderTimer);
    renderTimer = 0;
    frame = requestAnimationFrame(render);
  } else if (!renderTimer) {
    renderTimer = setTimeout(() => {
      renderTimer = 0;
      if (!frame) frame = requestAnimationFrame(render);
    }, wait);
  }
}
function scheduleSoon() {
  schedule(true);
}

const STATE_TEXT = {
  stopped: 'Stopped',
  starting: 'Starting…',
  working: 'Working',
  idle: 'Waiting for work',
  paused: 'Paused',
};
const PAUSE_TEXT = { user: 'by you', hidden: 'tab hidden', battery: 'on battery' };
const SANDBOX_TEXT = {
  loadingRuntime: 'loading',
  loadingPackages: 'loading packages',
  startingProgram: 'starting program',
  running: 'running',
  resting: 'resting',
  idle: 'idle',
};

function formatDuration(ms) {
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.floor(seconds % 60)).padStart(2, '0')} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, '0')} min`;
}

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** Sets an element's text only when it changes: an idle page does no DOM work at all. */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** Sets an attribute only when it changes (`null` removes it). */
function setAttr(element, name, value) {
  if (value === null) {
    if (element.hasAttribute(name)) element.removeAttribute(name);
  } else if (element.getAttribute(name) !== value) {
    element.setAttribute(name, value);
  }
}

function render() {
  frame = 0;
  renderedAt = performance.now();
  const stats = controller.stats();
  const running = stats.state !== 'stopped';

  let stateText = STATE_TEXT[stats.state] || stats.state;
  if (stats.state === 'paused' && stats.pausedBy.length) stateText += ' (' + stats.pausedBy.map((r) => PAUSE_TEXT[r] || r).join(', ') + ')';
  setText($('state'), stateText);
  setAttr($('status'), 'data-state', stats.state);
  setAttr(document.body, 'data-state', stats.state);

  $('start').disabled = running;
  $('stop').disabled = !running;
  $('pause').disabled = !running || stats.state === 'starting';
  setText($('pause'), stats.state === 'paused' ? 'Resume' : 'Pause');

  if (running && document.activeElement !== coresInput) setText($('cores-value'), String(stats.cores));
  setText($('done'), number.format(stats.slicesDone));
  setText($('errors'), number.format(stats.sliceErrors));
  setText($('compute'), formatDuration(stats.computeMs));
  setAttr($('credits'), 'data-value', stats.credits === null ? '' : String(stats.credits));
  setText($('credits'), stats.credits === null ? '—' : number.format(stats.credits));
  setText($('running'), `${stats.running} running of ${stats.sandboxes.length} sandbox${stats.sandboxes.length === 1 ? '' : 'es'}`);

  renderCards(stats.sandboxes);
  drawChart();
}

const cards = new Map();

function renderCards(sandboxes) {
  const now = Date.now();
  const seen = new Set();
  for (const sandbox of sandboxes) {
    seen.add(sandbox.sandbox);
    let card = cards.get(sandbox.sandbox);
    if (!card) {
      card = $('card').content.firstElementChild.cloneNode(true);
      setText(card.querySelector('.id'), String(sandbox.sandbox));
      cards.set(sandbox.sandbox, card);
      $('sandboxes').append(card);
    }
    const state = sandbox.slice !== null ? 'running' : sandbox.state;
    setAttr(card, 'data-state', state);
    setText(card.querySelector('.state'), state === 'loadingRuntime' && sandbox.worktime === 'pyodide' ? 'loading Pyodide' : SANDBOX_TEXT[state] || state);
    setText(card.querySelector('.job-id'), sandbox.job ? 'job ' + sandbox.job : 'no job yet');
    setAttr(card.querySelector('.job-id'), 'title', sandbox.job || '');
    setText(card.querySelector('.slice'), sandbox.slice !== null
        ? `Slice ${sandbox.slice}` + (sandbox.queued ? ` (${sandbox.queued} more queued)` : '')
        : state === 'idle' || state === 'resting' ? 'Between slices' : 'Getting ready');
    const bar = card.querySelector('.bar');
    const percent = sandbox.progress === null || sandbox.progress === undefined ? null : Math.round(sandbox.progress * 100);
    bar.classList.toggle('indeterminate', sandbox.slice !== null && percent === null);
    const width = sandbox.slice === null ? '0%' : percent === null ? '' : `${percent}%`;
    if (bar.firstElementChild.style.width !== width) bar.firstElementChild.style.width = width;
    setAttr(bar, 'aria-valuenow', percent === null ? null : String(percent));
    setText(card.querySelector('.elapsed'), sandbox.sliceStartedMs ? formatDuration(now - sandbox.sliceStartedMs) : '');
    setText(card.querySelector('.worktime'), sandbox.worktime === 'pyodide' ? 'Python' : sandbox.worktime === 'map-basic' ? 'JavaScript' : '');
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
  if ($('no-sandboxes').hidden !== cards.size > 0) $('no-sandboxes').hidden = cards.size > 0;
}

let drawn = '';

function drawChart() {
  const canvas = $('chart');
  const second = Math.floor(Date.now() / SECOND_MS);
  advanceTo(second);
  const bucketCount = CHART_MS / BUCKET_MS;
  const perBucket = BUCKET_MS / SECOND_MS;
  const buckets = Array.from({ length: bucketCount }, (_, index) =>
    finishedIn(second - (bucketCount - 1 - index) * perBucket, perBucket));
  const lastMinute = finishedIn(second, 60);
  setText($('rate'), `${number.format(lastMinute)} slices in the last minute`);

  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const key = `${width}x${height}@${ratio}:${buckets.join()}`;
  if (key === drawn) return;
  drawn = key;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext('2d');
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  const style = getComputedStyle(canvas);
  const peak = Math.max(1, ...buckets);
  const gap = 2;
  const barWidth = (width - gap * (bucketCount - 1)) / bucketCount;
  context.fillStyle = style.getPropertyValue('--grid').trim() || '#ddd';
  context.fillRect(0, height - 1, width, 1);
  context.fillStyle = style.getPropertyValue('--bar').trim() || '#3b6';
  buckets.forEach((count, index) => {
    if (!count) return;
    const barHeight = Math.max(2, ((height - 16) * count) / peak);
    context.fillRect(index * (barWidth + gap), height - barHeight, barWidth, barHeight);
  });
  context.fillStyle = style.getPropertyValue('--muted').trim() || '#777';
  context.font = '11px system-ui, sans-serif';
  context.textBaseline = 'top';
  context.fillText(anyFinished() ? `${peak} per 10 s` : 'No slices finished yet', 0, 0);
}

// Cards' elapsed times and the chart move on their own while running and visible.
let ticks = 0;
setInterval(() => {
  ticks++;
  if (controller.state === 'stopped' || document.visibilityState !== 'visible') return;
  if (controller.runningSlices() > 0 || (ticks % 10 === 0 && anyFinished())) schedule();
}, 1000);
window.addEventListener('resize', scheduleSoon);

/** The contributor id this browser already has, if any (it is made on the first start). */
function keptContributor() {
  try {
    const id = localStorage.getItem(CONTRIBUTOR_KEY);
    return validContributorId(id) ? id : null;
  } catch {
    return null;
  }
}

// ---- controls ----
const coresInput = $('cores');
coresInput.max = String(maxCores());
coresInput.value = String(Number.isFinite(querySandboxes) && querySandboxes > 0 ? clampCores(querySandboxes) : settings.cores);
$('cores-hint').textContent = ` of ${maxCores()} · suggested ${defaultCores()}`;
const showCores = () => ($('cores-value').textContent = coresInput.value);
showCores();
coresInput.addEventListener('input', showCores);
coresInput.addEventListener('change', () => {
  settings.cores = clampCores(coresInput.value);
  save();
  controller.setCores(settings.cores);
  scheduleSoon();
});

for (const radio of document.querySelectorAll('input[name="cpu-share"]')) {
  radio.checked = Number(radio.value) === settings.cpuShare;
  radio.addEventListener('change', () => {
    settings.cpuShare = Number(radio.value);
    save();
    controller.setCpuShare(settings.cpuShare);
  });
}

$('pause-hidden').checked = settings.pauseWhenHidden;
$('pause-battery').checked = settings.pauseOnBattery;
$('pause-hidden').addEventListener('change', (event) => {
  settings.pauseWhenHidden = event.target.checked;
  save();
  controller.setAutoPause({ whenHidden: settings.pauseWhenHidden });
});
$('pause-battery').addEventListener('change', (event) => {
  settings.pauseOnBattery = event.target.checked;
  save();
  controller.setAutoPause({ onBattery: settings.pauseOnBattery });
});

function start() {
  // The query's sandboxes go straight to the core (the slider stops at this machine's cores).
  const cores = querySandboxes > 0 && !startedOnce ? querySandboxes : clampCores(coresInput.value);
  startedOnce = true;
  const options = { cores, cpuShare: settings.cpuShare };
  if (exitWhenIdle) options.idleExitMs = parseInt(params.get('idleMs') || '3000', 10);
  if (params.get('pyodideUrl')) options.pyodideUrl = params.get('pyodideUrl');
  if (params.get('workerKey')) options.workerKey = params.get('workerKey');
  if (params.get('packageSnapshots') === '0') options.packageSnapshots = false;
  controller.start(options).catch((error) => {
    // A core that did not load was logged by the error event already.
    if (!controller.lastError || controller.lastError.kind !== 'load') log('fatal: ' + error);
  });
}

let startedOnce = false;
$('start').addEventListener('click', start);
$('stop').addEventListener('click', () => controller.stop());
$('pause').addEventListener('click', () => (controller.state === 'paused' ? controller.resume() : controller.pause()));
$('start').disabled = false;
$('contributor').textContent = keptContributor() || '(made when you start)';
render();

if (autostart) start();
