"""Factor cache: top-K factors per (tensor, slice, step) on disk, keyed by the bytes of W_0 and W_t.

One safetensors file per tensor holds only arrays and a JSON string of entry fields, so a
hostile or damaged cache can cost a recomputation, never run code. An entry is found under
(content key, step, slice), the content key being a hash of the stored bytes the sweep read
for W_0 and W_t (`update.read_weight`): any changed byte is a miss, whatever the file's size
and mtime say.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import torch
import xxhash
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from ..errors import CacheFileError, OpdlensError, OptionError
from ..io.paths import atomic_file
from . import metrics as M

if TYPE_CHECKING:
    from ..run import Run

_FORMAT = "opdlens-factor-cache/3"  # /3: every entry carries a checksum of its arrays
_KEY_SCHEME = b"xxh3-128;"  # part of every content key: a new hash gives new keys
_SUFFIX = ".safetensors"
_FIELDS = {"id": str, "step": int, "method": str, "iterations": int, "kcap": int, "sum": str}


def step_keys(run: Run) -> dict[int, str]:
    """Per step, what the cache index records for it: the checkpoint's path (not a cache key)."""
    return {s: str(run.checkpoint(s).path) for s in run.steps}


def slice_key(expert: int | None = None, part: str | None = None) -> str:
    """The cache key of one analysed slice: 'all', 'e3', 'q' or 'e3/q' (expert, fused part)."""
    return (
        "/".join(x for x in (f"e{expert}" if expert is not None else "", part or "") if x) or "all"
    )


def content_key(*digests: bytes) -> str:
    """The cache key of Δ from the digests of what it was computed from (W_0, W_t, a slice).

    The key names its hash scheme: entries keyed under another scheme (sha256 before
    xxh3-128) never match, so they are recomputed, not misread.
    """
    h = xxhash.xxh3_128(_KEY_SCHEME)
    for d in digests:
        h.update(len(d).to_bytes(4, "little") + d)
    return h.hexdigest()


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


@dataclass(frozen=True)
class CachedSpectrum:
    """Singular values of one cached update: all of them (`full`) or the top K only."""

    values: torch.Tensor
    full: bool


