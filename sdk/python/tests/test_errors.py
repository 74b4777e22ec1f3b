"""Bad input and missing configuration give clear errors."""
from __future__ import annotations

import pytest

import tessera
from tessera._events import _parse


def square(x):
    return x * x


def test_missing_scheduler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TESSERA_SCHEDULER", raising=False)
    with pytest.raises(tessera.ConfigurationError, match="TESSERA_SCHEDULER"):
        tessera.compute_for([1], square).exec()


def test_missing_key_names_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)
    monkeypatch.setenv("TESSERA_CONFIG_DIR", str(tmp_path))
    with pytest.raises(tessera.ConfigurationError, match="TESSERA_API_KEY"):
        tessera.compute_for([1], square, scheduler="http://127.0.0.1:9").exec()


def test_an_unknown_package_is_refused_by_the_scheduler(cluster):
    with pytest.raises(tessera.RequestRefused) as refused:
        tessera.compute_for([1], square, packages=["tensorflow"]).exec()
    assert refused.value.code == "invalid_field" and refused.value.field == "packages"
    assert "tensorflow" in refused.value.message


def test_a_wrong_key_is_refused(cluster):
    with pytest.raises(tessera.RequestRefused) as refused:
        tessera.compute_for([1], square, api_key="tsk_nope_nope").exec()
    assert refused.value.status == 401 and refused.value.code == "unauthorized"


def test_bad_work_and_values_name_what_is_wrong():
    with pytest.raises(ValueError, match="neither a program file nor program source"):
        tessera.compute_for([1], "no_such_file.py")
    with pytest.raises(TypeError, match=r"data\[1\]: a value of type builtins.set cannot be sent"):
        tessera.compute_for([1, {2}], square)
    offset = 3

    def closure(x):
        return x + offset

    with pytest.raises(TypeError, match=r"enclosing function \(offset\); pass them in args"):
        tessera.compute_for([1], closure)
    with pytest.raises(ValueError, match="unknown event 'finish'"):
        tessera.compute_for([1], square).on("finish", print)


def test_a_lambda_is_shipped_as_its_own_source():
    job = tessera.compute_for(range(3), lambda x: x * 10, scheduler="http://127.0.0.1:9", api_key="unused")
    assert job.local_exec() == [0, 10, 20]


def test_server_sent_events_are_parsed_with_positions():
    lines = ["id: 3", "event: result", 'data: {"slice": 0,', 'data: "status": "ok", "value": 1}', "",
             ": keep-alive", "", "id: 4", "event: state", 'data: {"state": "complete"}', ""]
    events = list(_parse(iter(lines)))
    assert [(e.position, e.kind) for e in events] == [(3, "result"), (4, "state")]
    assert events[0].data == {"slice": 0, "status": "ok", "value": 1}
