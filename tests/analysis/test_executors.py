"""Executors: a spawn pool and Ray give exactly what the inline loop gives."""

from __future__ import annotations

import sys
import time

import pandas as pd
import pytest
from planted import RANKS, SMALL_CONFIG, small_states, write_state_run

from opdlens import OpdlensError, open_run


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return write_state_run(tmp_path_factory.mktemp("exec"), small_states(), SMALL_CONFIG)


@pytest.fixture(scope="module")
def inline(run_root) -> pd.DataFrame:
    return open_run(run_root).analyze(RANKS, consecutive=True, workers=1)


def test_process_pool_equals_inline(run_root, inline):
    pooled = open_run(run_root).analyze(RANKS, consecutive=True, workers=2)
    pd.testing.assert_frame_equal(pooled, inline)


@pytest.mark.slow
def test_ray_equals_local(run_root, inline):
    ray = pytest.importorskip("ray")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = open_run(run_root).analyze(RANKS, consecutive=True, executor="ray")
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(got, inline)
    print(f"ray test took {time.perf_counter() - t:.1f} s")


def test_missing_ray_is_a_clear_error(run_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(OpdlensError, match=r"pip install 'opdlens\[ray\]'"):
        open_run(run_root).analyze(RANKS, executor="ray")


def test_bad_executor_options(run_root):
    run = open_run(run_root)
    with pytest.raises(ValueError, match="'executor' parameter must be 'local' or 'ray'"):
        run.analyze(RANKS, executor="dask", workers=1)
    with pytest.raises(ValueError, match="'address' parameter is for a Ray cluster"):
        run.analyze(RANKS, address="ray://head:10001")
    with pytest.raises(ValueError, match="'workers' parameter must be ≥ 1"):
        run.analyze(RANKS, workers=0)
