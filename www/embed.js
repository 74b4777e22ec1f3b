/**
 * Tessera embed: lets the visitors of any site contribute compute, with one script tag.
 *
 *   <script src="https://SCHEDULER/embed.js" data-cores="2" data-autostart="false"></script>
 *
 * Nothing runs and nothing is downloaded beyond this file until `Tessera.start()` is called (or
 * `data-autostart="true"`). The worker core is loaded from the scheduler's origin, whatever the
 * page's origin. This script defines one global, `window.Tessera`, and adds no element, style or
 * listener to the page unless `data-ui="badge"` asks for a small status badge (inside a Shadow
 * DOM, so no CSS crosses either way). The sandboxes the worker runs are hidden `<iframe>`s on the
 * scheduler's origin: job code never runs in the page's origin.
 *
 * Attributes of the script tag (all optional):
 *   data-scheduler   scheduler URL; default: where this script was loaded from
 *   data-cores       sandboxes to run, 1 … navigator.hardwareConcurrency; default cores − 1,
 *                    fewer on a device with little memory (≈ 250 MB per Python sandbox)
 *   data-cpu-share   share of each core's time, 0.05 … 1; default 1
 *   data-autostart   "true": start at once (default "false": wait for Tessera.start())
 *   data-ui          "badge": show a status badge with start/stop; default: no UI
 *   data-pause-when-hidden, data-pause-on-battery
 *                    "false" turns that automatic pause off (both on by default)
 *
 * API (`window.Tessera`; every name camelCase):
 *   Tessera.start(options?) → Promise<void>
 *       Starts contributing; resolves once the worker runs, rejects when it cannot (an `error`
 *       event says why in plain words). options: { cores, cpuShare, contributor,
 *       pauseWhenHidden, pauseOnBattery, workerKey } — each overrides its attribute.
 *       `contributor` is the id credits go to (16–64 of A-Z a-z 0-9 _ -); by default a random
 *       id kept in this site's localStorage (`tessera.contributor`).
 *   Tessera.pause()          no new slices start; running ones finish
 *   Tessera.resume()         resumes after any pause (automatic ones included)
 *   Tessera.stop()           stops: running slices go back to the scheduler, sandboxes end
 *   Tessera.setCores(n)      sandboxes, now or for the next start; returns the value used
 *   Tessera.setCpuShare(p)   0.05 … 1; the worker rests between slices to keep to it
 *   Tessera.stats()          { state, pausedBy, cores, cpuShare, contributor, workerId, scheduler,
 *                              slicesDone, sliceErrors, computeMs, running, credits,
 *                              creditedSlices, creditedComputeMs, lastError, sandboxes: [{ sandbox,
 *                              state, worktime, job, slice, progress, sliceStartedMs, queued }] }
 *   Tessera.on(name, fn) / Tessera.off(name, fn)   listen to an event (an unknown name throws)
 *
 * Events and their payloads (one object argument):
 *   start          { cores, cpuShare, contributor, scheduler }   the worker core is running
 *   state          { state, previous, pausedBy }   state: 'stopped' | 'starting' | 'working' |
 *                  'idle' (no work to do) | 'paused'; pausedBy: ['user' | 'hidden' | 'battery']
 *   sliceStart     { job, slice, sandbox }
 *   sliceProgress  { job, slice, sandbox, progress }   progress: 0 … 1, or null (a heartbeat)
 *   sliceEnd       { job, slice, sandbox, outcome, ms }   outcome: 'ok', 'error' (the program
 *                  threw), 'jobError', 'workerFault', 'timedOut', 'released' (given back, e.g. on
 *                  stop: not an error); ms: time in the sandbox as the worker measured it
 *   credit         { contributor, slices, computeMs, credits, sinceMs }   the contributor's
 *                  totals on the scheduler after results were accepted (credits = compute seconds)
 *   error          { kind, message, detail }   message in plain words; kind: 'load' | 'options' |
 *                  'schedulerUnreachable' | 'requestRefused' | 'sandboxesFailing' | 'fatal'
 *   stop           { reason }   'stopped' (asked to), 'idle', or 'error'
 *
 * A strict Content-Security-Policy on the page must allow the scheduler (README, "Embed on your
 * site"): script-src SCHEDULER 'wasm-unsafe-eval'; connect-src SCHEDULER; frame-src SCHEDULER.
 */
