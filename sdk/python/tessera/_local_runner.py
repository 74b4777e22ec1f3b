"""Runs a job in local CPython the way pyodide-loader/sandbox-worker.js runs it in a sandbox.

`python -m tessera._local_runner SPEC OUT`: SPEC is a JSON file {program, program_name,
arguments, env, root, slices}; one JSON line per slice goes to OUT, in slice order:
{"slice", "status": "ok", "value"} or {"slice", "status": "error", "error", "stack"}, then a
final {"setup_error"} line when the program failed to set up. Values cross as wire JSON, as
they do in the browser, so results equal the browser run's.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import traceback
import types

from tessera._wire import decode, encode


class _State:
    handler = None


def _set_slice_handler(fn):
    if not callable(fn):
        raise TypeError("dcp.set_slice_handler needs a callable, got " + type(fn).__name__)
    _State.handler = fn


def _progress(value=None):
    if value is not None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError("dcp.progress takes a number from 0.0 to 1.0")
    return True


def _to_wire(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_to_wire(item) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("result dict keys must be str, got " + type(key).__name__)
            out[key] = _to_wire(item)
        return out
    kind = type(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return encode(value)
    raise TypeError("a slice result of type " + kind.__module__ + "." + kind.__qualname__
                    + " cannot be returned; return JSON types, bytes, or numpy arrays/scalars")


def _message(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]


def _stack(error: BaseException) -> str:
    # Without this runner's own frames, like the sandbox's traceback.
    frames = traceback.extract_tb(error.__traceback__)
    keep = [frame for frame in frames if frame.filename != __file__]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(keep),
             *traceback.format_exception_only(type(error), error)]
    return "".join(lines).rstrip()


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as file:
        spec = json.load(file)
    module = types.ModuleType("dcp", "Tessera's job API, compatible with DCP's Pyodide worktime (local run).")
    module.set_slice_handler = _set_slice_handler
    module.progress = _progress
    sys.modules["dcp"] = module
    sys.modules["tessera"] = module
    root = spec["root"]
    os.chdir(root)
    sys.path.insert(0, root)
    name = spec["program_name"]
    sys.argv = [name] + [a if isinstance(a, str) else json.dumps(a) for a in spec["arguments"]]
    os.environ.update(spec["env"])
    with open(out_path, "w") as out:
        def emit(line):
            out.write(json.dumps(line, allow_nan=False) + "\n")
            out.flush()

        try:
            code = compile(spec["program"], name, "exec")
            exec(code, {"__name__": "__main__", "__file__": os.path.join(root, name)})
            if _State.handler is None:
                raise RuntimeError("no slice handler registered: the program must call dcp.set_slice_handler(fn)")
        except BaseException as error:  # noqa: BLE001 - the program's failure is reported, not raised
            emit({"setup_error": _message(error), "stack": _stack(error)})
            return
        for index, datum in enumerate(spec["slices"]):
            try:
                value = _to_wire(_State.handler(decode(datum)))
                json.dumps(value, allow_nan=False)
                emit({"slice": index, "status": "ok", "value": value})
            except Exception as error:  # noqa: BLE001
                emit({"slice": index, "status": "error", "error": _message(error), "stack": _stack(error)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
