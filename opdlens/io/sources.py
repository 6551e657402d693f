"""Tensor sources: lazy, per-tensor access to the weights of one checkpoint, whatever its files."""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CheckpointError, IncompleteCheckpointError
from ..names import canonical_name
from . import dtypes
from .pickles import load_pickle
from .stfile import SafetensorsFile
from .weightfiles import index_shards, regular_file

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
            regular_file(path)
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
    """The shard names of a `*.safetensors.index.json` / `*.bin.index.json` (see `index_shards`)."""
    return index_shards(index, Path(index.name.removesuffix(".index.json")).suffix)


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


def _spec_of(t: torch.Tensor, path: Path, key: str) -> Spec:
    """The Spec of a loaded tensor; refuse layouts and dtypes opdlens cannot read."""
    import torch

    if t.layout != torch.strided or t.device.type == "meta":
        raise CheckpointError(
            f"{path}: tensor '{key}' is a {t.layout} tensor on {t.device}; opdlens reads dense "
            "CPU tensors. Re-save the checkpoint with dense weights."
        )
    try:
        return Spec(tuple(t.shape), dtypes.from_torch(t.dtype))
    except ValueError as e:
        raise CheckpointError(f"{path}: tensor '{key}': {e}") from None


class PickleSource(TensorSource):
    """`pytorch_model.bin` (or shards listed by its index), loaded memory-mapped."""

    def __init__(self, files: list[Path], config: Mapping[str, object], trust_pickle: bool) -> None:
        self.files = list(files)
        self._tensors: dict[str, torch.Tensor] = {}
        self.specs = {}
        seen_storage: dict[int, str] = {}
        self.tied = []
        for path in self.files:
            sd = load_pickle(path, trust_pickle)
            for name, key in _canonical_map(list(sd), path).items():
                t = sd[key]
                spec = _spec_of(t, path, key)
                ptr = t.untyped_storage().data_ptr() if t.numel() else -1
                if ptr in seen_storage and ptr != -1 and name == "lm_head.weight":
                    self.tied.append(name)  # torch.save keeps tied weights as one storage
                    continue
                seen_storage.setdefault(ptr, name)
                self._tensors[name] = t
                self.specs[name] = spec
        self.tied += _drop_tied(self.specs, config)

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name].clone()


# A verl FSDP rank file: world size and rank.
RANK_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")


def _rank_files(files: list[Path]) -> list[Path]:
    """verl rank files ordered by rank; refuse mixed world sizes, duplicate or missing ranks."""
    ranks: dict[int, Path] = {}
    world = None
    for f in files:
        m = RANK_FILE.match(f.name)
        assert m is not None
        w, r = int(m.group(1)), int(m.group(2))
        if world is not None and w != world:
            raise CheckpointError(
                f"{f.parent}: rank files of different world sizes ({world}, {w})."
            )
        world = w
        if w < 1:
            raise CheckpointError(f"{f}: world size {w} in the file name; verl counts from 1.")
        if r in ranks:
            raise CheckpointError(f"{f}: rank {r} is also in {ranks[r].name}; remove one of them.")
        if r >= w:
            raise CheckpointError(
                f"{f}: rank {r} in a world of size {w} (ranks are 0 to {w - 1}); the file does "
                "not belong to this checkpoint."
            )
        ranks[r] = f
    assert world is not None
    missing = sorted(set(range(world)) - set(ranks))
    if missing:
        raise IncompleteCheckpointError(
            f"{files[0].parent}: FSDP world size {world} but rank file(s) {missing} are "
            "missing; the checkpoint is incomplete or still being written."
        )
    return [ranks[r] for r in range(world)]


