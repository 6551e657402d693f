"""Provenance: what produced an output — versions, command, inputs with fingerprints, options."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    import pandas as pd

    from .run import Checkpoint, Run

PROVENANCE_JSON = "provenance.json"  # beside the result tables of analyze, ablate, foresee

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


def content_hash(ck: Checkpoint) -> str:
    """A hash of every stored byte of every tensor of a checkpoint, and of its config.

    Each tensor is hashed as the factor cache keys it (`analysis.update.read_weight`: xxh3-128
    of its stored dtype, shape and bytes), so an edit that keeps a file's size and mtime
    changes the hash; re-sharding a checkpoint does not.

    Raises:
        CheckpointError: a weight file ends before one of its tensors does.
    """
    import json

    import xxhash

    total = xxhash.xxh3_128(b"xxh3-128;")
    total.update(json.dumps(ck.config, sort_keys=True, default=str).encode())
    for name in sorted(ck.names()):
        spec = ck.spec(name)
        h = xxhash.xxh3_128(f"{spec.stored}{list(spec.shape)};".encode())
        where = ck.byte_range(name)
        if where is None:
            from .analysis.update import read_stored

            digest = read_stored(ck, name)[1]
        else:
            import numpy as np

            from .io.stfile import read_pieces

            path, begin, end = where
            for _ in read_pieces(path, begin, end - begin, np.uint8, key=name, hash_piece=h.update):
                pass  # the bytes are only hashed, by hash_piece, as they are read
            digest = h.digest()
        total.update(f"{len(name)}:{name}".encode() + digest)
    return total.hexdigest()


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


def checkpoint_record(operation: str, **fields: object) -> dict[str, str]:
    """The safetensors metadata of a checkpoint opdlens writes: operation, version, `fields`.

    Values are written as `str(value)`; pass `repr(x)` for a float that must round-trip.
    """
    return {
        "opdlens_operation": operation, "opdlens_version": __version__,
        **{k: str(v) for k, v in fields.items()},
    }  # fmt: skip


def write_results(
    out: Path,
    tables: Mapping[str, pd.DataFrame],
    provenance: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    *,
    csv_only: Collection[str] = (),
) -> None:
    """Write `<stem>.parquet` and `<stem>.csv` per table, then provenance.json, each atomically.

    Stems in `csv_only` get the CSV alone. `provenance` may be a function, called once the
    tables are written (so it can record how long that took).
    """
    import json

    from .io.paths import atomic_file, write_text_atomic

    for stem, df in tables.items():
        kinds = ("csv",) if stem in csv_only else ("parquet", "csv")
        for kind in kinds:
            with atomic_file(out / f"{stem}.{kind}") as tmp:
                if kind == "parquet":
                    df.to_parquet(tmp, index=False)
                else:
                    df.to_csv(tmp, index=False)
    prov = provenance() if callable(provenance) else provenance
    write_text_atomic(out / PROVENANCE_JSON, json.dumps(prov, indent=2, default=str))
