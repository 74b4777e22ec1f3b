"""compute_for, Job, events, cancel and attach against a real scheduler and browser worker."""
from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import tessera

from helpers import same

REPO = Path(__file__).resolve().parents[3]


def cube_plus(x, offset):
    print(f"cubing {x}")
    return x * x * x + offset


def test_a_function_runs_with_args_and_reports_events(cluster):
    job = tessera.compute_for(range(8), cube_plus, args=(5,))
    seen = {"result": [], "console": [], "progress": [], "complete": []}
    for event in seen:
        job.on(event, seen[event].append)
    job_id = job.exec()
    assert job_id.startswith("j")
    assert job.wait() == [x**3 + 5 for x in range(8)]
    assert sorted((event.slice, event.value) for event in seen["result"]) == [(x, x**3 + 5) for x in range(8)]
    assert sorted(line.text for line in seen["console"] if line.slice is not None) == sorted(f"cubing {x}" for x in range(8))
    assert seen["progress"] and all(event.total == 8 for event in seen["progress"])
    assert [status["state"] for status in seen["complete"]] == ["complete"]
    assert job.status()["state"] == "complete"
    assert job.local_exec() == job.wait()


def square_plus(x, offset=0):
    return x * x + offset


def test_results_arrive_in_order_or_as_completed_and_attach_reads_them_again(cluster):
    job = tessera.compute_for([3, 1, 4, 1, 5, 9, 2, 6], square_plus, args=(1,))
    expected = [x * x + 1 for x in [3, 1, 4, 1, 5, 9, 2, 6]]
    as_completed = list(job.results(ordered=False, with_index=True))
    assert sorted(as_completed) == list(enumerate(expected))
    assert list(job.results()) == expected
    assert list(job.results(ordered=True, with_index=True)) == list(enumerate(expected))
    attached = tessera.Job.attach(job.job_id)
    assert attached.total == 8
    assert attached.wait() == expected
    assert attached.status()["state"] == "complete"


def fails_on_two(x):
    if x == 2:
        raise ValueError(f"bad datum {x}")
    return x


def test_a_failing_slice_raises_slice_error_with_the_sandbox_traceback(cluster):
    job = tessera.compute_for(range(4), fails_on_two)
    errors = []
    job.on("error", errors.append)
    with pytest.raises(tessera.SliceError) as raised:
        job.wait()
    error = raised.value
    assert error.slice == 2
    assert error.job_id == job.job_id
    assert error.message == "ValueError: bad datum 2"
    assert "Traceback" in error.traceback and "fails_on_two" in error.traceback
    assert [e.slice for e in errors] == [2]
    assert job.status()["state"] == "complete_with_errors"
    with pytest.raises(tessera.SliceError) as local:
        job.local_exec()
    assert (local.value.slice, local.value.message) == (2, "ValueError: bad datum 2")
    assert "fails_on_two" in local.value.traceback


def busy(x):
    return sum(i * i for i in range(3_000_000)) + x


def test_cancel_ends_the_job_and_its_results(cluster):
    job = tessera.compute_for(range(40), busy)
    results = job.results(ordered=False)
    next(results)  # one slice is done: the job runs
    status = job.cancel()
    assert status["state"] == "cancelled"
    with pytest.raises(tessera.JobFailed) as raised:
        list(results)
    assert raised.value.state == "cancelled" and raised.value.job_id == job.job_id
    assert job.status()["state"] == "cancelled"


PROGRAM = """\
import os
import sys

import dcp
import numpy as np
from helpers.scaling import scale

factor = int(sys.argv[1])
label = sys.argv[2]


def handler(n):
    dcp.progress(0.5)
    return {
        "total": int(np.arange(n + 1).sum()) * factor,
        "scaled": scale(n),
        "label": label,
        "argv0": sys.argv[0],
        "greeting": os.environ["GREETING"],
        "file": open("data/greeting.txt").read().strip(),
        "vector": np.full(2, n, dtype=np.int16),
    }


dcp.set_slice_handler(handler)
"""


def write_bundle(root: Path) -> Path:
    (root / "bundle" / "helpers").mkdir(parents=True)
    (root / "bundle" / "data").mkdir()
    (root / "bundle" / "helpers" / "__init__.py").write_text("")
    (root / "bundle" / "helpers" / "scaling.py").write_text("def scale(n):\n    return n * 0.5\n")
    (root / "bundle" / "data" / "greeting.txt").write_text("hello from the bundle\n")
    return root / "bundle"


def test_a_dcp_style_program_file_with_bundle_env_and_packages(cluster, tmp_path):
    program = tmp_path / "dcp_style.py"
    program.write_text(PROGRAM)
    bundle = write_bundle(tmp_path)
    job = tessera.compute_for(range(5), str(program), args=(3, "tag-7"), env={"GREETING": "hi"},
                              packages=["numpy"], bundle=bundle)
    results = job.wait()
    for n, value in enumerate(results):
        assert same(value, {
            "total": n * (n + 1) // 2 * 3, "scaled": n * 0.5, "label": "tag-7", "argv0": "dcp_style.py",
            "greeting": "hi", "file": "hello from the bundle", "vector": np.full(2, n, dtype=np.int16),
        }), value
    assert same(job.local_exec(), results)


def test_program_source_and_a_tar_gz_bundle_run_locally(tmp_path):
    bundle = write_bundle(tmp_path)
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(bundle.rglob("*")):
            tar.add(entry, arcname=entry.relative_to(bundle).as_posix(), recursive=False)
    job = tessera.compute_for([2], PROGRAM, args=(1, "x"), env={"GREETING": "g"}, bundle=archive)
    assert job.program_name == "main.py"
    assert same(job.local_exec(), [{
        "total": 3, "scaled": 1.0, "label": "x", "argv0": "main.py", "greeting": "g",
        "file": "hello from the bundle", "vector": np.full(2, 2, dtype=np.int16),
    }])


def test_the_dcp_migration_example_runs_with_only_the_import_changed(cluster):
    example = REPO / "examples" / "dcp-migration" / "main.py"
    assert "import tessera as dcp  # was: import dcp" in example.read_text()
    import subprocess

    run = subprocess.run([sys.executable, str(example)], capture_output=True, text=True,
                         env=dict(os.environ, TESSERA_SCHEDULER=cluster.url, TESSERA_API_KEY=cluster.api_key))
    assert run.returncode == 0, run.stderr
    assert "results: [1, 8, 27, 64, 125]" in run.stdout
    assert "result of slice 2: {'datum': 3, 'power': 27, 'unit': 'cubes'}" in run.stdout
    assert "console: slice for 4" in run.stdout
