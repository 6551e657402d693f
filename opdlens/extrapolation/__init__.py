"""Extrapolation: one-shot predictions, EffOPD replay, weight surgery and the online callback."""

from typing import Any

from .extrapolate import extrapolate, extrapolate_paths, select_tensors
from .replay import ReplayResult, replay, replay_schedule
from .scorers import make_scorer

# These need torch, which extrapolating safetensors does not: they load on first use.
_LAZY = {
    "EffOPD": "callback",
    "surgery_lowrank": "surgery",
    "surgery_scale": "surgery",
    "surgery_window": "surgery",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
