"""The quick demo runs (trained once per session) and the full demo, for the demo tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from opdlens.demo import generate_runs


@pytest.fixture(scope="session")
def runs(quick_demo: Path):
    """The session's quick demo (tests/conftest.py) as generate_runs returns it, and the seconds
    that call took (it reuses the trained runs)."""
    start = time.perf_counter()
    result = generate_runs(quick_demo, quick=True, progress=False)
    return result, time.perf_counter() - start


@pytest.fixture(scope="session")
def full_demo(tmp_path_factory: pytest.TempPathFactory):
    """`opdlens demo` on the full preset (3 seeds per method), run once for the slow tests.

    OPDLENS_FULL_DEMO_DIR names a demo directory to use instead of a fresh one: a finished
    full demo there is reused (its runs are not retrained), as `opdlens demo` reuses it.
    """
    from opdlens.demo.pipeline import run_demo

    out = os.environ.get("OPDLENS_FULL_DEMO_DIR") or tmp_path_factory.mktemp("full-demo")
    return run_demo(out, progress=False, workers=2)
