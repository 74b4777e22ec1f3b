#!/usr/bin/env python3
"""The SDK benchmark of issue 9, run by scripts/bench-sdk (which starts the scheduler and the
headless workers, and stops them): a job of N small ints (a list, so every slice is encoded)
through the Python SDK, deploy → all results back, then the same job's events read again from
position 0 over server-sent events, by the SDK and by raw httpx.

Usage: sdk-bench.py SCHEDULER_URL API_KEY N OUT_JSON. Prints one `sdk {json}` line and writes it.
The scheduler URL and key are passed to the SDK as arguments; `tessera` is imported from
PYTHONPATH (the script points it at this tree's sdk/python).
"""
import json
import sys
import time

import httpx

import tessera
from tessera._client import Client
from tessera._events import job_events


def add_one(x):
    return x + 1


def main() -> None:
    url, key, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    r: dict = {"n": n}

    # Warm-up: a small job, so that the workers' sandboxes have loaded Pyodide once (its cold
    # start is issue 10's figure, not this one). Each job still gets its own sandboxes.
    t = time.perf_counter()
    warm = tessera.compute_for(list(range(50)), add_one, scheduler=url, api_key=key)
    if warm.wait(timeout=600, progress=False) != list(range(1, 51)):
        sys.exit("bench-sdk: the warm-up job's results are wrong")
    r["warmup_50_slices_s"] = time.perf_counter() - t

    # The measured job: deploy → every result back, in slice order.
    first_result = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    job = tessera.compute_for(list(range(n)), add_one, scheduler=url, api_key=key)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    job.exec()
    wall2, cpu2 = time.perf_counter(), time.process_time()
    job.on("result", lambda _: first_result or first_result.append(time.perf_counter()))
    results = job.wait(timeout=3600, progress=False)
    wall3, cpu3 = time.perf_counter(), time.process_time()
    if results != [x + 1 for x in range(n)]:
        sys.exit("bench-sdk: the job's results are wrong")
    r["job_id"] = job.job_id
    r["deploy_to_all_results_s"] = wall3 - wall0
    r["deploy_to_all_results_per_slice_ms"] = (wall3 - wall0) * 1000 / n
    r["sdk_cpu_s"] = cpu3 - cpu0
    r["sdk_cpu_per_slice_us"] = (cpu3 - cpu0) * 1e6 / n
    r["sdk_cpu_encode_s"] = cpu1 - cpu0
    r["sdk_cpu_deploy_s"] = cpu2 - cpu1
    r["sdk_cpu_wait_s"] = cpu3 - cpu2
    r["deploy_request_s"] = wall2 - wall1
    r["deploy_to_first_result_s"] = (first_result[0] - wall0) if first_result else None

    # Results throughput over SSE: the finished job's events from position 0.
    client = Client(url, key)
    try:
        t, c = time.perf_counter(), time.process_time()
        count = sum(1 for event in job_events(client, job.job_id, 0) if event.kind == "result")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if count != n:
            sys.exit(f"bench-sdk: the SDK's event stream gave {count} results, not {n}")
        r["sse_sdk_events_s"] = wall
        r["sse_sdk_events_results_per_s"] = n / wall
        r["sse_sdk_events_cpu_s"] = cpu

        # The same through the SDK's public calls: attach, then wait (parse, decode, order).
        t = time.perf_counter()
        again = tessera.Job.attach(job.job_id, scheduler=url, api_key=key).wait(progress=False)
        wall = time.perf_counter() - t
        if again != results:
            sys.exit("bench-sdk: Job.attach(...).wait() gave other results")
        r["sse_sdk_attach_wait_s"] = wall
        r["sse_sdk_attach_wait_results_per_s"] = n / wall

        # Raw HTTP: the same stream with httpx, bytes only (decompressed if sent compressed) (counting `event: result` lines).
        t, c = time.perf_counter(), time.process_time()
        size, count, tail = 0, 0, b""
        marker = b"\nevent: result\n"
        with client.http.stream("GET", f"/v1/jobs/{job.job_id}/events", params={"after": 0},
                                headers={"Accept": "text/event-stream"},
                                timeout=httpx.Timeout(60.0)) as response:
            if response.status_code != 200:
                sys.exit(f"bench-sdk: GET /v1/jobs/{job.job_id}/events answered {response.status_code}")
            for chunk in response.iter_bytes():
                size += len(chunk)
                window = tail + chunk
                count += window.count(marker)
                tail = window[-(len(marker) - 1):]
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if count != n:
            sys.exit(f"bench-sdk: the raw event stream held {count} results, not {n}")
        r["sse_raw_s"] = wall
        r["sse_raw_results_per_s"] = n / wall
        r["sse_raw_cpu_s"] = cpu
        r["sse_stream_bytes"] = size
    finally:
        client.close()

    json.dump(r, open(out, "w"), indent=2)
    print("sdk " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
