"""tessera.Executor as a concurrent.futures.Executor."""
from __future__ import annotations

import concurrent.futures

import tessera


def power(base, exponent):
    return base**exponent


def add(a, b=0):
    return a + b


def test_executor_map_and_submit(cluster):
    with tessera.Executor() as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        mapped = executor.map(power, range(6), [2, 2, 2, 3, 3, 3])
        futures = [executor.submit(add, 2, b=3), executor.submit(add, 5)]
        assert list(mapped) == [0, 1, 4, 27, 64, 125]
        done, _ = concurrent.futures.wait(futures)
        assert [future.result() for future in futures] == [5, 5]
