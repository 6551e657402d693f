"""opdlens: how post-training moves a language model's weights, from the checkpoints a run saved."""

from typing import Any

from .errors import (
    CheckpointError,
    IncompleteCheckpointError,
    OpdlensError,
    ScorerError,
    UnsafePickleError,
)
from .names import ModuleInfo, canonical_name, classify
from .run import Checkpoint, Run, open_run

__version__ = "0.1.0"

# Heavier parts (pandas, matplotlib) load on first use, so reading and writing checkpoints
# stays light in memory and start-up time.
_LAZY = {
    "summarize": ("opdlens.analysis.frame", "summarize"),
    "EffOPD": ("opdlens.extrapolation.callback", "EffOPD"),
    "plots": ("opdlens.plots", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'opdlens' has no attribute {name!r}")


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "EffOPD",
    "IncompleteCheckpointError",
    "ModuleInfo",
    "OpdlensError",
    "Run",
    "ScorerError",
    "UnsafePickleError",
    "__version__",
    "canonical_name",
    "classify",
    "open_run",
    "plots",
    "summarize",
]
