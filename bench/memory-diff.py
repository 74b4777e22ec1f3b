#!/usr/bin/env python3
"""Which Chromium process and which of its mappings grew between two memory samples.

Usage: memory-diff.py BEFORE.json AFTER.json — two files bench/memory-probe.py wrote with
TESSERA_MEMORY_MAPPINGS=DIR (a page's "before" and "after" probe of one side of the memory
phase). Prints each process whose PSS changed by 1 MB or more (its type, new or gone), then its
mappings that changed most. A WebAssembly memory shows as an anonymous mapping of the heap's
size (its RSS: the pages written); an ArrayBuffer of a few MB or more as its own anonymous
mapping of that size; compiled code in a mapping V8 reserves ahead.
"""
import json
import sys


def processes(path):
    with open(path) as sample:
        return {process["pid"]: process for process in json.load(sample)}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: memory-diff.py BEFORE.json AFTER.json")
    before, after = processes(sys.argv[1]), processes(sys.argv[2])
    for pid in sorted(set(before) | set(after)):
        old = {m["start"]: m for m in before.get(pid, {"maps": []})["maps"]}
        new = {m["start"]: m for m in after.get(pid, {"maps": []})["maps"]}
        rows = []
        for start in set(old) | set(new):
            mapping = new.get(start) or old[start]
            growth = (new.get(start, {}).get("pss", 0) - old.get(start, {}).get("pss", 0)) / 1024
            rows.append((growth, start, mapping["size_kb"] / 1024, new.get(start, {}).get("rss", 0) / 1024, mapping["name"]))
        total = sum(row[0] for row in rows)
        if abs(total) < 1:
            continue
        kind = (after.get(pid) or before[pid])["type"]
        state = " (new)" if pid not in before else " (gone)" if pid not in after else ""
        print(f"pid {pid} {kind}{state}: {total:+.1f} MB PSS")
        for growth, start, size, rss, name in sorted(rows, key=lambda row: -abs(row[0]))[:12]:
            if abs(growth) >= 0.5:
                print(f"  {growth:+7.1f} MB  {start}  size {size:8.1f} MB  rss {rss:7.1f} MB  {name}")


if __name__ == "__main__":
    main()
