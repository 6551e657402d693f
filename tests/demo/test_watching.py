"""The demo's `opdlens watch` of its first OPD run while the workers train it (demo.watching)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import opdlens
from opdlens.analysis.frame import geometry_columns
from opdlens.analysis.incremental import is_final_column, is_provisional
from opdlens.demo.pipeline import WATCH_DIR, watch_sentence
from opdlens.demo.runs import finished_runs
from opdlens.demo.settings import analyze_options
from opdlens.demo.watching import TRAINING_DONE, TRAINING_FAILED, Follower, log_time, watch_options
from opdlens.errors import CheckpointError
from opdlens.follow import WatchResult
from opdlens.io.paths import read_marker

KEYS = ["step", "tensor", "expert", "part"]
# Computed from an SVD (design.md: within 1e-3 of an exact one); every other float is exact.
SPECTRAL = ("energy_k", "gap_k", "stable_rank", "principal_energy_", "effective_rank")


def _written(checkpoint: Path) -> datetime:
    """When the trainer finished a checkpoint: its newest file's mtime (UTC)."""
    ns = max(p.stat().st_mtime_ns for p in checkpoint.iterdir())
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


def _seen(log: Path) -> dict[int, datetime]:
    """Step → when watch.log says watch analysed it."""
    lines = log.read_text(encoding="utf-8").splitlines()
    return {int(m[1]): log_time(ln) for ln in lines if (m := re.match(r"\S+ step (\d+): ", ln))}


def _saved_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))


def test_demo_watched_its_first_opd_run_while_it_trained(quick_demo: Path) -> None:
    run_dir, out = quick_demo / "opd", quick_demo.parent / WATCH_DIR
    steps = [s for s in _saved_steps(run_dir) if s > 0]
    assert steps[-1] == 40 and len(steps) == 10
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["run_dir"] == str(run_dir.resolve()) and prov["steps"] == steps
    marker = read_marker(out)
    assert marker is not None and marker["command"] == "watch" and marker["complete"] is True
    page = (out / "report" / "report.html").read_text()
    assert "refresh" not in page and f"alignment with step {steps[-1]}" in page
    # Each step was analysed after it was saved, in order; watch began while the run was still
    # training (before its last checkpoint was written), and the demo's training ended while it
    # followed. It may fall behind the run itself: on a busy 2-core machine a step takes watch
    # longer than the quick run takes to save the next, so the last steps may be read after.
    lines = (out / "watch.log").read_text(encoding="utf-8").splitlines()
    seen = _seen(out / "watch.log")
    assert list(seen) == steps
    for step in steps:
        assert seen[step] >= _written(run_dir / f"checkpoint-{step}"), step
    assert seen[steps[0]] < _written(run_dir / f"checkpoint-{steps[-1]}")
    done = [log_time(ln) for ln in lines if ln.endswith(TRAINING_DONE)]
    assert len(done) == 1 and seen[steps[0]] < done[0]
    assert done[0] >= _written(quick_demo / "rl" / f"checkpoint-{steps[-1]}")
    # Its metrics are the demo's own analysis of the run (analyze with the demo's options).
    want = opdlens.analyze(opdlens.open_run(run_dir), analyze_options(workers=1))
    want = want.sort_values(KEYS, na_position="first").reset_index(drop=True)
    got = pd.read_parquet(out / "metrics.parquet")
    got = got.sort_values(KEYS, na_position="first").reset_index(drop=True)
    # every column but the final-update ones, and the base geometry watch leaves out
    geometry = set(geometry_columns(analyze_options(workers=1).ranks))
    kept = [c for c in want.columns if not is_final_column(c) and c not in geometry]
    assert geometry <= set(want.columns) and geometry.isdisjoint(got.columns)
    assert sorted(kept) == sorted(c for c in got.columns if not is_provisional(c))
    assert len(got) == len(want)
    for col in kept:
        a, b = got[col], want[col]
        if col.startswith(SPECTRAL):
            np.testing.assert_allclose(a.astype(float), b.astype(float), atol=1e-3, err_msg=col)
        elif pd.api.types.is_float_dtype(b):
            # Norms add float32 chunk dot products (BLAS), whose last bits depend on the threads
            # the process had: watch ran in the demo's process, this analyze in the test's.
            np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-5,
                                       err_msg=col)  # fmt: skip
        else:
            assert a.tolist() == b.tolist(), col
    assert {"update_norm", "base_norm", "rel_update_norm", "energy_k1"} <= set(kept)


def test_summary_line_names_the_watch_output(quick_demo: Path, tmp_path: Path) -> None:
    runs = finished_runs(quick_demo)
    assert runs is not None and runs.watched is None  # reused: nothing trained, nothing watched
    out = quick_demo.parent / WATCH_DIR
    where = f"one line each in {out / 'watch.log'}; its report {out / 'report' / 'report.html'}."
    assert watch_sentence(runs, out) == (
        f"watch followed runs/opd while an earlier demo trained it (its runs are reused): "
        f"10 steps, {where}"
    )
    watched = WatchResult(out, [1, 2, 4], pd.DataFrame(), pd.DataFrame(), "until")
    line = watch_sentence(dataclasses.replace(runs, watched=watched), out)
    assert line == f"watch followed runs/opd while it trained: 3 steps, {where}"
    stopped = dataclasses.replace(watched, stopped="stopped")
    line = watch_sentence(dataclasses.replace(runs, watched=stopped), out)
    assert "3 steps (it stopped early: stopped), " in line
    assert watch_sentence(runs, tmp_path / "nothing") == (
        "watch: runs/opd was reused, not trained, so there was nothing to follow; a demo that "
        f"trains it follows it with opdlens watch into {tmp_path / 'nothing'}."
    )


def test_watch_stops_when_training_fails(quick_demo: Path, tmp_path: Path) -> None:
    """The trainer saved steps 0 and 1 of the demo's OPD run, then failed: the watch stops at
    once, keeps step 1, and the training's error is the one raised."""
    run_dir, out = tmp_path / "runs" / "opd", tmp_path / "watch"
    for step in (0, 1):
        shutil.copytree(quick_demo / "opd" / f"checkpoint-{step}", run_dir / f"checkpoint-{step}")
    follower = Follower(run_dir, out, 40, watch_options())
    with pytest.raises(RuntimeError, match="worker died"), follower:
        deadline = time.monotonic() + 120
        while not (out / "watch.log").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        failed = time.monotonic()
        raise RuntimeError("worker died")
    assert time.monotonic() - failed < 30  # one poll, not the 40 steps it was waiting for
    assert follower.result is not None and follower.result.stopped == "stopped"
    assert follower.result.steps == [1] and list(_seen(out / "watch.log")) == [1]
    assert (out / "watch.log").read_text().splitlines()[-1].endswith(TRAINING_FAILED)
    assert json.loads((out / "provenance.json").read_text())["steps"] == [1]
    marker = read_marker(out)
    assert marker is not None and marker["complete"] is True


def test_a_failing_watch_raises_after_training(tmp_path: Path) -> None:
    """A watch that cannot follow (the run path is a file) fails the demo once training is
    done, with its own error, rather than vanishing in its thread."""
    run_file = tmp_path / "opd"
    run_file.write_text("not a run")
    follower = Follower(run_file, tmp_path / "watch", 40, watch_options())
    with pytest.raises(CheckpointError), follower:
        pass
    assert follower.result is None
