"""Run the demo's training in worker processes on a code path that every x86-64 CPU shares.

The toy's training amplifies rounding: the same seed on an AVX-512 and an AVX2 machine used to
give other runs and other verdicts. Each training process therefore starts with ATen's portable
kernels (`ATEN_CPU_CAPABILITY=default`), MKL's conditional numerical reproducibility
(`MKL_CBWR=COMPATIBLE`) and one thread, so a given torch build trains the same runs on any
x86-64 CPU, whatever the caller's thread settings. Another torch or MKL release may still round
differently; README says what then holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from opdlens._workers import PoolContext

# Read by torch and MKL once, when a process first computes: set before the workers start.
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
T = TypeVar("T")


# What torch.backends.cpu.get_cpu_capability() calls the portable kernels: "NO AVX" up to
# torch 2.6, "DEFAULT" later.
PORTABLE_CAPABILITIES = ("DEFAULT", "NO AVX")


def code_path() -> dict[str, str]:
    """What decides this process's rounding: torch's version, CPU kernels and threads."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
    }


def _init_worker() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


@contextmanager
def _portable_environ() -> Iterator[None]:
    """os.environ with PORTABLE_ENV while workers are spawned (they copy it), restored after."""
    old = {k: os.environ.get(k) for k in PORTABLE_ENV}
    os.environ.update(PORTABLE_ENV)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PortablePool:
    """A process pool whose workers compute on the portable code path (see the module doc).

    Use as a context manager; `submit` as ProcessPoolExecutor's. On an error or Ctrl-C the
    workers are killed rather than waited for.
    """

    def __init__(self, workers: int) -> None:
        self.ctx = PoolContext()
        self.pool = ProcessPoolExecutor(max(1, workers), mp_context=self.ctx,
                                        initializer=_init_worker)  # fmt: skip
        self._environ = _portable_environ()

    def __enter__(self) -> PortablePool:
        self._environ.__enter__()
        return self

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run fn(*args) in a portable worker."""
        return self.pool.submit(fn, *args)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.pool.shutdown(wait=True)
            else:
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.ctx.kill_workers()
        finally:
            self._environ.__exit__(None, None, None)


def run_portable(fn: Callable[..., T], /, *args: Any) -> T:
    """fn(*args) computed in one portable worker process."""
    with PortablePool(1) as pool:
        return pool.submit(fn, *args).result()
