"""Every exception class of opdlens: the user errors the CLI turns into one line, then the
signals one part of opdlens raises for another to catch, which never reach a user."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class OpdlensError(Exception):
    """A user error: bad input, a bad option, or a checkpoint that cannot be read."""


class CheckpointError(OpdlensError):
    """A checkpoint file or directory that is missing, incomplete, corrupt or inconsistent."""


class PartialRunError(CheckpointError):
    """A run without a base, or without any checkpoint after it; `found` holds what was opened.

    `found` maps each opened step to its Checkpoint; `missing` says which part is absent.
    """

    def __init__(
        self,
        message: str,
        *,
        found: Mapping[int, Any] | None = None,
        missing: str = "",
        warnings: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.found, self.missing, self.warnings = dict(found or {}), missing, list(warnings)


class IncompleteCheckpointError(CheckpointError):
    """A checkpoint that looks like it is still being written (an index names a missing shard)."""


class UnsafePickleError(CheckpointError):
    """A pickle checkpoint that cannot be loaded with weights_only=True."""


class ScorerError(OpdlensError):
    """A user-supplied scorer failed, timed out or printed no number."""


class OutputError(OpdlensError, OSError):
    """An output that cannot be written: a read-only or full file system (also an OSError)."""


class UnknownTensorError(OpdlensError, KeyError):
    """A tensor name the run does not hold (also a KeyError, for `except KeyError`)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would repr() the message


class OptionError(OpdlensError, ValueError):
    """A bad parameter or option value, or options that conflict (also a ValueError)."""


class InputNotFoundError(OpdlensError, FileNotFoundError):
    """A path the user gave that does not exist (also a FileNotFoundError)."""


class InputFileError(OpdlensError, ValueError):
    """A side input (metrics, history or errors file) that is not what opdlens expected."""


class TrainingLogError(OpdlensError, ValueError):
    """A training log that cannot be read: not JSON, not CSV, no step column, too large."""


class NoTrainingLogError(TrainingLogError):
    """No training log beside the checkpoints."""


class NothingToDrawError(OpdlensError, ValueError):
    """Data with nothing for a figure to show: no rows, no layered tensors, no finite values."""


class FusedSplitError(OpdlensError, ValueError):
    """A fused tensor (qkv, gate_up) whose row count fits no split its config describes."""


class ResourceError(OpdlensError):
    """A machine resource that ran out for this input: GPU memory, say (the message says what)."""


# -- signals: raised and caught inside opdlens, never shown to a user ---------------------------


class Stopped(BaseException):  # noqa: N818  (not an error: the pool asked its thread to stop)
    """Raised at a stop point of a worker thread whose pool was told to stop.

    A BaseException, so that no `except Exception` on the way swallows it.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a command cleans up as after Ctrl-C."""


class StdoutClosed(Exception):  # noqa: N818  (not an error: `yes | head` ends the same way)
    """Standard output is a pipe whose reader went away: stop quietly, as `yes | head` does."""


class PickleRefused(Exception):  # noqa: N818  (io.pickles turns it into a CheckpointError)
    """The pickle prescan refused a file; the message says why."""

    def __init__(self, message: str, unsafe: bool = False, cut: bool = False) -> None:
        super().__init__(message)
        self.unsafe = unsafe  # weights_only would refuse it too: --trust-pickle may load it
        self.cut = cut  # it ends early: truncated or still being written


class DuplicateJSONKey(Exception):  # noqa: N818  (io.stfile turns it into a CheckpointError)
    """A key that appears twice in one JSON object of a safetensors header; args[0] is the key."""


class CacheFileError(Exception):
    """A factor-cache file that is not one analysis.cache wrote; the cache rebuilds it."""
