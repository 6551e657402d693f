"""ray_session: no Ray cluster at --address is one line, exit 2, and no output left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import opdlens
from opdlens.analysis.cluster import ray_session
from opdlens.analysis.options import AnalyzeOptions
from opdlens.errors import OpdlensError
from opdlens.run import open_run

ray = pytest.importorskip("ray")


@pytest.fixture
def no_cluster_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a shell where no Ray cluster runs: no RAY_ADDRESS, a fresh temp dir."""
    assert not ray.is_initialized()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TMPDIR"] = str(tmp_path / "tmp")  # ray looks for a running cluster's files under it
    (tmp_path / "tmp").mkdir()
    return env


@pytest.mark.parametrize("command", ["analyze", "foresee"])
def test_the_ray_tour_line_without_a_cluster_is_one_line_and_leaves_no_out(
    hf_run, tmp_path: Path, no_cluster_env: dict[str, str], command: str
) -> None:
    out = tmp_path / "m-ray"
    argv = [sys.executable, "-m", "opdlens", command, str(hf_run()), "--out", str(out),
            "--executor", "ray", "--address", "auto"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=no_cluster_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "ConnectionError" not in proc.stderr
    assert "--executor ray could not connect to --address auto" in lines[0]
    assert "--executor local" in lines[0]
    assert not out.exists()  # neither .opdlens nor cache/


def test_the_api_raises_an_opdlens_error(
    hf_run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(OpdlensError, match="could not connect to --address auto"):
        opdlens.analyze(open_run(hf_run()), ranks=(1,), executor="ray", address="auto")
    assert not ray.is_initialized()


def test_local_executor_and_an_initialised_ray_are_left_alone() -> None:
    with ray_session(AnalyzeOptions(executor="local")):
        assert not ray.is_initialized()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with ray_session(AnalyzeOptions(executor="ray")):
            assert ray.is_initialized()
        assert ray.is_initialized()  # its owner (this test) shuts it down, not ray_session
    finally:
        ray.shutdown()
