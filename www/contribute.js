// The contribute page: loads the wasm worker core and shows what it does.
// Query parameters (used by `tessera worker`): autostart=1, sandboxes=N, exitWhenIdle=1, idleMs=N,
// logSlices=1 (a line per slice start and end, watchdog interrupt and ended job), pyodideUrl=URL,
// workerKey=KEY (a private pool's key, `tessera serve --worker-key`).
// Lines starting with "[tessera]" are also written to the console, where `tessera worker` reads them.
import init, { TesseraWorker } from './pkg/tessera_worker.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const counts = { done: 0, errors: 0, running: 0 };
let worker = null;

function log(text) {
  console.log('[tessera] ' + text);
  const item = document.createElement('li');
  item.textContent = new Date().toLocaleTimeString() + '  ' + text;
  $('log').prepend(item);
  while ($('log').children.length > 200) $('log').lastChild.remove();
}

function show() {
  for (const key of Object.keys(counts)) $(key).textContent = counts[key];
}

const logSlices = params.get('logSlices') === '1';

function onEvent(event) {
  switch (event.type) {
    case 'registered': log(`registered as ${event.workerId} with ${event.sandboxes} sandbox(es)`); break;
    case 'leased': log(`leased ${event.count} slice(s)`); break;
    case 'sliceStarted':
      counts.running++;
      if (logSlices) log(`slice-start job=${event.job} slice=${event.slice} sandbox=${event.sandbox}`);
      break;
    case 'sliceFinished':
      counts.running = Math.max(0, counts.running - 1);
      if (event.outcome === 'ok') counts.done++; else counts.errors++;
      if (logSlices) log(`slice-end job=${event.job} slice=${event.slice} sandbox=${event.sandbox} outcome=${event.outcome} ms=${event.ms}`);
      break;
    case 'sliceInterrupted': log(`interrupted job=${event.job} slice=${event.slice} sandbox=${event.sandbox} (${event.reason})`); break;
    case 'jobEnded': log(`job-ended job=${event.job}`); break;
    case 'submitted': log(`submitted: ${event.accepted} accepted, ${event.duplicate} duplicate, ${event.stale} stale, ${event.requeued} requeued, ${event.released} released, ${event.refused} refused (${counts.done} done, ${counts.errors} errors)`); break;
    case 'sandboxCreated': log(`sandbox ${event.sandbox} created (${event.worktime})`); break;
    case 'sandboxRemoved': log(logSlices ? `sandbox-removed sandbox=${event.sandbox} reason=${event.reason}` : `sandbox ${event.sandbox} removed: ${event.reason}`); break;
    case 'schedulerUnreachable': log(`scheduler unreachable for ${event.request} (${event.message}); retrying in ${event.retryMs} ms`); break;
    case 'requestRefused': log(`the scheduler refused a ${event.request} request (not retried): ${event.message}`); break;
    case 'sandboxesFailing': log(`sandboxes keep failing here (${event.failures} in a row); pausing leasing for ${event.pauseMs} ms`); break;
    case 'runtimeSnapshot':
      log(event.outcome === 'rejected' || event.outcome === 'failed'
        ? `runtime snapshot ${event.outcome}: ${event.reason}`
        : `runtime snapshot ${event.outcome} in ${event.ms} ms`);
      break;
    case 'idle': log('no work; idle'); break;
    case 'stopped': log(`stopped (${event.reason})`); break;
  }
  show();
}

async function start() {
  const options = { onEvent };
  const sandboxes = parseInt($('sandboxes').value, 10);
  if (sandboxes > 0) options.sandboxes = sandboxes;
  if (params.get('exitWhenIdle') === '1') options.idleExitMs = parseInt(params.get('idleMs') || '3000', 10);
  if (params.get('pyodideUrl')) options.pyodideUrl = params.get('pyodideUrl');
  if (params.get('workerKey')) options.workerKey = params.get('workerKey');
  worker = new TesseraWorker(options);
  $('sandboxes').value = worker.sandboxes;
  $('start').disabled = true;
  $('stop').disabled = false;
  $('state').textContent = 'working';
  log(`started with ${worker.sandboxes} sandbox(es)`);
  const reason = await worker.run();
  $('state').textContent = 'stopped';
  $('start').disabled = false;
  $('stop').disabled = true;
  worker = null;
  if (params.get('exitWhenIdle') === '1') log(`exit: ${reason}; ${counts.done} done, ${counts.errors} errors`);
}

try {
  await init();
  if (params.get('sandboxes')) $('sandboxes').value = params.get('sandboxes');
  $('start').onclick = () => start().catch((error) => log('fatal: ' + error));
  $('stop').onclick = () => worker && worker.stop();
  if (params.get('autostart') === '1') start().catch((error) => log('fatal: ' + error));
} catch (error) {
  log('fatal: cannot load the worker core: ' + error);
}
