"""Extrapolation: one-shot predictions, EffOPD replay, weight surgery and the online callback."""

from .._lazy import lazy_getattr

# Everything loads on first use: `import opdlens.extrapolation.surgery` need not load the
# scorers and replay, and the online callback needs torch, which writing safetensors does not.
__getattr__ = lazy_getattr(
    __name__,
    {
        "EffOPD": "opdlens.extrapolation.callback:EffOPD",
        "ReplayResult": "opdlens.extrapolation.replay:ReplayResult",
        "extrapolate": "opdlens.extrapolation.extrapolate:extrapolate",
        "extrapolate_paths": "opdlens.extrapolation.extrapolate:extrapolate_paths",
        "make_scorer": "opdlens.extrapolation.scorers:make_scorer",
        "replay": "opdlens.extrapolation.replay:replay",
        "replay_schedule": "opdlens.schedule:replay_schedule",
        "select_tensors": "opdlens.selection:select_tensors",
        "surgery_lowrank": "opdlens.extrapolation.surgery:surgery_lowrank",
        "surgery_scale": "opdlens.extrapolation.surgery:surgery_scale",
        "surgery_window": "opdlens.extrapolation.surgery:surgery_window",
    },
)


__all__ = [
    "EffOPD",
    "ReplayResult",
    "extrapolate",
    "extrapolate_paths",
    "make_scorer",
    "replay",
    "replay_schedule",
    "select_tensors",
    "surgery_lowrank",
    "surgery_scale",
    "surgery_window",
]
