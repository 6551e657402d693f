"""One update Δ of one matrix or vector, dense or as LoRA factors, with the algebra the sweep needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import TopK, factored_top_k_svd, top_k_svd
from .metrics import frobenius_sq, inner


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

    def top_k(self, k: int, init: torch.Tensor | None = None) -> TopK:
        """Top-k singular triplets (plus σ_{k+1}), from the factors when there are factors."""
        if self.dense is not None:
            return top_k_svd(self.dense, k, init=init)
        assert self.b is not None and self.a is not None
        return factored_top_k_svd(self.b, self.a, k)

    def rows(self, index: torch.Tensor) -> Update:
        """The update of the given rows — one logical part of a fused block."""
        if self.dense is not None:
            return Update(dense=self.dense.index_select(0, index))
        assert self.b is not None
        return Update(b=self.b.index_select(0, index), a=self.a)

    def to(self, device: torch.device | str) -> Update:
        if self.dense is not None:
            return Update(dense=self.dense.to(device))
        assert self.b is not None and self.a is not None
        return Update(b=self.b.to(device), a=self.a.to(device))
