"""Pool workers: launched without the caller's __main__, recorded, and killed at once on request."""

from __future__ import annotations

import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from opdlens._workers import PoolContext, _launching


def test_launching_hides_main_and_restores_it_even_after_an_error() -> None:
    main = sys.modules["__main__"]
    with pytest.raises(RuntimeError, match="launch failed"), _launching():
        hidden = sys.modules["__main__"]
        assert isinstance(hidden, types.ModuleType) and hidden is not main
        assert vars(hidden).keys() <= {
            "__name__",
            "__doc__",
            "__package__",
            "__loader__",
            "__spec__",
        }
        raise RuntimeError("launch failed")
    assert sys.modules["__main__"] is main


def test_kill_workers_stops_a_busy_pool_at_once() -> None:
    context = PoolContext()
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        assert pool.submit(sum, [1, 2, 3]).result(timeout=120) == 6  # a worker runs tasks
        (worker,) = context.processes
        busy = pool.submit(time.sleep, 60)
        time.sleep(0.2)  # the sleep has reached the worker
        start = time.perf_counter()
        context.kill_workers()
        with pytest.raises(BrokenProcessPool):
            busy.result(timeout=30)
        assert time.perf_counter() - start < 10
    assert not worker.is_alive()
