"""opdlens: how post-training moves a language model's weights, from the checkpoints a run saved."""

from .analysis.frame import summarize
from .errors import CheckpointError, IncompleteCheckpointError, OpdlensError, UnsafePickleError
from .names import ModuleInfo, canonical_name, classify
from .run import Checkpoint, Run, open_run

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "IncompleteCheckpointError",
    "ModuleInfo",
    "OpdlensError",
    "Run",
    "UnsafePickleError",
    "__version__",
    "canonical_name",
    "classify",
    "open_run",
    "summarize",
]
