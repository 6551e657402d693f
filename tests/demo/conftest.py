"""The quick demo runs, trained once per session for the demo tests."""

from __future__ import annotations

import os
import time

import pytest

from opdlens.demo import generate_runs


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    result = generate_runs(out, quick=True, progress=False)
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
