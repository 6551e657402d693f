"""Local pool workers that skip the caller's __main__, ignore Ctrl-C and die with their parent;
stop points for worker threads; Ctrl-C noted where a native call hides it.

Kept free of torch imports: a worker runs `_arrive` while it is unpickled, before it imports
the heavy modules its tasks need (seconds of torch import on a busy machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from multiprocessing.context import BaseContext, SpawnProcess
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from .errors import Stopped

if TYPE_CHECKING:
    from multiprocessing.popen_spawn_posix import Popen

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_BLOCKABLE = hasattr(signal, "pthread_sigmask")
_LAUNCH_LOCK = threading.Lock()


@contextlib.contextmanager
def ctrl_c_noted() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT), which still raises KeyboardInterrupt as before.

    A Ctrl-C inside a native read can come out as another error (safetensors' get_tensor turned
    it into ValueError); the event tells such an error from a bug. Nested uses share the outer
    event. Only where Python's own handler is in place and this is the main thread; else never set.
    """
    current = signal.getsignal(signal.SIGINT)
    outer = getattr(current, "opdlens_seen", None)
    if isinstance(outer, threading.Event):
        yield outer
        return
    seen = threading.Event()
    if (
        threading.current_thread() is not threading.main_thread()
        or current is not signal.default_int_handler
    ):
        yield seen
        return

    def noted(signum: int, frame: object) -> None:
        seen.set()
        raise KeyboardInterrupt

    noted.opdlens_seen = seen  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, noted)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _die_with_parent(parent: int) -> None:
    """Exit as soon as process `parent` dies, even by SIGKILL, instead of idling for minutes."""
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            armed = prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.25)
    os._exit(1)


def _arrive(parent: int) -> WorkerProcess:
    """Unpickle a worker in its own process: first ignore Ctrl-C and tie it to `parent`."""
    # Ctrl-C reaches the whole process group; the parent alone handles it. Ignoring SIGINT also
    # discards one that arrived while it was still blocked from launch (see _launching).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _BLOCKABLE:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent)
    return WorkerProcess.__new__(WorkerProcess)


_THREAD = threading.local()


class SharedSetting:
    """A process-wide setting that nested and concurrent holders share: the first one in applies
    it, the last one out undoes it (what the first found is what comes back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._undo: Callable[[], None] | None = None

    @contextlib.contextmanager
    def held(self, apply: Callable[[], Callable[[], None]]) -> Iterator[None]:
        """Hold the setting; `apply()` sets it and returns what undoes it (first holder only)."""
        with self._lock:
            if self._inside == 0:
                self._undo = apply()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._undo is not None:
                    undo, self._undo = self._undo, None
                    undo()


def stop_when(event: threading.Event | None) -> None:
    """Make `stop_point` in the calling thread raise `Stopped` once `event` is set (None: never)."""
    _THREAD.stop = event


def stop_point() -> None:
    """Raise `Stopped` if this thread's pool was told to stop; else return at once.

    Long loops (a tensor's read, Krylov passes) call it, so that a Ctrl-C ends worker threads
    within one iteration instead of one whole tensor.
    """
    event = getattr(_THREAD, "stop", None)
    if event is not None and event.is_set():
        raise Stopped


@contextlib.contextmanager
def _launching() -> Iterator[None]:
    """While a worker is launched: hide the caller's __main__ and block SIGINT in this thread.

    A spawned child re-runs the parent's __main__ before it unpickles its task, which fails for
    stdin ('<stdin>') and re-runs a script without an `if __name__ == "__main__":` guard
    (multiprocessing's "bootstrapping phase" error). Pool tasks live in opdlens, so workers need
    nothing from __main__. The child inherits the blocked SIGINT, so a Ctrl-C while it starts
    stays pending until `_arrive` discards it: no traceback from a half-started worker.
    """
    with _LAUNCH_LOCK:
        main = sys.modules.get("__main__")
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if _BLOCKABLE else None
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


class WorkerProcess(SpawnProcess):
    """A spawned pool worker (see the module docstring).

    On Linux it gets SIGKILL when the thread that started it ends, so start it from the thread
    that also shuts the pool down (as ProcessPoolExecutor does with the spawn method).
    """

    def __reduce__(self) -> tuple[object, ...]:
        # (callable, args, state): the child calls _arrive before it unpickles the state,
        # which imports the task's modules.
        return _arrive, (os.getpid(),), self.__dict__

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Popen:  # noqa: N802  (multiprocessing's name)
        with _launching():
            popen = SpawnProcess._Popen(process_obj)
            # Kept before SIGINT is unblocked: a Ctrl-C right here must not orphan the worker.
            process_obj._opdlens_popen = popen  # type: ignore[attr-defined]
        return popen


class PoolContext(BaseContext):
    """A spawn context for ProcessPoolExecutor whose workers can all be killed at once."""

    # multiprocessing's SpawnContext is exactly this with Process = SpawnProcess; Process here
    # is a method instead (it records each worker), which SpawnContext's type does not allow.
    _name = "spawn"

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[WorkerProcess] = []

    def Process(self, *args: object, **kwargs: object) -> WorkerProcess:  # noqa: N802
        proc = WorkerProcess(*args, **kwargs)  # type: ignore[arg-type]
        self.processes.append(proc)
        return proc

    def kill_workers(self) -> None:
        """SIGKILL every worker still running; their tasks are abandoned."""
        for proc in self.processes:
            popen = getattr(proc, "_opdlens_popen", None)
            if popen is not None and popen.poll() is None:
                with contextlib.suppress(OSError):
                    popen.kill()
