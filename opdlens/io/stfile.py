"""Read safetensors files one tensor at a time, with errors that name the file and the fault.

A header is accepted only if the safetensors library accepts it too (its own parser runs on
every file; it maps the file but reads only the header) and it passes opdlens's stricter rules:
no duplicate JSON keys, dtypes opdlens can read, each entry an object, at most MAX_TENSORS.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..errors import CheckpointError, DuplicateJSONKey, OptionError
from . import buffers, dtypes

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 100_000_000  # bytes, the safetensors library's own limit
# Tensors per file: more than any real checkpoint file holds (even a whole 1T-parameter MoE
# with its FP8 scales in one file would hold about 140k). It bounds what a header can cost
# (about 3 s and 400 MiB at the limit).
MAX_TENSORS = 200_000
# ',', '[' and '{' in a header bound the JSON values it parses into; an entry of a legal
# header with up to 4 dimensions has about 10.
_MAX_VALUES = 16 * MAX_TENSORS
_USIZE = 2**64 - 1  # the library's usize: shapes, offsets and sizes in bits must fit
_DTYPES = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
           "F32", "F64", "I64", "U64")  # fmt: skip
_ITEMSIZE = {name: dtypes.itemsize(name) for name in _DTYPES}
# dtypes the safetensors library defines that opdlens does not read (sub-byte, scale, complex).
_LIBRARY_ONLY = frozenset(
    {"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"}
)
PIECE = 8 << 20  # bytes read (and hashed, decoded) at a time by read_pieces


def read_pieces(
    path: Path,
    begin: int,
    count: int,
    storage: np.dtype | type,
    *,
    key: str,
    into: np.ndarray | None = None,
    hash_piece: Callable[[memoryview], object] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Read `count` elements of `storage` from `path` at byte `begin`, about PIECE bytes at a time.

    Yields (start, piece) with elements start … start + len(piece) - 1: read straight into
    `into[start:]` (1-D, `storage`) when given, else into one reused buffer. `hash_piece` gets
    each piece's bytes as they arrive, so every byte is read once.

    Raises:
        CheckpointError: the file ends before the tensor `key` does.
    """
    item = np.dtype(storage).itemsize
    step = max(1, PIECE // item)
    buf = None if into is not None else buffers.empty(min(step, count), storage)
    with open(path, "rb") as f:
        f.seek(begin)
        for start in range(0, count, step):
            stop = min(start + step, count)
            piece = into[start:stop] if into is not None else buf[: stop - start]  # type: ignore[index]
            got = f.readinto(piece.view(np.uint8).data)
            if got != piece.nbytes:
                raise CheckpointError(
                    f"{path}: tensor '{key}' is cut short ({begin + start * item + (got or 0)} "
                    f"of {begin + count * item} bytes); the file is truncated or still being "
                    "written."
                )
            if hash_piece is not None:
                hash_piece(piece.view(np.uint8).data)
            yield start, piece


class TensorEntry(NamedTuple):
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
        out = buffers.empty(shape, dtypes.storage(entry.stored))
        with open(self.path, "rb") as f:
            f.seek(entry.begin + start * item)
            got = f.readinto(out.reshape(-1).view(np.uint8).data)
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
        out = buffers.empty(shape, np.float32)
        flat = out.reshape(-1)
        at = entry.begin + start * dtypes.itemsize(entry.stored)
        storage = dtypes.storage(entry.stored)
        for i, piece in read_pieces(self.path, at, flat.size, storage, key=key):
            dtypes.decode_float32(piece, entry.stored, flat[i : i + piece.size])
        return out

    def read_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """Read one tensor converted to ``dtype``, in 8 MiB pieces: no full stored-dtype copy."""
        import torch

        entry = self.entries[key]
        stored = entry.dtype
        if stored == dtype or stored == torch.bool:
            return self.read(key).to(dtype)
        out = torch.empty(entry.shape, dtype=dtype, device="cpu")
        flat = out.view(-1)
        storage = dtypes.storage(entry.stored)
        for i, piece in read_pieces(self.path, entry.begin, flat.numel(), storage, key=key):
            flat[i : i + piece.size] = torch.from_numpy(piece.view(np.uint8)).view(stored)
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
        raise OptionError(f"span {span} lies outside tensor '{entry.key}' of {numel} elements.")
    return start, stop, (stop - start,)


def _parse_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Validate a header as the safetensors library does (plus opdlens's stricter rules)."""
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
        if n > _MAX_HEADER:
            raise _corrupt(
                path, f"header length {n} bytes is above the {_MAX_HEADER} bytes safetensors allows"
            )
        if n > size - 8:
            raise CheckpointError(
                f"{path}: corrupt safetensors header (header length {n} bytes, file {size} bytes); "
                "the file is truncated or not a safetensors file."
            )
        raw = f.read(n)
    if not raw.startswith(b"{"):
        raise _corrupt(path, f"expected a JSON object starting with '{{', found {raw[:16]!r}")
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > _MAX_VALUES:
        raise CheckpointError(
            f"{path}: safetensors header too large to read ({values} JSON separators and "
            f"containers, more than the {_MAX_VALUES} that {MAX_TENSORS} tensors need); "
            f"opdlens reads at most {MAX_TENSORS} tensors per file — split it into shards."
        )
    entries, metadata = _validate(path, raw, size)
    refusal = _library_refusal(path)
    if refusal is not None:
        raise _corrupt(path, f"the safetensors library refuses it ({refusal})")
    return entries, metadata


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: corrupt safetensors header: {what}; the file is damaged or was not written "
        "by a safetensors writer — re-save or re-download it."
    )


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateJSONKey(k)
            seen.add(k)
    return d


def _describe(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= 80 else text[:77] + "..."


def _validate(path: Path, raw: bytes, size: int) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The safetensors library's checks (tensor.rs `read_metadata`, `validate`), in Python."""
    try:  # the library's JSON parser refuses deep nesting; so do we (RecursionError)
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique)
    except UnicodeDecodeError as e:
        raise _corrupt(path, f"not UTF-8 ({e.reason} at byte {8 + e.start})") from None
    except (ValueError, RecursionError) as e:
        what = e.msg if isinstance(e, json.JSONDecodeError) else str(e) or type(e).__name__
        raise _corrupt(path, f"not valid JSON ({what})") from None
    except DuplicateJSONKey as e:
        raise _corrupt(path, f"the key {e.args[0]!r} appears twice in one JSON object") from None
    if type(header) is not dict:
        raise _corrupt(path, f"expected a JSON object, found {type(header).__name__}")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict or any(type(v) is not str for v in metadata.values()):
        raise _corrupt(
            path, f"__metadata__ must be an object of strings, found {_describe(metadata)}"
        )
    if len(header) > MAX_TENSORS:
        raise CheckpointError(
            f"{path}: {len(header)} tensors in one safetensors file, more than the {MAX_TENSORS} "
            "opdlens reads per file; split it into shards."
        )
    data_start = 8 + len(raw)
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if type(info) is not dict:
            raise _bad_entry(path, key, info)
        stored, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if type(stored) is not str or type(shape) is not list or type(offsets) is not list:
            raise _bad_entry(path, key, info)
        itemsize = _ITEMSIZE.get(stored)
        if itemsize is None:
            raise _bad_entry(path, key, info)
        if len(offsets) != 2:
            raise _bad_offsets(path, key, offsets)
        begin, end = offsets
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= _USIZE:
            raise _bad_offsets(path, key, offsets)
        if not 0 <= end <= _USIZE:
            raise _bad_offsets(path, key, offsets)
        numel = 1
        for d in shape:
            if type(d) is not int or d < 0:
                raise _corrupt(
                    path, f"tensor {key!r} has shape {_describe(shape)}; expected a list of "
                    "whole numbers ≥ 0"
                )  # fmt: skip
            numel *= d
            if numel > _USIZE:  # the library's checked multiplication, left to right
                raise _corrupt(path, f"tensor {key!r} has shape {shape}, too large to address")
        if numel * itemsize * 8 > _USIZE:
            raise _corrupt(path, f"tensor {key!r} has shape {shape}, too large to address")
        if end - begin != numel * itemsize:
            raise _corrupt(
                path, f"tensor {key!r} of shape {shape} and dtype {stored} needs "
                f"{numel * itemsize} bytes but its data_offsets {offsets} span {end - begin}"
            )  # fmt: skip
        spans.append((begin, end, key))
        entries[key] = TensorEntry(key, stored, tuple(shape), data_start + begin, data_start + end)
    spans.sort()
    at = 0
    for begin, end, key in spans:
        if begin != at:
            what = "overlaps the tensor before it" if begin < at else f"leaves a gap after {at}"
            raise _corrupt(
                path, f"tensor {key!r} has data_offsets [{begin}, {end}], which {what}; tensors "
                "must tile the data section from 0 without gaps or overlaps"
            )  # fmt: skip
        at = end
    if data_start + at > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes on disk, the header needs "
            f"{data_start + at}); it was cut short or is still being written."
        )
    if data_start + at < size:
        raise _corrupt(
            path, f"{size - data_start - at} bytes after the last tensor's data (the file is "
            f"{size} bytes, the header accounts for {data_start + at})"
        )  # fmt: skip
    return entries, metadata


