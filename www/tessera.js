// Tessera's controller: what the contribute page (contribute.js) and the embed (embed.js) share.
// It wraps the worker core (`TesseraWorker`, Rust → wasm), keeps the state and the totals, keeps
// the contributor id, fetches the contributor's credits, and turns the core's events into the
// public ones documented in embed.js: start, stop, state, sliceStart, sliceProgress, sliceEnd,
// credit, error. Work per core event is a few field updates and one call per listener: no DOM, no
// timers, no allocation beyond the event object.
//
// The scheduler is where this module was loaded from, unless `scheduler` says otherwise.
import init, { TesseraWorker } from './pkg/tessera_worker.js';

/** The public event names, in the order a run usually emits them. */
export const EVENTS = Object.freeze(['start', 'state', 'sliceStart', 'sliceProgress', 'sliceEnd', 'credit', 'error', 'stop']);

/** The scheduler this module came from (no trailing slash). */
export const HOME = new URL('./', import.meta.url).href.replace(/\/$/, '');

/** The CPU shares a person picks from; the core takes any value in 0.05–1. */
export const CPU_SHARES = Object.freeze([0.25, 0.5, 1]);

/** localStorage key of the contributor id. */
export const CONTRIBUTOR_KEY = 'tessera.contributor';

/** Memory one Python sandbox costs, roughly (MB): Pyodide, numpy and the sandbox frame. */
const SANDBOX_MB = 250;

/** Share of the device's memory the sandboxes may take together. */
const MEMORY_SHARE = 0.5;

/** Wait after a submit before asking for credits, so a burst of submits costs one request. */
const CREDIT_DELAY_MS = 500;

/** Logical processors of this device (at least 1). */
export function maxCores(nav = globalThis.navigator) {
  return Math.max(1, Math.floor((nav && nav.hardwareConcurrency) || 2));
}

/**
 * Default sandbox count: one core left to the person (cores − 1, at least 1), and no more
 * sandboxes than half the device's memory holds at ≈ 250 MB each (`navigator.deviceMemory`,
 * in GB, where the browser tells it).
 */
export function defaultCores(nav = globalThis.navigator) {
  let cores = Math.max(1, maxCores(nav) - 1);
  const memoryGb = nav && nav.deviceMemory;
  if (typeof memoryGb === 'number' && memoryGb > 0) {
    cores = Math.min(cores, Math.max(1, Math.floor((memoryGb * 1024 * MEMORY_SHARE) / SANDBOX_MB)));
  }
  return cores;
}

/** The core's own limit on sandboxes. */
export const MAX_SANDBOXES = 64;

/** Clamps a cores value to 1 … `most` (default: hardwareConcurrency; never above 64). */
export function clampCores(n, most = maxCores()) {
  const value = Math.round(Number(n));
  if (!Number.isFinite(value)) throw new TypeError(`cores must be a number, not ${n}`);
  return Math.min(Math.max(1, value), Math.min(MAX_SANDBOXES, most));
}

/** Clamps a CPU share to 0.05 … 1 (a fraction of each core's time; 1 = flat out). */
export function clampCpuShare(p) {
  const value = Number(p);
  if (!Number.isFinite(value)) throw new TypeError(`cpuShare must be a number between 0.05 and 1, not ${p}`);
  return Math.min(Math.max(0.05, value), 1);
}

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const ID_PATTERN = /^[A-Za-z0-9_-]{16,64}$/;

/** A new contributor id: 32 characters of [A-Za-z0-9] from the browser's CSPRNG. */
export function newContributorId() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  // 62 letters: reject bytes ≥ 248 so each letter is equally likely.
  let id = '';
  while (id.length < 32) {
    for (const byte of bytes) {
      if (byte < 248 && id.length < 32) id += ID_ALPHABET[byte % 62];
    }
    crypto.getRandomValues(bytes);
  }
  return id;
}

/** Whether `id` is a contributor id the scheduler accepts (16–64 of A-Z a-z 0-9 _ -). */
export function validContributorId(id) {
  return typeof id === 'string' && ID_PATTERN.test(id);
}

/** localStorage, or null where it is blocked (some browsers block it for embedded content). */
function storage() {
  try {
    const store = globalThis.localStorage;
    store.getItem(CONTRIBUTOR_KEY);
    return store;
  } catch {
    return null;
  }
}

