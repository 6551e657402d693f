"""lazy_getattr: a package attribute imports its module on first use, then stays."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from opdlens._lazy import lazy_getattr


@pytest.fixture
def package(monkeypatch) -> types.ModuleType:
    pkg = types.ModuleType("lazypkg")
    monkeypatch.setitem(sys.modules, "lazypkg", pkg)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)  # a module nothing here loaded
    pkg.__getattr__ = lazy_getattr(  # type: ignore[attr-defined]
        "lazypkg", {"hls": "colorsys:rgb_to_hls", "colorsys": "colorsys"}
    )
    return pkg


def test_imports_on_first_use_and_keeps_the_value(package: types.ModuleType) -> None:
    assert "colorsys" not in sys.modules
    hls = package.hls
    assert "colorsys" in sys.modules and hls is sys.modules["colorsys"].rgb_to_hls
    assert package.__dict__["hls"] is hls  # kept: the next access does not call __getattr__
    assert package.colorsys is sys.modules["colorsys"]  # "module" alone names the module


def test_an_unknown_name_is_an_attribute_error(package: types.ModuleType) -> None:
    with pytest.raises(AttributeError, match="module 'lazypkg' has no attribute 'hsv'"):
        package.hsv  # noqa: B018
    assert not hasattr(package, "hsv")


def test_opdlens_heavy_attributes_load_lazily() -> None:
    import opdlens
    from opdlens.analysis.analyze import analyze

    assert opdlens.analyze is analyze
    with pytest.raises(AttributeError, match="module 'opdlens' has no attribute 'analyse'"):
        opdlens.analyse  # noqa: B018


def test_a_lazy_name_keeps_its_value_when_its_submodule_of_the_same_name_loads() -> None:
    """`import pkg.extrapolate` binds the module on pkg; the lazy name keeps the function."""
    code = (
        "import opdlens.extrapolation.extrapolate, opdlens.analysis.analyze\n"
        "from opdlens.extrapolation import extrapolate, replay\n"
        "from opdlens.analysis import analyze\n"
        "import opdlens.extrapolation.replay as r\n"
        "assert callable(extrapolate) and extrapolate.__name__ == 'extrapolate', extrapolate\n"
        "assert callable(analyze) and analyze.__module__ == 'opdlens.analysis.analyze', analyze\n"
        "assert replay is r and replay.__name__ == 'replay', replay\n"
        "import opdlens, sys\n"
        "assert opdlens.extrapolate is extrapolate\n"
        "assert sys.modules['opdlens.extrapolation.extrapolate'].extrapolate is extrapolate\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
