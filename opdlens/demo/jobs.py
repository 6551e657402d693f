"""The demo's post-training runs as independent seeded jobs, run inline or in worker processes."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdlens._workers import PoolContext
from opdlens.demo.model import TinyLlama
from opdlens.demo.task import AdditionTask
from opdlens.demo.train import PostTrainSettings, greedy_accuracy, post_train
from opdlens.extrapolation.callback import EffOPD
from opdlens.progress import Progress
from opdlens.schedule import is_power_of_two


@dataclass(frozen=True)
class Start:
    """What every job starts from: the student, its teacher, the task and the settings."""

    student: TinyLlama
    teacher: TinyLlama
    task: AdditionTask
    post: PostTrainSettings
    eval_every: int  # test-accuracy resolution of a recorded curve, in steps
    demo: dict[str, Any]  # the config.json section of the saved checkpoints


@dataclass(frozen=True)
class Job:
    """One post-training run: OPD or RL with its seed; saved into run_dir unless None."""

    name: str
    kind: str
    seed: int
    run_dir: Path | None
    record: bool = False  # record test accuracy every eval_every steps and at powers of two
    effopd: bool = False  # apply the online EffOPD callback (scored on validation accuracy)


def run_job(start: Start, job: Job, bar: Progress | None = None) -> dict[str, Any]:
    """Train one job; return its name, seconds, and (when asked) curve and EffOPD history."""
    t0 = time.perf_counter()
    task = start.task
    val, test = task.split("val"), task.split("test")
    curve: list[tuple[int, float]] = []
    callback = EffOPD() if job.effopd else None
    if callback is not None:
        callback.start(start.student)
    if job.record:
        curve.append((0, greedy_accuracy(start.student, *test)))

    def on_step(model: torch.nn.Module, step: int) -> None:
        if callback is not None:
            callback.after_step(model, step, lambda m: greedy_accuracy(m, *val))
        if job.record and (step % start.eval_every == 0 or is_power_of_two(step)):
            curve.append((step, greedy_accuracy(model, *test)))

    post_train(
        job.kind, start.student, start.teacher, task, start.post, seed=job.seed,
        run_dir=job.run_dir, demo={**start.demo, "role": "student"},
        on_step=on_step if job.record or callback is not None else None, bar=bar,
    )  # fmt: skip
    out: dict[str, Any] = {"name": job.name, "seconds": time.perf_counter() - t0, "curve": curve}
    if callback is not None:
        out.update(history=callback.history, alpha0=callback.alpha0,
                   max_candidates=callback.max_candidates)  # fmt: skip
    return out


def _init_worker() -> None:
    torch.set_num_threads(1)  # the numbers do not depend on the core count, as inline


def run_jobs(
    start: Start, jobs: list[Job], *, workers: int = 1, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Run the jobs inline (workers = 1) or `workers` at a time in spawned processes.

    Each job is seeded on its own, so the runs are the same either way.
    """
    bar = Progress(start.post.steps * len(jobs), "demo post-training", enabled=progress)
    results: dict[str, dict[str, Any]] = {}
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                results[job.name] = run_job(start, job, bar)
            return results
        ctx = PoolContext()
        with ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker
        ) as pool:
            futures = [pool.submit(run_job, start, job) for job in jobs]
            try:
                for fut in as_completed(futures):
                    result = fut.result()
                    results[result["name"]] = result
                    bar.update(start.post.steps)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                ctx.kill_workers()
                raise
        return results
    finally:
        bar.close()
