"""The version opdlens reports is the one its package metadata and pyproject.toml declare."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import tomllib

import opdlens
from opdlens._version import __version__


def test_one_version_everywhere() -> None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    assert __version__ == declared == opdlens.__version__
    assert importlib.metadata.version("opdlens") == declared  # the installed metadata agrees
