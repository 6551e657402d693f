"""One update Δ of one matrix or vector, dense or as LoRA factors, with the algebra the sweep needs."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import xxhash

from .._workers import stop_point
from ..io import buffers, dtypes
from ..io.stfile import read_pieces
from .linalg import TopK, factored_top_k_svd, singular_values, top_k_svd
from .metrics import frobenius_sq, inner

if TYPE_CHECKING:
    from ..run import Checkpoint

_TORCH_DECODE = {"BF16": torch.bfloat16, "F16": torch.float16}  # 16-bit patterns torch decodes
# ‖Δ‖_F outside [2^-20, 2^20]: the SVD sees Δ scaled by a power of two (exact), so that float32
# Gram matrices and residual norms neither overflow (1e30 weights) nor underflow (1e-30).
_SAFE_EXPONENT = 20
_ROWS = 1024  # rows per in-place subtraction block of `subtract_base`
_EXACT_IN_FLOAT32 = (torch.bfloat16, torch.float16)  # W_0 dtypes upcast exactly per block


def read_weight(ck: Checkpoint, name: str) -> tuple[torch.Tensor, bytes]:
    """One tensor as float32 in its stored orientation, and a digest of its stored bytes.

    A safetensors float tensor is read in 8 MiB pieces into one buffer, each piece hashed and
    decoded as it arrives (each byte is read once); other sources hash the tensor they load.
    float8 is upcast exactly.

    Raises:
        CheckpointError: the file ends before the tensor does.
    """
    spec = ck.spec(name)
    h = _hasher(spec.stored, spec.shape)
    where = ck.byte_range(name)
    if where is None or spec.stored not in dtypes.NUMPY_FLOATS:
        raw = ck.tensor(name)
        h.update(_raw_bytes(raw))
        return raw.to(torch.float32), h.digest()
    path, begin, _ = where
    flat = buffers.empty(spec.numel, np.float32)  # reused within a worker's sweeps
    out = torch.from_numpy(flat)
    # float32 is read straight into the result; bf16 and f16 are decoded by torch (vectorised
    # copy_, ~2x numpy's shift), float64 rounded by numpy.
    direct = spec.stored == "F32"
    via_torch = _TORCH_DECODE.get(spec.stored)
    pieces = read_pieces(
        path, begin, flat.size, dtypes.storage(spec.stored), key=name,
        into=flat if direct else None, hash_piece=h.update,
    )  # fmt: skip
    for start, piece in pieces:
        stop_point()
        if direct:
            continue
        stop = start + piece.size
        if via_torch is not None:
            out[start:stop].copy_(torch.from_numpy(piece.view(np.int16)).view(via_torch))
        else:
            dtypes.decode_float32(piece, spec.stored, flat[start:stop])
    return out.view(spec.shape), h.digest()


def subtract_base(d: torch.Tensor, w0: torch.Tensor) -> None:
    """d −= W_0 in place, by row blocks, so W_0 is never upcast whole.

    bf16 and f16 blocks are upcast into one reused float32 block first (exact; a same-dtype
    sub_ is ~2x a mixed one); other dtypes are subtracted as torch promotes them, a block at
    a time (float64 W_0 in float64). Shape: d float32 and w0 the same shape.
    """
    if d.dim() == 0:
        d.sub_(w0)
        return
    exact = w0.dtype in _EXACT_IN_FLOAT32
    if exact:
        row = max(1, w0[:1].numel())
        scratch = torch.from_numpy(buffers.empty(min(_ROWS, d.shape[0]) * row, np.float32))
    for i in range(0, d.shape[0], _ROWS):
        block = w0[i : i + _ROWS]
        if exact:
            block = scratch[: block.numel()].view(block.shape).copy_(block)
        d[i : i + _ROWS].sub_(block)


def read_stored(ck: Checkpoint, name: str) -> tuple[torch.Tensor, bytes]:
    """One tensor in its stored dtype and orientation, and the digest `read_weight` gives it."""
    spec = ck.spec(name)
    raw = ck.tensor(name)
    h = _hasher(spec.stored, spec.shape)
    h.update(_raw_bytes(raw))
    return raw, h.digest()


def digest(*tensors: torch.Tensor) -> bytes:
    """A digest of tensors' dtypes, shapes and bytes (LoRA factors, slice row indices)."""
    h = xxhash.xxh3_128()
    for t in tensors:
        h.update(f"{t.dtype}{list(t.shape)};".encode())
        h.update(_raw_bytes(t))
    return h.digest()


def _hasher(stored: str, shape: tuple[int, ...]) -> xxhash.xxh3_128:
    # xxh3-128: ~15x sha256 here (0.4 ms against 6 ms for 5.8 MB); a cache key, not a signature.
    return xxhash.xxh3_128(f"{stored}{list(shape)};".encode())


def _raw_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().contiguous().reshape(-1).cpu()
    return flat.view(torch.uint8).numpy().data if flat.numel() else memoryview(b"")


