"""Tensor-major sweep: for one tensor, W_0, W_T, then every W_t — metrics rows and cached factors."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import FusedSplitError
from ..io import dtypes
from ..names import ModuleInfo, as_matrix, split_fused
from . import changes
from . import metrics as M
from .base_geometry import SweepGeometry
from .cache import CachedFactors, FactorCache, TensorCache, content_key, slice_key
from .linalg import svd_label
from .matrices import matrix_of, matrix_shape
from .options import AnalyzeOptions
from .sparsity import ChangedCount, sparsity_view
from .update import Update, digest, read_stored, read_weight, subtract_base

if TYPE_CHECKING:
    from pathlib import Path

    from ..run import Run

log = logging.getLogger(__name__)

_FLOAT8 = ("F8_E5M2", "F8_E4M3")


@dataclass
class TensorResult:
    """Rows for one tensor (one per step × slice × update kind) and the warnings it raised."""

    rows: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    svd_calls: int = 0
    cache_hits: int = 0
    svd_methods: dict[str, int] = field(default_factory=dict)  # calls by linalg.svd_label
    gram: np.ndarray | None = None  # (steps + 1, steps + 1) float64, from gram_tensor
    factored: bool = False  # the update came as LoRA factors: no sparsity counts


@dataclass(frozen=True)
class Slice:
    """One analysed piece of a tensor: the whole, one expert, or one part of a fused block."""

    key: str
    kind: str
    expert: int | None
    part: str | None
    rows_index: torch.Tensor | None  # rows of the expert's (out, in) matrix, for fused parts


def slices_of(shape: tuple[int, ...], info: ModuleInfo, config: dict, split: bool) -> list[Slice]:
    """How a tensor of this shape is cut into analysed pieces (design.md).

    Raises:
        FusedSplitError: `split` asks for the parts of a fused tensor whose rows fit no split.
    """
    dims = matrix_shape(shape, info.stacked_experts)
    stacked = info.stacked_experts and len(shape) >= 3
    experts: list[int | None] = list(range(shape[0])) if stacked else [None]
    base_kind = info.proj if info.kind == "experts" and info.proj else info.kind
    if len(shape) == 2 and info.transposed:
        rows = shape[1]  # Conv1D stores (in, out): the fused parts are its columns
    elif dims is not None:
        rows = dims[1]
    else:
        rows = shape[0] if shape else 0
    parts: dict[str | None, torch.Tensor | None] = {None: None}
    if split and info.fused and len(shape) >= 2:
        idx = split_fused(torch.arange(rows, device="cpu").unsqueeze(1), info, config)
        parts = {p: v.reshape(-1) for p, v in idx.items()}
    out = []
    for e in experts:
        for p, index in parts.items():
            kind = base_kind if p is None else _part_kind(p)
            out.append(Slice(slice_key(e, p), kind, e if e is not None else info.expert, p, index))
    return out


def _part_kind(part: str) -> str:
    return {"q": "q_proj", "k": "k_proj", "v": "v_proj", "gate": "gate_proj", "up": "up_proj"}[part]


def skip_reason(run: Run, name: str) -> str | None:
    """Why a tensor gets no rows (an integer or boolean buffer, no elements), or None."""
    saved = [(0, run.base.spec(name))] + [(s, run.checkpoint(s).spec(name)) for s in run.steps]
    for step, spec in saved:
        if not spec.is_float:
            where = "in the base" if step == 0 else f"at step {step}"
            return (
                f"tensor '{name}' is stored {where} as {dtypes.torch_name(spec.stored)}: an "
                "integer or boolean buffer (or quantized weights), not float weights; skipped."
            )
    if saved[0][1].numel == 0:
        return f"tensor '{name}' has shape {list(saved[0][1].shape)}, no elements; skipped."
    return None


def float8_note(run: Run, name: str) -> str | None:
    """The note for a float8 tensor, analysed as its stored values upcast to float32."""
    saved = [run.base.spec(name)] + [run.checkpoint(s).spec(name) for s in run.steps]
    kinds = sorted({dtypes.torch_name(sp.stored) for sp in saved if sp.stored in _FLOAT8})
    if not kinds:
        return None
    return (
        f"tensor '{name}' is stored as {'/'.join(kinds)}: analysed as its stored values upcast "
        "to float32 (exact); a separate scale tensor, if the checkpoint has one, is not applied."
    )


def rank_notes(run: Run, names: Sequence[str], ranks: Sequence[int]) -> list[str]:
    """One note for ranks K above every analysed matrix's min(rows, cols): energy_k is 1.0."""
    found = (_rank_cap(run.base.spec(n).shape, run.module(n)) for n in names)
    caps = [c for c in found if c is not None]
    if not caps:
        return []
    over = [k for k in ranks if k > max(caps)]
    if not over:
        return []
    return [
        f"ranks {over} exceed min(rows, cols) of every analysed matrix (at most {max(caps)}): "
        "their energy_k is 1.0 by definition, gap_k 0 and alignment NaN; pick smaller ranks."
    ]