def _bad_entry(path: Path, key: str, info: object) -> CheckpointError:
    """The error for a tensor entry that is not an object with the three fields, right types."""
    if type(info) is dict:
        missing = [f for f in ("dtype", "shape", "data_offsets") if f not in info]
        if missing:
            return _corrupt(path, f"tensor {key!r} has no {' or '.join(missing)}")
        if type(info["dtype"]) is not str or info["dtype"] not in _ITEMSIZE:
            return _bad_dtype(path, key, info["dtype"])
        if type(info["shape"]) is not list:
            return _corrupt(
                path, f"tensor {key!r} has shape {_describe(info['shape'])}; expected a list"
            )
        return _bad_offsets(path, key, info["data_offsets"])
    return _corrupt(
        path, f"tensor {key!r} must be an object with dtype, shape and data_offsets, "
        f"found {_describe(info)}"
    )  # fmt: skip


def _bad_offsets(path: Path, key: str, offsets: object) -> CheckpointError:
    return _corrupt(
        path, f"tensor {key!r} has data_offsets {_describe(offsets)}; expected [begin, end], "
        "two whole numbers from 0 to 2**64-1"
    )  # fmt: skip


def _bad_dtype(path: Path, key: str, stored: object) -> CheckpointError:
    if type(stored) is str and stored in _LIBRARY_ONLY:
        why = "a safetensors dtype opdlens cannot read"
    else:
        why = "not a safetensors dtype; the header is corrupt"
    return CheckpointError(
        f"{path}: tensor {key!r} has dtype {_describe(stored)} ({why}); expected one of "
        f"{', '.join(_DTYPES)}. Convert the tensor to one of them before analysing it."
    )


def _library_refusal(path: Path) -> str | None:
    """The safetensors library's objection to the file's header, or None when it accepts it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np"):  # parses the header; maps but never reads the data
            return None
    except (SafetensorError, OSError) as e:
        return " ".join(str(e).removeprefix("Error while deserializing header: ").split())
