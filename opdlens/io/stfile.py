"""Read safetensors files one tensor at a time, with errors that name the file and the fault."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CheckpointError
from . import dtypes

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 100 * 1024 * 1024
_PIECE = 8 * 1024 * 1024  # bytes read at a time when converting while reading


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives inside a safetensors file."""

    key: str
    stored: str  # the safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def dtype(self) -> torch.dtype:
        """The stored dtype as a torch dtype (imports torch)."""
        return dtypes.to_torch(self.stored)


class SafetensorsFile:
    """A parsed safetensors header; tensors are read on demand with plain file reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries, self.metadata = _parse_header(self.path)

    def keys(self) -> list[str]:
        return list(self.entries)

    def read_array(self, key: str, span: tuple[int, int] | None = None) -> np.ndarray:
        """Read one tensor's stored bytes as a numpy array (bf16 and float8 as unsigned bits).

        With `span` = (start, stop), only those elements of the flattened tensor, as 1-D.
        """
        entry = self.entries[key]
        start, stop, shape = _span(entry, span)
        item = dtypes.itemsize(entry.stored)
        out = np.empty(shape, dtype=dtypes.storage(entry.stored))
        with open(self.path, "rb") as f:
            f.seek(entry.begin + start * item)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != (stop - start) * item:
            raise CheckpointError(
                f"{self.path}: tensor '{key}' is cut short ({got} of {(stop - start) * item} "
                "bytes read); the file is truncated or still being written."
            )
        return out

    def read_float32(self, key: str, span: tuple[int, int] | None = None) -> np.ndarray:
        """Read one float tensor as float32 numpy, converted in 8 MiB pieces while reading.

        With `span` = (start, stop), only those elements of the flattened tensor, as 1-D.
        """
        entry = self.entries[key]
        if entry.stored == "F32":
            return self.read_array(key, span)
        start, stop, shape = _span(entry, span)
        if entry.stored not in dtypes.NUMPY_FLOATS:
            whole = self.read_as(key, dtypes.to_torch("F32")).numpy()
            return whole if span is None else whole.reshape(-1)[start:stop]
        out = np.empty(shape, dtype=np.float32)
        flat = out.reshape(-1)
        item = dtypes.itemsize(entry.stored)
        step = max(1, _PIECE // item)
        buf = np.empty(min(step, flat.size), dtype=dtypes.storage(entry.stored))
        with open(self.path, "rb") as f:
            f.seek(entry.begin + start * item)
            for at in range(0, flat.size, step):
                piece = buf[: min(step, flat.size - at)]
                if f.readinto(memoryview(piece.view(np.uint8))) != piece.nbytes:
                    raise CheckpointError(
                        f"{self.path}: tensor '{key}' is cut short; the file is truncated or "
                        "still being written."
                    )
                dtypes.decode_float32(piece, entry.stored, flat[at : at + piece.size])
        return out

    def read_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """Read one tensor converted to ``dtype``, in 8 MiB pieces: no full stored-dtype copy."""
        import torch

        entry = self.entries[key]
        stored = entry.dtype
        if stored == dtype or stored == torch.bool:
            return self.read(key).to(dtype)
        item = dtypes.itemsize(entry.stored)
        out = torch.empty(entry.shape, dtype=dtype)
        flat = out.view(-1)
        step = max(1, _PIECE // item)
        buf = torch.empty(step * item, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(entry.begin)
            for start in range(0, flat.numel(), step):
                count = min(step, flat.numel() - start)
                view = memoryview(buf.numpy())[: count * item]
                if f.readinto(view) != count * item:
                    raise CheckpointError(
                        f"{self.path}: tensor '{key}' is cut short; the file is truncated or "
                        "still being written."
                    )
                flat[start : start + count] = buf[: count * item].view(stored)
        return out

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor into a fresh CPU tensor of its stored dtype."""
        import torch

        entry = self.entries[key]
        raw = torch.from_numpy(self.read_array(key).reshape(-1).view(np.uint8))
        return raw.view(entry.dtype).reshape(entry.shape)


def _span(entry: TensorEntry, span: tuple[int, int] | None) -> tuple[int, int, tuple[int, ...]]:
    """(start, stop, shape of the result) for a read of the whole tensor or of a flat span."""
    numel = entry.nbytes // dtypes.itemsize(entry.stored)
    if span is None:
        return 0, numel, entry.shape
    start, stop = span
    if not 0 <= start <= stop <= numel:
        raise ValueError(f"span {span} lies outside tensor '{entry.key}' of {numel} elements.")
    return start, stop, (stop - start,)


def _parse_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found.")
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(
            f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header "
            "length); the file is truncated or empty."
        )
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(
                f"{path}: corrupt safetensors header (header length {n} bytes, file {size} bytes); "
                "the file is truncated or not a safetensors file."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}: corrupt safetensors header (not valid JSON: {e.msg if hasattr(e, 'msg') else e})."
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (expected a JSON object).")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries: dict[str, TensorEntry] = {}
    data_end = 0
    for key, info in header.items():
        try:
            stored = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: corrupt safetensors header entry for '{key}' ({info!r})."
            ) from None
        if not dtypes.known(stored):
            raise CheckpointError(
                f"{path}: tensor '{key}' has dtype {stored!r}, which safetensors does not define."
            )
        numel = 1
        for d in shape:
            numel *= d
        itemsize = dtypes.itemsize(stored)
        if end < begin or end - begin != numel * itemsize:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor '{key}' of shape {list(shape)} "
                f"needs {numel * itemsize} bytes but its offsets span {end - begin}."
            )
        data_end = max(data_end, end)
        entries[key] = TensorEntry(key, stored, shape, data_start + begin, data_start + end)
    if data_start + data_end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes on disk, the header needs "
            f"{data_start + data_end}); it was cut short or is still being written."
        )
    return entries, {str(k): str(v) for k, v in metadata.items()}
