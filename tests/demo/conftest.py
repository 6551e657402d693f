"""The quick demo runs, trained once per session for the demo tests."""

from __future__ import annotations

import time

import pytest

from opdlens.demo import generate_runs


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    result = generate_runs(out, quick=True, progress=False)
    return result, time.perf_counter() - start
