"""Run per-tensor sweep tasks inline, on local worker threads, or on a Ray cluster."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._malloc import release_freed_buffers
from .._workers import stop_when
from ..devices import ieee_float32, out_of_memory_as_error, prepare
from ..errors import Stopped
from ..io import buffers
from .cache import FactorCache
from .cluster import import_ray
from .gram import gram_tensor
from .options import AnalyzeOptions
from .sweep import TensorResult, sweep_tensor
from .top_eigh import blas_threads

if TYPE_CHECKING:
    from ..run import Run


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to sweep tensors: the run, and what to compute.

    In another process (Ray) the run is the one its `open_args` open there, once per process
    (a Run pickles as them).
    """

    run: Run
    options: AnalyzeOptions
    cache_dir: str | None
    keys: dict[int, str]
    gram: bool = False  # foresee: each task computes the tensor's Gram matrix instead
    donors: tuple[str, ...] = ()  # other runs' cache directories, read for W_0's factors


def run_task(job: Job, name: str) -> tuple[str, TensorResult]:
    """Sweep one tensor (in whatever process this runs in) and save its cache file."""
    with out_of_memory_as_error(f"tensor '{name}'"):
        if job.gram:
            return name, gram_tensor(job.run, name, device=job.options.device)
        cache = FactorCache(Path(job.cache_dir), job.keys).tensor(name) if job.cache_dir else None
        result = sweep_tensor(job.run, name, job.options, cache, [Path(d) for d in job.donors])
    if cache is not None:
        if cache.warning:
            result.warnings.append(cache.warning)
        cache.save()
    return name, result


def _pin_threads(threads: int) -> None:
    release_freed_buffers()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def iter_local(job: Job, names: Sequence[str], workers: int) -> Iterator[tuple[str, TensorResult]]:
    """Yield (name, result) as tasks finish: inline for one worker, else worker threads.

    Workers are threads of this process, not processes: torch releases the GIL in every kernel,
    reads and hashes release it too, and a thread costs no second `import torch` (~2 s and
    ~250 MiB per process here) and no copy of the run's state. Each thread runs its kernels
    on 1 BLAS thread (oversubscribed small SVDs are many times slower on few cores); torch's
    thread count is restored afterwards. If the loop stops early (Ctrl-C, an error, the
    consumer gives up), no queued tensor is started and each thread stops at its next stop
    point (`_workers.stop_point`: every read piece and Krylov pass) before this returns.
    """
    prepare(job.options.device)  # CUDA's lazy solver loading is not thread-safe: do it here
    with ieee_float32():  # held while the consumer iterates (and until it closes this)
        yield from _sweep_local(job, names, workers)


def _sweep_local(
    job: Job, names: Sequence[str], workers: int
) -> Iterator[tuple[str, TensorResult]]:
    """`iter_local`'s sweep, inline or in worker threads."""
    if workers <= 1:
        arrays = buffers.BufferPool()  # reused across this call's tasks, not across yields
        for name in names:
            with buffers.pooled(arrays):
                finished = run_task(job, name)
            yield finished
        return
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for name in names:
        todo.put(name)
    done: queue.SimpleQueue[tuple[str, TensorResult | None, BaseException | None]] = (
        queue.SimpleQueue()
    )
    stop = threading.Event()

    def work() -> None:
        stop_when(stop)
        with buffers.pooled():
            while not stop.is_set():
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put(run_task(job, name) + (None,))
                except Stopped:
                    return
                except BaseException as e:  # handed to the consumer, traceback included
                    done.put((name, None, e))
                    return

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    # scipy's BLAS too, for base geometry's eigensolver: worker threads cannot cap it themselves
    with blas_threads(1) if job.options.base_geometry else nullcontext():
        pool = [
            threading.Thread(target=work, name=f"opdlens-analyze-{i}", daemon=True)
            for i in range(min(workers, len(names)))
        ]
        try:
            for t in pool:
                t.start()
            for _ in names:
                name, result, error = _next(done)
                if error is not None:
                    raise error
                assert result is not None
                yield name, result
        finally:
            stop.set()  # each thread stops at its next stop point (a read piece, a Krylov pass)
            for t in pool:
                while t.is_alive():  # in short slices: a second Ctrl-C still interrupts the wait
                    t.join(0.1)
            torch.set_num_threads(threads_before)


def _next(done: queue.SimpleQueue) -> tuple:
    """The next finished task; waits in short slices so that Ctrl-C is seen at once."""
    while True:
        try:
            return done.get(timeout=0.1)
        except queue.Empty:
            continue


def iter_ray(
    job: Job, names: Sequence[str], address: str | None
) -> Iterator[tuple[str, TensorResult]]:
    """Yield (name, result) from one Ray task per tensor."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_ray_task)
        job_ref = ray.put(job)
        pending = {remote.remote(job_ref, name): name for name in names}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def _ray_task(job: Job, name: str) -> tuple[str, TensorResult]:
    _pin_threads(1)
    prepare(job.options.device)
    with ieee_float32():  # a Ray worker is reused across tasks, the user's among them
        return run_task(job, name)


def make_iterator(job: Job, names: Sequence[str]) -> Iterator[tuple[str, TensorResult]]:
    """Sweep `names` on the executor `job.options` names, yielding (name, result) as each ends."""
    opts = job.options
    if opts.executor == "local":
        return iter_local(job, names, opts.worker_count)
    if opts.executor == "ray":
        return iter_ray(job, names, opts.address)
    raise AssertionError(f"AnalyzeOptions let through the executor {opts.executor!r}")
