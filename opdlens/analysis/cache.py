"""Factor cache: top-K factors and norms per (tensor, step) on disk, keyed by checkpoint fingerprints."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OpdlensError
from ..run import Checkpoint, Run
from . import metrics as M

_CHUNK = 1 << 20


def fingerprint(ck: Checkpoint) -> str:
    """Identify a checkpoint's weight files: names, sizes, mtimes and their first and last MiB."""
    stats = []
    for f in sorted(ck.files):
        st = f.stat()
        stats.append((str(f), st.st_size, st.st_mtime_ns))
    return _fingerprint(tuple(stats))


@functools.lru_cache(maxsize=1024)
def _fingerprint(stats: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed by path, size and mtime: the cache keys and provenance.json read the files once.
    h = hashlib.sha1()
    for path, size, mtime in stats:
        h.update(f"{Path(path).name}:{size}:{mtime}".encode())
        with open(path, "rb") as fh:
            h.update(fh.read(_CHUNK))
            if size > 2 * _CHUNK:
                fh.seek(-_CHUNK, os.SEEK_END)
                h.update(fh.read(_CHUNK))
    return h.hexdigest()


def step_keys(run: Run) -> dict[int, str]:
    """Per step, the fingerprint of Δ_t = W_t − W_0 (it changes when either file changes)."""
    base = fingerprint(run.base)
    return {
        s: hashlib.sha1((base + fingerprint(run.checkpoint(s))).encode()).hexdigest()
        for s in run.steps
    }


@dataclass
class CachedFactors:
    """Top-K factors of one update: U (rows, K), σ (K+1,), V (cols, K)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    method: str
    iterations: int
    spectrum: torch.Tensor | None = None

    def truncated(self, k: int) -> CachedFactors:
        return CachedFactors(
            self.u[:, :k],
            self.s[: k + 1],
            self.v[:, :k],
            self.method,
            self.iterations,
            self.spectrum,
        )


class TensorCache:
    """Cached factors of one tensor, loaded from and saved to one file."""

    def __init__(self, path: Path, keys: dict[int, str]) -> None:
        self.path = path
        self.keys = keys
        self.entries: dict[str, dict] = {}
        self.dirty = False
        self.warning: str | None = None
        if path.is_file():
            try:
                self.entries = torch.load(path, weights_only=True)["entries"]
            except (
                OSError,
                RuntimeError,
                EOFError,
                KeyError,
                TypeError,
                pickle.UnpicklingError,
            ) as e:
                self.entries = {}  # a damaged cache file is rebuilt, never trusted
                self.warning = f"{path}: unreadable cache file ({type(e).__name__}); recomputed."

    def _id(self, step: int, key: str) -> str:
        return f"{self.keys[step]}:{key}"

    def get(
        self, step: int, key: str, kmax: int | None, full_spectrum: bool
    ) -> CachedFactors | None:
        """Factors with at least min(kmax, rank cap) columns, or None; kmax None: all stored."""
        if step not in self.keys:
            return None
        e = self.entries.get(self._id(step, key))
        if e is None or (full_spectrum and e["spectrum"] is None):
            return None
        fac = CachedFactors(e["u"], e["s"], e["v"], e["method"], e["iterations"], e["spectrum"])
        if kmax is None:
            return fac
        # kcap = min(rows, cols): fewer stored columns than asked is a miss (a run with larger K).
        if fac.u.shape[1] < min(kmax, e["kcap"]):
            return None
        return fac.truncated(min(kmax, fac.u.shape[1]))

    def put(self, step: int, key: str, fac: CachedFactors, kcap: int) -> None:
        """Store factors of Δ_step; kcap is the largest K the matrix has, min(rows, cols)."""
        self.entries[self._id(step, key)] = {
            "u": fac.u.contiguous(), "s": fac.s.contiguous(), "v": fac.v.contiguous(),
            "method": fac.method, "iterations": fac.iterations, "spectrum": fac.spectrum,
            "kcap": int(kcap), "step": step,
        }  # fmt: skip
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        torch.save({"entries": self.entries}, tmp)
        os.replace(tmp, self.path)
        self.dirty = False


_INDEX = "steps.json"


class FactorCache:
    """The cache directory of one analysis output; one file per tensor."""

    def __init__(self, directory: Path, keys: dict[int, str]) -> None:
        self.directory = Path(directory)
        self.keys = keys

    @classmethod
    def open(cls, directory: str | Path) -> FactorCache:
        """The cache written by an analysis, without the run: steps come from its index."""
        d = Path(directory)
        index = d / _INDEX if d.name != _INDEX else d
        if not index.is_file() and (d / "cache" / _INDEX).is_file():
            d, index = d / "cache", d / "cache" / _INDEX  # the analysis output directory
        if not index.is_file():
            raise OpdlensError(
                f"{d}: no factor cache here (missing {_INDEX}); run `opdlens analyze RUN --out DIR` "
                "and pass DIR or DIR/cache."
            )
        keys = {int(k): str(v) for k, v in json.loads(index.read_text()).items()}
        return cls(index.parent, keys)

    def save_index(self) -> None:
        """Record which fingerprint key each step has, so the cache opens without the run."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{_INDEX}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(self.keys.items())}, indent=1))
        os.replace(tmp, self.directory / _INDEX)

    def tensor(self, name: str) -> TensorCache:
        digest = hashlib.sha1(name.encode()).hexdigest()[:20]
        return TensorCache(self.directory / f"{digest}.pt", self.keys)

    def factors(self, name: str, step: int, key: str = "all") -> CachedFactors:
        """Cached factors of Δ_step for one tensor (slice ``key``), without reading a checkpoint."""
        if step not in self.keys:
            raise OpdlensError(
                f"Step {step} is not in the run; cached steps are {sorted(self.keys)}."
            )
        e = self.tensor(name).get(step, key, None, False)
        if e is None:
            raise OpdlensError(
                f"No cached factors for '{name}' [{key}] at step {step} in {self.directory}; "
                "run `opdlens analyze` on this run first."
            )
        return e

    def alignment(
        self, name: str, step_a: int, step_b: int, k: int, *, side: str = "left", key: str = "all"
    ) -> float:
        """align_{side}_k{k} between the updates at two steps, from cached factors only."""
        fa, fb = self.factors(name, step_a, key), self.factors(name, step_b, key)
        if k > min(fa.u.shape[1], fb.u.shape[1]):
            raise OpdlensError(
                f"k={k} exceeds the cached rank ({min(fa.u.shape[1], fb.u.shape[1])})."
            )
        if side not in ("left", "right"):
            raise ValueError(
                f"The 'side' parameter must be 'left' or 'right'. Got {side!r} instead."
            )
        a, b = (fa.u, fb.u) if side == "left" else (fa.v, fb.v)
        return M.subspace_alignment(a, b, k)
