"""Write a new checkpoint like an input one: its tensors, shards, config files and provenance."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np

from ..progress import track
from .plan import TensorSpec, plan_like
from .writer import CheckpointWriter

if TYPE_CHECKING:
    import torch

    from ..run import Checkpoint

logger = logging.getLogger(__name__)

__all__ = ["FileBytes", "Produced", "as_stored", "output_note", "write_like"]

# Layouts whose files are written back as they were; every other one becomes dense HF safetensors.
_MIRRORED = ("hf-safetensors", "hf-safetensors-sharded")


class FileBytes(NamedTuple):
    """A tensor to copy unchanged: its stored bytes start at `begin` in `path`."""

    path: Path
    begin: int


# What a `produce` function returns for one tensor: its values in the stored dtype, or its bytes.
Produced: TypeAlias = "torch.Tensor | np.ndarray | FileBytes"


def as_stored(ck: Checkpoint, name: str) -> np.ndarray | FileBytes:
    """Tensor `name` of `ck` as it is stored: a byte range to copy when possible."""
    where = ck.byte_range(name)
    return ck.array(name) if where is None else FileBytes(where[0], where[1])


def output_note(ck: Checkpoint) -> str | None:
    """A sentence saying how the output's layout differs from the input's, or None."""
    if ck.layout in _MIRRORED:
        return None
    return (
        f"the input {ck.path} is '{ck.layout}'; the output is a dense Hugging Face safetensors "
        "checkpoint"
    )


def write_like(
    like: Checkpoint,
    out: Path,
    produce: Callable[[str], Produced],
    *,
    metadata: dict[str, str],
    protected: Sequence[Path] = (),
    config_dir: Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    desc: str = "writing",
    extra: Callable[[CheckpointWriter], None] | None = None,
) -> Path:
    """Write every tensor of `like`, as `produce(name)` returns it, in like's shards.

    `produce` must return each tensor in the stored dtype and shape of `like`, or a FileBytes.
    Config and tokenizer files come from `like.config_dir`, else from `config_dir`. The output
    may not overlap any `protected` path. `extra(writer)` runs after the last tensor and may add
    files through `writer.extra_file`. Returns the written directory.
    """
    names = like.names()
    specs = [TensorSpec(n, tuple(like.spec(n).shape), like.spec(n).stored) for n in names]
    note = output_note(like)
    meta = {
        **metadata,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "input_layout": like.layout,
    }
    if note:
        meta["output_layout_note"] = note
        logger.info("%s", note)
    writer = CheckpointWriter(
        Path(out), plan_like(specs, like.weight_map), metadata=meta,
        copy_from=like.config_dir or config_dir, protected=protected, overwrite=overwrite,
    )  # fmt: skip
    with writer, ThreadPoolExecutor(max_workers=1) as pool:
        # The next tensor is read and computed while this one is written (numpy, torch and file
        # I/O release the GIL): one more tensor in memory, reading overlapped with writing.
        pending = pool.submit(produce, names[0]) if names else None
        for i, name in enumerate(track(names, len(names), desc, enabled=progress)):
            assert pending is not None
            tensor = pending.result()
            pending = pool.submit(produce, names[i + 1]) if i + 1 < len(names) else None
            if isinstance(tensor, FileBytes):
                writer.copy_bytes(name, tensor.path, tensor.begin)
            else:
                writer.write(name, tensor)
            del tensor
        if extra is not None:
            extra(writer)
    return writer.out_dir
