"""Update metrics over a run: top-K SVD with an accuracy contract, the sweep, the factor cache."""

from .._lazy import lazy_getattr

# design.md: where gap_k = (σ_K − σ_{K+1}) / σ_1 is below this, the top-K subspace is not well
# defined and its alignment is flagged, not presented as a finding. Defined here, torch-free, so
# plots can use it without loading torch.
ILL_DEFINED_GAP = 1e-2

# Everything loads on first use: torch for the SVD and cache, pandas for the DataFrame parts, so
# worker processes and plotting stay light.
__getattr__ = lazy_getattr(
    __name__,
    {
        "FactorCache": "opdlens.analysis.cache:FactorCache",
        "TopK": "opdlens.analysis.linalg:TopK",
        "factored_top_k_svd": "opdlens.analysis.linalg:factored_top_k_svd",
        "singular_values": "opdlens.analysis.linalg:singular_values",
        "top_k_svd": "opdlens.analysis.linalg:top_k_svd",
        "Analysis": "opdlens.analysis.analyze:Analysis",
        "AnalyzeOptions": "opdlens.analysis.options:AnalyzeOptions",
        "analyze": "opdlens.analysis.analyze:analyze",
        "compute_analysis": "opdlens.analysis.analyze:compute_analysis",
        "summarize": "opdlens.analysis.frame:summarize",
        "write_analysis": "opdlens.analysis.write:write_analysis",
        "load_metrics": "opdlens.analysis.results:load_metrics",
        "run_spectra": "opdlens.analysis.spectra:run_spectra",
        "cached_spectra": "opdlens.analysis.spectra:cached_spectra",
    },
)


__all__ = [
    "ILL_DEFINED_GAP",
    "Analysis",
    "AnalyzeOptions",
    "FactorCache",
    "TopK",
    "analyze",
    "cached_spectra",
    "compute_analysis",
    "factored_top_k_svd",
    "load_metrics",
    "run_spectra",
    "singular_values",
    "summarize",
    "top_k_svd",
    "write_analysis",
]
