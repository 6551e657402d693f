"""Extrapolation: one-shot predictions, EffOPD replay, weight surgery and the online callback."""

from .._lazy import lazy_getattr
from .extrapolate import extrapolate, extrapolate_paths, select_tensors
from .replay import ReplayResult, replay, replay_schedule
from .scorers import make_scorer

# These need torch, which extrapolating safetensors does not: they load on first use.
__getattr__ = lazy_getattr(
    __name__,
    {
        "EffOPD": "opdlens.extrapolation.callback:EffOPD",
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
