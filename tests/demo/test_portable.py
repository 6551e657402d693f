"""demo.portable: training workers compute on the portable code path, whatever the caller says."""

from __future__ import annotations

import os

import pytest
import torch

from opdlens.demo.portable import (
    PORTABLE_CAPABILITIES,
    PORTABLE_ENV,
    PortablePool,
    code_path,
    run_portable,
)


def test_a_worker_runs_on_the_portable_path_and_the_callers_settings_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    path = run_portable(code_path)
    assert path.pop("cpu_capability") in PORTABLE_CAPABILITIES
    assert path == {"torch": torch.__version__, "threads": "1", "mkl_cbwr": "COMPATIBLE"}
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["OMP_NUM_THREADS"] == "2"
    assert "MKL_CBWR" not in os.environ
    assert set(PORTABLE_ENV) >= {"ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS"}


def test_an_error_in_a_worker_reaches_the_caller_and_the_workers_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MKL_CBWR", raising=False)
    with pytest.raises(ValueError, match="invalid literal"):
        run_portable(int, "not a number")
    with pytest.raises(ValueError), PortablePool(2) as pool:
        futures = [pool.submit(int, "7"), pool.submit(int, "x")]
        assert futures[0].result() == 7
        futures[1].result()
    for proc in pool.ctx.processes:  # killed, not waited for: reap them
        proc.join(timeout=10)
    assert pool.ctx.processes and all(not p.is_alive() for p in pool.ctx.processes)
    assert "MKL_CBWR" not in os.environ  # the caller's environment, restored after an error too
