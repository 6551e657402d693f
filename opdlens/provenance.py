"""Provenance: what produced an output — versions, command, inputs with fingerprints, options."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .run import Checkpoint, Run

_SAMPLE = 1 << 20  # bytes hashed from each end of a weight file


def versions() -> dict[str, str]:
    """Versions of opdlens and the libraries whose numbers it depends on."""
    import numpy
    import pandas
    import safetensors
    import torch

    return {
        "opdlens": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "pandas": pandas.__version__, "safetensors": safetensors.__version__,
    }  # fmt: skip


def fingerprint(ck: Checkpoint) -> str:
    """Identify a checkpoint's weight files cheaply: names, sizes, mtimes, first and last MiB.

    For the record only: an edit inside a file that keeps its size and mtime goes unseen (the
    factor cache keys on the bytes it reads instead).
    """
    stats = []
    for f in sorted(ck.files):
        st = f.stat()
        stats.append((str(f), st.st_size, st.st_mtime_ns))
    return _fingerprint(tuple(stats))


@functools.lru_cache(maxsize=1024)
def _fingerprint(stats: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed by path, size and mtime: a run's files are read once per process.
    h = hashlib.sha1()
    for path, size, mtime in stats:
        h.update(f"{Path(path).name}:{size}:{mtime}".encode())
        with open(path, "rb") as fh:
            h.update(fh.read(_SAMPLE))
            if size > 2 * _SAMPLE:
                fh.seek(-_SAMPLE, os.SEEK_END)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def input_fingerprints(run: Run) -> list[dict[str, Any]]:
    """Every weight file of the run with its step, size and fingerprint."""
    out = []
    for step, ck in [(0, run.base), *run.checkpoints.items()]:
        out.append(
            {
                "step": step,
                "path": str(ck.path),
                "layout": ck.layout,
                "fingerprint": fingerprint(ck),
                "files": [{"path": str(f), "bytes": f.stat().st_size} for f in ck.files],
            }  # fmt: skip
        )
    return out


def record(run: Run | None, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A provenance dict ready for JSON."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "versions": versions(),
        "inputs": input_fingerprints(run) if run is not None else [],
        "options": {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in options.items()},
        **extra,
    }
