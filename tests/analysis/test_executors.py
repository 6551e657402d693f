"""Executors: worker threads and Ray give what the inline loop gives; Ctrl-C stops analyze at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from checkpoints import write_state_dir
from planted import RANKS, SMALL_CONFIG, small_states, write_state_run

import opdlens
from opdlens import OpdlensError, open_run
from opdlens.io.paths import read_marker


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return write_state_run(tmp_path_factory.mktemp("exec"), small_states(), SMALL_CONFIG)


@pytest.fixture(scope="module")
def inline(run_root) -> pd.DataFrame:
    return opdlens.analyze(open_run(run_root), ranks=RANKS, consecutive=True, workers=1)


@pytest.mark.parametrize("geometry", [False, True])
def test_worker_threads_equal_inline_and_leave_torch_threads_alone(run_root, inline, geometry):
    import scipy.linalg  # noqa: F401  (its BLAS is loaded before the libraries are listed)
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        libs = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
        pooled = opdlens.analyze(open_run(run_root), ranks=RANKS, consecutive=True, workers=3,
                                 base_geometry=geometry)  # fmt: skip
        assert torch.get_num_threads() == 2  # pinned to 1 per worker during the sweep only
        # OpenMP (torch's) and every BLAS as they were; base geometry capped scipy's meanwhile.
        assert {i["filepath"]: i["num_threads"] for i in threadpool_info()} == libs
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_frame_equal(pooled[list(inline.columns)], inline)


def test_a_worker_error_reaches_the_caller(tmp_path):
    # A tensor cut short in one checkpoint: its worker's CheckpointError is raised by analyze.
    root = write_state_run(tmp_path / "run", small_states((0, 1)), SMALL_CONFIG)
    path = root / "checkpoint-1" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(OpdlensError, match="cut short|truncated"):
        opdlens.analyze(open_run(root), ranks=RANKS, workers=2)


@pytest.mark.slow
def test_ray_equals_local(run_root, inline):
    ray = pytest.importorskip("ray")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = opdlens.analyze(open_run(run_root), ranks=RANKS, consecutive=True, executor="ray")
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(got, inline)
    print(f"ray test took {time.perf_counter() - t:.1f} s")


def test_missing_ray_is_a_clear_error(run_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(OpdlensError, match=r"pip install 'opdlens\[ray\]'"):
        opdlens.analyze(open_run(run_root), ranks=RANKS, executor="ray")


def test_bad_executor_options(run_root):
    run = open_run(run_root)
    with pytest.raises(ValueError, match="'executor' parameter must be 'local' or 'ray'"):
        opdlens.analyze(run, ranks=RANKS, executor="dask", workers=1)
    with pytest.raises(ValueError, match="'address' parameter is for a Ray cluster"):
        opdlens.analyze(run, ranks=RANKS, address="ray://head:10001")
    with pytest.raises(ValueError, match="'workers' parameter must be ≥ 1"):
        opdlens.analyze(run, ranks=RANKS, workers=0)


# -- the CLI with two workers: no worker process, and Ctrl-C stops everything at once ----------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def busy_run(tmp_path_factory) -> Path:
    """40 matrices of 256×256 at 5 steps: several seconds of work for two workers."""
    root = tmp_path_factory.mktemp("busy")
    g = torch.Generator().manual_seed(0)
    base = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(256, 256, generator=g)
            for i in range(40)}  # fmt: skip
    for s in (0, 1, 2, 4, 8):
        state = {k: w + 0.01 * s * torch.randn(w.shape, generator=g) for k, w in base.items()}
        write_state_dir(root / f"checkpoint-{s}", state, config=SMALL_CONFIG)
    return root


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc/*/stat; /proc/<pid>/task/*/children may be absent)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _threads(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return 0


def _wait_for(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _start_analyze(run: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "opdlens", "analyze", str(run), "--out", str(out),
           "--workers", "2", "--quiet"]  # fmt: skip
    # Its own process group, so that a Ctrl-C (SIGINT to the group) reaches only it.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _busy(out: Path) -> bool:
    """A worker has finished a tensor: the cache holds its index and at least one entry."""
    cache = out / "cache"
    return cache.is_dir() and len([p for p in cache.iterdir() if not p.name.startswith(".")]) >= 2


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@linux_only
def test_two_workers_are_threads_not_processes(busy_run, tmp_path):
    # A worker process would import torch again (~2 s and ~250 MiB each on this machine).
    out = tmp_path / "out"
    proc = _start_analyze(busy_run, out)
    try:
        assert _wait_for(lambda: _busy(out), 120)
        assert _children(proc.pid) == []
        assert _threads(proc.pid) >= 3  # the main thread and two workers (plus torch's own)
    finally:
        _reap(proc)


@linux_only
@pytest.mark.parametrize("when", ["starting", "busy"])
def test_ctrl_c_stops_at_once_with_one_line(busy_run, tmp_path, when):
    out = tmp_path / "out"
    proc = _start_analyze(busy_run, out)
    try:
        # "starting": still importing torch or opening the run; "busy": sweeping tensors.
        assert _wait_for(lambda: (out / ".opdlens").exists() or _busy(out), 120)
        if when == "busy":
            assert _wait_for(lambda: _busy(out), 120)
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = proc.communicate(timeout=30)
        # The process stops at once; exiting includes torch's own teardown (~1.5 s here).
        assert time.monotonic() - t < 5, stderr
        assert proc.returncode == 130
        assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
        assert stderr.startswith("opdlens: interrupted")
        assert not any(
            (out / f).exists() for f in ("metrics.parquet", "metrics.csv", "provenance.json")
        )
        marker = read_marker(out)
        assert marker is None or marker["complete"] is False
    finally:
        _reap(proc)
