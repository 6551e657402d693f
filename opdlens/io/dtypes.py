"""Stored dtypes by their safetensors names, with numpy conversions that need no torch.

Reading and writing safetensors checkpoints goes through numpy, so a command that only does
weight arithmetic (extrapolate) never imports torch, whose import alone costs ~220 MiB of RSS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "NUMPY_FLOATS",
    "decode_float32",
    "encode_float32",
    "from_torch",
    "is_float",
    "itemsize",
    "overflowed",
    "rank",
    "storage",
    "to_torch",
    "torch_name",
]

# safetensors name → (bytes per element, rank in safetensors' Rust enum, torch dtype name).
# save_file lays tensors out by descending rank then name; the writer does the same.
_STORED: dict[str, tuple[int, int, str]] = {
    "BOOL": (1, 0, "bool"),
    "U8": (1, 1, "uint8"),
    "I8": (1, 2, "int8"),
    "F8_E5M2": (1, 3, "float8_e5m2"),
    "F8_E4M3": (1, 4, "float8_e4m3fn"),
    "I16": (2, 5, "int16"),
    "U16": (2, 6, "uint16"),
    "F16": (2, 7, "float16"),
    "BF16": (2, 8, "bfloat16"),
    "I32": (4, 9, "int32"),
    "U32": (4, 10, "uint32"),
    "F32": (4, 11, "float32"),
    "F64": (8, 12, "float64"),
    "I64": (8, 13, "int64"),
    "U64": (8, 14, "uint64"),
}
_FLOATS = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
# Float dtypes numpy converts to and from float32 itself; the float8 ones go through torch.
NUMPY_FLOATS = frozenset({"F16", "BF16", "F32", "F64"})
# numpy dtype holding each stored dtype's raw bytes (bf16 and float8 as unsigned bit patterns).
_STORAGE = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E5M2": np.uint8, "F8_E4M3": np.uint8,
    "I16": np.int16, "U16": np.uint16, "F16": np.float16, "BF16": np.uint16, "I32": np.int32,
    "U32": np.uint32, "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64,
}  # fmt: skip


def known(name: str) -> bool:
    """True for a dtype name safetensors defines (and this package reads)."""
    return name in _STORED


def itemsize(name: str) -> int:
    """Bytes per element of a stored dtype, e.g. 'BF16' → 2."""
    return _STORED[name][0]


def rank(name: str) -> int:
    """Position in safetensors' dtype enum, which orders tensors inside a file."""
    return _STORED[name][1]


def is_float(name: str) -> bool:
    """True for floating-point stored dtypes."""
    return name in _FLOATS


def storage(name: str) -> np.dtype:
    """The numpy dtype that holds a stored dtype's raw bytes."""
    return np.dtype(_STORAGE[name])


def torch_name(name: str) -> str:
    """The torch spelling of a stored dtype, e.g. 'BF16' → 'bfloat16'."""
    return _STORED[name][2]


def to_torch(name: str) -> torch.dtype:
    """The torch dtype of a stored dtype name (imports torch)."""
    import torch

    return getattr(torch, _STORED[name][2])


def from_torch(dtype: torch.dtype | str) -> str:
    """The safetensors name of a torch dtype (a safetensors name passes through)."""
    if isinstance(dtype, str) and dtype in _STORED:
        return dtype
    spelled = str(dtype).removeprefix("torch.")
    for name, (_, _, torch_spelling) in _STORED.items():
        if spelled == torch_spelling:
            return name
    known_names = ", ".join(t for _, _, t in _STORED.values())
    raise ValueError(
        f"safetensors cannot store dtype {dtype}; expected one of {known_names}. "
        "Cast the tensor to one of them before writing."
    )


def decode_float32(raw: np.ndarray, name: str, out: np.ndarray) -> None:
    """Write the float32 values of `raw` (stored bytes as `storage(name)`) into `out`, exactly."""
    if name == "BF16":
        bits = out.view(np.uint32)
        bits[...] = raw  # a bf16 is the top half of the float32 with the same value
        bits <<= 16
    elif name in NUMPY_FLOATS:
        out[...] = raw
    else:
        raise ValueError(f"decode_float32 handles {sorted(NUMPY_FLOATS)}, not {name}.")


def overflowed(raw: np.ndarray, name: str) -> bool:
    """True when values rounded to a stored dtype (raw bytes, see `storage`) hold ±inf.

    Rounding a finite float32 gives ±inf only past the dtype's maximum: ±65504 for float16,
    ±3.3895e38 for bfloat16.
    """
    if name == "BF16":
        return bool(((raw & 0x7FFF) == 0x7F80).any())  # exponent all ones, mantissa zero
    if name in ("F16", "F32", "F64"):
        return not bool(np.isfinite(raw).all())
    raise ValueError(f"overflowed handles {sorted(NUMPY_FLOATS)}, not {name}.")


def encode_float32(x: np.ndarray, name: str, *, finite: bool = False) -> np.ndarray:
    """Round float32 values to a stored float dtype, to nearest-even as torch does; raw bytes.

    `finite=True` promises no NaN in `x`, which skips a pass over it.
    """
    if name == "F32":
        return x
    if name in ("F16", "F64"):
        with np.errstate(over="ignore"):  # beyond the range of float16 is ±inf, as in torch
            return x.astype(_STORAGE[name])
    if name != "BF16":
        raise ValueError(f"encode_float32 handles {sorted(NUMPY_FLOATS)}, not {name}.")
    bits = x.view(np.uint32)
    rounded = bits >> 16
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits  # carries into the upper half when the lower half rounds up
    rounded >>= 16
    out = rounded.astype(np.uint16)
    if finite:
        return out
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0  # rounding could turn a NaN's payload into an infinity
    return out