/** The contributor id kept in this browser (localStorage), made on first use. */
export function contributorId() {
  const store = storage();
  const kept = store && store.getItem(CONTRIBUTOR_KEY);
  if (validContributorId(kept)) return kept;
  const id = newContributorId();
  if (store) {
    try {
      store.setItem(CONTRIBUTOR_KEY, id);
    } catch {
      // Full or blocked: this visit still works, the next gets a new id.
    }
  }
  return id;
}

/** Reads a JSON setting object from localStorage (empty when absent, unreadable or blocked). */
export function loadSettings(key) {
  try {
    const value = JSON.parse(storage()?.getItem(key) || '{}');
    return value && typeof value === 'object' ? value : {};
  } catch {
    return {};
  }
}

/** Writes a JSON setting object to localStorage, quietly doing nothing where it is blocked. */
export function saveSettings(key, value) {
  try {
    storage()?.setItem(key, JSON.stringify(value));
  } catch {
    // Not remembered: nothing else breaks.
  }
}

let coreLoaded = null;

/** Loads and instantiates the worker core's wasm once per page. */
export function loadCore() {
  if (!coreLoaded) {
    coreLoaded = init().catch((error) => {
      coreLoaded = null;
      throw error;
    });
  }
  return coreLoaded;
}

/**
 * One contributor's worker in this page. `new Tessera(options)` loads nothing; `start()` does.
 *
 * Constructor options (all optional): `scheduler` (URL; default: where this module came from),
 * `contributor` (id; default: kept in localStorage), `pauseWhenHidden` and `pauseOnBattery`
 * (default true), `onCoreEvent` (every raw core event, for the contribute page's log),
 * `maxCores` (the most sandboxes `cores` may ask for; default hardwareConcurrency, at most 64:
 * `tessera worker --cores N` may ask for more sandboxes than the machine has cores).
 * A pause has reasons (`pausedBy`): the person (`user`), a hidden tab (`hidden`), running on
 * battery (`battery`); the worker runs again when none is left.
 */
export class Tessera {
  constructor(options = {}) {
    this.scheduler = String(options.scheduler || HOME).replace(/\/+$/, '');
    this.onCoreEvent = typeof options.onCoreEvent === 'function' ? options.onCoreEvent : null;
    this.listeners = new Map(EVENTS.map((name) => [name, new Set()]));
    this.contributor = validContributorId(options.contributor) ? options.contributor : null;
    this.pauseWhenHidden = options.pauseWhenHidden !== false;
    this.pauseOnBattery = options.pauseOnBattery !== false;
    this.maxCores = Number.isFinite(options.maxCores) ? options.maxCores : maxCores();
    this.worker = null;
    this.state = 'stopped';
    this.pausedBy = new Set();
    this.cores = defaultCores();
    this.cpuShare = 1;
    this.workerId = null;
    this.totals = { slicesDone: 0, sliceErrors: 0, computeMs: 0 };
    this.account = null;
    this.sandboxes = new Map();
    this.creditTimer = 0;
    this.creditBusy = false;
    this.creditAgain = false;
    this.lastError = null;
    this.battery = null;
    this.onVisibility = () => this.autoPause('hidden', this.pauseWhenHidden && document.visibilityState === 'hidden');
    this.onBattery = () => this.autoPause('battery', this.pauseOnBattery && !!this.battery && !this.battery.charging);
  }

  /** Calls `fn(payload)` on each `name` event (one of EVENTS). */
  on(name, fn) {
    if (typeof fn !== 'function') throw new TypeError('a Tessera listener must be a function');
    this.listenersOf(name).add(fn);
    return this;
  }

  /** Stops calling `fn` on `name` events. */
  off(name, fn) {
    this.listenersOf(name).delete(fn);
    return this;
  }

  listenersOf(name) {
    const set = this.listeners.get(name);
    if (!set) throw new TypeError(`unknown Tessera event "${name}"; events: ${EVENTS.join(', ')}`);
    return set;
  }

  emit(name, payload) {
    for (const fn of this.listeners.get(name)) {
      try {
        fn(payload);
      } catch (error) {
        // A listener's bug must not stop the worker or the other listeners.
        console.error('[tessera] a "' + name + '" listener threw:', error);
      }
    }
  }

  setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous, pausedBy: [...this.pausedBy] });
  }

  /** Reports a problem in plain words: `kind` names it for code, `message` is for a person. */
  fail(kind, message, detail = '') {
    this.lastError = { kind, message, detail, atMs: Date.now() };
    this.emit('error', { kind, message, detail });
  }

  /**
   * Starts contributing; resolves once the worker core runs (the `start` event has fired) and
   * rejects when it cannot (the `error` event says why in plain words). Options: `cores`,
   * `cpuShare`, `contributor`, `pauseWhenHidden`, `pauseOnBattery`, and the core's own
   * `idleExitMs`, `pyodideUrl`, `workerKey`, `runtimeSnapshots`, `packageSnapshots`. The run's end reason comes
   * with the `stop` event (`stopped`, `idle`). Calling it while running does nothing.
   */
  start(options = {}) {
    if (this.worker) return Promise.resolve();
    if (!this.starting) this.starting = this.begin(options).finally(() => (this.starting = null));
    return this.starting;
  }

  async begin(options) {
    if (options.cores !== undefined && options.cores !== null) this.cores = clampCores(options.cores, this.maxCores);
    if (options.cpuShare !== undefined && options.cpuShare !== null) this.cpuShare = clampCpuShare(options.cpuShare);
    if (options.pauseWhenHidden !== undefined) this.pauseWhenHidden = options.pauseWhenHidden !== false;
    if (options.pauseOnBattery !== undefined) this.pauseOnBattery = options.pauseOnBattery !== false;
    if (validContributorId(options.contributor)) this.contributor = options.contributor;
    else if (options.contributor !== undefined) throw new TypeError('contributor must be 16–64 of A-Z a-z 0-9 _ -');
    this.contributor = this.contributor || contributorId();
    this.pausedBy.clear();
    this.lastError = null;
    this.stopRequested = false;
    this.setState('starting');
    try {
      await loadCore();
    } catch (error) {
      this.setState('stopped');
      this.fail('load', "This browser could not load Tessera's worker (WebAssembly) from " + this.scheduler + '.', String(error));
      throw error;
    }
    const coreOptions = {
      scheduler: this.scheduler,
      sandboxes: this.cores,
      cpuShare: this.cpuShare,
      contributor: this.contributor,
      onEvent: (event) => this.handle(event),
    };
    for (const key of ['idleExitMs', 'pyodideUrl', 'workerKey', 'runtimeSnapshots', 'packageSnapshots']) {
      if (options[key] !== undefined && options[key] !== null) coreOptions[key] = options[key];
    }
    try {
      this.worker = new TesseraWorker(coreOptions);
    } catch (error) {
      this.setState('stopped');
      this.fail('options', 'Tessera could not start: ' + (error && error.message ? error.message : error));
      throw error;
    }
    this.cores = this.worker.sandboxes;
    this.sandboxes.clear();
    this.startedMs = Date.now();
    this.watch(true);
    this.emit('start', { cores: this.cores, cpuShare: this.cpuShare, contributor: this.contributor, scheduler: this.scheduler });
    this.worker.run().then(
      (reason) => this.ended(reason),
      (error) => {
        this.fail('fatal', 'Tessera stopped after an internal error.', String(error));
        return this.ended('error');
      },
    );
    if (this.stopRequested) this.worker.stop();
    this.onVisibility();
    this.onBattery();
    this.fetchCredits();
  }

  ended(reason) {
    this.watch(false);
    this.worker = null;
    this.workerId = null;
    this.sandboxes.clear();
    this.pausedBy.clear();
    this.setState('stopped');
    this.emit('stop', { reason });
    this.fetchCredits();
    return reason;
  }

  /** Stops contributing: slices still running go back to the scheduler; sandboxes end. */
  stop() {
    if (this.worker) this.worker.stop();
    else if (this.starting) this.stopRequested = true;
  }

  /** Pauses: no new slices start; running ones finish. */
  pause() {
    this.pauseFor('user');
  }

  /** Resumes after any pause, automatic ones included (a person's explicit choice wins). */
  resume() {
    this.pausedBy.clear();
    this.applyPause();
  }

  pauseFor(reason) {
    this.pausedBy.add(reason);
    this.applyPause();
  }

  autoPause(reason, on) {
    if (!this.worker) return;
    if (on === this.pausedBy.has(reason)) return;
    if (on) this.pausedBy.add(reason);
    else this.pausedBy.delete(reason);
    this.applyPause();
  }

  applyPause() {
    if (!this.worker) return;
    const pause = this.pausedBy.size > 0;
    if (pause && !this.worker.paused) this.worker.pause();
    else if (!pause && this.worker.paused) this.worker.resume();
    if (pause) {
      // Already paused for another reason: say the reasons changed.
      if (this.state === 'paused') this.emit('state', { state: 'paused', previous: 'paused', pausedBy: [...this.pausedBy] });
      else this.setState('paused');
    } else if (this.state === 'paused') {
      this.setState('working');
    }
  }

  /** Sets how many sandboxes run (1 … hardwareConcurrency), now if running, else for the next start. */
  setCores(n) {
    this.cores = clampCores(n, this.maxCores);
    if (this.worker) this.worker.setSandboxes(this.cores);
    return this.cores;
  }

  /** Sets the share of each core's time used (0.05 … 1): the worker rests between slices to keep it. */
  setCpuShare(p) {
    this.cpuShare = clampCpuShare(p);
    if (this.worker) this.worker.setCpuShare(this.cpuShare);
    return this.cpuShare;
  }

  /** Turns the automatic pauses on or off (each is on by default). */
  setAutoPause({ whenHidden, onBattery } = {}) {
    if (whenHidden !== undefined) this.pauseWhenHidden = !!whenHidden;
    if (onBattery !== undefined) this.pauseOnBattery = !!onBattery;
    this.onVisibility();
    this.onBattery();
  }

  runningSlices() {
    let count = 0;
    for (const sandbox of this.sandboxes.values()) if (sandbox.slices.length) count++;
    return count;
  }

  /** A snapshot of everything shown: state, settings, totals, credits and each sandbox. */
  stats() {
    const account = this.account;
    return {
      state: this.state,
      pausedBy: [...this.pausedBy],
      cores: this.cores,
      cpuShare: this.cpuShare,
      contributor: this.contributor,
      workerId: this.workerId,
      scheduler: this.scheduler,
      slicesDone: this.totals.slicesDone,
      sliceErrors: this.totals.sliceErrors,
      computeMs: this.totals.computeMs,
      running: this.runningSlices(),
      credits: account ? account.credits : null,
      creditedSlices: account ? account.slices : null,
      creditedComputeMs: account ? account.computeMs : null,
      lastError: this.lastError,
      sandboxes: [...this.sandboxes.values()].map((sandbox) => {
        const running = sandbox.slices[0];
        return {
          sandbox: sandbox.sandbox,
          state: sandbox.state,
          worktime: sandbox.worktime,
          job: running ? running.job : sandbox.job,
          slice: running ? running.slice : null,
          progress: running ? running.progress : null,
          sliceStartedMs: running ? running.startedMs : null,
          queued: Math.max(0, sandbox.slices.length - 1),
        };
      }),
    };
  }

  sandbox(id) {
    let sandbox = this.sandboxes.get(id);
    if (!sandbox) {
      // `slices`: the slices sent to this sandbox, oldest first. The first runs; the core may
      // queue one more behind it (pipelining), whose `sliceStarted` comes before the first ends.
      sandbox = { sandbox: id, state: 'loadingRuntime', worktime: null, job: null, slices: [] };
      this.sandboxes.set(id, sandbox);
    }
    return sandbox;
  }

  /** One core event: update state, then emit the public event it maps to. */
  handle(event) {
    if (this.onCoreEvent) {
      try {
        this.onCoreEvent(event);
      } catch (error) {
        console.error('[tessera] onCoreEvent threw:', error);
      }
    }
    switch (event.type) {
      case 'registered':
        this.workerId = event.workerId;
        if (event.contributor) this.contributor = event.contributor;
        if (this.state === 'starting') this.setState('working');
        break;
      case 'sandboxCreated':
        this.sandbox(event.sandbox).worktime = event.worktime;
        break;
      case 'sandboxState': {
        const sandbox = this.sandbox(event.sandbox);
        sandbox.state = event.state;
        if (event.job) sandbox.job = event.job;
        break;
      }
      case 'sandboxRemoved':
        this.sandboxes.delete(event.sandbox);
        break;
      case 'sliceStarted': {
        const sandbox = this.sandbox(event.sandbox);
        sandbox.slices.push({ job: event.job, slice: event.slice, progress: null, startedMs: Date.now() });
        sandbox.job = event.job;
        sandbox.state = 'running';
        if (this.state === 'idle' || this.state === 'starting') this.setState('working');
        this.emit('sliceStart', { job: event.job, slice: event.slice, sandbox: event.sandbox });
        break;
      }
      case 'sliceProgress': {
        const sandbox = this.sandboxes.get(event.sandbox);
        const slice = sandbox && sandbox.slices.find((s) => s.slice === event.slice && s.job === event.job);
        if (slice) slice.progress = event.progress;
        this.emit('sliceProgress', { job: event.job, slice: event.slice, sandbox: event.sandbox, progress: event.progress });
        break;
      }
      case 'sliceFinished': {
        const sandbox = this.sandboxes.get(event.sandbox);
        if (sandbox) {
          const index = sandbox.slices.findIndex((s) => s.slice === event.slice && s.job === event.job);
          if (index >= 0) sandbox.slices.splice(index, 1);
          // The next one runs from now on (it waited inside the sandbox until now).
          if (index === 0 && sandbox.slices.length) sandbox.slices[0].startedMs = Math.max(sandbox.slices[0].startedMs, Date.now());
        }
        // A released slice was given back (stop, pause, another slice's fault): not an error,
        // and its time is not credited.
        if (event.outcome === 'ok') this.totals.slicesDone++;
        else if (event.outcome !== 'released') this.totals.sliceErrors++;
        if (event.outcome !== 'released') this.totals.computeMs += event.ms || 0;
        this.emit('sliceEnd', { job: event.job, slice: event.slice, sandbox: event.sandbox, outcome: event.outcome, ms: event.ms });
        break;
      }
      case 'submitted':
        if (event.accepted > 0) this.scheduleCredits();
        break;
      case 'schedulerUnreachable':
        this.fail(
          'schedulerUnreachable',
          `Cannot reach the Tessera server at ${this.scheduler}; trying again in ${Math.max(1, Math.round(event.retryMs / 1000))} s.`,
          `${event.request}: ${event.message}`,
        );
        break;
      case 'requestRefused':
        this.fail('requestRefused', `The Tessera server refused this browser's ${event.request} request: ${event.message}`, event.message);
        break;
      case 'sandboxesFailing':
        this.fail(
          'sandboxesFailing',
          `Jobs keep failing to start in this browser (${event.failures} in a row), so it takes a ${Math.round(event.pauseMs / 1000)} s break before asking for more work.`,
        );
        break;
      case 'idle':
        if (this.state !== 'paused') this.setState('idle');
        break;
      case 'sandboxesChanged':
        this.cores = event.sandboxes;
        break;
      case 'paused':
      case 'resumed':
        break;
      case 'stopped':
        // The run's promise resolves right after; `ended` emits `stop` once.
        break;
    }
  }

  /** Listens to the page's visibility and the battery while running (each only when its setting is on). */
  watch(on) {
    if (on) {
      document.addEventListener('visibilitychange', this.onVisibility);
      if (!this.battery && typeof navigator.getBattery === 'function') {
        navigator.getBattery().then(
          (battery) => {
            this.battery = battery;
            battery.addEventListener('chargingchange', this.onBattery);
            this.onBattery();
          },
          () => {},
        );
      }
    } else {
      document.removeEventListener('visibilitychange', this.onVisibility);
      if (this.battery) this.battery.removeEventListener('chargingchange', this.onBattery);
      this.battery = null;
    }
  }

  scheduleCredits() {
    if (this.creditTimer) return;
    this.creditTimer = setTimeout(() => {
      this.creditTimer = 0;
      this.fetchCredits();
    }, CREDIT_DELAY_MS);
  }

  /** `GET /v1/workers/<contributor>`; emits `credit` when the totals changed (404: nothing credited yet). */
  async fetchCredits() {
    if (!this.contributor) return;
    if (this.creditBusy) {
      this.creditAgain = true;
      return;
    }
    this.creditBusy = true;
    try {
      const response = await fetch(`${this.scheduler}/v1/workers/${encodeURIComponent(this.contributor)}`, { cache: 'no-store' });
      if (response.ok) {
        const body = await response.json();
        const account = {
          contributor: body.contributor,
          slices: body.slices,
          computeMs: body.compute_ms,
          credits: body.credits,
          sinceMs: body.since_ms,
        };
        const last = this.account;
        if (!last || last.slices !== account.slices || last.computeMs !== account.computeMs || last.credits !== account.credits) {
          this.account = account;
          this.emit('credit', { ...account });
        }
      }
    } catch {
      // Credits are shown when the server answers; the worker's own errors report reachability.
    } finally {
      this.creditBusy = false;
      if (this.creditAgain) {
        this.creditAgain = false;
        this.scheduleCredits();
      }
    }
  }
}

/**
 * The public face of a controller: the methods of `window.Tessera` (embed.js documents them),
 * nothing else reachable.
 */
export function publicApi(controller) {
  return Object.freeze({
    start: (options) => controller.start(options),
    pause: () => controller.pause(),
    resume: () => controller.resume(),
    stop: () => controller.stop(),
    setCores: (n) => controller.setCores(n),
    setCpuShare: (p) => controller.setCpuShare(p),
    stats: () => controller.stats(),
    on: (name, fn) => void controller.on(name, fn),
    off: (name, fn) => void controller.off(name, fn),
  });
}
