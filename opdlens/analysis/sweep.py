"""Tensor-major sweep: for one tensor, W_0, W_T, then every W_t — metrics rows and cached factors."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..names import ModuleInfo, as_matrix, split_fused
from ..run import Run
from . import metrics as M
from .cache import CachedFactors, TensorCache
from .linalg import svd_label
from .update import Update

log = logging.getLogger(__name__)

_ROWS = 1024  # rows per in-place subtraction block


@dataclass(frozen=True)
class SweepOptions:
    """What to compute for every tensor (one object shared by every task)."""

    ranks: tuple[int, ...] = (1, 4, 16)
    final: int | None = None
    consecutive: bool = False
    full_spectrum: bool = False
    split_fused: bool = True
    device: str = "cpu"

    @property
    def kmax(self) -> int:
        return max(self.ranks)


@dataclass
class TensorResult:
    """Rows for one tensor (one per step × slice × update kind) and the warnings it raised."""

    rows: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    svd_calls: int = 0
    cache_hits: int = 0
    svd_methods: dict[str, int] = field(default_factory=dict)  # calls by linalg.svd_label


@dataclass(frozen=True)
class Slice:
    """One analysed piece of a tensor: the whole, one expert, or one part of a fused block."""

    key: str
    kind: str
    expert: int | None
    part: str | None
    rows_index: torch.Tensor | None  # rows of the expert's (out, in) matrix, for fused parts


def slices_of(shape: tuple[int, ...], info: ModuleInfo, config: dict, split: bool) -> list[Slice]:
    """How a tensor of this shape is cut into analysed pieces (design.md)."""
    experts: list[int | None] = [None]
    if len(shape) >= 3 and info.stacked_experts:
        experts = list(range(shape[0]))
    base_kind = info.proj if info.kind == "experts" and info.proj else info.kind
    rows = shape[-2] if info.stacked_experts and len(shape) >= 3 else shape[0] if shape else 0
    parts: dict[str | None, torch.Tensor | None] = {None: None}
    if split and info.fused and len(shape) >= 2:
        try:
            idx = split_fused(torch.arange(rows).unsqueeze(1), info, config)
            parts = {p: v.reshape(-1) for p, v in idx.items()}
        except ValueError:
            parts = {None: None}
    out = []
    for e in experts:
        for p, index in parts.items():
            kind = base_kind if p is None else _part_kind(p)
            key = "/".join(x for x in (f"e{e}" if e is not None else "", p or "") if x) or "all"
            out.append(Slice(key, kind, e if e is not None else info.expert, p, index))
    return out


def _part_kind(part: str) -> str:
    return {"q": "q_proj", "k": "k_proj", "v": "v_proj", "gate": "gate_proj", "up": "up_proj"}[part]


def _piece(x: torch.Tensor, sl: Slice, info: ModuleInfo) -> torch.Tensor:
    """The slice's matrix (or vector) from the whole oriented tensor."""
    if info.stacked_experts and x.dim() >= 3 and sl.expert is not None:
        x = x[sl.expert]
    if x.dim() > 2:
        x = x.reshape(x.shape[0], -1)  # conv kernels: (out, rest)
    if sl.rows_index is not None:
        x = x.index_select(0, sl.rows_index)
    return x


