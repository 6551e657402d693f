"""Pool workers: launched without the caller's __main__, recorded, and killed at once on request."""

from __future__ import annotations

import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import pytest

from opdlens._workers import PoolContext, _launching, ctrl_c_noted


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


def test_ctrl_c_noted_sets_its_event_shares_it_when_nested_and_restores_the_handler() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c_noted() as seen:
        with ctrl_c_noted() as inner:
            assert inner is seen
        assert not seen.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # still Python's KeyboardInterrupt
        assert seen.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with ctrl_c_noted() as fresh:
        assert fresh is not seen and not fresh.is_set()


def test_ctrl_c_noted_in_a_thread_shares_the_main_event_or_gets_its_own() -> None:
    got: list[threading.Event] = []

    def in_thread() -> None:
        with ctrl_c_noted() as seen:
            got.append(seen)

    def run_thread() -> None:
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()

    with ctrl_c_noted() as main_seen:
        run_thread()
    run_thread()
    assert got[0] is main_seen  # the Ctrl-C the main thread notes is the thread's too
    assert got[1] is not main_seen and not got[1].is_set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_noted_leaves_another_handler_in_place() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_noted() as seen:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not seen.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_shared_setting_is_applied_by_the_first_holder_and_undone_by_the_last() -> None:
    from opdlens._workers import SharedSetting

    log: list[str] = []

    def apply() -> Callable[[], None]:
        log.append("apply")
        return lambda: log.append("undo")

    setting = SharedSetting()
    inside, leave = threading.Event(), threading.Event()

    def worker() -> None:  # holds it across the first holder's exit
        with setting.held(apply):
            inside.set()
            leave.wait(10)

    with setting.held(apply):
        with setting.held(apply):  # nested: neither applies nor undoes
            pass
        thread = threading.Thread(target=worker)
        thread.start()
        assert inside.wait(10)
    assert log == ["apply"]  # the worker still holds it
    leave.set()
    thread.join(10)
    assert log == ["apply", "undo"]
    with setting.held(apply):
        pass
    assert log == ["apply", "undo", "apply", "undo"]
