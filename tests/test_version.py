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


def test_each_dependency_floor_is_the_version_the_floor_pass_installs() -> None:
    """pyproject.toml's runtime floors are scripts/floor-requirements.txt's pins (and torch's is
    scripts/test.sh's FLOOR), so the oldest pass tests every floor that is declared."""
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[$(.*?)^\]$", pyproject, re.M | re.S)
    assert block, "pyproject.toml has no dependencies list"
    declared = dict(re.findall(r'^\s*"([A-Za-z0-9_.-]+)>=([0-9.]+)",', block[1], re.M))
    assert block[1].count('"') == 2 * len(declared), "a dependency without a plain >= floor"
    pins = (root / "scripts" / "floor-requirements.txt").read_text(encoding="utf-8")
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([0-9.]+)$", pins, re.M))
    floor = re.search(r'^FLOOR=\("[^"]+" "[0-9.]+" "([0-9.]+)"\)$',
                      (root / "scripts" / "test.sh").read_text(encoding="utf-8"), re.M)  # fmt: skip
    assert floor, "scripts/test.sh has no FLOOR"
    assert declared == {**pinned, "torch": floor[1]}
