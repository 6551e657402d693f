"""The exceptions opdlens raises for user errors; the CLI turns each into one line."""

from __future__ import annotations


class OpdlensError(Exception):
    """A user error: bad input, a bad option, or a checkpoint that cannot be read."""


class CheckpointError(OpdlensError):
    """A checkpoint file or directory that is missing, incomplete, corrupt or inconsistent."""


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


class NothingToDrawError(OpdlensError, ValueError):
    """Data with nothing for a figure to show: no rows, no layered tensors, no finite values."""


class FusedSplitError(OpdlensError, ValueError):
    """A fused tensor (qkv, gate_up) whose row count fits no split its config describes."""


class ResourceError(OpdlensError):
    """A machine resource that ran out for this input: GPU memory, say (the message says what)."""
