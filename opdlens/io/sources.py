"""Tensor sources: lazy, per-tensor access to the weights of one checkpoint, whatever its files."""

from __future__ import annotations

import json
import logging
import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CheckpointError, IncompleteCheckpointError, UnsafePickleError
from ..names import canonical_name
from . import dtypes
from .stfile import SafetensorsFile

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """Shape and stored dtype of one tensor."""

    shape: tuple[int, ...]
    stored: str  # the safetensors dtype name, e.g. "BF16"

    @property
    def dtype(self) -> torch.dtype:
        """The stored dtype as a torch dtype (imports torch)."""
        return dtypes.to_torch(self.stored)

    @property
    def is_float(self) -> bool:
        return dtypes.is_float(self.stored)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class TensorSource(ABC):
    """Canonical tensor name → tensor, read on demand."""

    files: list[Path]
    specs: dict[str, Spec]
    tied: list[str]

    @abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """Read one tensor in its stored dtype and orientation."""

    def read_as(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Read one tensor converted to ``dtype`` (sources that can, convert while reading)."""
        return self.read(name).to(dtype)

    def read_array(self, name: str, span: tuple[int, int] | None = None) -> np.ndarray:
        """Read one tensor's stored bytes as numpy (bf16 and float8 as unsigned bit patterns).

        With `span` = (start, stop), only those elements of the flattened tensor, as 1-D.
        """
        t = self.read(name).contiguous()
        raw = t.reshape(-1).view(dtypes.to_torch("U8")).numpy()
        flat = raw.view(dtypes.storage(self.specs[name].stored))
        return flat.reshape(t.shape) if span is None else flat[span[0] : span[1]]

    def read_float32(self, name: str, span: tuple[int, int] | None = None) -> np.ndarray:
        """Read one float tensor as a float32 numpy array (or a flat span of it)."""
        whole = self.read_as(name, dtypes.to_torch("F32")).numpy()
        return whole if span is None else whole.reshape(-1)[span[0] : span[1]]

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """(file, begin, end) when the tensor is stored as-is in one file, else None."""
        return None

    def names(self) -> list[str]:
        return list(self.specs)


def _canonical_map(keys: list[str], where: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in keys:
        name = canonical_name(key)
        if name in out:
            raise CheckpointError(
                f"{where}: tensors '{out[name]}' and '{key}' both map to '{name}' once wrapper "
                "prefixes are removed; the checkpoint holds the same parameter twice."
            )
        out[name] = key
    return out


def _drop_tied(specs: dict[str, Spec], config: Mapping[str, object]) -> list[str]:
    # A tied lm_head is the embedding: count it once.
    if config.get("tie_word_embeddings") and "lm_head.weight" in specs:
        for emb in ("model.embed_tokens.weight", "transformer.wte.weight", "embed_tokens.weight"):
            if emb in specs:
                del specs["lm_head.weight"]
                return ["lm_head.weight"]
    return []


class SafetensorsSource(TensorSource):
    """One `model.safetensors`, or shards listed by `model.safetensors.index.json`."""

    def __init__(self, files: list[Path], config: Mapping[str, object]) -> None:
        self.files = list(files)
        self._where: dict[str, tuple[SafetensorsFile, str]] = {}
        self.specs = {}
        for path in self.files:
            st = SafetensorsFile(path)
            for name, key in _canonical_map(st.keys(), path).items():
                if name in self._where:
                    raise CheckpointError(
                        f"{path}: tensor '{key}' is also in {self._where[name][0].path.name}."
                    )
                e = st.entries[key]
                self._where[name] = (st, key)
                self.specs[name] = Spec(e.shape, e.stored)
        self.tied = _drop_tied(self.specs, config)

    @classmethod
    def from_index(cls, index: Path, config: Mapping[str, object]) -> SafetensorsSource:
        shards = _read_index(index)
        return cls([index.parent / s for s in shards], config)

    def read(self, name: str) -> torch.Tensor:
        st, key = self._where[name]
        return st.read(key)

    def read_as(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        st, key = self._where[name]
        return st.read_as(key, dtype)

    def read_array(self, name: str, span: tuple[int, int] | None = None) -> np.ndarray:
        st, key = self._where[name]
        return st.read_array(key, span)

    def read_float32(self, name: str, span: tuple[int, int] | None = None) -> np.ndarray:
        st, key = self._where[name]
        return st.read_float32(key, span)

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        st, key = self._where[name]
        entry = st.entries[key]
        return st.path, entry.begin, entry.end


def _read_index(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{index}: not a valid index (expected JSON with a 'weight_map' object)."
        ) from None
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise IncompleteCheckpointError(
            f"{index.parent}: the index names {len(missing)} shard(s) that are not there "
            f"({', '.join(missing[:3])}); the checkpoint is incomplete or still being written."
        )
    return shards


def load_pickle(path: Path, trust_pickle: bool) -> dict[str, object]:
    """torch.load a .bin/.pt with weights_only=True, memory-mapped; refuse what needs code."""
    import torch.distributed.tensor  # noqa: F401  (registers DTensor for weights_only loads)

    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsafePickleError(
                f"{path}: this pickle cannot be loaded safely (weights_only=True refused it: "
                f"{first[:160]}). Only if you trust where it came from, pass --trust-pickle "
                "(Python: trust_pickle=True)."
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot read this PyTorch file ({str(e).splitlines()[0][:160]}); "
            "it is truncated, corrupt or still being written."
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors).")
    return {str(k): v for k, v in obj.items()}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape and values; a few leading values are compared first to exit early."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    head = min(a.numel(), 64)
    if not torch.equal(a.reshape(-1)[:head], b.reshape(-1)[:head]):
        return False
    return torch.equal(a, b)


def _local(t: object) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t  # type: ignore[return-value]


class PickleSource(TensorSource):
    """`pytorch_model.bin` (or shards listed by its index), loaded memory-mapped."""

    def __init__(self, files: list[Path], config: Mapping[str, object], trust_pickle: bool) -> None:
        import torch

        self.files = list(files)
        self._tensors: dict[str, torch.Tensor] = {}
        seen_storage: dict[int, str] = {}
        self.tied = []
        for path in self.files:
            sd = load_pickle(path, trust_pickle)
            for name, key in _canonical_map(list(sd), path).items():
                t = sd[key]
                if not isinstance(t, torch.Tensor):
                    continue
                ptr = t.untyped_storage().data_ptr() if t.numel() else -1
                if ptr in seen_storage and ptr != -1 and name == "lm_head.weight":
                    self.tied.append(name)  # torch.save keeps tied weights as one storage
                    continue
                seen_storage.setdefault(ptr, name)
                self._tensors[name] = t
        self.specs = {
            n: Spec(tuple(t.shape), dtypes.from_torch(t.dtype)) for n, t in self._tensors.items()
        }
        self.tied += _drop_tied(self.specs, config)

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name].clone()


_RANK_FILE = re.compile(r"model_world_size_(\d+)_rank_(\d+)\.pt$")


class FsdpSource(TensorSource):
    """verl FSDP rank files `model_world_size_<W>_rank_<R>.pt`, reassembled per tensor."""

    def __init__(self, files: list[Path], config: Mapping[str, object], trust_pickle: bool) -> None:
        ranks: dict[int, Path] = {}
        world = None
        for f in files:
            m = _RANK_FILE.search(f.name)
            assert m is not None
            w, r = int(m.group(1)), int(m.group(2))
            if world is not None and w != world:
                raise CheckpointError(
                    f"{f.parent}: rank files of different world sizes ({world}, {w})."
                )
            world = w
            ranks[r] = f
        assert world is not None
        missing = sorted(set(range(world)) - set(ranks))
        if missing:
            raise IncompleteCheckpointError(
                f"{files[0].parent}: FSDP world size {world} but rank file(s) {missing} are "
                "missing; the checkpoint is incomplete or still being written."
            )
        self.files = [ranks[r] for r in range(world)]
        self._shards = [load_pickle(p, trust_pickle) for p in self.files]
        names = _canonical_map(list(self._shards[0]), self.files[0])
        self._keys = names
        self._replicated: set[str] = set()
        self.specs = {}
        import torch

        for name, key in names.items():
            first = self._shards[0][key]
            if not isinstance(first, torch.Tensor):
                continue
            self.specs[name] = Spec(self._full_shape(key), dtypes.from_torch(first.dtype))
        self.tied = _drop_tied(self.specs, config)

    def _full_shape(self, key: str) -> tuple[int, ...]:
        from torch.distributed.tensor import DTensor

        t0 = self._shards[0][key]
        if isinstance(t0, DTensor):
            return tuple(t0.shape)
        for i, sd in enumerate(self._shards):
            if key not in sd:
                raise CheckpointError(f"{self.files[i]}: tensor '{key}' is missing from this rank.")
        locals_ = [sd[key] for sd in self._shards]
        if locals_[0].dim() == 0:
            return ()
        if all(_same(t, locals_[0]) for t in locals_[1:]):
            # A plain tensor every rank holds whole (e.g. a buffer FSDP does not shard): equal
            # row blocks of a trained weight are all but impossible, so equal means replicated.
            self._replicated.add(key)
            return tuple(locals_[0].shape)
        return (sum(t.shape[0] for t in locals_), *locals_[0].shape[1:])

    def read(self, name: str) -> torch.Tensor:
        import torch
        from torch.distributed.tensor import DTensor, Replicate, Shard

        key = self._keys[name]
        parts = [sd[key] for sd in self._shards]
        t0 = parts[0]
        if isinstance(t0, DTensor):
            (placement,) = t0.placements  # verl's FSDP mesh is 1-D
            if isinstance(placement, Replicate):
                return _local(t0).clone()
            if not isinstance(placement, Shard):
                raise CheckpointError(
                    f"{self.files[0]}: tensor '{key}' has placement {placement}; "
                    "only Shard and Replicate are supported."
                )
            full = torch.cat([_local(p) for p in parts], dim=placement.dim)
        elif t0.dim() == 0 or key in self._replicated:
            full = t0.clone()
        else:
            full = torch.cat(parts, dim=0)
        if tuple(full.shape) != self.specs[name].shape:
            raise CheckpointError(
                f"{self.files[0].parent}: rank shards of '{key}' join to {list(full.shape)}, "
                f"expected {list(self.specs[name].shape)}."
            )
        return full
