"""Extrapolation: one-shot predictions, EffOPD replay, weight surgery and the online callback."""

from .._lazy import lazy_getattr
from .extrapolate import extrapolate, extrapolate_paths
from .replay import ReplayResult, replay
from .schedule import replay_schedule
from .scorers import make_scorer
from .selection import select_tensors
from .surgery import surgery_lowrank, surgery_scale, surgery_window

# The online callback needs torch, which writing safetensors checkpoints does not.
__getattr__ = lazy_getattr(__name__, {"EffOPD": "opdlens.extrapolation.callback:EffOPD"})


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
