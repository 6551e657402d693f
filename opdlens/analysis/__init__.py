"""Update metrics over a run: top-K SVD with an accuracy contract, the sweep, the factor cache."""

from .._lazy import lazy_getattr
from .cache import FactorCache
from .linalg import TopK, factored_top_k_svd, singular_values, top_k_svd

# DataFrame-building parts load pandas; they load on first use so worker processes stay light.
__getattr__ = lazy_getattr(
    __name__,
    {
        "analyze": "opdlens.analysis.analyze:analyze",
        "run_analysis": "opdlens.analysis.analyze:run_analysis",
        "summarize": "opdlens.analysis.frame:summarize",
        "write_analysis": "opdlens.analysis.export:write_analysis",
    },
)


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
