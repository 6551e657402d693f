"""Output paths: never inside an input, always written under a temporary name and renamed."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import OpdlensError


def ensure_outside(out: Path, inputs: Iterable[Path], what: str = "output") -> Path:
    """Resolve ``out`` and refuse it when it equals, contains or lies inside an input."""
    out = Path(out).expanduser().resolve()
    for p in inputs:
        p = Path(p).expanduser().resolve()
        if out == p or p in out.parents or out in p.parents:
            raise OpdlensError(
                f"Refusing {what} directory {out}: it overlaps the input {p}, which must never be "
                "modified. Choose a directory outside the run."
            )
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
