"""Provenance: what produced an output — versions, command, inputs with fingerprints, options."""

from __future__ import annotations

import platform
import sys
import time
from typing import Any

from .run import Run


def versions() -> dict[str, str]:
    """Versions of opdlens and the libraries whose numbers it depends on."""
    import numpy
    import pandas
    import safetensors
    import torch

    from . import __version__

    return {
        "opdlens": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": numpy.__version__, "pandas": pandas.__version__, "safetensors": safetensors.__version__,
    }  # fmt: skip


def run_inputs(run: Run) -> list[dict[str, Any]]:
    """Every weight file of the run with its step, size and fingerprint."""
    from .analysis.cache import fingerprint

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
        "inputs": run_inputs(run) if run is not None else [],
        "options": {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in options.items()},
        **extra,
    }