class TensorSweep:
    """Computes every row of one tensor; reads each checkpoint's copy of it once."""

    def __init__(self, run: Run, name: str, options: SweepOptions, cache: TensorCache | None):
        self.run, self.name, self.opt, self.cache = run, name, options, cache
        self.info = run.module(name)
        self.final = options.final if options.final is not None else run.final_step
        # Every saved step gets a row, also those after a user-chosen final.
        self.steps = list(run.steps)
        self.slices = slices_of(
            run.base.spec(name).shape, self.info, run.config, options.split_fused
        )
        self.result = TensorResult()
        self._final_sq: dict[str, float] = {}

    def _update(self, step: int, w0: torch.Tensor) -> Update:
        """Δ_step = W_step − W_0, with W_0 read once per sweep (each file is read once)."""
        f = self.run.factored_delta(self.name, step)
        if f is not None:
            return Update(b=f[0], a=f[1]).to(self.opt.device)
        d = self.run.weight(self.name, step)  # a fresh float32 tensor: subtract in place,
        if d.dim() == 0:
            d.sub_(w0)
        for i in range(0, d.shape[0] if d.dim() else 0, _ROWS):
            d[i : i + _ROWS].sub_(w0[i : i + _ROWS])  # by row blocks: W_0 is never upcast whole
        return Update(dense=d.to(self.opt.device))

    def _pieces(self, u: Update) -> dict[str, Update]:
        out = {}
        for sl in self.slices:
            if u.dense is not None:
                out[sl.key] = Update(dense=_piece(u.dense, sl, self.info))
            else:
                out[sl.key] = u.rows(sl.rows_index) if sl.rows_index is not None else u
        return out

    def run_sweep(self) -> TensorResult:
        # W_0 stays in its stored dtype (half the memory of float32 for bf16 checkpoints).
        w0 = as_matrix(self.run.base.tensor(self.name), self.info)
        base_sq = {sl.key: M.frobenius_sq(_piece(w0, sl, self.info)) for sl in self.slices}
        final_u = self._pieces(self._update(self.final, w0))
        self._final_sq = {k: u.frobenius_sq() for k, u in final_u.items()}
        final_top = {
            k: self._factors(self.final, k, u, None, "cumulative", self._final_sq[k])
            for k, u in final_u.items()
        }
        prev_v: dict[str, torch.Tensor | None] = {sl.key: None for sl in self.slices}
        prev_u: dict[str, Update] | None = None
        for step in self.steps:
            cur = final_u if step == self.final else self._pieces(self._update(step, w0))
            for sl in self.slices:
                key = sl.key
                u = cur[key]
                sq = self._final_sq[key] if step == self.final else u.frobenius_sq()
                top = (
                    final_top[key]
                    if step == self.final
                    else self._factors(step, key, u, prev_v[key], "cumulative", sq)
                )
                prev_v[key] = top.v if top is not None else None
                finals = (final_u[key], final_top[key], base_sq[key])
                self._row(step, sl, "cumulative", u, sq, top, *finals)
                if self.opt.consecutive:
                    pu = prev_u[key] if prev_u is not None else None
                    cu = u if pu is None else u.minus(pu)
                    csq = cu.frobenius_sq()
                    ctop = self._factors(step, key, cu, None, "consecutive", csq)
                    self._row(step, sl, "consecutive", cu, csq, ctop, *finals)
            prev_u = cur if self.opt.consecutive else None
            del cur, u  # free Δ_t before Δ_{t+1} is read: two live updates, not three
        return self.result

    def _factors(
        self, step: int, key: str, u: Update, init: torch.Tensor | None, kind: str, total_sq: float
    ) -> CachedFactors | None:
        if not u.is_matrix or not math.isfinite(total_sq):  # non-finite ⇔ NaN/Inf inside
            return None
        cacheable = self.cache is not None and kind == "cumulative"
        if cacheable:
            hit = self.cache.get(step, key, self.opt.kmax, self.opt.full_spectrum)
            if hit is not None:
                self.result.cache_hits += 1
                return hit
        k = min(self.opt.kmax, min(u.shape))
        top = u.top_k(k, init=init)
        spectrum = None
        if self.opt.full_spectrum:
            from .linalg import singular_values

            spectrum = singular_values(u.to_dense()).cpu()
        self.result.svd_calls += 1
        label = svd_label(top)
        self.result.svd_methods[label] = self.result.svd_methods.get(label, 0) + 1
        fac = CachedFactors(
            top.U.cpu(), top.S.cpu(), top.V.cpu(), top.method, top.iterations, spectrum
        )
        if cacheable:
            self.cache.put(step, key, fac, kcap=min(u.shape))
        return fac

    def _row(
        self, step: int, sl: Slice, kind: str, u: Update, total_sq: float,
        top: CachedFactors | None, final: Update, final_top: CachedFactors | None, base_sq: float,
    ) -> None:  # fmt: skip
        shape = u.shape
        rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (shape[0] if shape else 1, 1)
        finite = math.isfinite(total_sq)
        if not finite:
            self.result.warnings.append(
                f"tensor '{self.name}'{'' if sl.key == 'all' else f' [{sl.key}]'} has NaN or Inf "
                f"at step {step}; its row is marked nonfinite and its metrics are NaN."
            )
        update_norm = math.sqrt(total_sq) if finite else math.nan
        row: dict[str, object] = {
            "step": step, "update": kind, "tensor": self.name, "layer": self.info.layer,
            "block": self.info.block, "kind": sl.kind, "expert": sl.expert, "part": sl.part,
            "rows": rows, "cols": cols, "numel": rows * cols,
            "update_norm": update_norm, "base_norm": math.sqrt(base_sq),
            "rel_update_norm": M.relative(update_norm, math.sqrt(base_sq)),
            "update_sq": total_sq if finite else math.nan, "nonfinite": not finite,
        }  # fmt: skip
        fsq = self._final_sq[sl.key]
        cos = math.nan
        if finite and math.isfinite(fsq) and total_sq > 0 and fsq > 0:
            cos = u.inner(final) / math.sqrt(total_sq * fsq)
        row["cos_to_final"] = cos
        for k in self.opt.ranks:
            ok = finite and top is not None and total_sq > 0 and k <= top.u.shape[1]
            row[f"energy_k{k}"] = M.energy_k(top.s, total_sq, k) if ok else math.nan
            row[f"gap_k{k}"] = M.gap_k(top.s, k) if ok else math.nan
            al = ok and final_top is not None and k <= min(top.u.shape[1], final_top.u.shape[1])
            row[f"align_left_k{k}"] = (
                M.subspace_alignment(top.u, final_top.u, k) if al else math.nan
            )
            row[f"align_right_k{k}"] = (
                M.subspace_alignment(top.v, final_top.v, k) if al else math.nan
            )
        row["stable_rank"] = (
            M.stable_rank(float(top.s[0]), total_sq)
            if finite and top is not None and total_sq > 0
            else math.nan
        )
        if self.opt.full_spectrum:
            ok = finite and top is not None and top.spectrum is not None
            row["effective_rank"] = M.effective_rank(top.spectrum) if ok else math.nan
        self.result.rows.append(row)


def sweep_tensor(
    run: Run, name: str, options: SweepOptions, cache: TensorCache | None = None
) -> TensorResult:
    """All rows of one tensor across the run's steps."""
    return TensorSweep(run, name, options, cache).run_sweep()


def sweep_names(run: Run, names: Sequence[str]) -> list[str]:
    """Tensors the sweep covers, largest first so a pool finishes evenly."""
    return sorted(names, key=lambda n: -run.base.spec(n).numel)