class FsdpSource(TensorSource):
    """verl FSDP rank files `model_world_size_<W>_rank_<R>.pt`, reassembled per tensor.

    Every rank must hold the same keys, with the same dtype and tensor kind; DTensors must come
    from a 1-D mesh of the world size with Shard or Replicate placements, and plain tensors
    split along dim 0 must agree on every other dimension. All of it is checked when the
    checkpoint is opened, from shapes only.
    """

    def __init__(self, files: list[Path], config: Mapping[str, object], trust_pickle: bool) -> None:
        self.files = _rank_files(files)
        self._shards = [load_pickle(p, trust_pickle) for p in self.files]
        keys0 = set(self._shards[0])
        for path, sd in zip(self.files[1:], self._shards[1:], strict=True):
            odd = sorted(keys0 ^ set(sd))
            if odd:
                where = self.files[0].name if odd[0] in keys0 else path.name
                raise CheckpointError(
                    f"{path}: tensor '{odd[0]}' is only in {where}; every rank file of "
                    f"{self.files[0].parent} must hold the same tensors."
                )
        self._keys = _canonical_map(list(self._shards[0]), self.files[0])
        self._dim: dict[str, int | None] = {}  # key → concatenation dim, None when replicated
        self.specs = {}
        for name, key in self._keys.items():
            self.specs[name] = self._plan(key)
        self.tied = _drop_tied(self.specs, config)

    def _plan(self, key: str) -> Spec:
        """Check how the ranks' pieces of ``key`` join; return the whole tensor's Spec."""
        from torch.distributed.tensor import DTensor, Replicate, Shard

        parts = [sd[key] for sd in self._shards]
        specs = [_spec_of(_local(t), f, key) for t, f in zip(parts, self.files, strict=True)]
        for f, t, spec in zip(self.files[1:], parts[1:], specs[1:], strict=True):
            if isinstance(t, DTensor) != isinstance(parts[0], DTensor):
                raise CheckpointError(
                    f"{f}: tensor '{key}' is {'a' if isinstance(t, DTensor) else 'not a'} DTensor "
                    f"but {'not ' if isinstance(t, DTensor) else ''}in {self.files[0].name}."
                )
            if spec.stored != specs[0].stored:
                raise CheckpointError(
                    f"{f}: tensor '{key}' is {spec.stored} but {specs[0].stored} in "
                    f"{self.files[0].name}; rank files must agree."
                )
        t0 = parts[0]
        if isinstance(t0, DTensor):
            return self._plan_dtensor(key, parts, specs[0].stored, Shard, Replicate)
        shapes = [s.shape for s in specs]
        for f, shape in zip(self.files[1:], shapes[1:], strict=True):
            if len(shape) != len(shapes[0]) or shape[1:] != shapes[0][1:]:
                raise CheckpointError(
                    f"{f}: tensor '{key}' has shape {list(shape)} but {list(shapes[0])} in "
                    f"{self.files[0].name}; rank pieces may differ only in dim 0."
                )
        if not shapes[0] or all(_same(t, t0) for t in parts[1:]):
            # A plain tensor every rank holds whole (e.g. a buffer FSDP does not shard): equal
            # row blocks of a trained weight are all but impossible, so equal means replicated.
            self._dim[key] = None
            return specs[0]
        self._dim[key] = 0
        return Spec((sum(s[0] for s in shapes), *shapes[0][1:]), specs[0].stored)

    def _plan_dtensor(
        self, key: str, parts: list, stored: str, shard: type, replicate: type
    ) -> Spec:
        t0 = parts[0]
        world = len(self.files)
        for f, t in zip(self.files, parts, strict=True):
            mesh = t.device_mesh
            where = f"{f}: DTensor '{key}'"
            if mesh.ndim != 1 or mesh.size() != world:
                raise CheckpointError(
                    f"{where} was saved on a mesh of shape {list(mesh.shape)}, but the file names "
                    f"say a world of {world}; rank files are missing or mixed."
                )
            if len(t.placements) != 1 or not isinstance(t.placements[0], (shard, replicate)):
                raise CheckpointError(
                    f"{where} has placements {list(t.placements)}; only one Shard or Replicate "
                    "is supported."
                )
            if t.placements != t0.placements or t.shape != t0.shape:
                raise CheckpointError(
                    f"{where} is {list(t.shape)} {list(t.placements)} but {list(t0.shape)} "
                    f"{list(t0.placements)} in {self.files[0].name}."
                )
        whole = tuple(t0.shape)
        (placement,) = t0.placements
        if isinstance(placement, replicate):
            self._dim[key] = None
            joined: tuple[int, ...] | None = tuple(_local(t0).shape)
        else:
            d = placement.dim % max(len(whole), 1)
            self._dim[key] = d
            local = [tuple(_local(t).shape) for t in parts]
            ok = all(len(s) == len(whole) and s[:d] + s[d + 1 :] == whole[:d] + whole[d + 1 :]
                     for s in local)  # fmt: skip
            joined = (*whole[:d], sum(s[d] for s in local), *whole[d + 1 :]) if ok else None
        if joined != whole:
            raise CheckpointError(
                f"{self.files[0].parent}: rank shards of DTensor '{key}' do not join to its "
                f"shape {list(whole)}; the rank files are corrupt or from different saves."
            )
        return Spec(whole, stored)

    def read(self, name: str) -> torch.Tensor:
        import torch

        key = self._keys[name]
        parts = [_local(sd[key]) for sd in self._shards]
        d = self._dim[key]
        full = parts[0].clone() if d is None else torch.cat(parts, dim=d)
        assert tuple(full.shape) == self.specs[name].shape, (key, full.shape)
        return full
