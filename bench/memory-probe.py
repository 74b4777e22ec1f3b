#!/usr/bin/env python3
"""Memory probe for `make bench` (scripts/bench starts it; www/bench/bench.js asks it).

Usage: memory-probe.py ROOT_PID. Serves `GET /sample` on a loopback port (printed on stdout as
`memory probe on http://127.0.0.1:PORT`) and answers with the memory of every Chromium process
descended from ROOT_PID (scripts/bench's shell: `tessera worker` is its child, Chromium the child
of that, and every Chromium helper — zygotes, renderers, the network and storage services — below
it), read from /proc/PID/smaps_rollup at the moment of the request:

  {"pss_kb": …, "rss_kb": …, "processes": [{"pid", "type", "pss_kb", "rss_kb"}, …], "unreadable": [pid…]}

Why /proc and not the page: each Tessera sandbox is a Web Worker inside its own opaque-origin
frame, which site isolation puts in its own renderer process, and the worker core keeps
Pyodide's files and the runtime snapshot as Blobs, which Chromium may hold outside the page. `performance.memory` sees one JS heap
only; `performance.measureUserAgentSpecificMemory()` reports V8 heaps and, for cross-origin
frames, one aggregate, not the wasm linear memory or Blob storage, and without Chromium's
ForceEagerMeasureMemory flag (which `tessera worker` does not pass) answers after up to 20 s. A
process's PSS (proportional set size: its private pages plus its share of pages it shares with
other processes) summed over the tree is the physical memory the browser uses; unlike summed RSS,
it does not count a new process's mapping of the shared Chromium binary and libraries as new
memory. RSS is reported too, for reference. The page asks for a sample before and after a
sandbox starts; the difference is what that sandbox cost the machine.

With TESSERA_MEMORY_MAPPINGS=DIR, every sample also writes DIR/NNN.json: each process's
type and its mappings of more than 256 kB PSS (from /proc/PID/smaps), for
bench/memory-diff.py to say which process and which mapping grew between two samples — how the
memory gap of a restored sandbox was found (README, "Memory").

Only reads /proc; never signals anything. Runs until scripts/bench stops it (by its PID).
"""
import http.server
import json
import os
import re
import sys

ROOT = int(sys.argv[1])


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def chromium_processes():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                children.setdefault(parent_of(int(name)), []).append(int(name))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    found, stack = [], list(children.get(ROOT, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            if "chromium" in os.path.basename(os.readlink(f"/proc/{pid}/exe")):
                found.append(pid)
        except OSError:
            pass
    return found


def sample():
    total = {"pss_kb": 0, "rss_kb": 0, "processes": [], "unreadable": []}
    for pid in chromium_processes():
        if not os.path.exists(f"/proc/{pid}"):
            continue  # exited meanwhile
        try:
            fields = {}
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    key, _, rest = line.partition(":")
                    if key in ("Rss", "Pss"):
                        fields[key] = int(rest.split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                # Chromium rewrites its command line as one string: find --type=… by pattern.
                kind = re.search(rb"--type=([\w-]+)", cmdline.read())
        except FileNotFoundError:
            continue  # exited meanwhile
        except OSError:
            # A sandboxed Chromium process is not dumpable: only root (CAP_SYS_PTRACE) reads its
            # smaps. The page reports the memory as not measured rather than count too little.
            total["unreadable"].append(pid)
            continue
        kind = kind.group(1).decode() if kind else "browser"
        total["pss_kb"] += fields.get("Pss", 0)
        total["rss_kb"] += fields.get("Rss", 0)
        total["processes"].append(
            {"pid": pid, "type": kind, "pss_kb": fields.get("Pss", 0), "rss_kb": fields.get("Rss", 0)})
    return total


MAPPINGS_DIR = os.environ.get("TESSERA_MEMORY_MAPPINGS")
samples_written = 0


def write_mappings(processes):
    """DIR/NNN.json for this sample: [{pid, type, maps: [{start, size_kb, name, rss, pss}]}]."""
    global samples_written
    found = []
    for process in processes:
        maps = []
        try:
            with open(f"/proc/{process['pid']}/smaps") as smaps:
                for line in smaps:
                    fields = line.split()
                    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                        start, end = fields[0].split("-")
                        maps.append({"start": fields[0], "size_kb": (int(end, 16) - int(start, 16)) // 1024,
                                     "name": fields[5] if len(fields) > 5 else "[anon]", "rss": 0, "pss": 0})
                    elif fields[0] in ("Rss:", "Pss:") and maps:
                        maps[-1][fields[0][:-1].lower()] = int(fields[1])
        except OSError:
            continue  # exited meanwhile
        found.append({"pid": process["pid"], "type": process["type"], "maps": [m for m in maps if m["pss"] > 256]})
    samples_written += 1
    with open(os.path.join(MAPPINGS_DIR, f"{samples_written:03d}.json"), "w") as out:
        json.dump(found, out)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] != "/sample":
            self.send_error(404)
            return
        measured = sample()
        if MAPPINGS_DIR:
            write_mappings(measured["processes"])
        body = json.dumps(measured).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # The bench page is on the scheduler's origin: a CORS answer, which its COEP accepts.
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"memory probe on http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
