"""opdlens: how post-training moves a language model's weights, from the checkpoints a run saved."""

from ._lazy import lazy_getattr
from ._version import __version__
from .analysis.options import AnalyzeOptions
from .checkpoint import Checkpoint
from .errors import (
    CheckpointError,
    FusedSplitError,
    IncompleteCheckpointError,
    InputFileError,
    InputNotFoundError,
    NothingToDrawError,
    NoTrainingLogError,
    OpdlensError,
    OptionError,
    OutputError,
    PartialRunError,
    ResourceError,
    ScorerError,
    TrainingLogError,
    UnknownTensorError,
    UnsafePickleError,
)
from .names import ModuleInfo, canonical_name, classify
from .run import Run, open_run

# Heavier parts (pandas, matplotlib, torch) load on first use, so reading and writing
# checkpoints stays light in memory and start-up time.
__getattr__ = lazy_getattr(
    __name__,
    {
        "ablate": "opdlens.extrapolation.ablate:ablate",
        "analyze": "opdlens.analysis.analyze:analyze",
        "compare": "opdlens.analysis.compare:compare",
        "compare_group": "opdlens.analysis.compare_group:compare_group",
        "CompareOptions": "opdlens.analysis.compare:CompareOptions",
        "extrapolate": "opdlens.extrapolation.extrapolate:extrapolate",
        "foresee": "opdlens.analysis.foresight:foresee",
        "summarize": "opdlens.analysis.frame:summarize",
        "EffOPD": "opdlens.extrapolation.callback:EffOPD",
        "plots": "opdlens.plots",
        "watch": "opdlens.follow:watch",
        "WatchOptions": "opdlens.follow:WatchOptions",
    },
)


__all__ = [
    "AnalyzeOptions",
    "Checkpoint",
    "CheckpointError",
    "CompareOptions",
    "EffOPD",
    "FusedSplitError",
    "IncompleteCheckpointError",
    "InputFileError",
    "InputNotFoundError",
    "ModuleInfo",
    "NoTrainingLogError",
    "NothingToDrawError",
    "OpdlensError",
    "OptionError",
    "OutputError",
    "PartialRunError",
    "ResourceError",
    "Run",
    "ScorerError",
    "TrainingLogError",
    "UnknownTensorError",
    "UnsafePickleError",
    "WatchOptions",
    "__version__",
    "ablate",
    "analyze",
    "canonical_name",
    "classify",
    "compare",
    "compare_group",
    "extrapolate",
    "foresee",
    "open_run",
    "plots",
    "summarize",
    "watch",
]
