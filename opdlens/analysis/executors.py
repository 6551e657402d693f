"""Run per-tensor sweep tasks inline, on a local process pool, or on a Ray cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._malloc import release_freed_buffers
from .._workers import PoolContext
from ..errors import OpdlensError
from .cache import FactorCache
from .options import AnalyzeOptions
from .sweep import TensorResult, gram_tensor, sweep_tensor

if TYPE_CHECKING:
    from ..run import Run


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to sweep tensors: the run, and what to compute.

    In another process the run is the one its `open_args` open there, once per process (a Run
    pickles as them).
    """

    run: Run
    options: AnalyzeOptions
    cache_dir: str | None
    keys: dict[int, str]
    gram: bool = False  # foresee: each task computes the tensor's Gram matrix instead


def run_task(job: Job, name: str) -> tuple[str, TensorResult]:
    """Sweep one tensor (in whatever process this runs in) and save its cache file."""
    if job.gram:
        return name, gram_tensor(job.run, name)
    cache = FactorCache(Path(job.cache_dir), job.keys).tensor(name) if job.cache_dir else None
    result = sweep_tensor(job.run, name, job.options, cache)
    if cache is not None:
        if cache.warning:
            result.warnings.append(cache.warning)
        cache.save()
    return name, result


def _pin_threads(threads: int) -> None:
    release_freed_buffers()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _init_local(threads: int) -> None:
    _pin_threads(threads)


def iter_local(job: Job, names: Sequence[str], workers: int) -> Iterator[tuple[str, TensorResult]]:
    """Yield (name, result) as tasks finish: inline for one worker, else a spawn process pool.

    Workers never re-run the caller's __main__, ignore Ctrl-C and die with this process. If the
    loop stops early (Ctrl-C, an error, the consumer gives up), queued tasks are cancelled and
    the workers killed at once instead of finishing every queued tensor.
    """
    if workers <= 1:
        for name in names:
            yield run_task(job, name)
        return
    ctx = PoolContext()
    # One BLAS thread per worker: oversubscribed small SVDs are many times slower on few cores.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_local, initargs=(1,))
    finished = False
    try:
        futures = [pool.submit(run_task, job, name) for name in names]
        for fut in as_completed(futures):
            yield fut.result()
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            pool.shutdown(wait=False, cancel_futures=True)
            ctx.kill_workers()


def iter_ray(
    job: Job, names: Sequence[str], address: str | None
) -> Iterator[tuple[str, TensorResult]]:
    """Yield (name, result) from one Ray task per tensor."""
    try:
        import ray
    except ImportError:
        raise OpdlensError(
            "--executor ray needs Ray, which is not installed; install it with "
            "`pip install 'opdlens[ray]'` (or `pip install ray`)."
        ) from None
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
    return run_task(job, name)


def make_iterator(job: Job, names: Sequence[str]) -> Iterator[tuple[str, TensorResult]]:
    """Sweep `names` on the executor `job.options` names, yielding (name, result) as each ends."""
    opts = job.options
    if opts.executor == "local":
        return iter_local(job, names, opts.worker_count)
    if opts.executor == "ray":
        return iter_ray(job, names, opts.address)
    raise AssertionError(f"AnalyzeOptions let through the executor {opts.executor!r}")
