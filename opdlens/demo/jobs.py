"""The demo's post-training runs as independent seeded jobs, run inline or in worker processes."""

from __future__ import annotations

import copy
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opdlens.demo.model import TinyLlama
from opdlens.demo.portable import PortablePool, code_path
from opdlens.demo.settings import DemoSettings
from opdlens.demo.task import AdditionTask
from opdlens.demo.train import PostTrainSettings, greedy_accuracy, post_train, sft
from opdlens.errors import OpdlensError
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
    out: dict[str, Any] = {"name": job.name, "seconds": time.perf_counter() - t0, "curve": curve,
                           "code_path": code_path()}  # fmt: skip
    if callback is not None:
        out.update(history=callback.history, alpha0=callback.alpha0,
                   max_candidates=callback.max_candidates)  # fmt: skip
    return out


@dataclass(frozen=True)
class Trained:
    """The SFT run's result: the teacher (its end), the student start (its first snapshot at
    student_target), the steps it took, its seconds, and the code path it computed on."""

    teacher: TinyLlama
    student: TinyLlama
    sft_steps: int
    seconds: float
    code_path: dict[str, str]


def train_start(settings: DemoSettings, seed: int, progress: bool) -> Trained:
    """Train the teacher and the student start with one SFT run (a job for a portable worker)."""
    t0 = time.perf_counter()
    task = settings.task
    val = task.split("val")
    torch.manual_seed(seed)
    model = TinyLlama(settings.arch)
    snapshots: list[TinyLlama] = []

    def checkpoint(m: TinyLlama) -> bool:
        acc = greedy_accuracy(m, *val)
        if not snapshots and acc >= settings.student_target:
            snapshots.append(copy.deepcopy(m).eval())
        return acc >= settings.teacher_target

    bar = Progress(settings.sft_steps, "demo sft", enabled=progress)
    steps = sft(model, task.sampler(seed + 100), steps=settings.sft_steps, lr=settings.sft_lr,
                batch=settings.sft_batch, stop=checkpoint, check_every=5,
                label_smoothing=settings.label_smoothing, bar=bar)  # fmt: skip
    bar.close()
    if not snapshots:
        raise OpdlensError(
            f"The demo SFT never reached the student target {settings.student_target} "
            "validation accuracy; this preset does not work with this seed."
        )
    return Trained(model.eval(), snapshots[0], steps, time.perf_counter() - t0, code_path())


def run_jobs(
    start: Start, jobs: list[Job], *, workers: int = 1, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Run the jobs `workers` at a time in portable worker processes (demo.portable).

    Each job is seeded on its own, so the runs are the same whatever `workers`.
    """
    bar = Progress(start.post.steps * len(jobs), "demo post-training", enabled=progress)
    results: dict[str, dict[str, Any]] = {}
    try:
        with PortablePool(min(workers, len(jobs))) as pool:
            futures = [pool.submit(run_job, start, job) for job in jobs]
            for fut in as_completed(futures):
                result = fut.result()
                results[result["name"]] = result
                bar.update(start.post.steps)
        return results
    finally:
        bar.close()
