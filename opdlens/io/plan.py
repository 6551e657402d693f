"""Planning a safetensors checkpoint: tensor specs, shard files and each file's header."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import dtypes

if TYPE_CHECKING:
    import torch

__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "Slot",
    "TensorSpec",
    "header_layout",
    "lay_out",
    "plan_like",
    "safetensors_dtype",
    "split_by_size",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_BIN_SHARD = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$")


@dataclass(frozen=True)
class TensorSpec:
    """The name, shape and dtype of one tensor an output checkpoint will hold."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str  # a torch dtype or a safetensors name such as "BF16"

    @property
    def stored(self) -> str:
        """The safetensors name of the dtype."""
        return safetensors_dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies on disk."""
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * dtypes.itemsize(self.stored)


def safetensors_dtype(dtype: torch.dtype | str) -> str:
    """The safetensors name of a torch dtype, e.g. torch.bfloat16 -> "BF16"."""
    return dtypes.from_torch(dtype)


def _shard_name(index: int, total: int) -> str:
    return f"model-{index:05d}-of-{total:05d}.safetensors"


def plan_like(
    specs: Sequence[TensorSpec], weight_map: Mapping[str, str] | None
) -> dict[str, list[TensorSpec]]:
    """Group specs into the shard files of an input's weight map, renamed to safetensors."""
    if weight_map is None:
        return {SINGLE_FILE: list(specs)}
    plan: dict[str, list[TensorSpec]] = {}
    for spec in specs:
        if spec.name not in weight_map:
            raise ValueError(
                f"Tensor '{spec.name}' is not in the weight map passed to plan_like "
                f"({len(weight_map)} entries). Pass the weight_map of the checkpoint the "
                "specs came from, or weight_map=None for a single file."
            )
        plan.setdefault(_safetensors_name(weight_map[spec.name]), []).append(spec)
    return dict(sorted(plan.items()))


def _safetensors_name(file_name: str) -> str:
    match = _BIN_SHARD.match(file_name)
    if match:
        return f"model{match.group(1) or ''}.safetensors"
    stem, dot, suffix = file_name.rpartition(".")
    if dot and suffix in ("bin", "pt", "pth"):
        return f"{stem}.safetensors"
    return file_name


def split_by_size(
    specs: Sequence[TensorSpec], max_shard_bytes: int | None
) -> dict[str, list[TensorSpec]]:
    if max_shard_bytes is None:
        return {SINGLE_FILE: list(specs)}
    if max_shard_bytes <= 0:
        raise ValueError(
            f"The 'max_shard_bytes' parameter of CheckpointWriter must be positive. "
            f"Got {max_shard_bytes} instead; pass None for a single file."
        )
    groups: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if groups[-1] and size + spec.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    if len(groups) == 1:
        return {SINGLE_FILE: groups[0]}
    return {_shard_name(i + 1, len(groups)): g for i, g in enumerate(groups)}


def header_layout(
    specs: Sequence[TensorSpec], metadata: Mapping[str, str]
) -> tuple[bytes, list[tuple[TensorSpec, int, int]]]:
    """The padded header of one file and its tensors' data offsets, in save_file's order."""
    ordered = sorted(specs, key=lambda s: (-dtypes.rank(s.stored), s.name))
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offsets = []
    position = 0
    for spec in ordered:
        begin, position = position, position + spec.nbytes
        header[spec.name] = {
            "dtype": spec.stored,
            "shape": list(spec.shape),
            "data_offsets": [begin, position],
        }
        offsets.append((spec, begin, position))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, offsets


@dataclass(frozen=True)
class Slot:
    """Where one planned tensor goes: its file and absolute byte range."""

    spec: TensorSpec
    file: str
    begin: int
    end: int


def lay_out(
    plan: Mapping[str, Sequence[TensorSpec]], metadata: Mapping[str, str]
) -> tuple[dict[str, Slot], dict[str, bytes], dict[str, int]]:
    """Check a plan of CheckpointWriter; return each tensor's slot, each file's header and size."""
    slots: dict[str, Slot] = {}
    headers: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    for file, specs in plan.items():
        if "/" in file or "\\" in file or not file.endswith(".safetensors"):
            raise ValueError(
                f"Shard name '{file}' in the plan of CheckpointWriter must be a bare file "
                "name ending in .safetensors, e.g. 'model-00001-of-00002.safetensors'."
            )
        for spec in specs:
            safetensors_dtype(spec.dtype)
            if spec.name in seen or spec.name == "__metadata__":
                raise ValueError(
                    f"Tensor '{spec.name}' appears twice in the plan of CheckpointWriter "
                    f"(again in '{file}'), or is the reserved name '__metadata__'. "
                    "Plan each tensor name exactly once."
                )
            seen.add(spec.name)
        header, offsets = header_layout(specs, metadata)
        headers[file] = header
        sizes[file] = len(header) + sum(s.nbytes for s in specs)
        for spec, begin, end in offsets:
            slots[spec.name] = Slot(spec, file, len(header) + begin, len(header) + end)
    return slots, headers, sizes
