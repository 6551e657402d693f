"""demo.portable: training workers compute on the portable code path, whatever the caller says."""

from __future__ import annotations

import os
import time
from pathlib import Path

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
    # Killed, not waited for. A worker killed while it maps torch's libraries can take seconds
    # to die on a loaded machine (CI once saw one outlive a 10 s join).
    deadline = time.monotonic() + 120
    while (alive := _running(pool.ctx.processes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.ctx.processes and not alive
    assert "MKL_CBWR" not in os.environ  # the caller's environment, restored after an error too


def _running(procs: list) -> list[tuple[int | None, str]]:
    """Workers the kernel still runs, with their state lines.

    Not `is_alive()`: the executor's thread reaps a killed worker too, and when its waitpid
    wins, ours gets ECHILD, which multiprocessing reads as "still running" until that thread
    records the exit code (CI saw a worker "alive" after join with its /proc entry gone).
    """
    out = []
    for p in procs:
        if p.exitcode is not None:
            continue
        state = _state(p.pid)
        if state.startswith("State:") and state.split()[1] not in ("Z", "X"):
            out.append((p.pid, state))
    return out


def _state(pid: int | None) -> str:
    """The kernel's state line for `pid`, to say why a worker outlived its kill."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as e:
        return str(e)
    return next((line for line in lines if line.startswith("State:")), "?")