(() => {
  'use strict';
  if (window.Tessera) return;

  const EVENTS = ['start', 'state', 'sliceStart', 'sliceProgress', 'sliceEnd', 'credit', 'error', 'stop'];
  const script = document.currentScript;
  const data = (script && script.dataset) || {};
  const flag = (value, otherwise) => (value === undefined ? otherwise : value !== 'false' && value !== '0');
  const scheduler = new URL(data.scheduler || './', (script && script.src) || location.href).href.replace(/\/?$/, '/');
  const defaults = {};
  const numeric = (value) => (value !== undefined && value !== '' && Number.isFinite(Number(value)) ? Number(value) : undefined);
  if (numeric(data.cores) !== undefined) defaults.cores = numeric(data.cores);
  if (numeric(data.cpuShare) !== undefined) defaults.cpuShare = numeric(data.cpuShare);
  if (data.pauseWhenHidden !== undefined) defaults.pauseWhenHidden = flag(data.pauseWhenHidden, true);
  if (data.pauseOnBattery !== undefined) defaults.pauseOnBattery = flag(data.pauseOnBattery, true);

  const listeners = new Map(EVENTS.map((name) => [name, new Set()]));
  let controller = null;
  let loading = null;

  function listenersOf(name, fn) {
    const set = listeners.get(name);
    if (!set) throw new TypeError(`unknown Tessera event "${name}"; events: ${EVENTS.join(', ')}`);
    if (typeof fn !== 'function') throw new TypeError('a Tessera listener must be a function');
    return set;
  }

  function emit(name, payload) {
    for (const fn of listeners.get(name)) {
      try {
        fn(payload);
      } catch (error) {
        console.error('[tessera] a "' + name + '" listener threw:', error);
      }
    }
  }

  /** Loads the shared controller from the scheduler (once) and forwards its events. */
  function load() {
    if (!loading) {
      loading = import(scheduler + 'tessera.js').then(
        (module) => {
          controller = new module.Tessera({ scheduler: scheduler.replace(/\/$/, ''), ...defaults });
          if (defaults.cores !== undefined) controller.setCores(defaults.cores);
          if (defaults.cpuShare !== undefined) controller.setCpuShare(defaults.cpuShare);
          for (const name of EVENTS) controller.on(name, (payload) => emit(name, payload));
          return controller;
        },
        (error) => {
          loading = null;
          const message = `This page could not load Tessera from ${scheduler}.`;
          emit('error', { kind: 'load', message, detail: String(error) });
          throw error;
        },
      );
    }
    return loading;
  }

  const stopped = { state: 'stopped', pausedBy: [], contributor: null, workerId: null, scheduler: scheduler.replace(/\/$/, ''),
    slicesDone: 0, sliceErrors: 0, computeMs: 0, running: 0, credits: null, creditedSlices: null,
    creditedComputeMs: null, lastError: null, sandboxes: [] };

  const api = Object.freeze({
    start(options = {}) {
      return load().then((loaded) => loaded.start(options));
    },
    pause() {
      if (controller) controller.pause();
    },
    resume() {
      if (controller) controller.resume();
    },
    stop() {
      if (controller) controller.stop();
    },
    setCores(n) {
      if (controller) return controller.setCores(n);
      if (numeric(n) === undefined) throw new TypeError(`cores must be a number, not ${n}`);
      defaults.cores = numeric(n);
      return defaults.cores;
    },
    setCpuShare(p) {
      if (controller) return controller.setCpuShare(p);
      if (numeric(p) === undefined) throw new TypeError(`cpuShare must be a number between 0.05 and 1, not ${p}`);
      defaults.cpuShare = numeric(p);
      return defaults.cpuShare;
    },
    stats() {
      if (controller) return controller.stats();
      return { ...stopped, cores: defaults.cores ?? null, cpuShare: defaults.cpuShare ?? 1, sandboxes: [] };
    },
    on(name, fn) {
      listenersOf(name, fn).add(fn);
    },
    off(name, fn) {
      listenersOf(name, fn).delete(fn);
    },
  });
  Object.defineProperty(window, 'Tessera', { value: api, enumerable: true, configurable: false, writable: false });

  if (data.ui === 'badge') {
    const mount = () => badge(api);
    if (document.body) mount();
    else document.addEventListener('DOMContentLoaded', mount, { once: true });
  }
  if (flag(data.autostart, false)) api.start().catch(() => {});

  /** A small status badge with a start/stop button, in a Shadow DOM of its own. */
  function badge(tessera) {
    const host = document.createElement('tessera-badge');
    // Page styles cannot reach into the shadow tree; `all: initial` keeps them off the host too.
    // Styles go through the CSSOM (no style attribute, no <style> element), which a page's
    // Content-Security-Policy allows without 'unsafe-inline'.
    const place = { all: 'initial', position: 'fixed', right: '16px', bottom: '16px', 'z-index': '2147483000' };
    for (const [property, value] of Object.entries(place)) host.style.setProperty(property, value, 'important');
    const root = host.attachShadow({ mode: 'open' });
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(`
      :host { all: initial; }
      .badge { display: flex; align-items: center; gap: 8px; padding: 6px 6px 6px 12px; border-radius: 999px;
        font: 500 13px/1.2 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2125;
        background: #fff; box-shadow: 0 2px 10px rgb(0 0 0 / 0.18); }
      .dot { width: 8px; height: 8px; border-radius: 50%; background: #8a9299; }
      [data-state="working"] .dot { background: #2f6f4f; }
      [data-state="paused"] .dot { background: #c17d00; }
      button { font: inherit; font-weight: 600; border: 0; border-radius: 999px; padding: 5px 12px; cursor: pointer;
        background: #2f6f4f; color: #fff; }
      [data-state]:not([data-state="stopped"]) button { background: #e6e4de; color: #1d2125; }
      button:focus-visible { outline: 2px solid #2f6f4f; outline-offset: 2px; }`);
    root.adoptedStyleSheets = [sheet];
    const box = document.createElement('div');
    box.className = 'badge';
    box.dataset.state = 'stopped';
    box.setAttribute('role', 'status');
    box.setAttribute('aria-live', 'polite');
    const dot = document.createElement('span');
    dot.className = 'dot';
    const label = document.createElement('span');
    label.className = 'text';
    label.textContent = 'Tessera';
    const toggle = document.createElement('button');
    toggle.type = 'button';
    toggle.textContent = 'Contribute';
    box.append(dot, label, toggle);
    root.append(box);
    const text = label;
    const button = toggle;
    const labels = { stopped: 'Tessera', starting: 'Starting…', working: 'Computing', idle: 'Waiting for work', paused: 'Paused' };
    let done = 0;
    const show = (state) => {
      box.dataset.state = state;
      text.textContent = labels[state] + (done && state !== 'stopped' ? ` · ${done} done` : '');
      button.textContent = state === 'stopped' ? 'Contribute' : 'Stop';
    };
    tessera.on('state', ({ state }) => show(state));
    tessera.on('sliceEnd', () => {
      done++;
      show(box.dataset.state);
    });
    button.addEventListener('click', () => {
      if (box.dataset.state === 'stopped') tessera.start().catch(() => {});
      else tessera.stop();
    });
    document.body.append(host);
  }
})();
