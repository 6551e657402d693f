"""The version opdlens reports is the one its package metadata and pyproject.toml declare."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import opdlens
from opdlens._version import __version__


def test_one_version_everywhere() -> None:
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    # The [project] table's version line (tomllib is Python ≥ 3.11; opdlens supports 3.10).
    found = re.search(r'^\[project\]$[^\[]*?^version = "([^"]+)"$', pyproject, re.M)
    assert found, "pyproject.toml has no version in its [project] table"
    assert __version__ == found[1] == opdlens.__version__
    assert importlib.metadata.version("opdlens") == found[1]  # the installed metadata agrees