def _exponent(total_sq: float | None) -> int:
    """e with ‖Δ‖_F·2^-e near 1 when ‖Δ‖_F lies outside [2^-20, 2^20], else 0."""
    if total_sq is None or not math.isfinite(total_sq) or total_sq <= 0.0:
        return 0
    e = math.frexp(math.sqrt(total_sq))[1]
    return e if abs(e) > _SAFE_EXPONENT else 0


def scaled(x: torch.Tensor, e: int) -> torch.Tensor:
    """A copy of x·2^e, exact: in steps of at most 2^±100, since 2^e itself (e.g. 2^134, for an
    update of norm 2^-134) need not be a float32."""
    out = x * 2.0 ** max(-100, min(100, e))
    e -= max(-100, min(100, e))
    while e:
        step = max(-100, min(100, e))
        out.mul_(2.0**step)
        e -= step
    return out


@dataclass
class Update:
    """Δ as a dense tensor, or as factors Δ = b @ a (never formed).

    Shape: dense (rows, cols) or (n,); b (rows, r), a (r, cols).
    """

    dense: torch.Tensor | None = None
    b: torch.Tensor | None = None
    a: torch.Tensor | None = None

    @property
    def is_matrix(self) -> bool:
        return self.dense is None or self.dense.dim() == 2

    @property
    def shape(self) -> tuple[int, ...]:
        if self.dense is not None:
            return tuple(self.dense.shape)
        assert self.b is not None and self.a is not None
        return (self.b.shape[0], self.a.shape[1])

    def frobenius_sq(self) -> float:
        """‖Δ‖_F², accumulated in float64."""
        if self.dense is not None:
            return frobenius_sq(self.dense)
        assert self.b is not None and self.a is not None
        b, a = self.b.double(), self.a.double()
        return float(((b.t() @ b) * (a @ a.t())).sum())  # tr(BᵀB · AAᵀ)

    def inner(self, other: Update) -> float:
        """⟨Δ, Δ'⟩_F, accumulated in float64."""
        if self.dense is not None and other.dense is not None:
            return inner(self.dense, other.dense)
        if self.dense is None and other.dense is None:
            b1, a1, b2, a2 = (x.double() for x in (self.b, self.a, other.b, other.a))  # type: ignore[union-attr]
            return float(((b1.t() @ b2) * (a1 @ a2.t())).sum())  # tr(B1ᵀB2 · A2A1ᵀ)
        dense, fac = (self, other) if self.dense is not None else (other, self)
        assert dense.dense is not None and fac.b is not None and fac.a is not None
        return float(((fac.b.double().t() @ dense.dense.double()) * fac.a.double()).sum())

    def minus(self, other: Update) -> Update:
        """Δ − Δ' (factors concatenate, so the result stays factored when both are)."""
        if self.dense is None and other.dense is None:
            assert self.b is not None and other.b is not None
            return Update(b=torch.cat([self.b, -other.b], 1), a=torch.cat([self.a, other.a], 0))  # type: ignore[list-item]
        return Update(dense=self.to_dense() - other.to_dense())

    def to_dense(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        assert self.b is not None and self.a is not None
        return self.b @ self.a

    def top_k(
        self, k: int, init: torch.Tensor | None = None, total_sq: float | None = None
    ) -> TopK:
        """Top-k singular triplets (plus σ_{k+1}), from the factors when there are factors.

        total_sq = ‖Δ‖_F² as `frobenius_sq` gives it: passed on to the SVD (one pass fewer); far
        from 1, a dense Δ is scaled by a power of two for the SVD instead.
        """
        if self.dense is None:
            assert self.b is not None and self.a is not None
            return factored_top_k_svd(self.b, self.a, k)  # float64 throughout
        e = _exponent(total_sq)
        if e == 0:
            return top_k_svd(self.dense, k, init=init, total_sq=total_sq)
        top = top_k_svd(scaled(self.dense, -e), k, init=init)  # a copy, only for extreme norms
        return replace(top, S=scaled(top.S.double(), e).to(top.S.dtype))

    def spectrum(self, total_sq: float | None = None) -> torch.Tensor:
        """All min(rows, cols) singular values in float32, scaled as `top_k` scales."""
        e = _exponent(total_sq)
        dense = self.to_dense()
        if e == 0:
            return singular_values(dense)
        return scaled(singular_values(scaled(dense, -e), dtype=torch.float64), e).float()

    def rows(self, index: torch.Tensor) -> Update:
        """The update of the given rows — one logical part of a fused block."""
        if self.dense is not None:
            return Update(dense=self.dense.index_select(0, index.to(self.dense.device)))
        assert self.b is not None
        return Update(b=self.b.index_select(0, index.to(self.b.device)), a=self.a)

    def to(self, device: torch.device | str) -> Update:
        if self.dense is not None:
            return Update(dense=self.dense.to(device))
        assert self.b is not None and self.a is not None
        return Update(b=self.b.to(device), a=self.a.to(device))
