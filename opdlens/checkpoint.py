"""Checkpoint: one saved step's weights, as detection found them, with per-tensor access."""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from .errors import UnknownTensorError
from .io import dtypes
from .io.layouts import detect, open_source, read_config
from .io.sources import Spec, TensorSource
from .io.support_files import is_support_file
from .io.weightfiles import read_weight_map
from .names import canonical_name

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .io.lora import LoraSource


@dataclass
class Checkpoint:
    """The weights saved at one training step (or the base), read lazily per tensor."""

    step: int | None
    path: Path
    layout: str
    source: TensorSource
    config: dict[str, object] = field(default_factory=dict)
    config_dir: Path | None = None  # where config.json (and tokenizer files) were found
    index_file: Path | None = None  # the *.index.json of a sharded checkpoint

    @functools.cached_property
    def weight_map(self) -> dict[str, str] | None:
        """Canonical tensor name → shard file name of a sharded checkpoint; None for one file."""
        if self.index_file is None:
            return None
        return {canonical_name(k): v for k, v in read_weight_map(self.index_file).items()}

    def names(self) -> list[str]:
        """Canonical tensor names in this checkpoint."""
        return self.source.names()

    def spec(self, name: str) -> Spec:
        """Shape and stored dtype of one tensor."""
        return self.source.specs[name]

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor in its stored orientation, in its stored dtype or converted to ``dtype``."""
        if name not in self.source.specs:
            raise UnknownTensorError(f"{self.path}: no tensor named '{name}'.")
        return self.source.read(name) if dtype is None else self.source.read_as(name, dtype)

    def array(
        self, name: str, *, float32: bool = False, span: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Read one tensor as numpy: its stored bytes (see `io.dtypes.storage`), or float32 values.

        With `span` = (start, stop), only those elements of the flattened tensor, as 1-D.
        """
        if name not in self.source.specs:
            raise UnknownTensorError(f"{self.path}: no tensor named '{name}'.")
        if float32:
            return self.source.read_float32(name, span)
        return self.source.read_array(name, span)

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """(file, begin, end) of a tensor stored as-is in one file, or None (e.g. LoRA, FSDP)."""
        return self.source.byte_range(name)

    @property
    def files(self) -> list[Path]:
        """The weight files this checkpoint reads."""
        return list(self.source.files)

    @property
    def input_files(self) -> list[Path]:
        """Every file this checkpoint reads or an output copies from it, as found (not resolved)."""
        files = [*self.files, *([self.index_file] if self.index_file is not None else [])]
        if self.config_dir is not None:
            with contextlib.suppress(OSError):
                files += [p for p in self.config_dir.iterdir() if is_support_file(p.name)]
        return files

    @property
    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def num_params(self) -> int:
        return sum(s.numel for s in self.source.specs.values())

    @property
    def dtype(self) -> str:
        """The dominant stored dtype (by parameter count), e.g. 'bfloat16'."""
        counts: dict[str, int] = {}
        for s in self.source.specs.values():
            key = dtypes.torch_name(s.stored)
            counts[key] = counts.get(key, 0) + s.numel
        return max(counts, key=counts.__getitem__) if counts else "none"


def is_lora(source: TensorSource) -> TypeGuard[LoraSource]:
    """Whether a checkpoint's source is a PEFT LoRA adapter (its update stays factored)."""
    # LoRA sources need torch, so their module loads only when an adapter is opened.
    lora = sys.modules.get("opdlens.io.lora")
    return lora is not None and isinstance(source, lora.LoraSource)


def open_checkpoint(path: Path, step: int | None, trust_pickle: bool) -> Checkpoint:
    """Detect a checkpoint directory's layout and open its tensors lazily."""
    det = detect(path)
    config = read_config(det)
    source = open_source(det, config, trust_pickle)
    index = det.files[0] if det.files[0].name.endswith(".index.json") else None
    return Checkpoint(step, Path(path), det.layout, source, config, det.config_dir, index)