class TensorCache:
    """Cached factors of one tensor, loaded from and saved to one file.

    `warning` says why a damaged file was dropped; `notes` say which damaged entries were.
    """

    def __init__(self, path: Path, keys: dict[int, str], name: str | None = None) -> None:
        self.path = path
        self.keys = keys
        self.name = name or path.stem
        self.entries: dict[str, dict] = {}
        self._at: dict[tuple[int, str], str] = {}  # (step, slice) → entry id
        self.dirty = False
        self.warning: str | None = None
        self.notes: list[str] = []
        if path.is_file():
            try:
                self.entries = _load(path)
            except (OSError, SafetensorError, CacheFileError) as e:  # not a bug's ValueError
                self.dirty = True  # a damaged cache file is rebuilt, never trusted
                self.warning = f"{path}: unreadable cache file ({e}); recomputed."
        for entry_id, entry in self.entries.items():
            self._at[(entry["step"], _slice(entry_id))] = entry_id

    def get(
        self,
        step: int,
        key: str,
        kmax: int | None,
        full_spectrum: bool,
        content: str | None = None,
        shape: tuple[int, int] | None = None,
    ) -> CachedFactors | None:
        """Factors with at least min(kmax, rank cap) columns, or None; kmax None: all stored.

        With `content`, only an entry computed from the same bytes; without it (reading the
        cache without the run), the entry the last analysis stored for this step.
        """
        entry_id = (
            _entry_id(content, step, key) if content is not None else self._at.get((step, key))
        )
        if entry_id is None:
            return None
        e = self.entries.get(entry_id)
        if e is None:
            return None
        problem = _check_entry(e, shape, entry_id)
        if problem is not None:
            self.notes.append(
                f"{self.path}: cached factors of '{self.name}' [{key}] at step {step} are "
                f"damaged ({problem}); recomputed."
            )
            self._drop(entry_id)
            return None
        if full_spectrum and e["spectrum"] is None:
            return None
        fac = CachedFactors(e["u"], e["s"], e["v"], e["method"], e["iterations"], e["spectrum"])
        if kmax is None:
            return fac
        # kcap = min(rows, cols): fewer stored columns than asked is a miss (a run with larger K).
        if fac.u.shape[1] < min(kmax, e["kcap"]):
            return None
        return fac.truncated(min(kmax, fac.u.shape[1]))

    def put(self, step: int, key: str, fac: CachedFactors, kcap: int, content: str) -> None:
        """Store factors of Δ_step computed from `content`; kcap = min(rows, cols)."""
        entry_id = _entry_id(content, step, key)
        old = self._at.get((step, key))
        if old is not None and old != entry_id:
            self._drop(old)  # stale: computed from other bytes
        spectrum = None if fac.spectrum is None else fac.spectrum.contiguous().clone()
        self.entries[entry_id] = {
            "u": fac.u.contiguous().clone(), "s": fac.s.contiguous().clone(),
            "v": fac.v.contiguous().clone(), "method": fac.method,
            "iterations": int(fac.iterations), "spectrum": spectrum, "kcap": int(kcap),
            "step": step,
        }  # fmt: skip
        self._at[(step, key)] = entry_id
        self.dirty = True

    def _drop(self, entry_id: str) -> None:
        e = self.entries.pop(entry_id, None)
        if e is not None and self._at.get((e["step"], _slice(entry_id))) == entry_id:
            del self._at[(e["step"], _slice(entry_id))]
        self.dirty = True

    def save(self) -> None:
        """Write the file atomically; a failed write leaves no temporary file behind.

        Raises:
            OutputError: the cache directory cannot be written (read-only or full disk).
        """
        if not self.dirty:
            return
        if self.keys:  # steps no longer in the run
            # W_0's factors (--base-geometry) sit under step 0 with a "w0/" slice: kept.
            gone = [
                i for i, e in self.entries.items()
                if e["step"] not in self.keys and not _slice(i).startswith("w0/")
            ]  # fmt: skip
            for entry_id in gone:
                self._drop(entry_id)
        tensors: dict[str, torch.Tensor] = {}
        fields = []
        for i, (entry_id, e) in enumerate(sorted(self.entries.items())):
            for part in ("u", "s", "v", "spectrum"):
                if e[part] is not None:
                    tensors[f"{i}.{part}"] = e[part]
            e["sum"] = _checksum(entry_id, e)
            fields.append({"id": entry_id, **{f: e[f] for f in _FIELDS if f != "id"}})
        data = st_save(tensors, {"format": _FORMAT, "entries": json.dumps(fields)})
        write_atomic(self.path, data)
        self.dirty = False


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes under a temporary name beside `path`, then rename it into place.

    Raises:
        OutputError: the write failed (read-only or full file system); nothing is left behind.
    """
    with atomic_file(path) as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)


def _entry_id(content: str, step: int, key: str) -> str:
    return f"{content}@{step}:{key}"


def _slice(entry_id: str) -> str:
    return entry_id.split(":", 1)[1]


def _load(path: Path) -> dict[str, dict]:
    """Entries of one cache file.

    Raises:
        CacheFileError: a file this module did not write (SafetensorError, OSError: not a
            readable safetensors file). Anything else is a bug and propagates.
    """
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise CacheFileError(f"format {meta.get('format')!r}, expected {_FORMAT!r}")
        try:
            fields = json.loads(meta.get("entries", "null"))
        except (json.JSONDecodeError, RecursionError) as e:
            raise CacheFileError(f"its entry list is not JSON ({type(e).__name__})") from None
        names = set(f.keys())
        if not isinstance(fields, list):
            raise CacheFileError("no entry list")
        entries = {}
        for i, rec in enumerate(fields):
            if not isinstance(rec, dict) or any(
                type(rec.get(k)) is not t for k, t in _FIELDS.items()
            ):
                raise CacheFileError(f"entry {i} is not an object with fields {sorted(_FIELDS)}")
            if ":" not in rec["id"]:
                raise CacheFileError(f"entry {i} has no slice in its id {rec['id']!r}")
            parts = {}
            for part in ("u", "s", "v", "spectrum"):
                tname = f"{i}.{part}"
                if tname not in names and part != "spectrum":
                    raise CacheFileError(f"entry {i} has no '{part}' array")
                parts[part] = f.get_tensor(tname) if tname in names else None
            entries[rec["id"]] = {**{k: rec[k] for k in _FIELDS if k != "id"}, **parts}
    return entries


def _checksum(entry_id: str, e: dict) -> str:
    """xxh3-128 of an entry's id, fields, and each array's dtype, shape and bytes."""
    h = xxhash.xxh3_128(
        json.dumps([entry_id, *(e.get(f) for f in _FIELDS if f not in ("id", "sum"))]).encode()
    )
    for part in ("u", "s", "v", "spectrum"):
        x = e.get(part)
        if not isinstance(x, torch.Tensor):
            h.update(f"{part}:none;".encode())
            continue
        flat = x.detach().contiguous().reshape(-1).cpu()
        h.update(f"{part}:{x.dtype}{list(x.shape)};".encode())
        h.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return h.hexdigest()


def _float_array(x: object, dim: int) -> TypeGuard[torch.Tensor]:
    return isinstance(x, torch.Tensor) and x.dim() == dim and x.is_floating_point()


def _check_entry(e: dict, shape: tuple[int, int] | None, entry_id: str) -> str | None:
    """Why a cached entry cannot be used for an update of this shape, or None."""
    u, s, v, spec = e.get("u"), e.get("s"), e.get("v"), e.get("spectrum")
    if not _float_array(u, 2):
        return "'u' is not a 2-D float array"
    if not _float_array(s, 1):
        return "'s' is not a 1-D float array"
    if not _float_array(v, 2):
        return "'v' is not a 2-D float array"
    k = u.shape[1]
    if k < 1 or v.shape[1] != k or s.shape[0] != k + 1:
        return f"u {list(u.shape)}, s {list(s.shape)} and v {list(v.shape)} do not fit together"
    if shape is not None and (u.shape[0], v.shape[0]) != tuple(shape):
        return f"factors of a {u.shape[0]}×{v.shape[0]} matrix for a {shape[0]}×{shape[1]} one"
    kcap = min(u.shape[0], v.shape[0])
    if e.get("kcap") != kcap or k > kcap:
        return f"rank cap {e.get('kcap')!r} for a {u.shape[0]}×{v.shape[0]} matrix"
    if spec is not None and (
        not isinstance(spec, torch.Tensor) or spec.dim() != 1 or spec.shape[0] != kcap
    ):
        return "'spectrum' is not the matrix's min(rows, cols) singular values"
    values = [s] + ([spec] if spec is not None else [])
    if not all(bool(torch.isfinite(x).all()) and bool((x >= 0).all()) for x in values):
        return "singular values that are negative, NaN or Inf"
    if not (bool(torch.isfinite(u).all()) and bool(torch.isfinite(v).all())):
        return "singular vectors holding NaN or Inf"
    if bool((s[1:] > s[:-1] * (1 + 1e-6) + 1e-30).any()):
        return "singular values out of order"
    if not isinstance(e.get("method"), str) or not isinstance(e.get("iterations"), int):
        return "no method or iteration count"
    if "sum" in e and _checksum(entry_id, e) != e["sum"]:
        return "its arrays or fields do not match their checksum (bits changed on disk)"
    return None


_INDEX = "steps.json"


def cache_directory(path: Path) -> Path:
    """The factor cache of an `opdlens analyze` output directory (its cache/), else path."""
    return path / "cache" if (path / "cache" / _INDEX).is_file() else path


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
        try:
            keys = {int(k): str(v) for k, v in json.loads(index.read_text()).items()}
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
            raise OpdlensError(
                f"{index}: damaged cache index (expected a JSON object of step → key); run "
                "`opdlens analyze` again to rebuild it."
            ) from None
        return cls(index.parent, keys)

    def save_index(self) -> None:
        """Record the run's steps, so the cache opens without the run.

        Raises:
            OutputError: the cache directory cannot be written.
        """
        text = json.dumps({str(k): v for k, v in sorted(self.keys.items())}, indent=1)
        write_atomic(self.directory / _INDEX, text.encode())

    def tensor(self, name: str) -> TensorCache:
        digest = hashlib.sha1(name.encode()).hexdigest()[:20]
        return TensorCache(self.directory / f"{digest}{_SUFFIX}", self.keys, name)

    def factors(self, name: str, step: int, key: str = "all") -> CachedFactors:
        """Cached factors of Δ_step for one tensor (slice ``key``), without reading a checkpoint."""
        if step not in self.keys:
            raise OpdlensError(
                f"Step {step} is not in the run; cached steps are {sorted(self.keys)}."
            )
        tc = self.tensor(name)
        e = tc.get(step, key, None, False)
        problem = tc.warning or (tc.notes[0] if tc.notes else None)
        if e is None and problem is not None:
            raise OpdlensError(problem.replace("recomputed.", "run `opdlens analyze` again."))
        if e is None:
            raise OpdlensError(
                f"No cached factors for '{name}' [{key}] at step {step} in {self.directory}; "
                "run `opdlens analyze` on this run first."
            )
        return e

    def spectrum(
        self, name: str, step: int, *, part: str | None = None, expert: int | None = None
    ) -> CachedSpectrum | None:
        """σ of Δ_step for one slice as the last analysis cached it (None: nothing cached).

        The full spectrum when the analysis ran with full_spectrum, else the top-K values.
        Entries are matched by step and slice only: without the run there is nothing to check
        their content key against. No checkpoint is read.

        Raises:
            OpdlensError: the tensor's cache file or its entry is damaged.
        """
        key = slice_key(expert, part)
        tc = self.tensor(name)
        e = tc.get(step, key, None, False)
        problem = tc.warning or (tc.notes[0] if tc.notes else None)
        if problem is not None:
            raise OpdlensError(problem.replace("recomputed.", "run `opdlens analyze` again."))
        if e is None:
            return None
        if e.spectrum is not None:
            return CachedSpectrum(e.spectrum, full=True)
        # s holds σ_1..σ_K and σ_{K+1}; U has the K cached columns.
        return CachedSpectrum(e.s[: e.u.shape[1]], full=False)

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
            raise OptionError(
                f"The 'side' parameter must be 'left' or 'right'. Got {side!r} instead."
            )
        a, b = (fa.u, fb.u) if side == "left" else (fa.v, fb.v)
        return M.subspace_alignment(a, b, k)


__all__ = [
    "CachedFactors",
    "CachedSpectrum",
    "FactorCache",
    "TensorCache",
    "content_key",
    "slice_key",
    "step_keys",
]
