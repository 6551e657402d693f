"""Issue 25: what measuring weight dynamics at each save costs the demo's post-training.

    python benchmarks/bench_dynamics.py [--demo DIR] [--repeat 2] [--kind opd]

The demo's full preset (120 OPD steps, saves at step 0, the powers of two, every 20 steps and
the last) from the demo's teacher and student start, read from DIR/runs (an earlier `opdlens
demo --out DIR`; without one a --quick demo is trained there first). Plain post-training and
post-training with `opdlens.analysis.live.WeightDynamics` measuring at every save — what
`WeightDynamicsCallback` does at its defaults, α* from the previous save's checkpoint
included — run --repeat times each, interleaved, in this process on one thread (as the
demo's workers train); the medians are compared.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from opdlens.analysis.live import WeightDynamics
from opdlens.checkpoint import open_checkpoint
from opdlens.demo.model import load_model
from opdlens.demo.runs import generate_runs
from opdlens.demo.settings import demo_settings, replicate_dir
from opdlens.demo.train import post_train, saved_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("/tmp/opdlens-bench/demo"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--kind", choices=("opd", "rl"), default="opd")
    args = parser.parse_args()
    runs = args.demo / "runs"
    if not (runs / "teacher").is_dir():
        print(f"training the demo's start (a --quick demo) into {runs} …", flush=True)
        generate_runs(runs, quick=True, progress=False)
    settings = demo_settings(quick=False)
    teacher, _ = load_model(runs / "teacher")
    student, _ = load_model(runs / replicate_dir("opd", 0) / "checkpoint-0")
    post, task = settings.post, settings.task
    keep = set(saved_steps(post.steps, post.save_every)) - {0}
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"plain": [], "measured": []}
    measures: list[float] = []
    for _ in range(args.repeat):
        for case in times:
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / "run"
                hook, spent = _hook(student, run_dir, keep) if case == "measured" else (None, [])
                t0 = time.perf_counter()
                post_train(args.kind, student, teacher, task, post, seed=1, run_dir=run_dir,
                           on_step=hook)  # fmt: skip
                times[case].append(time.perf_counter() - t0)
                measures += spent
                shutil.rmtree(run_dir, ignore_errors=True)
            print(f"{case}: {times[case][-1]:.1f} s", flush=True)
    plain, measured = statistics.median(times["plain"]), statistics.median(times["measured"])
    one = statistics.median(measures)
    print(f"post-training ({args.kind}, {post.steps} steps, {len(keep)} saves measured): "
          f"plain {plain:.1f} s, measured {measured:.1f} s, added {measured / plain - 1:+.1%}; "
          f"one measurement {one * 1e3:.0f} ms (median), {len(keep)} of them "
          f"{len(keep) * one / plain:.1%} of the plain run")  # fmt: skip


def _hook(start: torch.nn.Module, run_dir: Path, keep: set[int]):  # noqa: ANN202
    """on_step measuring at the saved steps; the seconds each measurement took."""
    dyn = WeightDynamics()
    dyn.start(start)
    spent: list[float] = []

    def on_step(model: torch.nn.Module, step: int) -> None:
        if step not in keep:
            return
        t0 = time.perf_counter()
        prev = dyn.previous_step
        previous = None
        if prev is not None and (run_dir / f"checkpoint-{prev}").is_dir():
            ck = open_checkpoint(run_dir / f"checkpoint-{prev}", prev, trust_pickle=False)
            previous = ck.tensor
        dyn.measure(model, step, previous)
        spent.append(time.perf_counter() - t0)

    return on_step, spent


if __name__ == "__main__":
    main()
