// The attack suite's JavaScript (map-basic) job: each slice is one attack on the sandbox, named by
// the slice's datum. It reports what it observed; the test's ground truth is the canary server's
// request log and the scheduler's own, not this report. Arguments: the canary's URL and the
// scheduler's URL. Every URL carries the attack's name, so a request that got through names it.
async (attack, canary, scheduler) => {
  const at = (base) => `${base}/js-${attack}`;
  const attempts = {
    'fetch-relative': () => fetch(`/v1/health?attack=js-${attack}`),
    'fetch-scheduler': () => fetch(at(scheduler), { credentials: 'include' }),
    'fetch-no-cors': () => fetch(at(canary), { mode: 'no-cors' }),
    'fetch-canary': () => fetch(at(canary)),
    'xhr': () => { const request = new XMLHttpRequest(); request.open('GET', at(canary)); request.send(); return 'sent'; },
    'websocket': () => new WebSocket(at(canary).replace('http', 'ws')),
    'eventsource': () => new EventSource(at(canary)),
    'import-scripts': () => importScripts(at(canary)),
    'dynamic-import': () => import(at(canary)),
    'indexeddb': () => indexedDB.open('tessera-attack'),
    'caches': () => caches.open('tessera-attack'),
    'local-storage': () => localStorage.setItem('tessera-attack', '1'),
    'broadcast-channel': () => new BroadcastChannel('tessera').postMessage('hello'),
    'post-message-parent': () => parent.postMessage('hello', '*'),
    'post-message-top': () => top.postMessage('hello', '*'),
    'cookie': () => document.cookie,
    'nested-worker': () => new Worker(URL.createObjectURL(new Blob([`fetch('${at(canary)}')`]))),
    'nested-worker-url': () => new Worker(at(canary)),
    'shared-worker': () => new SharedWorker(at(canary)),
    'prototype-fetch': () => WorkerGlobalScope.prototype.fetch.call(self, at(canary)),
    'eval-fetch': () => eval(`fetch('${at(canary)}')`),
    'function-import': () => new Function(`return import('${at(canary)}')`)(),
    'font': () => new FontFace('attack', `url(${at(canary)})`).load(),
    'send-beacon': () => navigator.sendBeacon(at(canary), 'x'),
    // A message dressed as the sandbox's answer to the core: the core must not take it.
    'forge-control-message': () => self.postMessage({ type: 'result', id: 1, json: '"forged"' }),
    'forge-via-prototype': () => DedicatedWorkerGlobalScope.prototype.postMessage.call(self, { type: 'result', id: 1, json: '"forged"' }),
  };
  const attempt = attempts[attack];
  if (!attempt) throw new Error(`unknown attack ${attack}`);
  const timeout = new Promise((resolve) => setTimeout(() => resolve('no answer within 2 s'), 2000));
  try {
    const value = await Promise.race([Promise.resolve().then(attempt), timeout]);
    return { attack, outcome: 'no error', detail: String(value) };
  } catch (error) {
    return { attack, outcome: 'refused', detail: `${error && error.name}: ${error && error.message}` };
  }
}