def _rank_cap(shape: tuple[int, ...], info: ModuleInfo) -> int | None:
    """min(rows, cols) of the matrices a tensor is analysed as, or None for vectors."""
    dims = matrix_shape(shape, info.stacked_experts)
    return None if dims is None else min(dims[1:])


def piece(x: torch.Tensor, sl: Slice, info: ModuleInfo) -> torch.Tensor:
    """The slice's matrix (or vector) from the whole oriented tensor."""
    x = matrix_of(x, info.stacked_experts, sl.expert)
    if sl.rows_index is not None:
        x = x.index_select(0, sl.rows_index.to(x.device))
    return x


class TensorSweep:
    """Computes every row of one tensor; reads each checkpoint's copy of it once."""

    def __init__(
        self, run: Run, name: str, options: AnalyzeOptions, cache: TensorCache | None,
        donors: Sequence[Path] = (),
    ) -> None:  # fmt: skip
        self.run, self.name, self.opt, self.cache = run, name, options, cache
        self.donors = donors  # other runs' cache directories: W_0's factors (--base-geometry)
        self.info = run.module(name)
        self.final = options.final_step(run)
        # Every saved step gets a row, also those after a user-chosen final.
        self.steps = list(run.steps)
        self.result = TensorResult()
        shape = run.base.spec(name).shape
        try:
            self.slices = slices_of(shape, self.info, run.config, options.split_fused)
        except FusedSplitError as e:
            self.result.warnings.append(
                f"tensor '{name}' is analysed whole, not per fused part: {e}"
            )
            self.slices = slices_of(shape, self.info, run.config, split=False)
        self._final_sq: dict[str, float] = {}
        self._h0 = b""  # digest of W_0's stored bytes
        self._geometry: SweepGeometry | None = None  # --base-geometry: W_0's factors per slice
        # A slice's rows (fused parts) depend on the config: part of its cache key.
        self._slice_digest = {
            sl.key: digest(sl.rows_index) if sl.rows_index is not None else b""
            for sl in self.slices
        }

    def _update(self, step: int, w0: torch.Tensor) -> tuple[Update, bytes]:
        """Δ_step = W_step − W_0 (W_0 read once per sweep), and a digest of what it came from."""
        f = self.run.factored_delta(self.name, step)
        if f is not None:
            self.result.factored = True
            return Update(b=f[0], a=f[1]).to(self.opt.device), digest(f[0], f[1])
        # A fresh float32 tensor, hashed as it is read: subtract in place.
        ck = self.run.checkpoint(step)
        d, h = read_weight(ck, self.name)
        d = as_matrix(d, self.info)
        stored = ck.spec(self.name).stored
        # Changed elements are counted on the stored values, before W_0 is subtracted: the
        # float32 reading is exact except for float64, which is read again as stored.
        wt = (
            d
            if changes.exact_reading(stored)
            else as_matrix(read_stored(ck, self.name)[0], self.info)
        )
        self.changes.observe(step, wt, stored)
        del wt
        subtract_base(d, w0)
        return Update(dense=d.to(self.opt.device)), self._h0 + h

    def _slice_pieces(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {sl.key: piece(x, sl, self.info) for sl in self.slices}

    def _sparsity(self, counted: dict[str, ChangedCount] | None, key: str) -> None:
        """Fill the sparsity columns of the row just added (empty without counts)."""
        self.result.rows[-1].update(changes.columns(counted[key] if counted else None))

    def _pieces(self, u: Update) -> dict[str, Update]:
        out = {}
        for sl in self.slices:
            if u.dense is not None:
                out[sl.key] = Update(dense=piece(u.dense, sl, self.info))
            else:
                out[sl.key] = u.rows(sl.rows_index) if sl.rows_index is not None else u
        return out

    def run_sweep(self) -> TensorResult:
        skip = skip_reason(self.run, self.name)
        if skip is not None:
            self.result.warnings.append(skip)
            return self.result
        note = float8_note(self.run, self.name)
        if note is not None:
            self.result.warnings.append(note)
        # W_0 stays in its stored dtype (half the memory of float32 for bf16 checkpoints).
        w0, self._h0 = read_stored(self.run.base, self.name)
        if self.run.base.spec(self.name).stored in _FLOAT8:
            w0 = w0.float()  # torch does not mix float8 with float32 in arithmetic
        w0 = as_matrix(w0, self.info)
        self.changes = changes.ChangeTracker(
            w0, self._slice_pieces, self.opt.sparsity_tol, self.opt.consecutive, self.final,
            sparsity_view(self.opt.sparsity_dtype),
        )  # fmt: skip
        base_sq = {sl.key: M.frobenius_sq(piece(w0, sl, self.info)) for sl in self.slices}
        if self.opt.base_geometry:
            by_key = {sl.key: sl for sl in self.slices}
            self._geometry = SweepGeometry(
                lambda key: piece(w0, by_key[key], self.info), self.opt.kmax, self.opt.device,
                self.cache, self._h0, self._slice_digest, self.result,
                lambda: [FactorCache(d, {}).tensor(self.name) for d in self.donors],
            )  # fmt: skip
        final_whole, final_h = self._update(self.final, w0)
        final_u = self._pieces(final_whole)
        del final_whole
        self._final_sq = {k: u.frobenius_sq() for k, u in final_u.items()}
        final_top = {
            k: self._factors(self.final, k, u, None, "cumulative", self._final_sq[k], final_h)
            for k, u in final_u.items()
        }
        # The first step warm-starts from the final step's top-K subspace (it is related).
        prev_v = {k: (top.v if top is not None else None) for k, top in final_top.items()}
        prev_u: dict[str, Update] | None = None
        prev_step: int | None = None
        for step in self.steps:
            if step == self.final:
                cur, h = final_u, final_h
            else:
                whole, h = self._update(step, w0)
                cur = self._pieces(whole)
                del whole
            counted = self.changes.cumulative.get(step)
            step_counted = (
                self.changes.step_counts(step, prev_step) if self.opt.consecutive else None
            )
            prev_step = step
            for sl in self.slices:
                key = sl.key
                u = cur[key]
                sq = self._final_sq[key] if step == self.final else u.frobenius_sq()
                top = (
                    final_top[key]
                    if step == self.final
                    else self._factors(step, key, u, prev_v[key], "cumulative", sq, h)
                )
                prev_v[key] = top.v if top is not None else None
                finals = (final_u[key], final_top[key], base_sq[key])
                self._row(step, sl, "cumulative", u, sq, top, *finals)
                self._sparsity(counted, key)
                if self.opt.consecutive:
                    pu = prev_u[key] if prev_u is not None else None
                    cu = u if pu is None else u.minus(pu)
                    csq = cu.frobenius_sq()
                    ctop = self._factors(step, key, cu, None, "consecutive", csq, None)
                    self._row(step, sl, "consecutive", cu, csq, ctop, *finals)
                    self._sparsity(step_counted, key)
            prev_u = cur if self.opt.consecutive else None
            del cur, u  # free Δ_t before Δ_{t+1} is read: two live updates, not three
        if self.cache is not None:
            self.result.warnings += self.cache.notes
        return self.result

    def _factors(
        self, step: int, key: str, u: Update, init: torch.Tensor | None, kind: str,
        total_sq: float, source: bytes | None,
    ) -> CachedFactors | None:  # fmt: skip
        """Top-K factors of one slice's update, from the cache when its bytes were seen before."""
        if not u.is_matrix or not math.isfinite(total_sq):  # non-finite ⇔ NaN/Inf inside
            return None
        content = None
        if self.cache is not None and kind == "cumulative" and source is not None:
            content = content_key(source, self._slice_digest[key])
            shape = (u.shape[0], u.shape[1])
            hit = self.cache.get(step, key, self.opt.kmax, self.opt.full_spectrum, content, shape)
            if hit is not None:
                self.result.cache_hits += 1
                return hit
        k = min(self.opt.kmax, min(u.shape))
        top = u.top_k(k, init=init, total_sq=total_sq)
        spectrum = u.spectrum(total_sq).cpu() if self.opt.full_spectrum else None
        self.result.svd_calls += 1
        label = svd_label(top)
        self.result.svd_methods[label] = self.result.svd_methods.get(label, 0) + 1
        fac = CachedFactors(
            top.U.cpu(), top.S.cpu(), top.V.cpu(), top.method, top.iterations, spectrum
        )
        if content is not None:
            assert self.cache is not None
            self.cache.put(step, key, fac, min(u.shape), content)
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
            "step": step, "span": kind, "tensor": self.name, "layer": self.info.layer,
            "block": self.info.block, "kind": sl.kind, "expert": sl.expert, "part": sl.part,
            "rows": rows, "cols": cols, "numel": rows * cols,
            "update_norm": update_norm, "base_norm": math.sqrt(base_sq),
            "rel_update_norm": M.relative(update_norm, math.sqrt(base_sq)),
            "update_sq": total_sq if finite else math.nan, "nonfinite": not finite,
        }  # fmt: skip
        fsq = self._final_sq[sl.key]
        cos = math.nan
        if finite and math.isfinite(fsq) and total_sq > 0 and fsq > 0:
            cos = u.inner(final) / (math.sqrt(total_sq) * math.sqrt(fsq))
        row["cos_to_final"] = cos
        cap = min(rows, cols)  # K ≥ cap: energy_k is 1.0 and σ_{K+1} = 0 (design.md)
        usable = top if finite and total_sq > 0 else None  # no spectrum metric otherwise
        for k in self.opt.ranks:
            energy = gap = left = right = math.nan
            if usable is not None:
                energy = M.energy_k(usable.s, total_sq, k, rank_cap=cap)
                gap = M.gap_k(usable.s, k, rank_cap=cap)
                if final_top is not None and k <= min(usable.u.shape[1], final_top.u.shape[1]):
                    left = M.subspace_alignment(usable.u, final_top.u, k)
                    right = M.subspace_alignment(usable.v, final_top.v, k)
            row[f"energy_k{k}"], row[f"gap_k{k}"] = energy, gap
            row[f"align_left_k{k}"], row[f"align_right_k{k}"] = left, right
        row["stable_rank"] = (
            M.stable_rank(float(usable.s[0]), total_sq) if usable is not None else math.nan
        )
        if self.opt.full_spectrum:
            spectrum = top.spectrum if finite and top is not None else None
            row["effective_rank"] = math.nan if spectrum is None else M.effective_rank(spectrum)
        if self._geometry is not None:
            geo = self._geometry.columns(self.opt.ranks, sl.key, kind, u, total_sq, usable)
            row.update(geo)
        self.result.rows.append(row)


def sweep_tensor(
    run: Run, name: str, options: AnalyzeOptions, cache: TensorCache | None = None,
    donors: Sequence[Path] = (),
) -> TensorResult:  # fmt: skip
    """All rows of one tensor across the run's steps (donors: `TensorSweep`'s)."""
    return TensorSweep(run, name, options, cache, donors).run_sweep()


def sweep_names(run: Run, names: Sequence[str]) -> list[str]:
    """Tensors the sweep covers, largest first so a pool finishes evenly."""
    return sorted(names, key=lambda n: -run.base.spec(n).numel)
