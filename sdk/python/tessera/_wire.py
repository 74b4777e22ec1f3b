"""Values on the wire (docs/PROTOCOL.md, "Values"): JSON, with bytes as ``{"$bytes": base64}``
and numpy arrays/scalars as ``{"$ndarray": {"dtype", "shape", "data", "scalar"?}}``.

The decoder is kept as source text (`DECODER_SOURCE`) because the SDK's generated programs carry
it into the sandbox to decode their arguments; this module runs the very same text.
"""
from __future__ import annotations

import base64
import sys
from typing import Any

DECODER_SOURCE = r'''
def _tessera_descr_from_json(descr):
    if isinstance(descr, str):
        return descr
    fields = []
    for field in descr:
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        item = [name, _tessera_descr_from_json(field[1])]
        if len(field) > 2:
            item.append(tuple(field[2]))
        fields.append(tuple(item))
    return fields

def _tessera_from_wire(value):
    import base64 as _b64
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bytes"), str):
            return _b64.b64decode(value["$bytes"])
        if len(value) == 1 and isinstance(value.get("$ndarray"), dict):
            wire = value["$ndarray"]
            try:
                numpy = __import__("importlib").import_module("numpy")
            except ImportError as error:
                raise ImportError("a value holds a numpy array ($ndarray) but numpy is not installed") from error
            dtype = numpy.lib.format.descr_to_dtype(_tessera_descr_from_json(wire["dtype"]))
            if dtype.hasobject:
                raise TypeError("a numpy array of dtype object cannot be received")
            array = numpy.frombuffer(_b64.b64decode(wire["data"]), dtype=dtype).reshape(wire["shape"]).copy()
            return array[()] if wire.get("scalar") else array
        return {key: _tessera_from_wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tessera_from_wire(item) for item in value]
    return value
'''

_namespace: dict[str, Any] = {}
exec(compile(DECODER_SOURCE, "<tessera wire decoder>", "exec"), _namespace)
_decode = _namespace["_tessera_from_wire"]


def decode(value: Any) -> Any:
    """A JSON value from the wire as Python: ``$bytes`` → bytes, ``$ndarray`` → numpy."""
    return _decode(value)


def encode(value: Any, path: str = "value") -> Any:
    """A Python value as JSON for the wire; `path` names the value in errors."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encode(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: dict keys must be str, got {type(key).__name__} ({key!r})")
            out[key] = encode(item, f"{path}[{key!r}]")
        return out
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        return _ndarray_to_wire(numpy, value, path)
    kind = type(value)
    raise TypeError(
        f"{path}: a value of type {kind.__module__}.{kind.__qualname__} cannot be sent; "
        "use JSON types (None, bool, int, float, str, list, tuple, dict with str keys), bytes, or numpy arrays/scalars"
    )


def _ndarray_to_wire(numpy: Any, value: Any, path: str) -> dict:
    scalar = isinstance(value, numpy.generic)
    array = numpy.asarray(value)
    if array.dtype.hasobject:
        raise TypeError(f"{path}: a numpy array of dtype object cannot be sent; use numeric, bool, string or structured dtypes")
    wire = {
        "dtype": numpy.lib.format.dtype_to_descr(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(numpy.ascontiguousarray(array).tobytes()).decode("ascii"),
    }
    if scalar:
        wire["scalar"] = True
    return {"$ndarray": wire}


def holds_numpy(value: Any) -> bool:
    """Whether an encoded value contains an ``$ndarray`` (the sandbox then needs numpy)."""
    if isinstance(value, dict):
        if len(value) == 1 and "$ndarray" in value:
            return True
        return any(holds_numpy(item) for item in value.values())
    if isinstance(value, list):
        return any(holds_numpy(item) for item in value)
    return False
