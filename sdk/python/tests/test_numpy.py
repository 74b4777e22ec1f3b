"""numpy values keep dtype and shape both ways: inputs, arguments and results."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tessera

from helpers import same

RECORD = np.dtype([("id", "<i4"), ("score", "<f8"), ("pair", "<i2", (2,))])


def inputs() -> list:
    return [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
        np.int64(-(2**40)),
        {"weights": np.linspace(0, 1, 5, dtype=np.float32), "ids": np.array([[1, 2], [3, 4]], dtype=np.int64), "tag": "w"},
        np.array([(1, 2.5, (3, 4)), (5, -1.0, (6, 7))], dtype=RECORD),
        np.float32(1.25),
    ]


def inspect_value(value, factor):
    """What the sandbox received (real numpy types) and values computed from it."""
    import numpy as np

    if isinstance(value, dict):
        return {
            "types": sorted(type(item).__name__ for item in value.values()),
            "value": value,
            "scaled": value["weights"] * np.float32(2),
        }
    kind = "ndarray" if isinstance(value, np.ndarray) else type(value).__name__
    doubled = value if value.dtype.names else value * value.dtype.type(2)
    return {"kind": kind, "dtype": str(value.dtype), "shape": list(np.shape(value)), "value": value,
            "doubled": doubled, "factor": factor, "factor_type": type(factor).__name__}


def expected(value, factor):
    return inspect_value(value, factor)


def test_arrays_scalars_and_structured_values_round_trip(cluster):
    factor = np.int64(3)
    job = tessera.compute_for(inputs(), inspect_value, args=(factor,))
    assert "numpy" in job.deploy_body()["packages"]
    results = job.wait()
    for value, result in zip(inputs(), results):
        assert same(result, expected(value, factor)), (value, result)
    assert results[0]["kind"] == "ndarray" and results[0]["dtype"] == "float32" and results[0]["shape"] == [2, 3, 4]
    assert results[1]["kind"] == "int64" and type(results[1]["value"]) is np.int64
    assert results[3]["dtype"] == str(RECORD) and results[3]["value"]["pair"][1].tolist() == [6, 7]
    assert type(results[4]["value"]) is np.float32
    assert results[0]["factor_type"] == "int64"
    assert same(job.local_exec(), results)


def test_the_wire_form_is_the_documented_one():
    encoded = tessera.encode({"a": np.arange(3, dtype="<i2"), "s": np.int64(7), "b": b"\x00\x01"})
    assert encoded == {
        "a": {"$ndarray": {"dtype": "<i2", "shape": [3], "data": "AAABAAIA"}},
        "s": {"$ndarray": {"dtype": "<i8", "shape": [], "data": "BwAAAAAAAAA=", "scalar": True}},
        "b": {"$bytes": "AAE="},
    }
    structured = tessera.encode(np.zeros(1, dtype=RECORD))
    assert structured["$ndarray"]["dtype"] == [["id", "<i4"], ["score", "<f8"], ["pair", "<i2", [2]]] or json.loads(
        json.dumps(structured)
    )["$ndarray"]["dtype"] == [["id", "<i4"], ["score", "<f8"], ["pair", "<i2", [2]]]
    assert same(tessera.decode(json.loads(json.dumps(structured))), np.zeros(1, dtype=RECORD))


def test_object_arrays_are_refused_with_a_clear_error():
    with pytest.raises(TypeError, match=r"data\[0\]: a numpy array of dtype object cannot be sent"):
        tessera.compute_for([np.array([{"x": 1}], dtype=object)], inspect_value)


def plain(x):
    return x + 1


def test_jobs_without_numpy_stay_plain_json():
    job = tessera.compute_for([1, 2], plain, scheduler="http://127.0.0.1:9", api_key="unused")
    body = job.deploy_body()
    assert body["packages"] == [] and body["slices"] == [1, 2]
    assert "import numpy" not in body["program"]
