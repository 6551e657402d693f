"""Read safetensors files one tensor at a time, with errors that name the file and the fault."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

# safetensors dtype names → torch dtypes (the format's own spelling).
ST_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

_MAX_HEADER = 100 * 1024 * 1024
_PIECE = 8 * 1024 * 1024  # bytes read at a time when converting while reading


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives inside a safetensors file."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """A parsed safetensors header; tensors are read on demand with plain file reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries, self.metadata = _parse_header(self.path)

    def keys(self) -> list[str]:
        return list(self.entries)

    def read_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """Read one tensor converted to ``dtype``, in 8 MiB pieces: no full stored-dtype copy."""
        entry = self.entries[key]
        if entry.dtype == dtype or entry.dtype == torch.bool:
            return self.read(key).to(dtype)
        item = torch.empty((), dtype=entry.dtype).element_size()
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
                flat[start : start + count] = buf[: count * item].view(entry.dtype)
        return out

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor into a fresh CPU tensor of its stored dtype."""
        entry = self.entries[key]
        buf = torch.empty(entry.nbytes, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(entry.begin)
            got = f.readinto(memoryview(buf.numpy()))
        if got != entry.nbytes:
            raise CheckpointError(
                f"{self.path}: tensor '{key}' is cut short ({got} of {entry.nbytes} bytes); "
                "the file is truncated or still being written."
            )
        if entry.dtype == torch.bool:
            return buf.view(torch.bool).reshape(entry.shape)
        return buf.view(entry.dtype).reshape(entry.shape)


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
            dtype = ST_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: corrupt safetensors header entry for '{key}' ({info!r})."
            ) from None
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end < begin or end - begin != numel * itemsize:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor '{key}' of shape {list(shape)} "
                f"needs {numel * itemsize} bytes but its offsets span {end - begin}."
            )
        data_end = max(data_end, end)
        entries[key] = TensorEntry(key, dtype, shape, data_start + begin, data_start + end)
    if data_start + data_end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes on disk, the header needs "
            f"{data_start + data_end}); it was cut short or is still being written."
        )
    return entries, {str(k): str(v) for k, v in metadata.items()}
