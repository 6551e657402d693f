"""Update metrics over a run: top-K SVD with an accuracy contract, the sweep, the factor cache."""

from typing import Any

from .cache import FactorCache
from .linalg import TopK, factored_top_k_svd, singular_values, top_k_svd

# DataFrame-building parts load pandas; they load on first use so worker processes stay light.
_LAZY = {
    "analyze": "opdlens.analysis.analyze",
    "run_analysis": "opdlens.analysis.analyze",
    "summarize": "opdlens.analysis.frame",
    "write_analysis": "opdlens.analysis.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'opdlens.analysis' has no attribute {name!r}")


__all__ = [
    "FactorCache",
    "TopK",
    "analyze",
    "factored_top_k_svd",
    "run_analysis",
    "singular_values",
    "summarize",
    "top_k_svd",
    "write_analysis",
]
