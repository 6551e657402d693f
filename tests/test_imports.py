"""Light paths stay light: plotting and summarising a DataFrame never load torch."""

from __future__ import annotations

import json
import subprocess
import sys


def _loaded(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return the heavy modules it left in sys.modules."""
    heavy = "sorted(m for m in ('torch', 'safetensors.torch') if m in sys.modules)"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({heavy}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_plots_and_summarize_do_not_import_torch() -> None:
    code = (
        "import opdlens, opdlens.plots\n"
        "opdlens.summarize, opdlens.plots.allocation_heatmap_figure, opdlens.plots.GAP_THRESHOLD\n"
        "from opdlens.analysis import ILL_DEFINED_GAP\n"
        "assert ILL_DEFINED_GAP == opdlens.plots.GAP_THRESHOLD == 1e-2"
    )
    assert _loaded(code) == []


def test_the_analysis_package_loads_torch_only_for_what_needs_it() -> None:
    assert _loaded("import opdlens.analysis") == []
    assert _loaded("from opdlens.analysis import top_k_svd") == ["torch"]
    code = (
        "from opdlens.analysis import ILL_DEFINED_GAP\n"
        "from opdlens.analysis.metrics import ILL_DEFINED_GAP as M\n"
        "assert M is ILL_DEFINED_GAP"  # one definition
    )
    assert "torch" in _loaded(code)


def test_opdlens_never_imports_transformers_or_trl() -> None:
    code = (
        "import sys, opdlens, opdlens.integrations\n"
        "opdlens.EffOPD\n"
        "print(sorted(m for m in ('transformers', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_foresight_and_surgery_load_no_other_part_of_extrapolation() -> None:
    """extrapolation/__init__ is lazy: one of its modules does not load replay and the scorers."""
    probe = "sorted(m for m in sys.modules if m.startswith('opdlens.extrapolation'))"
    for code, want in [
        ("import opdlens.analysis.foresight", []),
        ("import opdlens.extrapolation", ["opdlens.extrapolation"]),
        (
            "import opdlens.extrapolation.surgery",
            ["opdlens.extrapolation", "opdlens.extrapolation.evaluate",
             "opdlens.extrapolation.extrapolate", "opdlens.extrapolation.surgery"],
        ),
    ]:  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps({probe}))"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == want, code
